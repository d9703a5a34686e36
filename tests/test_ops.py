"""The op lists (vlscale.costs.ops / step_ops) are where compute comes from: their FLOPs sum
EXACTLY to vlscale.costs.flops for every preset, and their bytes follow the documented counts
(checked by hand on one tiny-clip block)."""

import pytest

from vlscale.costs.flops import (
    block_recompute_flops,
    loss_flops,
    text_layer_flops,
    vision_layer_flops,
)
from vlscale.costs.ops import OpList, block_ops, unit_ops
from vlscale.costs.step_ops import loss_ops, optimizer_ops
from vlscale.specs import get_model, list_models

B = 3  # an odd local batch: nothing cancels by accident


def _flops(ops, phases=("forward",)):
    return sum(o.flops for o in ops if o.phase in phases)


@pytest.mark.parametrize(
    "name, mask",
    [(name, mask) for name in list_models("vit") for mask in (0.0, 0.5, 0.75)]
    + [(name, 0.0) for name in list_models("resnet")],  # a ResNet drops no patches
)
def test_forward_op_flops_equal_the_analytic_flops(name, mask):
    spec = get_model(name)
    units = {
        u.name: u
        for u in unit_ops(
            spec, local_batch=B, mask_ratio=mask, precision="bf16", checkpointing=False
        )
    }
    vision = vision_layer_flops(spec.vision, spec.embed_dim, mask)
    text = text_layer_flops(spec.text, spec.embed_dim)
    v_blocks = [x for x in vision if x.kind == "block"]
    t_blocks = [x for x in text if x.kind == "block"]
    for i, layer in enumerate(v_blocks):
        assert _flops(units[f"visual.blocks.{i}"].forward) == B * layer.total
    for i, layer in enumerate(t_blocks):
        assert _flops(units[f"text.blocks.{i}"].forward) == B * layer.total
    # a tower's layers outside its blocks: the tower's own unit and its head units (a ResNet's
    # attention pool, "visual.pool")
    for tower, layers in (("visual", vision), ("text", text)):
        own = [u for n, u in units.items() if n == tower or n == f"{tower}.pool"]
        assert sum(_flops(u.forward) for u in own) == B * sum(
            x.total for x in layers if x.kind != "block"
        )
    assert ("visual.pool" in units) == (spec.vision.kind == "resnet")


@pytest.mark.parametrize("name", list_models("vit"))  # ResNets: tests/test_resnet_costs.py
def test_backward_is_two_forwards_but_the_stem_and_recompute_is_flops_recompute(name):
    spec = get_model(name)
    plain = unit_ops(spec, local_batch=B, mask_ratio=0.5, precision="bf16", checkpointing=False)
    ckpt = unit_ops(spec, local_batch=B, mask_ratio=0.5, precision="bf16", checkpointing=True)
    v = spec.vision
    stem = 2.0 * v.num_patches * 3 * v.patch_size**2 * v.trunk.width * B
    for u, c in zip(plain, ckpt, strict=True):
        fwd, bwd = _flops(u.forward), _flops(u.backward, ("backward",))
        assert bwd == 2 * fwd - (stem if u.name == "visual" else 0.0)
        recompute = _flops(c.backward, ("recompute",))
        if ".blocks." in u.name:
            trunk, tokens = (
                (v.trunk, v.seq_len(0.5))
                if u.name.startswith("visual")
                else (spec.text.trunk, spec.text.context_length)
            )
            assert recompute == B * block_recompute_flops(trunk, tokens)
        else:
            assert recompute == 0.0


@pytest.mark.parametrize(
    "loss, impl", [("softmax", "gather"), ("sigmoid", "gather"), ("sigmoid", "ring")]
)
@pytest.mark.parametrize("world", [1, 2, 4])
def test_loss_op_flops_equal_loss_flops(loss, impl, world):
    b, e = 5, 24
    fwd, bwd = loss_ops(loss, impl, b, world, e)
    total = sum(o.flops for o in fwd + bwd)
    assert total == loss_flops(loss, impl, b, world, e, recompute_logits=impl == "ring")


def test_block_bytes_by_hand():
    """tiny-clip image block, b = 2, S = 17 tokens, d = 64, h = 256, fp32 (a = 4 bytes)."""
    t = get_model("tiny-clip").vision.trunk
    ops = OpList("fp32", 4)
    block_ops(ops, "blk", t, 2, 17, causal=False, rope=False)
    by_name = {o.name: o for o in ops}
    m, d, h, a = 34, 64, 256, 4
    assert by_name["blk.norm1"].bytes == 2 * m * d * a  # read x, write y
    assert by_name["blk.attn.qkv"].bytes == (m * d + 3 * d * d + m * 3 * d) * a
    assert by_name["blk.attn.qkv"].shape == (1, m, 3 * d, d)
    assert by_name["blk.attn.sdpa"].bytes == 4 * m * d * a  # q, k, v in, o out
    assert by_name["blk.attn.sdpa"].flops == 4 * 2 * t.heads * 17 * 17 * t.head_dim
    assert by_name["blk.residual1"].bytes == 3 * m * d * a  # two reads, one write
    assert by_name["blk.mlp.gelu"].bytes == 2 * m * h * a
    assert by_name["blk.mlp.fc2"].bytes == (m * h + d * h + m * d) * a
    assert sum(o.kernels for o in ops) == 11  # 4 matmuls, sdpa, 2 norms, gelu, merge, 2 adds


def test_causal_attention_executes_about_half():
    t = get_model("tiny-clip").text.trunk
    ops = OpList("fp32", 4)
    block_ops(ops, "blk", t, 1, 32, causal=True, rope=False)
    sdpa = next(o for o in ops if o.kind == "attention")
    assert sdpa.executed_flops == pytest.approx(sdpa.flops * 33 / 64)


def test_optimizer_ops_single_tensor_vs_foreach():
    single = optimizer_ops(1000, 10, "adamw", grad_clip=True, foreach=False)
    fused = optimizer_ops(1000, 10, "adamw", grad_clip=True, foreach=True)
    step = {o.name: o for o in single}["optimizer.step"]
    assert step.kernels == 10 * 10 and step.bytes == 84 * 1000 and step.dispatch == "dtensor"
    assert {o.name: o for o in fused}["optimizer.step"].bytes == 28 * 1000
    lamb = {o.name: o for o in optimizer_ops(1000, 10, "lamb", grad_clip=False, foreach=False)}
    assert "optimizer.clip_grad_norm" not in lamb and lamb["optimizer.step"].dispatch == "plain"
