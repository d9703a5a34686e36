"""The scaling study behind ``vlscale report``: which configurations, planned how, as tidy tables.

``StudySpec`` names the grid; ``study_points`` lists every configuration (PlanConfig keys plus a
``part`` and ``variant`` tag); ``run_study`` plans them all through the sweep backends
(``vlscale.plan.sweep.run_sweep``: every local core, or a Dask cluster) and returns the flat
sweep rows. The ``*_frame`` functions are pure pandas over those rows, one per section:

- scaling:   each variant (CLIP, SigLIP gather, SigLIP ring, EVA-CLIP) at each device count and
             global batch of the grid (a batch the device count does not divide is skipped);
- loss:      softmax vs sigmoid at a FIXED local batch b (global batch b·W), so the gathered
             b×B logits grow with W and the point where gathers stop fitting shows; activation
             checkpointing on (``loss_checkpointing``), so that activations, which do not depend
             on W, do not hide the loss (b = 2,048: ViT-L-14 on H100 then fits at W = 8 in every
             variant);
- flip:      CLIP with FLIP masking at each mask ratio on the base cluster and batch;
- frontier:  the scaling configurations as (wall time, money): the Pareto frontier (no other
             fitting configuration is both faster and cheaper) and the cheapest fitting one per
             deadline;
- tune:      at each device count, every layout ``vlscale tune`` searches for the base recipe
             and global batch (``vlscale.plan.tune.layout_candidates``), ranked as tune ranks
             them: the cheapest fitting layout per device count.

Only keys of the README's stable ``vlscale plan --json`` contract are read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from vlscale.errors import ConfigError
from vlscale.plan.config import PlanConfig

VARIANTS: tuple[tuple[str, str], ...] = (
    ("clip", "gather"),
    ("siglip", "gather"),
    ("siglip", "ring"),
    ("eva-clip", "gather"),
)
LOSS_VARIANTS = VARIANTS[:3]  # EVA-CLIP's loss is CLIP's
DEFAULT_DEVICES = tuple(2**k for k in range(3, 13))  # 8 .. 4,096
DEFAULT_BATCHES = (32_768, 131_072)
DEFAULT_LOSS_LOCAL_BATCH = 2048
DEFAULT_MASK_RATIOS = (0.0, 0.25, 0.5, 0.75)
DEFAULT_DEADLINES_H = (24.0, 72.0, 168.0, 336.0, 720.0)  # 1 day, 3 days, 1, 2 weeks, 30 days
QUICK_DEVICES = (8, 64, 512)
QUICK_BATCHES = (32_768,)
QUICK_MASK_RATIOS = (0.0, 0.5)

# the scenario keys a study varies itself; the rest come from the base configuration
VARIED = ("recipe", "loss_impl", "devices", "global_batch", "mask_ratio", "optimizer")


def variant_name(recipe: str, loss_impl: str) -> str:
    return f"{recipe}/{loss_impl}"


@dataclass(frozen=True)
class StudySpec:
    """The grid of a study (module docstring). ``base`` gives model, device, samples, ..."""

    base: PlanConfig
    devices: tuple[int, ...] = DEFAULT_DEVICES
    global_batches: tuple[int, ...] = DEFAULT_BATCHES
    variants: tuple[tuple[str, str], ...] = VARIANTS
    loss_local_batch: int = DEFAULT_LOSS_LOCAL_BATCH
    loss_checkpointing: bool = True
    mask_ratios: tuple[float, ...] = DEFAULT_MASK_RATIOS
    deadlines_h: tuple[float, ...] = DEFAULT_DEADLINES_H

    def __post_init__(self) -> None:
        # the scaling part needs a device count that divides a batch: say so before any work
        if (
            self.devices
            and self.global_batches
            and not any(b % d == 0 and b >= d for b in self.global_batches for d in self.devices)
        ):
            raise ConfigError(
                "devices",
                f"no device count in {list(self.devices)} divides a global batch in "
                f"{list(self.global_batches)}; use device counts that divide the batch (e.g. "
                f"{', '.join(str(d) for d in QUICK_DEVICES)}) or give --global-batch",
            )

    @classmethod
    def quick(cls, base: PlanConfig, **overrides) -> StudySpec:
        """A small grid (3 device counts, 1 batch, 2 mask ratios) for a fast look and tests."""
        kw = dict(
            devices=QUICK_DEVICES, global_batches=QUICK_BATCHES, mask_ratios=QUICK_MASK_RATIOS
        )
        return cls(base=base, **(kw | overrides))


def _base_keys(base: PlanConfig) -> dict[str, Any]:
    data = base.model_dump(exclude_defaults=True)
    return {k: v for k, v in data.items() if k not in VARIED}


def study_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every configuration of the study as sweep points (PlanConfig keys + part, variant)."""
    base = _base_keys(spec.base)
    points: list[dict[str, Any]] = []
    for recipe, impl in spec.variants:
        for batch in spec.global_batches:
            for devices in spec.devices:
                if batch % devices or batch < devices:
                    continue
                points.append(
                    base | dict(recipe=recipe, loss_impl=impl, devices=devices, global_batch=batch)
                )
                points[-1] |= {"part": "scaling", "variant": variant_name(recipe, impl)}
    for recipe, impl in LOSS_VARIANTS:
        if (recipe, impl) not in spec.variants:
            continue
        for devices in spec.devices:
            points.append(
                base
                | dict(
                    recipe=recipe,
                    loss_impl=impl,
                    devices=devices,
                    global_batch=spec.loss_local_batch * devices,
                    checkpointing=spec.loss_checkpointing or spec.base.layout.checkpointing,
                    part="loss",
                    variant=variant_name(recipe, impl),
                )
            )
    points += _tune_points(spec, base)
    for ratio in spec.mask_ratios:
        points.append(
            base
            | dict(
                recipe="clip",
                loss_impl="gather",
                mask_ratio=ratio,
                devices=spec.base.devices,
                global_batch=spec.base.global_batch,
                part="flip",
                variant="clip/gather",
            )
        )
    return points


