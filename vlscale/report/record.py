"""The record a study page shows besides predictions: validation results and published runs.

Validation results are files ``<folder>/*/validation.json`` (written by ``vlscale validate``),
each::

    {"runs": [{"path", "split", "measured_step_s", "predicted_step_s", "error"}, ...],
     "mape": {"replay": x, "prediction": y}, "max_error": {"replay": x, "prediction": y}}

``read_validation`` loads them (a file that is not that shape is a ConfigError naming it);
``calibration_frame`` and ``calibration_summary`` are pure pandas. Published runs come from
``vlscale.plan.papers_table.paper_rows`` (``vlscale papers --json``); ``papers_table`` turns them
into table rows for people.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from vlscale.errors import ConfigError

DEFAULT_VALIDATION_DIR = Path("reports/validation")
RUN_KEYS = ("path", "split", "measured_step_s", "predicted_step_s", "error")


def read_validation(folder: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(set name = sub-folder name, parsed validation.json) for each result, sorted by name.

    A missing folder is no results (an empty list); a malformed file is a ConfigError."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*/validation.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                "validation", f"cannot read {path}: {exc}; fix or remove it"
            ) from None
        runs = data.get("runs") if isinstance(data, dict) else None
        if not isinstance(runs, list) or any(
            not isinstance(r, dict) or not set(RUN_KEYS) <= set(r) for r in runs
        ):
            raise ConfigError(
                "validation",
                f"{path} needs 'runs': a list of objects with {', '.join(RUN_KEYS)}; "
                "write it with `vlscale validate`",
            )
        out.append((path.parent.name, data))
    return out


def calibration_frame(results: list[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """set, run, split, measured_step_s, predicted_step_s, error: one row per validated run."""
    rows = [
        (
            name,
            str(run["path"]),
            str(run["split"]),
            float(run["measured_step_s"]),
            float(run["predicted_step_s"]),
            float(run["error"]),
        )
        for name, data in results
        for run in data["runs"]
    ]
    columns = ["set", "run", "split", "measured_step_s", "predicted_step_s", "error"]
    return pd.DataFrame(rows, columns=columns)


def calibration_summary(results: list[tuple[str, dict[str, Any]]]) -> list[list[str]]:
    """Table rows: set, runs, MAPE replay / prediction, max error replay / prediction."""

    def pct(block: Any, key: str) -> str:
        value = block.get(key) if isinstance(block, dict) else None
        return f"{100 * float(value):.1f} %" if value is not None else "—"

    return [
        [
            name,
            str(len(data["runs"])),
            pct(data.get("mape"), "replay"),
            pct(data.get("mape"), "prediction"),
            pct(data.get("max_error"), "replay"),
            pct(data.get("max_error"), "prediction"),
        ]
        for name, data in results
    ]


CALIBRATION_HEADER = [
    "validation set",
    "runs",
    "MAPE replay",
    "MAPE prediction",
    "max error replay",
    "max error prediction",
]
PAPERS_HEADER = ["run", "stack", "metric", "published", "predicted", "error", "LOO", "split"]


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def papers_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    """``paper_rows`` as table rows for people (first cell: the run id)."""
    return [
        [
            r["id"],
            r.get("stack", "-"),
            r["metric"],
            _num(r["published"], ".4g"),
            _num(r["predicted"], ".4g"),
            "-" if r["error"] is None else f"{100 * r['error']:+.1f} %",
            "-" if r.get("loo_error") is None else f"{100 * r['loo_error']:+.1f} %",
            r.get("split") or ("calibration" if r["calibration"] else "prediction"),
        ]
        for r in rows
    ]


FIDELITY_HEADER = ["stack", "device", "runs", "median |LOO error|", "worst LOO error", "worst run"]


def _pct(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{100 * value:{sign}.1f} %"


def fidelity_table(fid: dict[str, Any]) -> list[list[str]]:
    """``papers_table.fidelity``'s leave-one-out error per stack and device kind, for people."""
    return [
        [
            g["stack"],
            g["device_kind"],
            str(g["runs"]),
            _pct(g["median_abs_loo_error"]),
            _pct(g["worst_loo_error"], "+"),
            g["worst_run"],
        ]
        for g in fid["loo_by_stack"].values()
    ]


def fidelity_summary(fid: dict[str, Any]) -> str:
    """One sentence: the predictions' median |error| and the band coverage."""
    cov = fid["coverage"]
    text = (
        f"Median |error| of the {fid['predictions']} predictions (never fitted): "
        f"{_pct(fid['median_abs_error'])}."
    )
    if cov["runs"]:
        text += (
            f" P10–P90 holds {cov['inside_p10_p90']} of {cov['runs']} published values "
            f"({_pct(cov['p10_p90'])}); P5–P95 holds {cov['inside_p05_p95']} "
            f"({_pct(cov['p05_p95'])})."
        )
    return text
