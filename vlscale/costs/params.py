"""Parameter tensors and counts: sums over a model's layers (``vlscale.costs.layers``), whose
``param_shapes`` are the one place the architecture's parameters are written down, exactly as
the torch modules in ``models/`` allocate them. The memory model (sharding, Adafactor's factored
statistics) reads the same shapes.

    image tower   PatchEmbed + L · TransformerBlock + pool (final norm [+ MAP head]) + proj
                  (ResNet: ResNetStem + Σ layers · ResNetBottleneck + ResNetAttentionPool;
                  batch-norm weights and biases are parameters, running statistics buffers)
    text tower    TextEmbed + L · TransformerBlock + TextPool (final norm) + proj
    total         image + text + logit_scale and logit_bias (the loss layer's, ``LOGIT_PARAMS``)

For example the ViT-B-32 image tower: stem 3·32²·768 + cls 768 + positions 50·768 + ln_pre
2·768 + 12 blocks · 7,087,872 + final norm 2·768 + proj 768·512 = 87,849,216, OpenCLIP's count
(``tests/published``). ``tests/test_params_match.py`` holds every count equal to the torch
modules' ``numel``; ``tests/test_activation_memory_torch.py`` the shapes to their shapes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from vlscale.costs.layers import (
    Layer,
    Shape,
    TransformerBlock,
    is_unit,
    map_head_shapes,
    model_layers,
    runs,
    tower_layers,
)
from vlscale.specs.models import ModelSpec
from vlscale.specs.towers import TextTowerSpec, TrunkSpec, VisionTowerSpec


def numel(shapes) -> int:
    """Elements of all ``shapes``: Σ Π dims."""
    return sum(math.prod(shape) for shape in shapes)


def layers_params(layers: Iterable[Layer]) -> int:
    """Parameters of a list of layers: Σ over the layers of Σ Π dims."""
    return sum(count * layer.params() for layer, count in runs(layers))


def parameter_shapes(spec: ModelSpec) -> list[Shape]:
    """Shapes of every parameter tensor of the model: image tower, text tower, then the root's
    logit_scale and logit_bias (``tests/test_activation_memory_torch.py`` checks the list)."""
    return list(_parameter_shapes(spec))


@cache
def _parameter_shapes(spec: ModelSpec) -> tuple[Shape, ...]:
    shapes = []
    for layer, count in runs(model_layers(spec)):
        shapes += layer.param_shapes() * count
    return tuple(shapes)


@cache
def block_params(t: TrunkSpec) -> int:
    """One transformer block (every block of a trunk is the same; tokens do not matter)."""
    return TransformerBlock("block", t, 1).params()


def map_head_params(t: TrunkSpec) -> int:
    """The attention-pooling head (``model.visual.head``), without the final norm."""
    return numel(map_head_shapes(t))


@cache
def vision_params(v: VisionTowerSpec, embed_dim: int) -> int:
    """All parameters of the image tower (patch stem, tokens, positions, trunk, pooling, proj)."""
    return layers_params(tower_layers(v, embed_dim))


@cache
def text_params(tx: TextTowerSpec, embed_dim: int) -> int:
    """Token and position embeddings, trunk, final norm and projection."""
    return layers_params(tower_layers(tx, embed_dim))


@dataclass(frozen=True)
class ParamCount:
    image: int
    text: int
    total: int


@cache
def count_params(spec: ModelSpec) -> ParamCount:
    """Image, text and total parameters (total adds the loss layer's logit_scale, logit_bias)."""
    layers = model_layers(spec)
    image, text = layers_params(layers.image), layers_params(layers.text)
    return ParamCount(image=image, text=text, total=image + text + layers.loss.params())


def unit_params(spec: ModelSpec) -> dict[str, int]:
    """Parameters per FSDP unit by name, from the layers (``ops.layers_units`` groups the same
    way): every block of both towers, each tower's other layers ("visual", "text"), then the
    root ("root": the loss layer's logit_scale and logit_bias) — ``memory.fsdp_units``' order."""
    layers = model_layers(spec)
    units: dict[str, int] = {}
    for _, tower in layers.towers:
        units |= {x.unit_name: x.params() for x in tower if is_unit(x)}
    for name, tower in layers.towers:
        units[name] = layers_params(x for x in tower if not is_unit(x))
    units["root"] = layers.loss.params()
    return units
