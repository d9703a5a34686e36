"""Locked towers: which layers of a model train, as OpenCLIP's ``lock_image_tower`` /
``lock_text_tower`` decide (LiT, Zhai et al. 2022; SigLiT, Zhai et al. 2023).

``--lock-image`` freezes every parameter of the image tower; ``--lock-image-unlocked-groups N``
then leaves the LAST N of its layer groups trainable. The groups are OpenCLIP's
(``VisionTransformer.lock``; ``lock_text_tower`` for the text tower with
``--lock-text-unlocked-layers``), written over this repository's layers
(``vlscale.costs.layers``; torch modules of the same names in ``models/``)::

    group 0        the stem (patch conv, class token, positions, ln_pre | token and position
                   embeddings)
    groups 1..d-1  blocks 0 .. d-2, one group each
    group d        the last block with the final norm and pooling head (OpenCLIP: ln_post /
                   ln_final; a SigLIP MAP head goes here too, OpenCLIP leaves attn_pool locked)
    group d+1      the projection (absent when the tower has none)

so a tower of depth d has d + 2 groups (d + 1 without a projection), N = 1 unlocks the
projection only, and N >= the group count unlocks the tower (more is an error here; OpenCLIP's
slice would clamp it). A ResNet tower locks whole or not at all (OpenCLIP's ``ModifiedResNet``
asserts ``unlocked_groups == 0``).

A locked layer has no gradients, no optimizer state, no master copy and saves no activations:
nothing upstream of it requires grad, so autograd records nothing (``trainer.locks``). The
planner drops its backward ops; an FSDP unit whose parameters are all locked neither
reduce-scatters (all-reduces) nor re-gathers in backward. Locked parameters stay sharded like
the rest and are gathered for the forward (``trainer/parallelize.py`` says why).
"""

from __future__ import annotations

from vlscale.costs.layers import Layer, is_unit, model_layers
from vlscale.errors import ConfigError
from vlscale.specs.layout import RunLayout
from vlscale.specs.models import ModelSpec

TOWER_LOCKS = {  # tower unit name -> (lock field, unlocked-groups field, CLI tower name)
    "visual": ("lock_image", "lock_image_unlocked_groups", "image"),
    "text": ("lock_text", "lock_text_unlocked_layers", "text"),
}


def lock_groups(layers: tuple[Layer, ...]) -> list[list[Layer]]:
    """OpenCLIP's layer groups of one tower, first to last (module docstring)."""
    stem = [x for x in layers if x.role == "stem"]
    blocks = [x for x in layers if x.role == "block"]
    head = [x for x in layers if x.role == "head"]
    proj = [x for x in layers if x.role == "proj" and x.params() > 0]
    groups = [stem, *([b] for b in blocks[:-1]), [*blocks[-1:], *head]]
    return groups + ([proj] if proj else [])


def check_locks(spec: ModelSpec, layout: RunLayout) -> None:
    """The unlocked group counts fit the towers; ResNet towers lock whole; batch-norm
    statistics exist to freeze. One ConfigError naming the field."""
    for unit, (_, field, name) in TOWER_LOCKS.items():
        n = getattr(layout, field)
        if not n:
            continue
        kind = getattr(spec.vision if unit == "visual" else spec.text, "kind", "vit")
        if kind == "resnet":
            raise ConfigError(field, "a ResNet tower locks whole (as OpenCLIP); drop the flag")
        count = len(lock_groups(dict(model_layers(spec).towers)[unit]))
        if n > count:
            raise ConfigError(
                field,
                f"{n} but the {name} tower of {spec.name} has {count} groups; use at most "
                f"{count}, or drop --lock-{name}",
            )
    if layout.lock_image_freeze_bn_stats and getattr(spec.vision, "kind", "vit") != "resnet":
        raise ConfigError(
            "lock_image_freeze_bn_stats",
            f"the image tower of {spec.name} has no batch norm (a ResNet tower has); drop it",
        )


LayerKey = tuple[str, str]


def layer_key(layer: Layer) -> LayerKey:
    """(name, kind): unique within a model (layers compare equal by cost, not by name)."""
    return layer.name, layer.kind


def trainable_layers(
    spec: ModelSpec, layout: RunLayout, mask_ratio: float = 0.0
) -> frozenset[LayerKey]:
    """The keys of the layers whose parameters train under ``layout``'s locks."""
    check_locks(spec, layout)
    out: set[LayerKey] = set()
    for unit, layers in model_layers(spec, mask_ratio).towers:
        lock, field, _ = TOWER_LOCKS[unit]
        groups = lock_groups(layers) if getattr(layout, lock) else [list(layers)]
        n = getattr(layout, field) if getattr(layout, lock) else len(groups)
        for group in groups[len(groups) - n :] if n else []:
            out.update(layer_key(x) for x in group)
    return frozenset(out)


def is_trainable(layer: Layer, trainable: frozenset[LayerKey] | None) -> bool:
    """``trainable`` None means nothing is locked."""
    return trainable is None or layer_key(layer) in trainable


def trainable_unit_params(spec: ModelSpec, layout: RunLayout) -> dict[str, int]:
    """Trainable parameters per FSDP unit, in ``memory.fsdp_units``' names and order (blocks,
    tower rests, the root's logit_scale / logit_bias, which always train)."""
    layers = model_layers(spec)
    trainable = trainable_layers(spec, layout) if layout.locks else None
    units: dict[str, int] = {}
    for _, tower in layers.towers:
        units |= {
            x.unit_name: x.params() if is_trainable(x, trainable) else 0
            for x in tower
            if is_unit(x)
        }
    for name, tower in layers.towers:
        units[name] = sum(
            x.params() for x in tower if not is_unit(x) and is_trainable(x, trainable)
        )
    units["root"] = layers.loss.params()
    return units


def synced_unit_params(spec: ModelSpec, layout: RunLayout) -> dict[str, int]:
    """Parameters whose gradients each unit of the planner's step synchronises
    (``vlscale.plan.workload_builder``: the root's two scalars ride with the image tower's
    unit); 0 marks a frozen unit. With the image tower locked the root's few bytes of gradient
    sync are left out, so that the tower's unit is frozen."""
    units = trainable_unit_params(spec, layout)
    root = units.pop("root")
    if units["visual"]:
        units["visual"] += root
    return units


def trainable_shapes(spec: ModelSpec, layout: RunLayout) -> list[tuple[int, ...]]:
    """Parameter shapes of the trainable layers (for the optimizer state)."""
    trainable = trainable_layers(spec, layout) if layout.locks else None
    shapes: list[tuple[int, ...]] = []
    for layer in model_layers(spec):
        if layer.role == "loss" or is_trainable(layer, trainable):
            shapes += layer.param_shapes()
    return shapes


def image_forward_flops(spec: ModelSpec) -> float:
    """The image tower's forward FLOPs per sample, whole images (what ``trainer.embed`` runs
    once per sample for precomputed embeddings; a locked tower's share of model FLOPs)."""
    from vlscale.costs.flops import layers_forward_flops

    return layers_forward_flops(model_layers(spec).image)


def locked_state(layout: RunLayout) -> dict[str, str | int]:
    """``plan --json``'s ``locked``: per tower "all", "none" or the number of unlocked groups."""
    out: dict[str, str | int] = {}
    for lock, field, name in TOWER_LOCKS.values():
        n = getattr(layout, field)
        out[name] = "none" if not getattr(layout, lock) else (n if n else "all")
    return out
