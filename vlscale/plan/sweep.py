"""Sweeps: the cartesian product of a grid of PlanConfig keys, planned one by one.

Grid file (YAML or TOML)::

    base: {model: ViT-L-14, device: H100, samples: 12.8e9}
    grid:
      devices: [64, 128, 256]
      recipe: [clip, siglip]
      loss_impl: [gather, ring]

Points are planned on all local cores by default, or on a Dask cluster (``scheduler``); see
``run_sweep``. Points that fail validation (e.g. ``clip`` with ``ring``, a batch that does not
divide the devices, a model that does not fit) become rows with an ``error`` message instead of
stopping the sweep; every other row has the ``vlscale plan --json`` keys (nested dicts
flattened with '.').
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from vlscale.errors import ConfigError
from vlscale.plan.config import parse_count, read_config_file


def expand_grid(path: str | Path) -> list[dict[str, Any]]:
    """All grid points as flat dicts of PlanConfig keys (base updated by one grid combination)."""
    data = read_config_file(path)
    if not data:
        raise ConfigError("grid", f"{path} is empty; give 'base' (a plan) and 'grid' (lists)")
    unknown = set(data) - {"base", "grid"}
    if unknown:
        raise ConfigError(
            "grid", f"unknown top-level keys {sorted(unknown)}; use 'base' and 'grid'"
        )
    base = data.get("base") or {}
    grid = data.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ConfigError("grid", "'base' and 'grid' must be mappings")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}", "must be a non-empty list of values")
    keys = list(grid)
    return [
        base | dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())
    ]


def _normalise(point: dict[str, Any]) -> dict[str, Any]:
    out = dict(point)
    if isinstance(out.get("samples"), float | str):
        out["samples"] = parse_count("samples", str(out["samples"]))
    return out


def plan_point(point: dict[str, Any]) -> dict[str, Any]:
    """One row: the point's keys, then the plan's JSON (flattened) or an ``error``."""
    from vlscale.plan.config import make_plan_config
    from vlscale.plan.planner import plan

    row: dict[str, Any] = {f"in.{k}": v for k, v in point.items()}
    try:
        result = plan(make_plan_config(_normalise(point))).to_json()
    except ConfigError as exc:
        return row | {"error": str(exc)}
    for key, value in result.items():
        if isinstance(value, dict):
            row |= {f"{key}.{k}": v for k, v in value.items()}
        elif isinstance(value, list):
            row[key] = "; ".join(map(str, value))
        else:
            row[key] = value
    return row | {"error": None}


def run_sweep(
    points: list[dict[str, Any]],
    progress: bool = True,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
):
    """Plan every point and return a pandas DataFrame, one row per point in grid order.

    Backends (``vlscale.plan.backends``): ``scheduler`` given -> a Dask cluster at that address;
    otherwise a process pool of ``workers`` (default: every local core), or in this process when
    ``workers == 1`` or there are too few points to pay for a pool. The rows are the same
    whatever the backend: each point is planned by ``plan_point`` alone, and results are put
    back in grid order. The progress bar goes to stderr (stdout stays for the summary).
    """
    import pandas as pd

    from vlscale.plan.backends import map_points

    rows = map_points(plan_point, points, progress=progress, workers=workers, scheduler=scheduler)
    return pd.DataFrame(rows)
