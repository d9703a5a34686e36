"""Memory in the old terms of shard degree and world size, for tests written in them: the
RunLayout (ddp / fsdp / hsdp) and the RecipeSpec that ``estimate_memory`` takes."""

from __future__ import annotations

from vlscale.costs.memory import DEFAULT_OVERHEAD_BYTES, MemoryBreakdown, estimate_memory
from vlscale.specs.layout import RunLayout
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import RecipeSpec


def layout_for(shard_degree: int, world_size: int, precision: str = "bf16", **fields) -> RunLayout:
    """s = W: fsdp; s = 1 < W: ddp; else hsdp with shard size s (resolved, one node).
    ``sharding="hsdp"`` in ``fields`` forces hsdp whatever s (s = 1 and s = W included)."""
    if fields.get("sharding") == "hsdp":
        sharding = {"sharding": fields.pop("sharding"), "shard_size": shard_degree}
    elif shard_degree == world_size:
        sharding = {"sharding": "fsdp"}
    elif shard_degree == 1:
        sharding = {"sharding": "ddp"}
    else:
        sharding = {"sharding": "hsdp", "shard_size": shard_degree}
    layout = RunLayout(devices=world_size, precision=precision, **sharding, **fields)
    return layout.resolved(precision, world_size)


def recipe_for(
    loss: str = "softmax", loss_impl: str = "gather", optimizer: str = "adamw", mask_ratio=0.0
) -> RecipeSpec:
    name = "clip" if loss == "softmax" else "siglip"
    return RecipeSpec(name=name, loss_impl=loss_impl, optimizer=optimizer, mask_ratio=mask_ratio)


def memory(
    spec: ModelSpec,
    *,
    local_batch: int,
    shard_degree: int,
    world_size: int,
    precision: str = "bf16",
    optimizer: str = "adamw",
    checkpointing: bool = False,
    mask_ratio: float = 0.0,
    loss: str = "softmax",
    loss_impl: str = "gather",
    reshard_after_forward: bool = True,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
    sharding: str | None = None,
) -> MemoryBreakdown:
    """``estimate_memory`` of the layout :func:`layout_for` builds (``sharding="hsdp"`` to
    force HSDP) and the recipe of ``loss`` / ``loss_impl`` / ``optimizer`` / ``mask_ratio``."""
    forced = {"sharding": sharding} if sharding else {}
    layout = layout_for(
        shard_degree,
        world_size,
        precision,
        checkpointing=checkpointing,
        reshard_after_forward=reshard_after_forward,
        **forced,
    )
    recipe = recipe_for(loss, loss_impl, optimizer, mask_ratio)
    return estimate_memory(
        spec, layout, recipe, local_batch=local_batch, overhead_bytes=overhead_bytes
    )
