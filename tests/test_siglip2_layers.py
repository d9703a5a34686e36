"""SigLIP 2's layer objects and per-pass FLOPs, against hand-computed numbers (the contract's
formulas in ``vlscale.costs.layers.decoder`` and ``siglip2_heads``), and the cross-check API
``vlscale.costs.siglip2`` (decoder pass, teacher forward, a phase's forward)."""

from __future__ import annotations

import pytest

from vlscale.costs.flops import forward_flops, layers_forward_flops
from vlscale.costs.layers import (
    LAYER_KINDS,
    DecoderBlock,
    DecoderEmbed,
    DecoderHead,
    DistillHead,
    MaskedHead,
    MaskToken,
    OpList,
    tower_layers,
)
from vlscale.costs.siglip2 import (
    decoder_pass_flops,
    naflex_tower,
    phase_forward_flops,
    phase_passes,
    student_extra_params,
    teacher_forward_flops,
)
from vlscale.specs.presets import resolve_model
from vlscale.specs.recipes import default_recipe

# d=8, h=16, H=2 heads, L=4 text tokens, S_v=5 memory tokens of width v=6
BLOCK = DecoderBlock("decoder.blocks.0", 8, 16, 2, 4, 5, 6)


def _flops(layer, b: int = 1, phase: str = "forward") -> float:
    ops = OpList("fp32", 4)
    if phase == "forward":
        layer.forward_ops(ops, b)
    else:
        layer.backward_ops(ops, b)
    return sum(o.flops for o in ops if o.phase != "recompute")


def test_new_layer_kinds_are_registered():
    for kind, cls in [
        ("decoder_block", DecoderBlock),
        ("decoder_embed", DecoderEmbed),
        ("decoder_head", DecoderHead),
        ("distill_head", DistillHead),
        ("masked_head", MaskedHead),
        ("mask_token", MaskToken),
    ]:
        assert LAYER_KINDS[kind] is cls


def test_decoder_block_parameters_by_hand():
    # 3 LayerNorms 3·2·8 = 48; self-attn qkv 24·8 + 24, out 8·8 + 8 = 288;
    # cross q 8·8 + 8, kv 16·6 + 16, out 8·8 + 8 = 256; MLP 16·8 + 16 + 8·16 + 8 = 280
    assert BLOCK.params() == 48 + 288 + 256 + 280 == 872
    assert BLOCK.param_shapes()[10] == (16, 6)  # cross_attn.kv: (2d, v), the memory's width


def test_decoder_block_forward_flops_follow_the_contract():
    # 2·L·d·3d + 4·L²·d + 2·L·d² | 2·L·d² + 2·S_v·v·2d + 4·L·S_v·d + 2·L·d² | 4·L·d·h
    self_attn = 2 * 4 * 8 * 24 + 4 * 16 * 8 + 2 * 4 * 64
    cross = 2 * 4 * 64 + 2 * 5 * 6 * 16 + 4 * 4 * 5 * 8 + 2 * 4 * 64
    mlp = 4 * 4 * 8 * 16
    assert _flops(BLOCK) == self_attn + cross + mlp == 7232
    assert _flops(BLOCK, b=3) == 3 * 7232


def test_decoder_block_backward_is_twice_forward_and_recompute_stops_before_fc2():
    assert _flops(BLOCK, phase="backward") == 2 * 7232
    ops = OpList("fp32", 4)
    BLOCK.recompute_ops(ops, 1)
    assert sum(o.flops for o in ops) == 7232 - 2 * 4 * 16 * 8  # less fc2 (2·L·h·d)


def test_decoder_block_saved_and_checkpoint():
    b, m, nm = 2, 8, 10
    saved = BLOCK.saved(b)
    # 6·m·d self-attn + 4·m·d cross + 2·nm·d (k, v of the memory) + 2·m·d + 2·m·h MLP
    assert saved.act == 12 * m * 8 + 2 * nm * 8 + 2 * m * 16
    assert saved.fp32 == 3 * 2 * m + 2 * m * 2  # three norms' statistics, two logsumexps
    assert BLOCK.checkpoint_saved(b).act == m * 8


def test_decoder_embed_and_head_by_hand():
    embed = DecoderEmbed("decoder", 10, 8, 4)
    assert embed.params() == 10 * 8 + 4 * 8 + 8  # token_embed, pos_embed, parallel_token
    assert _flops(embed) == 0  # lookups and adds are not FLOPs
    head = DecoderHead("decoder", 8, 10, 4, chunk=3)
    assert head.params() == 2 * 8 + 10 * 8 + 10
    assert _flops(head) == 2 * 4 * 8 * 10  # 2·L·d·V
    assert _flops(head, b=2, phase="backward") == 2 * 2 * (2 * 4 * 8 * 10)


def test_chunked_head_recomputes_logits_and_keeps_one_chunk():
    head = DecoderHead("decoder", 8, 10, 4, chunk=3)
    ops = OpList("fp32", 4)
    head.forward_ops(ops, 2)  # 8 rows: chunks of 3, 3, 2
    assert sum(o.kernels for o in ops if o.kind == "matmul") == 3
    back = OpList("fp32", 4)
    head.backward_ops(back, 2)
    recomputed = sum(o.flops for o in back if o.phase == "recompute")
    assert recomputed == 2 * 8 * 8 * 10  # every chunk's logits again
    # only one chunk's logits (3·V, and their fp32 softmax) are held, whatever the batch
    small, big = head.saved(2), head.saved(200)
    assert big.act - 2 * 800 * 8 == small.act - 2 * 8 * 8 == 3 * 10


