"""The published record: every published run the project knows, predicted vs published.

One row per (run, metric), the ``vlscale papers --json`` contract::

    {"id", "source", "metric", "published", "predicted", "error", "calibration",
     "stack", "hardware", "devices", "split", "loo_error", "p10", "p90"}

(plus ``source_id``, ``where``, ``quote`` and, for a run not planned, ``reason``).

- Runs come from ``vlscale/plan/data/published_runs.yaml`` (``vlscale.plan.published_record``),
  each planned with its software stack's γ (``--stack``). ``error`` = (predicted − published) /
  published, signed; for ``wall_time_h`` positive means the planner is slower, for
  ``samples_per_s`` positive means it is faster. A miss stays in the table with its real error.
- ``split``: ``calibration`` (γ of its (device kind, stack) was fitted on it: ``calibration`` is
  true and ``error`` is in-sample), ``prediction`` (never fitted on), ``not_plannable`` (listed
  with ``reason``; ``predicted`` / ``error`` are null).
- ``loo_error``: the error of a calibration run predicted with γ fitted on the other runs of its
  group (null for a group of one); for a prediction it is its ``error``.
- ``p10`` / ``p90``: the band of the published metric from the leave-one-out spread of the run's
  group (for a calibration run, of the group's other runs; a group with too few runs uses the
  pooled spread of all groups), around the held-out prediction.
- FLIP Table 1a (``FLIP_TABLE_1A``): ``relative_wall_time`` and ``relative_flops`` of mask 0.5 and
  0.75 against mask 0 (the paper reports ratios): no band.

``coverage`` states how often the published value falls inside P10–P90 and P5–P95.
"""

from __future__ import annotations

import math
from typing import Any

from vlscale.plan.published_runs import FLIP_SOURCE, FLIP_TABLE_1A, flip_config

KEYS = (
    "id",
    "source",
    "metric",
    "published",
    "predicted",
    "error",
    "calibration",
    "stack",
    "hardware",
    "devices",
    "split",
    "loo_error",
    "p10",
    "p90",
    "source_id",
    "where",
    "quote",
)
Z10 = 1.2815515655446004  # standard normal quantile of 0.90
Z05 = 1.6448536269514722  # of 0.95


def _rms(values: list[float]) -> float | None:
    return math.sqrt(sum(v * v for v in values) / len(values)) if values else None


def _band(centre: float, sigma: float | None, z: float) -> tuple[float | None, float | None]:
    if sigma is None:
        return None, None
    return centre * math.exp(-z * sigma), centre * math.exp(z * sigma)


def pooled_sigma() -> float | None:
    """RMS of every leave-one-out log residual of the record."""
    from vlscale.plan.published_record import fit_groups

    return _rms([r for f in fit_groups().values() for r in f.loo_log_residual.values()])


def run_spread(run) -> tuple[float | None, float | None]:
    """(held-out prediction, σ) of a planned run (module docstring)."""
    from vlscale.plan.published_record import fit_groups, predict

    fit = fit_groups().get(run.group)
    pooled = pooled_sigma()
    if run.split == "calibration":
        if fit is None or run.id not in fit.loo_gamma:
            return None, pooled
        centre = predict(run, fit.loo_gamma[run.id])
        others = [r for rid, r in fit.loo_log_residual.items() if rid != run.id]
        return centre, _rms(others) if len(others) >= 2 else pooled
    sigma = fit.sigma if fit is not None and fit.sigma is not None else pooled
    return predict(run), sigma


def record_rows() -> list[dict[str, Any]]:
    """One row per run of the data file (module docstring)."""
    from vlscale.plan.published_record import load_record, predict

    rows = []
    for run in load_record():
        row = {
            "id": run.id,
            "source": f"{run.source_title}, {run.where}: {run.url}",
            "metric": run.metric,
            "published": run.published,
            "predicted": None,
            "error": None,
            "calibration": run.split == "calibration",
            "stack": run.stack,
            "hardware": run.device,
            "devices": run.devices,
            "split": run.split,
            "loo_error": None,
            "p10": None,
            "p90": None,
            "source_id": run.source,
            "where": run.where,
            "quote": run.quote,
        }
        if run.split == "not_plannable":
            row["reason"] = run.reason
            rows.append(row)
            continue
        predicted = predict(run)
        row["predicted"] = predicted
        row["error"] = (predicted - run.published) / run.published
        centre, sigma = run_spread(run)
        if run.split == "prediction":
            row["loo_error"] = row["error"]
        elif centre is not None:
            row["loo_error"] = (centre - run.published) / run.published
        if centre is not None:
            row["p10"], row["p90"] = _band(centre, sigma, Z10)
            row["p05"], row["p95"] = _band(centre, sigma, Z05)
        rows.append(row)
    return rows


