"""The ResNet layers of vlscale.costs (``vlscale.costs.layers.resnet``) against independent
truth: OpenCLIP's state-dict shapes, the torch module's ``numel`` and buffers, FlopCounterMode on
the forward and on forward + backward (with and without per-block checkpointing). Saved
activations against saved-tensor hooks: tests/test_activation_memory_torch.py (tiny-rn)."""

import json
from pathlib import Path

import pytest
import torch
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from models import build_model
from vlscale.costs.flops import (
    forward_flops,
    layer_flops,
    train_flops_per_sample,
    vision_forward_flops,
)
from vlscale.costs.layers import model_layers
from vlscale.costs.layers.resnet import SPLIT_K_ROWS, ResNetBottleneck, ResNetStem
from vlscale.costs.memory import fsdp_units
from vlscale.costs.ops import unit_ops
from vlscale.costs.params import count_params
from vlscale.errors import ConfigError
from vlscale.specs import get_model, list_models

KEYS = Path(__file__).parent / "fixtures" / "openclip" / "keys"
RESNETS = list_models("resnet")
# FlopCounterMode on models.resnet, forward, one sample (GFLOPs, rounded)
COUNTED_GFLOPS = {"RN50": 11.59, "RN101": 19.01, "RN50x4": 41.16, "RN50x16": 145.74,
                  "RN50x64": 520.25}  # fmt: skip
B = 3


def counted(fn, *args, **kwargs) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def meta_images(spec, batch=1):
    size = spec.vision.image_size
    return torch.empty(batch, 3, size, size, device="meta")


def test_every_resnet_preset_is_listed():
    assert RESNETS == ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "tiny-rn"]
    assert not set(RESNETS) & set(list_models("vit"))


@pytest.mark.parametrize("name", [n for n in RESNETS if n.startswith("RN")])
def test_params_equal_openclips_state_dict(name):
    # OpenCLIP's parameters (not the batch-norm statistics) plus our logit_bias
    shapes = json.loads((KEYS / f"{name}.json").read_text())["state_dict"]
    stats = ("running_mean", "running_var", "num_batches_tracked")
    theirs = sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith(stats))
    assert count_params(get_model(name)).total == theirs + 1
    visual = {k: s for k, s in shapes.items() if k.startswith("visual.")}
    ours = count_params(get_model(name)).image
    assert ours == sum(torch.Size(s).numel() for k, s in visual.items() if not k.endswith(stats))


@pytest.mark.parametrize("name", RESNETS)
def test_params_and_buffers_equal_the_torch_module(name):
    spec = get_model(name)
    model = build_model(spec, device="meta")
    assert count_params(spec).image == sum(p.numel() for p in model.visual.parameters())
    layers = model_layers(spec).image
    buffers = sum(b.numel() * b.element_size() for b in model.visual.buffers())
    assert sum(x.buffer_bytes() for x in layers if hasattr(x, "buffer_bytes")) == buffers


@pytest.mark.parametrize("name", RESNETS)
def test_forward_flops_equal_flop_counter(name):
    spec = get_model(name)
    model = build_model(spec, device="meta")
    measured = counted(model.visual, meta_images(spec))
    assert measured == vision_forward_flops(spec.vision, spec.embed_dim)
    if name in COUNTED_GFLOPS:
        assert round(measured / 1e9, 2) == COUNTED_GFLOPS[name]


@pytest.mark.parametrize("name", ["tiny-rn", "RN50"])
def test_each_layer_equals_flop_counter(name):
    # the simulator schedules per block: each block's FLOPs must be right on its own
    spec = get_model(name)
    model = build_model(spec, device="meta")
    layers = model_layers(spec).image
    blocks = [x for x in layers if x.role == "block"]
    assert len(blocks) == len(model.visual.blocks) == spec.vision.num_blocks
    x = model.visual.stem(meta_images(spec))
    assert counted(model.visual.stem, meta_images(spec)) == layer_flops(layers[0]).total
    for layer, block in zip(blocks, model.visual.blocks, strict=True):
        assert tuple(x.shape[1:]) == (layer.c_in, layer.side, layer.side)
        assert counted(block, x) == layer_flops(layer).total
        x = block(x)
    assert counted(model.visual.pool, x) == layer_flops(layers[-1]).total


@pytest.mark.parametrize("recompute", [False, True])
def test_train_flops_equal_flop_counter(recompute):
    # forward + backward of the whole model: the stem's first conv reads pixels (dW only)
    spec = get_model("tiny-rn")
    model = build_model(spec, device="meta")
    if recompute:  # per-block checkpointing, non-reentrant, as the trainer wraps
        for block in [*model.visual.blocks, *model.text.blocks]:
            fwd = block.forward
            block.forward = lambda *a, _f=fwd, **k: checkpoint(_f, *a, use_reentrant=False, **k)
    tokens = torch.zeros(1, spec.text.context_length, dtype=torch.long, device="meta")

    def step():
        img, txt = model(meta_images(spec), tokens)
        (img * txt).sum().backward()

    assert counted(step) == train_flops_per_sample(spec, 0.0, recompute)