def test_distill_and_masked_heads_by_hand():
    distill = DistillHead("distill_head", 6, 4, 5, 1)
    assert distill.params() == 2 * 6 + 4 * 6 + 4 + 4 * 4 + 4
    assert _flops(distill) == 2 * 6 * 4 + 2 * 4 * 4  # 2·r·v·hd + 2·r·hd², r = 1
    masked = MaskedHead("masked_head", 6, 4, 5, 3)
    assert _flops(masked, b=2) == 2 * 3 * (2 * 6 * 4 + 2 * 4 * 4)
    assert MaskToken("patch_mask_token", 6, 16).param_shapes() == [(6,)]


def _tiny():
    spec = resolve_model("tiny-siglip")
    recipe = default_recipe("siglip2")
    return spec, recipe, recipe.objectives.phases()


def test_decoder_pass_flops_match_the_contract_on_a_preset():
    spec, recipe, phases = _tiny()
    t, v = spec.text, spec.vision
    d, h, L, V = t.trunk.width, t.trunk.mlp_width, t.context_length, t.vocab_size
    sv, w = v.seq_len(), v.trunk.width
    block = (
        2 * L * d * 3 * d
        + 4 * L * L * d
        + 2 * L * d * d
        + 2 * L * d * d
        + 2 * sv * w * 2 * d
        + 4 * L * sv * d
        + 2 * L * d * d
        + 4 * L * d * h
    )
    depth = t.trunk.depth // 2
    assert decoder_pass_flops(spec, recipe, phases[0], 3) == 3 * (depth * block + 2 * L * d * V)


def test_teacher_forward_is_the_trunk_and_both_heads():
    spec, recipe, phases = _tiny()
    distill = next(p for p in phases if p.distill)
    v, s2 = spec.vision, recipe.objectives
    trunk = layers_forward_flops(x for x in tower_layers(v, spec.embed_dim) if x.role != "head")
    trunk -= 2 * v.trunk.width * spec.embed_dim if v.proj != "none" else 0
    w, hd = v.trunk.width, s2.distill.head_dim
    k_m = v.num_patches - v.kept_patches(s2.masked.mask_ratio)
    heads = (1 + k_m) * (2 * w * hd + 2 * hd * hd)
    assert teacher_forward_flops(spec, recipe, distill, 2) == 2 * (trunk + heads)
    assert teacher_forward_flops(spec, recipe, phases[0], 2) == 0.0  # no teacher in "base"


def test_phase_forward_adds_each_pass_to_siglips_forward():
    spec, recipe, phases = _tiny()
    b, world, e = 4, 2, spec.embed_dim
    siglip = b * forward_flops(spec).total + 2 * b * (b * world) * e
    base = phase_forward_flops(spec, recipe, phases[0], b, world)
    passes = recipe.objectives.decoder.passes
    assert base == siglip + passes * decoder_pass_flops(spec, recipe, phases[0], b)
    distill = next(p for p in phases if p.distill)
    assert phase_forward_flops(spec, recipe, distill, b, world) > base + teacher_forward_flops(
        spec, recipe, distill, b
    )


def test_passes_per_phase():
    spec, recipe, phases = _tiny()
    names = {p.name: [x.name for x in phase_passes(spec, recipe.objectives, p)] for p in phases}
    assert names == {
        "base": ["decoder"],
        "self-distillation": ["teacher", "local_views", "masked_view", "decoder"],
        "naflex": ["decoder"],
    }
    local = phase_passes(spec, recipe.objectives, phases[1])[1]
    assert local.per_sample == recipe.objectives.distill.local_views


def test_added_parameters_by_unit():
    spec, recipe, _ = _tiny()
    added = student_extra_params(spec, recipe.objectives)
    d, v, t = spec.text.trunk.width, spec.vision.trunk.width, spec.text
    hd = recipe.objectives.distill.head_dim
    head = 2 * v + hd * v + hd + hd * hd + hd
    assert added["visual"] == v  # patch_mask_token; each head is a unit of its own
    assert added["distill_head"] == added["masked_head"] == head
    embed = t.vocab_size * d + t.context_length * d + d
    assert added["decoder"] == embed + 2 * d + t.vocab_size * d + t.vocab_size
    assert sum(1 for k in added if k.startswith("decoder.blocks.")) == t.trunk.depth // 2
    # per phase: only what trains in it (the heads in self-distillation only)
    base, distill = recipe.objectives.phases()[:2]
    in_base = student_extra_params(spec, recipe.objectives, base)
    assert in_base["visual"] == 0 and "distill_head" not in in_base
    assert student_extra_params(spec, recipe.objectives, distill) == added


@pytest.mark.parametrize("patches", [128, 784])
def test_naflex_tower_runs_its_patches_and_keeps_its_positions(patches):
    v = resolve_model("ViT-B-16-SigLIP2-256").vision
    n = naflex_tower(v, patches)
    assert n.seq_len() == patches  # no class token
    assert n.pixels == patches * v.patch_size**2
    stem = tower_layers(n, 768)[0]
    assert stem.param_shapes() == tower_layers(v, 768)[0].param_shapes()


@pytest.mark.parametrize(
    "name, paper",
    [("ViT-B-16-SigLIP2-256", 86e6), ("ViT-L-16-SigLIP2-256", 303e6)],
)
def test_siglip2_vision_trunks_match_the_papers_sizes(name, paper):
    """The paper's ViT-B (86M) and ViT-L (303M) are the patch stem, positions and blocks; the
    MAP head comes on top (So400m's 412M and g-opt's 1,135M are its named '400M' and '1B')."""
    spec = resolve_model(name)
    layers = tower_layers(spec.vision, spec.embed_dim)
    trunk = sum(x.params() for x in layers if x.role in ("stem", "block"))
    assert trunk == pytest.approx(paper, rel=0.005)
    assert spec.text.vocab_size == 256_000 and spec.text.context_length == 64