STUDY_MAX_GRAD_ACCUM = 4  # the study's search stops at 4 micro-steps (tune's goes to b)


def _tune_points(spec: StudySpec, base: dict[str, Any]) -> list[dict[str, Any]]:
    """The layouts ``vlscale tune`` searches at each device count that divides the base batch
    (the base recipe; its loss implementations where the recipe has two), up to
    :data:`STUDY_MAX_GRAD_ACCUM` micro-steps so that the page stays quick to build."""
    from vlscale.plan.tune import layout_candidates, node_size

    recipe, batch = spec.base.recipe, spec.base.global_batch
    points = []
    for devices in spec.devices:
        if batch % devices or batch < devices:
            continue
        point = base | {"recipe": recipe, "devices": devices, "global_batch": batch}
        node = node_size(point)
        for layout in layout_candidates(
            devices, batch, recipe, node, max_grad_accum=STUDY_MAX_GRAD_ACCUM
        ):
            variant = variant_name(recipe, layout["loss_impl"])
            points.append(point | layout | {"part": "tune", "variant": variant})
    return points


def _plan_study_point(point: dict[str, Any]) -> dict[str, Any]:
    """A sweep row for a point that carries its study tags (kept out of the PlanConfig)."""
    from vlscale.plan.sweep import plan_point

    tags = {"part": point["part"], "variant": point["variant"]}
    keys = {k: v for k, v in point.items() if k not in tags}
    return tags | plan_point(keys)


def run_study(
    spec: StudySpec,
    *,
    progress: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
) -> pd.DataFrame:
    """Plan every study point (sweep backends) -> the flat sweep rows, tagged part / variant."""
    from vlscale.plan.backends import map_points

    rows = map_points(
        _plan_study_point,
        study_points(spec),
        progress=progress,
        workers=workers,
        scheduler=scheduler,
    )
    return pd.DataFrame(rows)


def _part(rows: pd.DataFrame, part: str) -> pd.DataFrame:
    out = rows[rows["part"] == part]
    if "error" in out:
        out = out[out["error"].isna()]
    return out


def _loss_comm(rows: pd.DataFrame) -> pd.Series:
    cols = [c for c in rows.columns if c.startswith("loss_comm_bytes_per_device.")]
    return rows[cols].sum(axis=1) if cols else pd.Series(0.0, index=rows.index)


SCALING_METRICS: tuple[tuple[str, str], ...] = (
    ("step_time_s", "step time (s)"),
    ("samples_per_s_per_device", "samples/s per device"),
    ("mfu", "MFU"),
    ("wall_time_h", "wall time (h)"),
    ("cost_usd", "cost (USD)"),
)


def scaling_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """variant, global_batch, devices, metric, value, fits: long format, one row per metric."""
    part = _part(rows, "scaling")
    frames = [
        pd.DataFrame(
            {
                "variant": part["variant"],
                "global_batch": part["global_batch"].astype(int),
                "devices": part["devices"].astype(int),
                "metric": metric,
                "value": part[metric].astype(float),
                "fits": part["fits"].astype(bool),
            }
        )
        for metric, _ in SCALING_METRICS
    ]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return out.sort_values(["metric", "variant", "global_batch", "devices"], kind="stable")


def loss_scaling_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """variant, devices, global_batch, loss_memory_bytes, loss_comm_bytes, memory_bytes,
    capacity_bytes, fits — the loss part (fixed local batch), sorted by variant then W."""
    part = _part(rows, "loss")
    out = pd.DataFrame(
        {
            "variant": part["variant"],
            "devices": part["devices"].astype(int),
            "global_batch": part["global_batch"].astype(int),
            "loss_memory_bytes": part["loss_memory_bytes"].astype(float),
            "loss_comm_bytes": _loss_comm(part).astype(float),
            "memory_bytes": part["memory_per_device_bytes"].astype(float),
            "capacity_bytes": part["device_memory_bytes"].astype(float),
            "fits": part["fits"].astype(bool),
        }
    )
    return out.sort_values(["variant", "devices"], kind="stable").reset_index(drop=True)


