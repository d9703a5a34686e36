"""The published record: every published run the project knows, predicted vs published.

One row per (run, metric), the ``vlscale papers --json`` contract::

    {"id", "source", "metric", "published", "predicted", "error", "calibration"}

- ``error`` = (predicted − published) / published, signed (positive: the planner is slower /
  more expensive than the paper). A miss stays in the table with its real error.
- ``calibration`` is true for a run whose wall time a stored constant was solved from
  (``vlscale.plan.compute_model.CALIBRATED``): its error only shows that the constant still
  reproduces its own case; every other row is a prediction.

Rows, all planned with the public ``plan()`` (nothing here predicts on its own):

- ``wall_time_h`` of the absolute runs: CLIP ViT-L/14 on V100 and OpenCLIP ViT-B/32 on A100
  (``PUBLISHED_RUNS``, the calibration cases), OpenCLIP ViT-B/16 and ViT-L/14 on A100
  (``PREDICTED_RUNS``).
- FLIP Table 1a (``FLIP_TABLE_1A``): ``relative_wall_time`` and ``relative_flops`` of mask 0.5
  and 0.75 against mask 0 (the paper reports ratios, not hours): planned wall time and model
  FLOPs per sample of the row over those of the mask-0 row.

EVA-CLIP and SigLIP are not rows: no source the project holds gives their hardware, batch and
wall time (or throughput) together.
"""

from __future__ import annotations

from typing import Any

from vlscale.plan.published_runs import (
    FLIP_SOURCE,
    FLIP_TABLE_1A,
    PREDICTED_RUNS,
    PUBLISHED_RUNS,
    PublishedRun,
    flip_config,
)

KEYS = ("id", "source", "metric", "published", "predicted", "error", "calibration")


def _row(id_: str, source: str, metric: str, published: float, predicted: float, calib: bool):
    return {
        "id": id_,
        "source": source,
        "metric": metric,
        "published": float(published),
        "predicted": float(predicted),
        "error": (float(predicted) - float(published)) / float(published),
        "calibration": calib,
    }


def is_calibration_case(run: PublishedRun) -> bool:
    """True when the stored constant of the run's device was solved from this run: the run is
    one of ``PUBLISHED_RUNS`` (one per calibrated device) and its device is in ``CALIBRATED``."""
    from vlscale.plan.compute_model import CALIBRATED

    return run.name in PUBLISHED_RUNS and run.config.device in CALIBRATED


def paper_rows() -> list[dict[str, Any]]:
    """All rows (module docstring), absolute runs first, then FLIP."""
    from vlscale.plan.planner import plan

    rows = []
    for run in (*PUBLISHED_RUNS.values(), *PREDICTED_RUNS.values()):
        predicted = plan(run.config).wall_time_h
        rows.append(
            _row(
                run.name,
                run.source,
                "wall_time_h",
                run.wall_time_h,
                predicted,
                is_calibration_case(run),
            )
        )
    reference, *others = FLIP_TABLE_1A
    base = plan(flip_config(reference))
    base_flops = base.costs.model_flops_per_step / reference.global_batch
    for row in others:
        result = plan(flip_config(row))
        flops = result.costs.model_flops_per_step / row.global_batch
        name = f"flip-vit-l16-tpuv3-mask{round(row.mask_ratio * 100)}"
        source = f"{FLIP_SOURCE} (mask {row.mask_ratio:g}, batch {row.global_batch:,} vs mask 0)"
        rows.append(
            _row(
                name,
                source,
                "relative_wall_time",
                row.relative_wall_time,
                result.wall_time_h / base.wall_time_h,
                False,
            )
        )
        rows.append(
            _row(name, source, "relative_flops", row.relative_flops, flops / base_flops, False)
        )
    return rows


def mean_abs_error(rows: list[dict[str, Any]], *, calibration: bool = False) -> float | None:
    """Mean |error| over the prediction rows (or the calibration rows); None when there are none."""
    errors = [abs(r["error"]) for r in rows if r["calibration"] == calibration]
    return sum(errors) / len(errors) if errors else None
