"""Hand-computed cases for every memory component, on the tiny-clip preset.

tiny-clip: image 32, patch 8 -> N = 16 patches + cls = 17 tokens; both trunks width d = 64,
depth 2, heads 4, mlp 256; text context 32, vocab 260; embed_dim 32. The arithmetic is written
out below from the formulas in the module docstrings, not from the code.
"""

from __future__ import annotations

import pytest

from tests.layouts import layout_for, memory, recipe_for
from vlscale.costs.activations import activation_bytes
from vlscale.costs.loss_buffers import loss_buffer_bytes, loss_buffer_parts
from vlscale.costs.memory import (
    DEFAULT_OVERHEAD_BYTES,
    estimate_memory,
    fsdp_unit_params,
    max_local_batch,
    optimizer_state_bytes,
    optimizer_state_elements,
)
from vlscale.errors import ConfigError, validate_as
from vlscale.specs import get_model
from vlscale.specs.layout import RunLayout

TINY = get_model("tiny-clip")

# Parameters of tiny-clip, by hand (vlscale.costs.params formulas):
#   block  = 2 LayerNorms 2·128 + attn (3·64² + 192 + 64² + 64 = 16640) + mlp (2·64·256 + 256 + 64
#            = 33088) = 49984
#   vision = stem 3·8·8·64 (12288) + cls 64 + pos 17·64 (1088) + ln_pre 128 + 2 blocks 99968
#            + final norm 128 + proj 64·32 (2048) = 115712
#   text   = tokens 260·64 (16640) + pos 32·64 (2048) + 2 blocks 99968 + norm 128 + proj 2048
#            = 120832
PSI = 115712 + 120832 + 2  # + logit_scale, logit_bias
BLOCK = 49984


def test_units_are_blocks_tower_rests_and_root():
    # vision rest 115712 - 99968 = 15744; text rest 120832 - 99968 = 20864
    assert sorted(fsdp_unit_params(TINY)) == sorted([BLOCK] * 4 + [15744, 20864, 2])


def test_model_states_bf16_fsdp():
    m = memory(TINY, local_batch=2, shard_degree=4, world_size=8, precision="bf16")
    assert m.params == 0  # FSDP2 keeps no persistent bf16 copy
    assert m.master_weights == 4 * PSI // 4  # fp32 shards: 236546 bytes
    assert m.grads == 4 * PSI // 4  # fp32 sharded grads
    assert m.optimizer_state == 8 * PSI // 4  # AdamW: two fp32 moments
    # two largest units gathered in bf16 (2 + 2 blocks) + one block's bf16 grads and fp32
    # reduce-scatter input: 2·(49984 + 49984) + (2 + 4)·49984 = 199936 + 299904
    assert m.fsdp_buffers == 499840
    assert m.overhead == DEFAULT_OVERHEAD_BYTES


def test_model_states_fp32_ddp_and_no_reshard():
    ddp = memory(TINY, local_batch=2, shard_degree=1, world_size=2, precision="fp32")
    assert ddp.params == 4 * PSI and ddp.master_weights == 0 and ddp.grads == 4 * PSI
    assert ddp.fsdp_buffers == (4 + 4) * BLOCK  # fp32 params used as they are; grad buffers only
    ddp16 = memory(TINY, local_batch=2, shard_degree=1, world_size=2, precision="bf16")
    assert ddp16.fsdp_buffers == 2 * PSI + 6 * BLOCK  # replicate keeps every bf16 cast
    keep = memory(TINY, local_batch=2, shard_degree=2, world_size=2, reshard_after_forward=False)
    assert keep.fsdp_buffers == 2 * PSI + 6 * BLOCK  # every unit stays gathered


