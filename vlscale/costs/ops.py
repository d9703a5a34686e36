"""The op list of a training step: every kernel one rank runs, with its shape, FLOPs and bytes.

This is where the planner's compute comes from (``vlscale.costs.compute`` prices each op). The
ops of a model are the layers' own (``vlscale.costs.layers``: each layer kind lists its forward
and backward kernels with their formulas), grouped into the FSDP units ``trainer.parallelize``
wraps:

    "<tower>.blocks.i"   one block: forward; backward = [checkpoint recompute] + its backward
    "<tower>"            the tower's other layers (stem, pool, projection): forward in layer
                         order, backward in reverse layer order

in forward order: the image tower's own unit, its blocks, the text tower's unit, its blocks.
Per unit the forward FLOPs equal that unit's ``vlscale.costs.flops`` FLOPs times the batch
exactly (tests/test_ops.py, every preset and mask ratio).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vlscale.costs.layers import Layer, TransformerBlock, is_unit, model_layers
from vlscale.costs.layers.primitives import Op, OpKind, OpList, Phase
from vlscale.specs.models import ModelSpec
from vlscale.specs.towers import TrunkSpec

__all__ = ["Op", "OpKind", "OpList", "Phase", "UnitOps", "block_ops", "layers_units", "unit_ops"]


@dataclass(frozen=True)
class UnitOps:
    """One FSDP unit's ops: forward, and backward (AC recompute included when on)."""

    name: str
    forward: tuple[Op, ...]
    backward: tuple[Op, ...]


def block_ops(
    ops: OpList,
    name: str,
    t: TrunkSpec,
    b: int,
    s: int,
    *,
    causal: bool,
    rope: bool,
    phase: Phase = "forward",
    early_stop: bool = False,
) -> None:
    """Forward (or recompute) ops of one block over b·S tokens (``layers.block``)."""
    block = TransformerBlock(name, t, s, causal=causal, rope=rope)
    block.forward_ops(ops, b, phase, early_stop=early_stop)


def layers_units(
    tower: str,
    layers: tuple[Layer, ...],
    b: int,
    new: Callable[[], OpList],
    checkpointing: bool,
    trainable: frozenset[tuple[str, str]] | None = None,
) -> list[UnitOps]:
    """The FSDP units of one tower's ``layers``: its own unit (every layer that is not a block)
    first, then one unit per block. ``new()`` makes an empty op list in the compute dtype.
    ``trainable`` (locked towers, ``vlscale.costs.locks``): the other layers have no backward
    (and, locked, are not checkpointed: they save nothing to recompute)."""

    def trains(layer: Layer) -> bool:
        return trainable is None or (layer.name, layer.kind) in trainable

    rest = [layer for layer in layers if not is_unit(layer)]
    forward, backward = new(), new()
    for layer in rest:
        layer.forward_ops(forward, b)
    for layer in reversed(rest):
        if trains(layer):
            layer.backward_ops(backward, b)
    units = [UnitOps(tower, tuple(forward), tuple(backward))]
    for unit in (layer for layer in layers if is_unit(layer)):
        forward, backward = new(), new()
        unit.forward_ops(forward, b)
        if trains(unit):
            if checkpointing and unit.role == "block":  # only blocks are checkpointed
                unit.recompute_ops(backward, b)
            unit.backward_ops(backward, b)
        units.append(UnitOps(unit.unit_name, tuple(forward), tuple(backward)))
    return units


def unit_ops(
    spec: ModelSpec,
    *,
    local_batch: int,
    mask_ratio: float,
    precision: str,
    checkpointing: bool,
    trainable: frozenset[tuple[str, str]] | None = None,
) -> list[UnitOps]:
    """Every FSDP unit of the model in forward order (``trainer.parallelize``'s wrapping): the
    image tower's own unit (stem before the blocks, pool and projection after), its blocks, then
    the text tower's unit and blocks. ``trainable``: see :func:`layers_units`."""
    a = 2 if precision in ("bf16", "fp16") else 4
    dtype = "fp32" if precision == "tf32" else precision

    def new() -> OpList:
        return OpList(dtype, a)

    units: list[UnitOps] = []
    for tower, layers in model_layers(spec, mask_ratio).towers:
        units += layers_units(tower, layers, local_batch, new, checkpointing, trainable)
    return units
