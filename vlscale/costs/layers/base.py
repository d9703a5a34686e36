"""One object per layer kind, and the registry of kinds.

A :class:`Layer` (after Calculon's ``llm/layers.py``) says everything the cost model needs about
one piece of a model, for a local batch of b samples:

    param_shapes()              its parameter tensors, as ``models/`` allocates them
    forward_ops(ops, b)         its kernels in forward order (``primitives.OpList``)
    backward_ops(ops, b)        autograd's kernels for it, in backward order
    saved(b)                    the tensors it keeps for backward (``primitives.Saved``)

A model is a list of layers (``vlscale.costs.layers.towers.model_layers``); its parameters,
FLOPs, op list and activation memory are sums over that list (``vlscale.costs.params``,
``flops``, ``ops``, ``activations``).

``role`` places a layer in those sums: "block" layers are the repeated units — each its own
FSDP unit (``trainer.parallelize`` wraps every block), each an activation-checkpointing region
and the layers whose FLOPs scale with tokens; "stem", "head" and "proj" layers belong to their
tower's own FSDP unit; "loss" is the contrastive loss (the root's parameters).

Activation checkpointing (``torch.utils.checkpoint``, non-reentrant, one region per block)
keeps only a block's input (``checkpoint_saved``) until backward, then recomputes the block
(``recompute_ops``) and holds its saved tensors, less that input, while it runs backward.

A new kind is one subclass that names itself, ``class ResNetBottleneck(Layer, kind=
"resnet_bottleneck", role="block")``: that registers it in ``LAYER_KINDS``. A new kind of tower
spec (a ResNet image tower) adds its builder with ``towers.tower_layers.register``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import ClassVar, Literal, dataclass_transform

from vlscale.costs.layers.primitives import OpList, Phase, Saved, Shape

Role = Literal["stem", "block", "head", "proj", "loss"]
ROLES: tuple[Role, ...] = ("stem", "block", "head", "proj", "loss")

LAYER_KINDS: dict[str, type[Layer]] = {}


@dataclass_transform(frozen_default=True)
@dataclass(frozen=True)
class Layer(ABC):
    """One layer of a model. Subclasses are frozen dataclasses (made so here) holding what they
    need from the spec (widths, token counts); ``name`` is the module path its ops are named
    under, a label only: layers that differ in name alone cost the same and compare equal.
    ``class X(Layer, kind="x", role="block")`` registers the kind ``x``."""

    kind: ClassVar[str] = ""
    role: ClassVar[Role]
    # a layer other than a block that is an FSDP unit of its own (``is_unit``)
    own_unit: ClassVar[bool] = False
    name: str = field(compare=False)

    @property
    def unit_name(self) -> str:
        """The FSDP unit's name when the layer is one (``is_unit``): the torch module's path."""
        return self.name

    def __init_subclass__(cls, kind: str = "", role: Role | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        dataclass(frozen=True)(cls)
        if kind:
            _register(cls, kind, role)

    @abstractmethod
    def param_shapes(self) -> list[Shape]:
        """Shapes of its parameter tensors, in the order the torch module registers them."""

    @abstractmethod
    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        """Append its forward kernels (``phase`` "recompute" when checkpointing re-runs it)."""

    @abstractmethod
    def backward_ops(self, ops: OpList, b: int) -> None:
        """Append autograd's kernels for it, in backward order."""

    @abstractmethod
    def saved(self, b: int) -> Saved:
        """Everything it saves for backward, its input included."""

    def recompute_ops(self, ops: OpList, b: int, early_stop: bool = True) -> None:
        """What checkpointing re-runs in backward: by default the whole forward (a block whose
        last op's output nothing saves overrides this to stop early, as torch does)."""
        self.forward_ops(ops, b, "recompute")

    def checkpoint_saved(self, b: int) -> Saved:
        """What a checkpoint keeps for a block until backward: its input."""
        raise NotImplementedError(f"{self.kind} is a block: say what its checkpoint keeps")

    def params(self) -> int:
        """Σ Π dims over its parameter shapes."""
        return sum(math.prod(shape) for shape in self.param_shapes())

    def kept(self, b: int, checkpointing: bool) -> Saved:
        """Saved until backward: everything, or only the input of a checkpointed block."""
        if checkpointing and self.role == "block":
            return self.checkpoint_saved(b)
        return self.saved(b)

    def recompute_saved(self, b: int, checkpointing: bool) -> Saved:
        """Held on top of ``kept`` while the recomputed block runs backward (0 otherwise)."""
        if checkpointing and self.role == "block":
            return self.saved(b) - self.checkpoint_saved(b)
        return Saved()


def runs(layers: Iterable[Layer]) -> Iterator[tuple[Layer, int]]:
    """(layer, how many times it repeats in a row): a tower's L equal blocks are costed once."""
    for layer, run in groupby(layers):
        yield layer, sum(1 for _ in run)


def _register(cls: type[Layer], kind: str, role: Role | None) -> None:
    """Make ``cls`` the layer kind ``kind`` (a new name) in ``role``."""
    if kind in LAYER_KINDS:
        raise ValueError(f"{cls.__name__}: layer kind '{kind}' is already {LAYER_KINDS[kind]}")
    if role not in ROLES:
        raise ValueError(f"{cls.__name__}: role must be one of {ROLES}, got {role!r}")
    if role == "block" and cls.checkpoint_saved is Layer.checkpoint_saved:
        raise ValueError(f"{cls.__name__}: a block must say what its checkpoint keeps")
    cls.kind, cls.role = kind, role
    LAYER_KINDS[kind] = cls


def is_unit(layer: Layer) -> bool:
    """Whether ``layer`` is an FSDP unit of its own (``trainer.parallelize`` wraps it): every
    block, and a layer that says so (the ResNet's attention pool); the tower's other layers
    share the tower's unit."""
    return layer.role == "block" or layer.own_unit