def first_unfit(frame: pd.DataFrame) -> dict[str, int | None]:
    """variant -> the smallest world size at which it no longer fits (None: fits throughout)."""
    out: dict[str, int | None] = {}
    for variant, part in frame.groupby("variant", sort=False):
        bad = part.loc[~part["fits"], "devices"]
        out[str(variant)] = int(bad.min()) if len(bad) else None
    return out


def flip_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """mask_ratio, flops_per_sample, step_time_s, wall_time_h, cost_usd — sorted by ratio."""
    part = _part(rows, "flip")
    out = pd.DataFrame(
        {
            "mask_ratio": part["mask_ratio"].astype(float),
            "flops_per_sample": part["model_flops_per_step"].astype(float)
            / part["global_batch"].astype(float),
            "step_time_s": part["step_time_s"].astype(float),
            "wall_time_h": part["wall_time_h"].astype(float),
            "cost_usd": part["cost_usd"].astype(float),
        }
    )
    return out.sort_values("mask_ratio").reset_index(drop=True)


def frontier_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """label, variant, devices, global_batch, wall_time_h, cost_usd, fits, on_frontier.

    On the frontier: fits, and every other fitting configuration is slower or costs more
    (sorted by wall time, a point is kept when it is cheaper than every faster one; ties in wall
    time keep the cheaper)."""
    part = _part(rows, "scaling")
    out = pd.DataFrame(
        {
            "variant": part["variant"],
            "devices": part["devices"].astype(int),
            "global_batch": part["global_batch"].astype(int),
            "wall_time_h": part["wall_time_h"].astype(float),
            "cost_usd": part["cost_usd"].astype(float),
            "fits": part["fits"].astype(bool),
        }
    )
    out["label"] = [
        f"{v}, {d:,} devices, batch {b:,}"
        for v, d, b in zip(out["variant"], out["devices"], out["global_batch"], strict=True)
    ]
    out = out.sort_values(["wall_time_h", "cost_usd"], kind="stable").reset_index(drop=True)
    on = []
    best = float("inf")
    for fits, cost in zip(out["fits"], out["cost_usd"], strict=True):
        keep = bool(fits) and cost < best
        on.append(keep)
        if keep:
            best = cost
    out["on_frontier"] = on
    columns = ["label", "variant", "devices", "global_batch", "wall_time_h", "cost_usd"]
    return out[[*columns, "fits", "on_frontier"]]


def cheapest_per_deadline(frontier: pd.DataFrame, deadlines_h) -> pd.DataFrame:
    """deadline_h, label, wall_time_h, cost_usd: the cheapest FITTING configuration finishing
    within each deadline (label None and NaN numbers when none does)."""
    rows = []
    fitting = frontier[frontier["fits"]]
    for deadline in deadlines_h:
        ok = fitting[fitting["wall_time_h"] <= deadline]
        if ok.empty:
            rows.append((float(deadline), None, float("nan"), float("nan")))
            continue
        best = ok.loc[ok["cost_usd"].idxmin()]
        rows.append((float(deadline), best["label"], best["wall_time_h"], best["cost_usd"]))
    out = pd.DataFrame(rows, columns=["deadline_h", "label", "wall_time_h", "cost_usd"])
    # pandas turns None into NaN in a column it infers as float (every deadline missed)
    out["label"] = out["label"].astype(object).where(out["label"].notna(), None)
    return out


def cheapest_layouts(rows: pd.DataFrame, spec: StudySpec) -> pd.DataFrame:
    """devices, then ``vlscale tune --json``'s keys of the best layout at that device count
    (``vlscale.plan.tune.rank_rows``: the cheapest that fits); a device count where nothing
    fits is left out."""
    from vlscale.plan.tune import TuneRequest, rank_rows

    part = _part(rows, "tune")
    base = spec.base
    best = []
    for devices, group in part.groupby("in.devices"):
        records = [{k: _plain_value(v) for k, v in r.items()} for r in group.to_dict("records")]
        request = TuneRequest(
            base.model, base.recipe, base.device, (int(devices),), base.samples, top=1
        )
        result = rank_rows(records, request)
        if result.best:
            best.append({"devices": int(devices)} | result.best[0])
    return pd.DataFrame(best)


def _plain_value(value: Any) -> Any:
    """A frame cell as the sweep row had it: NaN (a key other parts have) is None, and a count
    that pandas made a float (a column with NaN) is an int again."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return int(value)
    return value
