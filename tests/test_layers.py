"""The layer registry (vlscale.costs.layers): a model is a list of layers, and params, FLOPs,
ops and activation memory are sums over it. A new layer kind is one class that names itself
(``class X(Layer, kind=..., role=...)``); this file adds a test-only kind, a residual GELU MLP
block, and takes it through the same sums with no other edit — and holds the toy against torch
(``numel``, FlopCounterMode, saved-tensor hooks) as the real kinds are held."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

import pytest

from vlscale.costs.activations import layers_activations
from vlscale.costs.flops import layer_flops, layers_forward_flops, layers_train_flops
from vlscale.costs.layers import (
    LAYER_KINDS,
    Layer,
    OpList,
    Saved,
    TransformerBlock,
    model_layers,
    tower_layers,
)
from vlscale.costs.ops import layers_units, unit_ops
from vlscale.costs.params import count_params, layers_params, vision_params
from vlscale.errors import ConfigError
from vlscale.specs import get_model, list_models


class ToyMLP(Layer, kind="toy_mlp", role="block"):
    """x + fc2(gelu(fc1(x))) over ``tokens`` tokens of width d, hidden width h, biased."""

    tokens: int
    d: int
    h: int

    def param_shapes(self):
        return [(self.h, self.d), (self.h,), (self.d, self.h), (self.d,)]

    def forward_ops(self, ops, b, phase="forward"):
        m = b * self.tokens
        ops.linear(f"{self.name}.mlp.fc1", m, self.h, self.d, True, phase)
        ops.elementwise(f"{self.name}.mlp.gelu", 2 * m * self.h, phase)
        ops.linear(f"{self.name}.mlp.fc2", m, self.d, self.h, True, phase)
        ops.elementwise(f"{self.name}.residual", 3 * m * self.d, phase)

    def backward_ops(self, ops, b):
        m = b * self.tokens
        ops.elementwise(f"{self.name}.residual.grad", 3 * m * self.d, "backward")
        ops.linear_backward(f"{self.name}.mlp.fc2", m, self.d, self.h, True, dx=True)
        ops.elementwise(f"{self.name}.mlp.gelu.grad", 3 * m * self.h, "backward")
        ops.linear_backward(f"{self.name}.mlp.fc1", m, self.h, self.d, True, dx=True)

    def saved(self, b):
        # fc1's input x, GELU's input (fc1 output), fc2's input (GELU output)
        return Saved(act=b * self.tokens * (self.d + 2 * self.h))

    def checkpoint_saved(self, b):
        return Saved(act=b * self.tokens * self.d)


@dataclass(frozen=True)
class ToyTowerSpec:
    """A test-only tower: ``depth`` toy MLP blocks."""

    depth: int
    tokens: int
    d: int
    h: int


@tower_layers.register
def _toy_tower(tower: ToyTowerSpec, embed_dim: int, mask_ratio: float = 0.0):
    return tuple(
        ToyMLP(f"toy.blocks.{i}", tower.tokens, tower.d, tower.h) for i in range(tower.depth)
    )


B, S, D, H = 3, 5, 8, 16
TOY = ToyMLP("toy", S, D, H)


def _fp32_ops(build) -> OpList:
    ops = OpList("fp32", 4)
    build(ops)
    return ops


def test_the_toy_kind_is_registered_by_its_class_alone():
    assert LAYER_KINDS["toy_mlp"] is ToyMLP and ToyMLP.role == "block"
    assert LAYER_KINDS["transformer_block"] is TransformerBlock
    with pytest.raises(FrozenInstanceError):
        TOY.tokens = 7  # a frozen dataclass, made so by the base class


def test_registration_refuses_a_taken_name_a_bad_role_and_a_block_without_checkpoint():
    with pytest.raises(ValueError, match="already"):

        class Again(ToyMLP, kind="toy_mlp", role="block"):
            pass

    with pytest.raises(ValueError, match="role"):

        class Nowhere(ToyMLP, kind="toy_nowhere", role="middle"):
            pass

    with pytest.raises(ValueError, match="checkpoint"):

        class Forgetful(Layer, kind="toy_forgetful", role="block"):
            def param_shapes(self):
                return []

            forward_ops = backward_ops = saved = param_shapes


def test_a_new_tower_builder_gives_the_toy_layers():
    layers = tower_layers(ToyTowerSpec(depth=2, tokens=S, d=D, h=H), 0)
    assert [x.name for x in layers] == ["toy.blocks.0", "toy.blocks.1"]
    with pytest.raises(ConfigError, match=r"not yet modelled.*register"):
        tower_layers(object(), 0)


def test_the_toy_goes_through_the_same_sums():
    """A tiny-clip image tower with two toy blocks appended: every sum adds the toy's share."""
    spec = get_model("tiny-clip")
    base = tower_layers(spec.vision, spec.embed_dim)
    toy = (ToyMLP("toy.blocks.0", S, D, H), ToyMLP("toy.blocks.1", S, D, H))
    layers = (*base, *toy)
    fc = 2 * S * D * H  # one linear per sample, forward

    assert layers_params(layers) == vision_params(spec.vision, spec.embed_dim) + 2 * (
        H * D + H + D * H + D
    )
    assert layer_flops(toy[0]).kind == "block" and layer_flops(toy[0]).mlp == 2 * fc
    assert layers_forward_flops(layers) == layers_forward_flops(base) + 2 * 2 * fc
    assert layers_train_flops(layers) == layers_train_flops(base) + 2 * 3 * 2 * fc
    # checkpointing re-runs the toy's whole forward (its default recompute)
    extra = layers_train_flops(layers, recompute=True) - layers_train_flops(base, recompute=True)
    assert extra == 2 * 4 * 2 * fc

    units = layers_units("visual", layers, B, lambda: OpList("bf16", 2), checkpointing=True)
    assert [u.name for u in units[-2:]] == ["toy.blocks.0", "toy.blocks.1"]
    toy_unit = units[-1]
    assert sum(o.flops for o in toy_unit.forward) == B * 2 * fc
    assert sum(o.flops for o in toy_unit.backward if o.phase == "recompute") == B * 2 * fc

    plain = layers_activations(layers, B, 2, checkpointing=False)
    ckpt = layers_activations(layers, B, 2, checkpointing=True)
    base_plain = layers_activations(base, B, 2, checkpointing=False)
    assert plain.kept == base_plain.kept + 2 * 2 * B * S * (D + 2 * H)
    toy_peak = 2 * B * S * 2 * H  # its saved tensors less its input, in bf16
    assert ckpt.recompute == max(layers_activations(base, B, 2, True).recompute, toy_peak)


