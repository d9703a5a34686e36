"""``vlscale tune``: search the layout space of a run and rank the layouts that fit.

For a model, a recipe, a device, one or more device counts and the samples to see, every
candidate layout (:func:`layout_candidates`) is planned on the sweep backends
(``vlscale.plan.sweep.iter_rows``: this process, a process pool or a Dask cluster) and the
results are ranked.

The layout space, per device count W at the fixed global batch B (local batch b = B / W):

    sharding         ddp, fsdp, and hsdp with every valid shard size (the divisors of W strictly
                     between 1 and W, ``vlscale.specs.layout.hsdp_shard_sizes``) — hsdp only when
                     the cluster's nodes allow (``hsdp_shard_sizes``)
    resharding       after forward on / off (fsdp and hsdp; DDP never reshards)
    checkpointing    on / off
    accumulation     grad_accum = 1, 2, 4, ... dividing b (micro-batch b / grad_accum)
    loss             gather, and ring where the recipe allows it (siglip, siglip2)

Default global batch (no ``global_batch``): the recipe's paper batch, :data:`PAPER_BATCH`,
rounded per device count to the nearest multiple of W.

Ranking. A layout is *feasible* when it fits in device memory, its wall time is within the
deadline (if one is given) and its cost within the budget (if one is given). Feasible layouts
are ranked by cost, then wall time, then the order of the search — the cheapest run that meets
the deadline and the budget comes first. Layouts that do not fit are never returned; they, and
those past the deadline or budget, are counted in the :class:`TuneSummary`.

What binds a layout (``binding``), from its plan, in this order:

    memory         it fits with less than 10 % of device memory left, or it only fits because
                   of checkpointing or accumulation: the same sharding, resharding and loss
                   without checkpointing and with grad_accum = 1 does not fit
    communication  the exposed communication of the simulated (synchronising) micro-step — the
                   plan's breakdown all_gather + reduce_scatter + all_reduce + p2p — exceeds its
                   compute
    compute        otherwise
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from vlscale.errors import ConfigError
from vlscale.specs.layout import hsdp_shard_sizes
from vlscale.specs.recipes import SIGMOID_RECIPES

# Paper global batches: CLIP 32,768 (Radford et al. 2021, §2.5); SigLIP 32,768 (Zhai et al.
# 2023, §4: "a batch size of 32k is enough"); EVA-CLIP 131,072 (Sun et al. 2023, EVA-02-CLIP
# B/16 and L/14).
PAPER_BATCH: dict[str, int] = {
    "clip": 32_768,
    "siglip": 32_768,
    "eva-clip": 131_072,
    "siglip2": 32_768,  # Tschannen et al. 2025, section 3: batch 32k
}
MEMORY_HEADROOM = 0.10  # less than this fraction of device memory left: memory binds
COMM_KINDS = ("all_gather", "reduce_scatter", "all_reduce", "p2p")
BINDINGS = ("compute", "communication", "memory")


@lru_cache(maxsize=1)
def grad_accum_choices(local_batch: int, most: int | None = None) -> list[int]:
    """1, 2, 4, ... up to ``local_batch`` (and ``most``), those that divide it."""
    out, k = [], 1
    while k <= min(local_batch, most or local_batch):
        if local_batch % k == 0:
            out.append(k)
        k *= 2
    return out


def sharding_choices(
    devices: int, devices_per_node: int | None = None, hsdp: bool = True
) -> list[dict[str, Any]]:
    """The sharding and resharding keys of every candidate on ``devices`` ranks: DDP, FSDP and
    HSDP at every shard size the planner takes (with a node size: those that divide a node or
    are whole nodes, ``RunLayout``'s ``hsdp_shard_sizes``)."""
    out: list[dict[str, Any]] = [{"sharding": "ddp"}]
    sharded = [{"sharding": "fsdp"}]
    if hsdp:
        sizes = hsdp_shard_sizes(devices, devices_per_node)
        sharded += [{"sharding": "hsdp", "shard_size": s} for s in sizes]
    for keys in sharded:
        out += [keys | {"reshard_after_forward": r} for r in (True, False)]
    return out


def layout_candidates(
    devices: int,
    global_batch: int,
    recipe: str,
    devices_per_node: int | None = None,
    hsdp: bool = True,
    max_grad_accum: int | None = None,
) -> list[dict[str, Any]]:
    """Every layout searched on ``devices`` ranks (module docstring), as flat ``PlanConfig``
    keys; the one place the search space is written."""
    if global_batch % devices:
        raise ConfigError(
            "global_batch",
            f"{global_batch} is not divisible by devices={devices}; use a multiple of {devices}",
        )
    impls = ["gather", "ring"] if recipe in SIGMOID_RECIPES else ["gather"]
    return [
        {"devices": devices, "global_batch": global_batch}
        | shard
        | {"checkpointing": ckpt, "grad_accum": k, "loss_impl": impl}
        for shard in sharding_choices(devices, devices_per_node, hsdp)
        for ckpt in (False, True)
        for k in grad_accum_choices(global_batch // devices, max_grad_accum)
        for impl in impls
    ]


def default_global_batch(recipe: str, devices: int) -> int:
    """The recipe's paper batch, rounded to the nearest multiple of ``devices`` (at least one
    sample per device)."""
    return max(1, round(PAPER_BATCH[recipe] / devices)) * devices


@dataclass(frozen=True)
class TuneRequest:
    """What ``vlscale tune`` searches for (module docstring)."""

    model: str
    recipe: str
    device: str
    devices: tuple[int, ...]
    samples: int
    global_batch: int | None = None
    deadline_h: float | None = None
    budget_usd: float | None = None
    top: int = 10
    base: dict[str, Any] = field(default_factory=dict)  # other PlanConfig keys, every point
    # TPU: the slice torus; without ``num_slices`` in ``base``, each device count is as many
    # slices of this shape as it takes (2,048 v5e chips of 16x16: 8 slices)
    slice_shape: str | None = None

    def __post_init__(self) -> None:
        if not self.devices:
            raise ConfigError("devices", "give at least one device count, e.g. --devices 256")
        for n in self.devices:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError("devices", f"{n!r} is not a number of devices; use 1 or more")
        if isinstance(self.top, bool) or not isinstance(self.top, int) or self.top < 1:
            raise ConfigError("top", f"{self.top!r}: list at least 1 layout, e.g. --top 10")
        for name in ("deadline_h", "budget_usd"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(name, f"must be a positive finite number, got {value}")
        if self.recipe not in PAPER_BATCH:
            raise ConfigError("recipe", f"unknown recipe '{self.recipe}'; use {list(PAPER_BATCH)}")

    def points(self) -> list[dict[str, Any]]:
        """Every point to plan: the base keys with one candidate layout each."""
        base = self.base | {
            "model": self.model,
            "recipe": self.recipe,
            "device": self.device,
            "samples": self.samples,
        }
        out = []
        for n in dict.fromkeys(self.devices):  # each device count once, in the order given
            batch = self.global_batch or default_global_batch(self.recipe, n)
            cluster = base | self._slices(n)
            node = node_size(cluster | {"devices": n, "global_batch": batch})
            out += [cluster | layout for layout in layout_candidates(n, batch, self.recipe, node)]
        return out

    def _slices(self, n: int) -> dict[str, Any]:
        """The TPU slice keys for ``n`` chips: the shape, and unless ``base`` fixes it the
        number of slices of that shape ``n`` makes (a ConfigError when it is not whole)."""
        if self.slice_shape is None:
            return {}
        from vlscale.specs.torus import parse_slice_shape

        try:
            chips = math.prod(parse_slice_shape(self.slice_shape))
        except ValueError as err:
            raise ConfigError("slice_shape", str(err)) from None
        if "num_slices" in self.base:
            return {"slice_shape": self.slice_shape}
        if n % chips:
            raise ConfigError(
                "devices",
                f"{n} chips are not whole {self.slice_shape} slices ({chips} chips each); "
                f"use a multiple of {chips}",
            )
        return {"slice_shape": self.slice_shape, "num_slices": n // chips}


def node_size(point: dict[str, Any]) -> int:
    """The island of the cluster ``point`` plans on (a GPU node, a TPU slice): the unit a shard
    group must divide or be whole copies of (``vlscale.costs.topology.check_shard_size``)."""
    from vlscale.plan.config import make_plan_config
    from vlscale.plan.planner import resolve

    _, _, cluster = resolve(make_plan_config(point))
    return cluster.slice_size


@dataclass(frozen=True)
class TuneSummary:
    """How the search went: layouts planned, invalid (planner refused), not fitting, past the
    deadline, over the budget, and feasible."""

    layouts: int
    invalid: int
    not_fitting: int
    past_deadline: int
    over_budget: int
    feasible: int

    def line(self) -> str:
        return (
            f"tune: {self.layouts} layouts, {self.feasible} feasible; {self.not_fitting} do not "
            f"fit, {self.past_deadline} miss the deadline, {self.over_budget} exceed the "
            f"budget, {self.invalid} invalid"
        )


@dataclass(frozen=True)
class TuneResult:
    best: list[dict[str, Any]]  # the ``vlscale tune --json`` items, best first
    summary: TuneSummary
    first_error: str | None = None


_LAYOUT_KEYS = (
    "devices",
    "sharding",
    "shard_size",
    "reshard_after_forward",
    "checkpointing",
    "grad_accum",
)


def tune(
    request: TuneRequest,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
) -> TuneResult:
    """Plan every candidate on the sweep backends and rank them (module docstring)."""
    from vlscale.plan.sweep import iter_rows

    points = request.points()
    check_points(points)
    rows = [
        row
        for chunk in iter_rows(points, progress=progress, workers=workers, scheduler=scheduler)
        for row in chunk
    ]
    return rank_rows(rows, request)


def check_points(points: Sequence[dict[str, Any]]) -> None:
    """Resolve the model, recipe and cluster of the first point of each device count, so that a
    bad name fails before any work with its own field (ConfigError)."""
    from vlscale.plan.config import make_plan_config
    from vlscale.plan.planner import resolve

    seen: set[int] = set()
    for point in points:
        if point["devices"] not in seen:
            seen.add(point["devices"])
            resolve(make_plan_config(point))


def rank_rows(rows: Sequence[dict[str, Any]], request: TuneRequest) -> TuneResult:
    """Rank sweep rows (``vlscale.plan.sweep.plan_point``) of the candidates (module docstring)."""
    planned = [r for r in rows if r.get("error") is None]
    errors = [r["error"] for r in rows if r.get("error") is not None]
    if not planned:  # a bad model or device, not a result
        first = errors[0] if errors else "the search has no layouts"
        raise ConfigError("tune", f"no layout could be planned; the first says: {first}")
    fitting_plain = {_family(r) for r in planned if _plain(r) and r["fits"]}
    fitting = [r for r in planned if r["fits"]]
    deadline, budget = request.deadline_h, request.budget_usd
    on_time = [r for r in fitting if deadline is None or r["wall_time_h"] <= deadline]
    affordable = [r for r in on_time if budget is None or r["cost_usd"] <= budget]
    order = {id(r): i for i, r in enumerate(rows)}
    ranked = sorted(affordable, key=lambda r: (r["cost_usd"], r["wall_time_h"], order[id(r)]))
    best = [_item(r, fitting_plain) for r in ranked[: request.top]]
    summary = TuneSummary(
        layouts=len(rows),
        invalid=len(errors),
        not_fitting=len(planned) - len(fitting),
        past_deadline=len(fitting) - len(on_time),
        over_budget=len(on_time) - len(affordable),
        feasible=len(affordable),
    )
    return TuneResult(best, summary, errors[0] if errors else None)


def _family(row: dict[str, Any]) -> tuple:
    """The keys a layout shares with its plain twin (no checkpointing, no accumulation)."""
    keys = ("devices", "global_batch", "sharding", "shard_size", "reshard_after_forward")
    return tuple(row.get(f"in.{k}") for k in (*keys, "loss_impl"))


def _plain(row: dict[str, Any]) -> bool:
    return not row["in.checkpointing"] and row["in.grad_accum"] == 1


def binding(row: dict[str, Any], plain_fits: bool) -> str:
    """What binds a planned layout (module docstring): memory, communication or compute."""
    headroom = 1 - row["memory_per_device_bytes"] / row["device_memory_bytes"]
    if headroom < MEMORY_HEADROOM or (not _plain(row) and not plain_fits):
        return "memory"
    exposed = sum(row.get(f"breakdown_s.{k}", 0.0) for k in COMM_KINDS)
    if exposed > row["breakdown_s.compute"]:
        return "communication"
    return "compute"


def _item(row: dict[str, Any], fitting_plain: set) -> dict[str, Any]:
    """One ``--json`` item (the contract keys first, then the context)."""
    # a key the point left out took the planner's default (ddp: no shard size, and the
    # reshard flag, which DDP never uses, at its default)
    defaults = {"shard_size": None, "reshard_after_forward": True}
    layout = {k: row.get(f"in.{k}", defaults.get(k)) for k in _LAYOUT_KEYS}
    return {
        "layout": layout,
        "step_time_s": row["step_time_s"],
        "wall_time_h": row["wall_time_h"],
        "cost_usd": row["cost_usd"],
        "memory_per_device_bytes": row["memory_per_device_bytes"],
        "fits": row["fits"],
        "binding": binding(row, _family(row) in fitting_plain),
        "loss_impl": row["loss_impl"],
        "global_batch": row["global_batch"],
        "micro_batch": row["global_batch"] // (row["devices"] * row["grad_accum"]),
        "device_memory_bytes": row["device_memory_bytes"],
        "mfu": row["mfu"],
        "breakdown_s": {
            k.removeprefix("breakdown_s."): v
            for k, v in row.items()
            if k.startswith("breakdown_s.")
        },
    }