def test_sharded_states_round_up():
    m = memory(TINY, local_batch=1, shard_degree=3, world_size=3, precision="fp32")
    assert m.params == -(-4 * PSI // 3)  # 946184 / 3 -> 315395 (ceil)


def test_adafactor_state_by_hand():
    # (rows + cols) per tensor of rank >= 2 over its last two dims, numel for vectors:
    # conv (64,3,8,8): 64·3·8 + 64·3·8 = 3072; cls (1,1,64): 1 + 64; pos (1,17,64): 17 + 64;
    # ln_pre 128; per block: norms 2·128, qkv (192,64) 256 + bias 192, out (64,64) 128 + 64,
    # fc1 (256,64) 320 + 256, fc2 (64,256) 320 + 64 = 1856; final norm 128; proj (32,64) 96
    vision = 3072 + 65 + 81 + 128 + 2 * 1856 + 128 + 96  # 7282
    # tokens (260,64) 324; pos (32,64) 96; blocks; norm 128; proj 96
    text = 324 + 96 + 2 * 1856 + 128 + 96  # 4356
    assert optimizer_state_elements(TINY, "adafactor") == vision + text + 2
    m = memory(TINY, local_batch=1, shard_degree=1, world_size=1, optimizer="adafactor")
    assert m.optimizer_state == 4 * (vision + text + 2)
    lamb = memory(TINY, local_batch=1, shard_degree=1, world_size=1, optimizer="lamb")
    assert lamb.optimizer_state == 8 * PSI


def test_activations_fp32_no_checkpointing():
    acts = activation_bytes(TINY, 2, "fp32", checkpointing=False)
    # vision, b = 2, n = 2·17 = 34 tokens (elements at 4 bytes; fp32 statistics separate):
    #   images 2·3·32·32 = 6144; ln_pre input 34·64 = 2176 (+ 2·34 stats)
    #   block: 8·n·d + 2·n·h = 8·2176 + 2·34·256 = 34816 (+ 2 LN stats 4·34 + lse 4·34 = 272)
    #   cls pool: last block output 2176 (+ 2·2 stats) + pooled 2·64 = 128 for the projection
    vision = 4 * (6144 + 2176 + 2 * 34816 + 2176 + 128) + 4 * (68 + 2 * 272 + 4)
    assert acts["image"] == vision == 323488
    # text, n = 2·32 = 64: token ids 64·8 bytes; block 8·64·64 + 2·64·256 = 65536 (+ 512 fp32);
    #   final norm input 4096 (+ 128 stats); eos: two int64 index vectors (2·2·8) + pooled 128
    text = 64 * 8 + 4 * (2 * 65536 + 4096 + 128) + 4 * (2 * 512 + 128) + 32
    assert acts["text"] == text == 546336
    assert acts["recompute"] == 0


def test_activations_bf16_checkpointing():
    acts = activation_bytes(TINY, 2, "bf16", checkpointing=True)
    # vision keeps images, ln_pre input, last output, pooled (10624 elems + 72 fp32) and each
    # block's input 2·2176: 2·(10624 + 4352) + 4·72
    assert acts["image"] == 2 * (10624 + 4352) + 4 * 72 == 30240
    # text: ids 512 bytes, norm input + pooled 4096 + 128, block inputs 2·4096, stats 128, eos 32
    assert acts["text"] == 512 + 2 * (4096 + 128 + 2 * 4096) + 4 * 128 + 32 == 25888
    # recompute: one text block (larger than a vision block) minus its kept input:
    # 2·65536 + 4·512 - 2·4096
    assert acts["recompute"] == 124928


def test_flip_masking_shortens_the_image_sequence():
    # r = 0.5 keeps 8 of 16 patches: n = 2·9 = 18; the gather saves the 2·16·64 pre-drop tokens
    # and the argsort indices 2·16 (int64); no ln_pre change except the token count
    acts = activation_bytes(TINY, 2, "fp32", mask_ratio=0.5)
    n = 18
    block = 8 * n * 64 + 2 * n * 256
    elems = 6144 + 2 * 16 * 64 + n * 64 + 2 * block + n * 64 + 128
    fp32 = 2 * n + 2 * (4 * n + 4 * n) + 4
    assert acts["image"] == 4 * (elems + fp32) + 8 * 2 * 16 == 191520


def test_loss_buffers_by_hand():
    # b = 2, W = 8 -> B = 16, e = 32; every variant holds the two F.normalize inputs and their
    # norms and clamped norms 2·(b·e + 2·b) = 136 fp32 values
    # softmax: x, y, t·x, t·y 4·b·e = 256; gathered images + texts 2·B·e = 1024;
    # log-softmax outputs 2·b·B = 64; int64 labels 2·b = 4; logit gradients 2·b·B = 64
    assert loss_buffer_bytes("softmax", "gather", 2, 8, 32) == 4 * (136 + 256 + 1024 + 64 + 4 + 64)
    # sigmoid gather: x, t·x 2·b·e = 128; gathered texts B·e = 512; logits b·B = 32;
    # negated positives b = 2; logit gradient b·B = 32
    assert loss_buffer_bytes("sigmoid", "gather", 2, 8, 32) == 4 * (136 + 128 + 512 + 32 + 2 + 32)
    # ring, saved x and y 2·b·e = 128; backward at W >= 3 holds n = 6 (b, e) blocks at its
    # busiest hop, peak max(2b² + 6be, b² + 7be, 8be) = max(392, 452, 512): b < e, the hop wins
    assert loss_buffer_parts("sigmoid", "ring", 2, 8, 32) == (4 * (136 + 128), 4 * 512)
    # b = 64 > e = 32 (b·e = 2048, b² = 4096): the two b×b blocks win
    normalised_and_saved = 2 * (2048 + 128) + 2 * 2048
    for world, backward in (
        (1, 2 * 4096 + 2 * 2048),  # t·x, dx; no hops: max(2b² + 2be, b² + 3be)
        (2, 2 * 4096 + 5 * 2048),  # + the received block and the two accumulators
        (4, 2 * 4096 + 6 * 2048),  # + the next block in flight
        (64, 2 * 4096 + 6 * 2048),  # flat from W = 3 on
    ):
        parts = loss_buffer_parts("sigmoid", "ring", 64, world, 32)
        assert parts == (4 * normalised_and_saved, 4 * backward), world
        assert loss_buffer_bytes("sigmoid", "ring", 64, world, 32) == sum(parts)


def test_breakdown_total_and_dict():
    m = memory(TINY, local_batch=4, shard_degree=2, world_size=4, overhead_bytes=7)
    d = m.as_dict()
    assert list(d) == [
        "params",
        "grads",
        "optimizer_state",
        "master_weights",
        "fsdp_buffers",
        "activations",
        "loss_buffers",
        "overhead",
    ]
    assert d["overhead"] == 7
    assert all(isinstance(v, int) for v in d.values())


def test_max_local_batch_is_the_largest_that_fits():
    layout, recipe = layout_for(2, 2, checkpointing=True), recipe_for()
    budget = estimate_memory(TINY, layout, recipe, local_batch=37, overhead_bytes=0).total
    assert max_local_batch(TINY, budget, layout, recipe, overhead_bytes=0) == 37
    assert max_local_batch(TINY, budget - 1, layout, recipe, overhead_bytes=0) == 36
    big, l14, fsdp8 = 40 * 2**30, get_model("ViT-L-14"), layout_for(8, 8)
    b = max_local_batch(l14, big, fsdp8, recipe)
    assert estimate_memory(l14, fsdp8, recipe, local_batch=b).total <= big
    assert estimate_memory(l14, fsdp8, recipe, local_batch=b + 1).total > big


def test_max_local_batch_reports_what_does_not_fit():
    with pytest.raises(ConfigError, match="sharding"):
        max_local_batch(get_model("EVA-CLIP-18B"), 80 * 2**30, layout_for(1, 1), recipe_for())


def test_one_fp32_rank_runs_unwrapped_and_holds_no_fsdp_buffers():
    """The unwrapped rule (RunLayout.wrapped): one fp32 rank runs the plain module, so memory is
    params 4Ψ + plain .grad 4Ψ + AdamW 8Ψ, no gathered copies and no reduce-scatter buffers.
    The same rank wrapped (what trainers before the rule did) adds (4 + 4)·U1."""
    plain = memory(TINY, local_batch=2, shard_degree=1, world_size=1, precision="fp32")
    assert (plain.params, plain.grads, plain.optimizer_state) == (4 * PSI, 4 * PSI, 8 * PSI)
    assert plain.master_weights == 0 and plain.fsdp_buffers == 0
    wrapped = estimate_memory(
        TINY,
        layout_for(1, 1, "fp32", wrap_one_rank=True),
        recipe_for(),
        local_batch=2,
    )
    assert wrapped.fsdp_buffers == (4 + 4) * BLOCK
    assert wrapped.total - plain.total == (4 + 4) * BLOCK
    # any other one-rank layout is wrapped: bf16 keeps its casts
    bf16 = memory(TINY, local_batch=2, shard_degree=1, world_size=1, precision="bf16")
    assert bf16.fsdp_buffers == 2 * PSI + 6 * BLOCK


def test_hsdp_holds_what_fsdp_over_its_shard_group_holds():
    # 8 ranks in shard groups of 2: model states over 2, the loss over all 8
    hsdp = memory(TINY, local_batch=2, shard_degree=2, world_size=8)
    fsdp2 = memory(TINY, local_batch=2, shard_degree=2, world_size=2)
    for field in ("params", "grads", "optimizer_state", "master_weights", "fsdp_buffers"):
        assert getattr(hsdp, field) == getattr(fsdp2, field), field
    assert hsdp.master_weights == 4 * PSI // 2
    assert hsdp.loss_buffers == loss_buffer_bytes("softmax", "gather", 2, 8, 32)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (
            lambda: validate_as(RunLayout, dict(devices=4, sharding="hsdp", shard_size=3), ""),
            "shard_size",
        ),
        (lambda: validate_as(RunLayout, dict(devices=4, shard_size=2), ""), "shard_size"),
        (lambda: estimate_memory(TINY, RunLayout(), recipe_for(), local_batch=2), "precision"),
        (lambda: memory(TINY, local_batch=0, shard_degree=1, world_size=1), "local_batch"),
        (
            lambda: memory(TINY, local_batch=2, shard_degree=1, world_size=1, overhead_bytes=-1),
            "overhead_bytes",
        ),
    ],
)
def test_bad_input_names_the_field(build, field):
    with pytest.raises(ConfigError) as err:
        build()
    assert err.value.field == field


def test_adafactor_column_factors_are_replicated_across_shards():
    # each 2-D (r, c) matrix keeps r/s row statistics and all c column statistics per rank
    from vlscale.costs.params import count_params, parameter_shapes

    shapes = parameter_shapes(TINY)
    cols = sum(shape[1] for shape in shapes if len(shape) == 2)
    total = optimizer_state_elements(TINY, "adafactor")
    assert optimizer_state_bytes(TINY, "adafactor", 1) == 4 * total
    # s = 4: everything but the column factors divides by 4
    assert optimizer_state_bytes(TINY, "adafactor", 4) == 4 * (-(-(total - cols) // 4) + cols)
    assert optimizer_state_bytes(TINY, "adamw", 4) == -(-(4 * 2 * count_params(TINY).total) // 4)