def test_backward_ops_are_autograds():
    spec = get_model("tiny-rn")
    plain = unit_ops(spec, local_batch=B, mask_ratio=0.0, precision="bf16", checkpointing=False)
    ckpt = unit_ops(spec, local_batch=B, mask_ratio=0.0, precision="bf16", checkpointing=True)
    stem = model_layers(spec).image[0]
    first_conv = 2.0 * B * (64 // 2) ** 2 * (stem.width // 2) * 3 * 9  # pixels get no dX
    for u, c in zip(plain, ckpt, strict=True):
        fwd = sum(o.flops for o in u.forward)
        bwd = sum(o.flops for o in u.backward)
        assert bwd == 2 * fwd - (first_conv if u.name == "visual" else 0.0)
        if u.name.startswith("visual.blocks."):  # the final ReLU saves its output: no early stop
            assert sum(o.flops for o in c.backward if o.phase == "recompute") == fwd


def test_convolutions_are_implicit_gemms():
    spec = get_model("RN50")
    units = {u.name: u for u in unit_ops(spec, local_batch=2, mask_ratio=0.0,
                                         precision="bf16", checkpointing=False)}  # fmt: skip
    ops = {o.name: o for o in units["visual.blocks.0"].forward}
    conv2 = ops["visual.blocks.0.conv2"]  # 3x3, 64 -> 64 on the 56x56 map
    assert conv2.kind == "matmul" and conv2.shape == (1, 2 * 56 * 56, 64, 64 * 9)
    assert conv2.flops == 2.0 * 2 * 56 * 56 * 64 * 64 * 9
    assert conv2.bytes == (2 * 64 * 56 * 56 + 64 * 64 * 9 + 2 * 56 * 56 * 64) * 2
    ops = {o.name: o for o in units["visual.blocks.3"].forward}  # stage 1 strides by pooling
    assert ops["visual.blocks.3.conv3"].shape == (1, 2 * 28 * 28, 512, 128)
    assert ops["visual.blocks.3.downsample"].shape == (1, 2 * 28 * 28, 512, 256)
    memory_bound = [o for o in ops.values() if o.kind == "elementwise"]
    assert memory_bound and all(o.flops == 0 for o in memory_bound)
    assert {"visual.blocks.3.pool", "visual.blocks.3.residual", "visual.blocks.3.relu"} <= set(ops)


def test_fsdp_units_are_the_bottlenecks_the_attention_pool_and_the_tower():
    spec = get_model("RN50")
    units = fsdp_units(spec)
    assert [u for u in units if u.startswith("visual.blocks.")] == [
        f"visual.blocks.{i}" for i in range(16)
    ]
    model = build_model(spec, device="meta")
    assert units["visual.pool"] == sum(p.numel() for p in model.visual.pool.parameters())
    assert units["visual"] == sum(p.numel() for p in model.visual.stem.parameters())


def test_mask_ratio_is_refused_naming_the_model():
    with pytest.raises(ConfigError, match=r"^mask_ratio: .*ResNet image tower \(RN50\)"):
        forward_flops(get_model("RN50"), 0.5)
    with pytest.raises(ConfigError, match=r"^mask_ratio"):
        model_layers(get_model("tiny-rn"), 0.25)


def test_stem_halves_then_pools():
    stem = ResNetStem("visual", 224, 64)
    assert [c[4] for c in stem.convs] == [112, 112, 112]
    block = ResNetBottleneck("b", 256, 128, 2, 56)
    assert (block.side_out, block.c_out, block.reshapes) == (28, 512, True)


def test_weight_gradients_are_split_k_gemms():
    # dW of a conv has a small output (N x K) and a b·H·W-long reduction: split into chunks
    spec = get_model("RN50")
    units = unit_ops(spec, local_batch=512, mask_ratio=0.0, precision="bf16", checkpointing=False)
    ops = {o.name: o for u in units for o in u.backward}
    dw = ops["visual.blocks.0.conv2.dw"]
    m = 512 * 56 * 56
    assert dw.shape == (m // SPLIT_K_ROWS, 64, 576, -(-m // (m // SPLIT_K_ROWS)))
    assert dw.flops == 2.0 * m * 64 * 576 == ops["visual.blocks.0.conv2.dx"].flops
    small = unit_ops(spec, local_batch=1, mask_ratio=0.0, precision="bf16", checkpointing=False)
    pool_block = {o.name: o for u in small for o in u.backward}["visual.blocks.15.conv2.dw"]
    assert pool_block.shape[0] == 1  # 7 x 7 rows: nothing to split
