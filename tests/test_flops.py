"""vlscale.costs.flops equals torch's FlopCounterMode on the torch model, for every preset.

Counted on the meta device (no memory, no compute): there SDPA decomposes into two bmm, which
the counter counts; on CPU tensors it is counted only after models.flop_counting registers it.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from models import build_model
from models.flop_counting import count_flops
from vlscale.costs.flops import (
    block_flops,
    flip_flop_ratio,
    forward_flops,
    loss_flops,
    model_flops_per_sample,
    text_forward_flops,
    text_layer_flops,
    train_flops_per_sample,
    vision_forward_flops,
    vision_layer_flops,
)
from vlscale.errors import ConfigError
from vlscale.specs import get_model, list_models

MASK_RATIOS = (0.0, 0.25, 0.5, 0.75)
REL = 1e-12  # the formulas equal the counter exactly; only float summation order differs


def meta_inputs(spec, batch=1):
    size = spec.vision.image_size
    images = torch.empty(batch, 3, size, size, device="meta")
    tokens = torch.zeros(batch, spec.text.context_length, dtype=torch.long, device="meta")
    return images, tokens


def counted(fn, *args, **kwargs):
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args, **kwargs)
    return counter


@pytest.mark.parametrize("name", list_models())
def test_forward_flops_equal_flop_counter(name):
    spec = get_model(name)
    model = build_model(spec, device="meta")
    images, tokens = meta_inputs(spec)
    for r in MASK_RATIOS if spec.vision.kind == "vit" else (0.0,):  # a ResNet drops no patches
        measured = counted(model.visual, images, mask_ratio=r).get_total_flops()
        assert measured == pytest.approx(
            vision_forward_flops(spec.vision, spec.embed_dim, r), rel=REL
        ), f"image tower at mask ratio {r}"
    measured = counted(model.text, tokens).get_total_flops()
    assert measured == pytest.approx(text_forward_flops(spec.text, spec.embed_dim), rel=REL)


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-siglip", "tiny-eva", "EVA02-B-16"])
def test_per_block_flops_equal_flop_counter(name):
    # the simulator schedules per block, so each block's number must be right on its own
    spec = get_model(name)
    model = build_model(spec, device="meta")
    for tower, r in ((spec.vision, 0.5), (spec.text, 0.0)):
        seq = tower.seq_len(r) if tower is spec.vision else tower.context_length
        block = (model.visual if tower is spec.vision else model.text).blocks[0]
        x = torch.empty(1, seq, tower.trunk.width, device="meta")
        assert counted(block, x).get_total_flops() == block_flops(tower.trunk, seq).total
        if tower is spec.vision:
            layers = vision_layer_flops(tower, spec.embed_dim, r)
        else:
            layers = text_layer_flops(tower, spec.embed_dim)
        assert sum(x.kind == "block" for x in layers) == tower.trunk.depth


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-siglip", "tiny-eva", "ViT-B-32"])
@pytest.mark.parametrize("recompute", [False, True])
def test_train_flops_equal_flop_counter(name, recompute):
    spec = get_model(name)
    model = build_model(spec, device="meta")
    if recompute:
        # per-block activation checkpointing, non-reentrant, as FSDP2's checkpoint wrapper does
        for block in [*model.visual.blocks, *model.text.blocks]:
            fwd = block.forward
            block.forward = lambda *a, _f=fwd, **k: checkpoint(_f, *a, use_reentrant=False, **k)
    images, tokens = meta_inputs(spec)

    def step():
        img, txt = model(images, tokens, mask_ratio=0.5)
        (img * txt).sum().backward()  # a loss with no matmul

    measured = counted(step).get_total_flops()
    assert measured == pytest.approx(train_flops_per_sample(spec, 0.5, recompute), rel=REL)


def test_recompute_adds_less_than_a_forward():
    spec = get_model("ViT-B-16")
    plain = train_flops_per_sample(spec)
    assert plain < train_flops_per_sample(spec, recompute=True)
    assert train_flops_per_sample(spec, recompute=True) < train_flops_per_sample(
        spec, recompute=True, early_stop=False
    )
    f = forward_flops(spec).total
    assert train_flops_per_sample(spec, recompute=True, early_stop=False) < plain + f


def test_cpu_attention_is_counted_after_registration():
    spec = get_model("tiny-eva")
    model = build_model(spec)
    images = torch.randn(2, 3, spec.vision.image_size, spec.vision.image_size)
    tokens = torch.randint(0, spec.text.vocab_size, (2, spec.text.context_length))
    measured, _ = count_flops(model, images, tokens, mask_ratio=0.5)
    assert measured == pytest.approx(2 * forward_flops(spec, 0.5).total, rel=REL)


@pytest.mark.parametrize("name", ["EVA02-L-14", "ViT-B-16"])
def test_flip_ratio_matches_counted_matmuls(name):
    # linear work (mm / addmm / conv) and attention work (bmm on meta) measured separately
    spec = get_model(name)
    model = build_model(spec, device="meta")
    images, _ = meta_inputs(spec)

    def split(r):
        counts = counted(
            model.visual.blocks[0],
            torch.empty(1, spec.vision.seq_len(r), spec.vision.trunk.width, device="meta"),
        ).get_flop_counts()
        ops = counts["Global"]
        attention = ops.get(torch.ops.aten.bmm, 0)
        return sum(ops.values()) - attention, attention

    lin0, att0 = split(0.0)
    for r in (0.25, 0.5, 0.75):
        ratio = flip_flop_ratio(spec.vision, spec.embed_dim, r)
        lin, att = split(r)
        assert ratio.linear == pytest.approx(lin / lin0, rel=1e-9)
        assert ratio.attention == pytest.approx(att / att0, rel=1e-9)
        whole = counted(model.visual, images, mask_ratio=r).get_total_flops()
        full = counted(model.visual, images).get_total_flops()
        assert ratio.total == pytest.approx(whole / full, rel=REL)
        # attention falls faster than linear work, which falls about as (1 - r)
        assert ratio.attention < ratio.linear < 1.0
        assert ratio.linear == pytest.approx(1 - r, abs=0.02)


def test_image_size_override():
    spec = get_model("ViT-L-14")
    assert forward_flops(spec, image_size=336) == forward_flops(get_model("ViT-L-14-336"))
    assert forward_flops(spec, image_size=336).image > forward_flops(spec).image


# --- loss FLOPs: the trainer's losses run under the counter, forward AND backward ----------


# torch's counter has no formula for the in-place ``addmm_``: the SigLIP ring's hand-written
# backward accumulates dL/dx with ``dx.addmm_(G, y_blk)`` (2·b·b·d per block), which the stock
# counter counts as 0. Registering the same formula as ``addmm`` (m·n·k multiply-adds, the bias
# term is elementwise) counts the work the kernel does; the stock count is checked too, so the
# exact size of the miss is asserted, not assumed.
def _inplace_addmm_flops(self_shape, mat1_shape, mat2_shape, *args, out_shape=None, **kwargs):
    (m, k), (_, n) = mat1_shape, mat2_shape
    return 2 * m * n * k


LOSS_COUNTER_EXTRA = {torch.ops.aten.addmm_: _inplace_addmm_flops}
LOSS_VARIANTS = ("clip", "siglip-gather", "siglip-ring")


def _count_trainer_loss(variant, b, d, seed):
    """(stock counter, counter with ``addmm_``) FLOPs of one forward + backward of a
    ``trainer.losses`` loss on this process's group (WORLD if initialised, else W = 1)."""
    from trainer.losses import clip_loss, siglip_loss

    g = torch.Generator().manual_seed(seed)
    counts = []
    for mapping in (None, LOSS_COUNTER_EXTRA):
        x = F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
        y = F.normalize(torch.randn(b, d, generator=g), dim=-1).requires_grad_()
        scale = torch.tensor([2.3], requires_grad=True)
        bias = torch.tensor([-10.0], requires_grad=True)
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            if variant == "clip":
                loss = clip_loss(x, y, scale)
            else:
                loss = siglip_loss(x, y, scale, bias, impl=variant.split("-")[1])
            loss.backward()
        assert x.grad is not None and y.grad is not None and scale.grad is not None
        counts.append(counter.get_total_flops())
    return tuple(counts)