def _flip_row(name, source, metric, published, predicted) -> dict[str, Any]:
    from vlscale.specs.stacks import default_stack_name

    return {
        "id": name,
        "source": source,
        "metric": metric,
        "published": float(published),
        "predicted": float(predicted),
        "error": (float(predicted) - float(published)) / float(published),
        "calibration": False,
        "stack": default_stack_name(),  # FLIP's JAX code is not a profile: planned as default
        "hardware": "TPUv3",
        "devices": 128,
        "split": "prediction",
        "loo_error": (float(predicted) - float(published)) / float(published),
        "p10": None,
        "p90": None,
        "source_id": "flip-paper",
        "where": "Table 1a",
        "quote": f"{metric.replace('_', ' ')} {published:g} (vs mask 0 = 1.00)",
    }


def flip_rows() -> list[dict[str, Any]]:
    from vlscale.plan.planner import plan

    rows = []
    reference, *others = FLIP_TABLE_1A
    base = plan(flip_config(reference))
    base_flops = base.costs.model_flops_per_step / reference.global_batch
    for row in others:
        result = plan(flip_config(row))
        flops = result.costs.model_flops_per_step / row.global_batch
        name = f"flip-vit-l16-tpuv3-mask{round(row.mask_ratio * 100)}"
        source = f"{FLIP_SOURCE} (mask {row.mask_ratio:g}, batch {row.global_batch:,} vs mask 0)"
        wall = result.wall_time_h / base.wall_time_h
        rows.append(_flip_row(name, source, "relative_wall_time", row.relative_wall_time, wall))
        rows.append(
            _flip_row(name, source, "relative_flops", row.relative_flops, flops / base_flops)
        )
    return rows


def paper_rows() -> list[dict[str, Any]]:
    """All rows: the data file's runs, then FLIP."""
    return [*record_rows(), *flip_rows()]


def _planned(rows):
    return [r for r in rows if r["error"] is not None]


def mean_abs_error(rows: list[dict[str, Any]], *, calibration: bool = False) -> float | None:
    """Mean |error| over the prediction rows (or the calibration rows); None when there are none."""
    errors = [abs(r["error"]) for r in _planned(rows) if r["calibration"] == calibration]
    return sum(errors) / len(errors) if errors else None


def median_abs_error(rows: list[dict[str, Any]], key: str = "error") -> float | None:
    """Median |error| over the prediction rows (``key``: ``error`` or ``loo_error``)."""
    errors = [abs(r[key]) for r in _planned(rows) if not r["calibration"] and r[key] is not None]
    return _median(errors) if errors else None


def _median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def loo_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows with a held-out error (``loo_error``; FLIP's ratios excluded) by
    'stack / device kind', keys sorted."""
    from vlscale.specs.stacks import device_kind

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("loo_error") is not None and not r["metric"].startswith("relative"):
            groups.setdefault(f"{r['stack']} / {device_kind(r['hardware'])}", []).append(r)
    return dict(sorted(groups.items()))


def loo_by_stack(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ``loo_groups`` group: how many runs, the median |loo_error|, and the worst: the
    signed ``loo_error`` of largest magnitude and its run."""
    from vlscale.specs.stacks import device_kind

    out = {}
    for key, members in loo_groups(rows).items():
        worst = max(members, key=lambda r: abs(r["loo_error"]))
        out[key] = {
            "stack": members[0]["stack"],
            "device_kind": device_kind(members[0]["hardware"]),
            "median_abs_loo_error": _median([abs(r["loo_error"]) for r in members]),
            "runs": len(members),
            "worst_loo_error": worst["loo_error"],
            "worst_run": worst["id"],
        }
    return out


def coverage(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the published value lies inside the row's P10–P90 and P5–P95 bands."""
    banded = [r for r in rows if r["p10"] is not None and r.get("p05") is not None]
    inside = sum(r["p10"] <= r["published"] <= r["p90"] for r in banded)
    inside95 = sum(r["p05"] <= r["published"] <= r["p95"] for r in banded)
    n = len(banded)
    return {
        "p10_p90": inside / n if n else None,
        "p05_p95": inside95 / n if n else None,
        "runs": n,
        "inside_p10_p90": inside,
        "inside_p05_p95": inside95,
    }


def fidelity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``vlscale papers`` and the study page report on the record: the median |error| of
    the predictions and how many there are, the leave-one-out error per stack and device kind
    (``loo_by_stack``) and the band coverage (``coverage``), all from the same rows."""
    return {
        "median_abs_error": median_abs_error(rows),
        "predictions": sum(not r["calibration"] for r in _planned(rows)),
        "loo_by_stack": loo_by_stack(rows),
        "coverage": coverage(rows),
    }