@pytest.mark.parametrize("name", list_models())
def test_model_sums_are_sums_over_model_layers(name):
    spec = get_model(name)
    layers = model_layers(spec)
    assert count_params(spec).total == sum(layer.params() for layer in layers)
    assert {type(x).kind for x in layers} <= set(LAYER_KINDS)
    v = spec.vision
    blocks = v.num_blocks if v.kind == "resnet" else v.trunk.depth
    assert [x.role for x in layers.image].count("block") == blocks


# --- the toy against torch, as every real kind is held ---------------------------------------


def _torch_toy():
    torch = pytest.importorskip("torch")

    class TorchToy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(D, H), torch.nn.Linear(H, D)

        def forward(self, x):
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(x)))

    return torch, TorchToy()


def test_the_toy_equals_torch_params_and_flops():
    torch, module = _torch_toy()
    from torch.utils.flop_counter import FlopCounterMode

    assert sum(p.numel() for p in module.parameters()) == TOY.params()
    x = torch.randn(B, S, D, requires_grad=True)
    forward, train = FlopCounterMode(display=False), FlopCounterMode(display=False)
    with forward:
        module(x)
    with train:
        module(x).sum().backward()
    fwd = _fp32_ops(lambda ops: TOY.forward_ops(ops, B))
    bwd = _fp32_ops(lambda ops: TOY.backward_ops(ops, B))
    assert forward.get_total_flops() == sum(o.flops for o in fwd)
    assert train.get_total_flops() == sum(o.flops for o in [*fwd, *bwd])


def test_the_toy_equals_torch_saved_tensors():
    torch, module = _torch_toy()
    excluded = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in excluded:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(B, S, D, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    assert sum(storages.values()) == TOY.saved(B).nbytes(4)


@pytest.mark.parametrize("name", list_models())
def test_unit_params_from_layers_equal_memory_units(name):
    from vlscale.costs.memory import fsdp_units
    from vlscale.costs.params import unit_params

    pytest.importorskip("torch")
    from models import build_model

    spec = get_model(name)
    units = unit_params(spec)
    assert units == fsdp_units(spec) and list(units) == list(fsdp_units(spec))
    # each unit's count is the torch module's as the trainer wraps it (trainer.parallelize):
    # every block, every head unit (the ResNet's attention pool), each tower less those, the root
    from trainer.parallelize import head_units

    model = build_model(spec, device="meta")

    def numel(module):
        return sum(p.numel() for p in module.parameters())

    heads = {id(h) for h in head_units(model)}
    measured = {}
    for unit, tower in (("visual", model.visual), ("text", model.text)):
        measured |= {f"{unit}.blocks.{i}": numel(b) for i, b in enumerate(tower.blocks)}
        measured |= {f"{unit}.{n}": numel(m) for n, m in tower.named_children() if id(m) in heads}
    for unit, tower in (("visual", model.visual), ("text", model.text)):
        own = [m for _, m in tower.named_children() if id(m) in heads]
        measured[unit] = numel(tower) - sum(numel(m) for m in [*tower.blocks, *own])
    measured["root"] = numel(model) - numel(model.visual) - numel(model.text)
    assert units == measured
    ops = unit_ops(spec, local_batch=1, mask_ratio=0.0, precision="bf16", checkpointing=False)
    assert {u.name for u in ops} == set(units) - {"root"}