def _count_all_trainer_losses(ctx, b, d):
    return {v: _count_trainer_loss(v, b, d, seed=ctx.rank) for v in LOSS_VARIANTS}


def _check_trainer_loss_counts(counts, b, world, d):
    """Every variant's counted forward + backward equals ``loss_flops`` exactly (integers)."""
    stock, full = counts["clip"]
    assert stock == full == loss_flops("softmax", "gather", b, world, d)  # 12·b·B·d
    stock, full = counts["siglip-gather"]
    assert stock == full == loss_flops("sigmoid", "gather", b, world, d)  # 6·b·B·d
    # the ring really runs 8·b·B·d: W blocks forward, and in backward each block's logits
    # recomputed, dx (addmm_) and dy (mm); its model FLOPs (no recompute) are the gather's
    stock, full = counts["siglip-ring"]
    assert full == loss_flops("sigmoid", "ring", b, world, d, recompute_logits=True)
    assert stock == full - world * 2 * b * b * d  # the W dx addmm_ the stock counter misses
    model_flops = loss_flops("sigmoid", "ring", b, world, d)
    assert model_flops == loss_flops("sigmoid", "gather", b, world, d)


@pytest.mark.parametrize("b,d", [(4, 8), (6, 16)])
def test_trainer_loss_flops_single_process(b, d):
    counts = {v: _count_trainer_loss(v, b, d, seed=0) for v in LOSS_VARIANTS}
    _check_trainer_loss_counts(counts, b, 1, d)


@pytest.mark.dist
def test_trainer_loss_flops_two_ranks():
    from tests.dist_utils import run_distributed

    b, d = 6, 16
    for counts in run_distributed(_count_all_trainer_losses, 2, b, d):
        _check_trainer_loss_counts(counts, b, 2, d)


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda: loss_flops("softmax", "ring", 4, 2, 8), "loss_impl"),
        (lambda: loss_flops("hinge", "gather", 4, 2, 8), "loss"),
        (lambda: loss_flops("sigmoid", "gather", 0, 2, 8), "local_batch"),
        (lambda: loss_flops("sigmoid", "gather", 4, 0, 8), "world_size"),
        (lambda: forward_flops(get_model("ViT-B-32"), mask_ratio=1.0), "mask_ratio"),
        (lambda: forward_flops(get_model("ViT-B-32"), mask_ratio=-0.1), "mask_ratio"),
    ],
)
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ConfigError) as err:
        call()
    assert err.value.field == field


def test_model_flops_per_sample_is_towers_plus_loss_share():
    # tiny-clip, b = 4 per rank, W = 2, e = 32: softmax loss = 12·b·B·e per rank per step
    spec = get_model("tiny-clip")
    b, w, e = 4, 2, spec.embed_dim
    loss_share = 12 * b * (b * w) * e / b
    got = model_flops_per_sample(
        spec, mask_ratio=0.0, loss="softmax", loss_impl="gather", local_batch=b, world_size=w
    )
    assert got == train_flops_per_sample(spec) + loss_share
    # the ring's recomputed logits are not model FLOPs: same as sigmoid gather
    ring, gather = (
        model_flops_per_sample(
            spec, mask_ratio=0.5, loss="sigmoid", loss_impl=i, local_batch=b, world_size=w
        )
        for i in ("ring", "gather")
    )
    assert ring == gather == train_flops_per_sample(spec, 0.5) + 6 * b * (b * w) * e / b
