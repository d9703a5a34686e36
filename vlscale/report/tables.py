"""Tidy tables for the report figures, from a plan's events and its ``--json`` dict.

Every function here is pure pandas (no plotly), returns a long-format DataFrame with one value
column, and takes the plain data the planner already produces: ``SimResult.events`` / ``steps``
and the ``PlanResult.to_json()`` dict (what ``vlscale compare`` holds per variant).

The timeline is made drawable for large rings. A SigLIP ring step at W = 4,096 has ~40k events
per simulated step (W−1 hops and W block computations each way, per simulated rank). Two steps
keep the figure light without hiding anything a person could see:

1. only one step is drawn (by default the first non-warm-up step), shifted so that the step
   starts at 0 ms;
2. on each (rank, stream) row, consecutive events of the same kind whose gap is below
   ``merge_fraction`` of the step (default 1/2,000 — under one pixel of a 2,000-px-wide plot)
   are merged into one bar that records how many events it holds.

If more than ``max_bars`` bars remain, the earliest ``max_bars`` are kept and the frame's
``attrs["clipped"]`` says how many were dropped (the figure's title repeats it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

MIB = 2**20
GIB = 2**30
STREAM_ORDER = ("input", "compute", "collective", "p2p")
DEFAULT_MAX_BARS = 5_000
DEFAULT_MERGE_FRACTION = 1 / 2_000


def variant_label(result: dict[str, Any]) -> str:
    """'siglip/ring' — how compare names a column; FLIP's mask ratio is added when non-zero."""
    label = f"{result['recipe']}/{result['loss_impl']}"
    if result.get("mask_ratio"):
        label += f" (mask {result['mask_ratio']:g})"
    return label


def variant_labels(results: list[dict[str, Any]]) -> list[str]:
    """Variant labels, numbered where two variants would otherwise share a bar."""
    labels = [variant_label(r) for r in results]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if labels.count(label) == 1 else f"{label} #{seen[label]}")
    return out


def timeline_frame(
    events: pd.DataFrame,
    steps: pd.DataFrame,
    *,
    step: int | None = None,
    rank_labels: dict[int, str] | None = None,
    max_bars: int = DEFAULT_MAX_BARS,
    merge_fraction: float = DEFAULT_MERGE_FRACTION,
) -> pd.DataFrame:
    """Bars of one simulated step: row, rank, stream, kind, name, count, start_ms, end_ms.

    ``events`` / ``steps``: ``SimResult.events`` / ``.steps``. Times are ms since the step's
    start on rank 0 (an input batch decoded ahead of its step starts below 0).
    """
    if step is None:
        kept = steps.loc[~steps["warmup"], "step"]
        step = int(kept.iloc[0]) if len(kept) else int(steps["step"].iloc[0])
    window = steps.loc[steps["step"] == step]
    if window.empty:
        have = f"0..{int(steps['step'].max())}"
        raise ValueError(f"step {step} was not simulated (steps {have})")
    t0, t1 = float(window["start_s"].iloc[0]), float(window["end_s"].iloc[0])
    ev = events.loc[events["step"] == step].copy()
    ev["start_ms"] = (ev["start_s"] - t0) * 1e3
    ev["end_ms"] = (ev["end_s"] - t0) * 1e3
    order = {s: i for i, s in enumerate(STREAM_ORDER)}
    ev["_stream_pos"] = ev["stream"].map(order).fillna(len(order))
    ev = ev.sort_values(["rank", "_stream_pos", "start_ms", "end_ms"], kind="stable")
    bars = _merge_runs(ev, merge_fraction * max((t1 - t0) * 1e3, 1e-12))
    labels = rank_labels or {}
    bars["row"] = [
        f"{labels.get(int(r), f'rank {r}')} · {s}"
        for r, s in zip(bars["rank"], bars["stream"], strict=True)
    ]
    clipped = max(0, len(bars) - max_bars)
    if clipped:
        bars = bars.nsmallest(max_bars, "start_ms", keep="first").sort_index()
    bars = bars.reset_index(drop=True)
    bars.attrs.update(step=step, step_ms=(t1 - t0) * 1e3, clipped=clipped, events=len(ev))
    return bars[["row", "rank", "stream", "kind", "name", "count", "start_ms", "end_ms"]]


def _merge_runs(ev: pd.DataFrame, gap_ms: float) -> pd.DataFrame:
    """Merge consecutive same-kind events of a (rank, stream) row separated by <= ``gap_ms``."""
    rank = ev["rank"].to_numpy()
    stream = ev["stream"].to_numpy()
    kind = ev["kind"].to_numpy()
    start = ev["start_ms"].to_numpy()
    end = ev["end_ms"].to_numpy()
    if len(ev) == 0:
        return ev.assign(count=pd.Series(dtype=int))[
            ["rank", "stream", "kind", "name", "count", "start_ms", "end_ms"]
        ]
    same = np.zeros(len(ev), dtype=bool)
    same[1:] = (rank[1:] == rank[:-1]) & (stream[1:] == stream[:-1]) & (kind[1:] == kind[:-1])
    # latest end so far within a same-kind stretch of a row (streams with several workers, like
    # input, overlap: a bar swallowed by a longer one must not start a new run)
    stretch = np.cumsum(~same)
    latest_end = pd.Series(end).groupby(stretch).cummax().to_numpy()
    new_run = np.ones(len(ev), dtype=bool)
    new_run[1:] = ~(same[1:] & (start[1:] - latest_end[:-1] <= gap_ms))
    run_id = np.cumsum(new_run) - 1
    grouped = pd.DataFrame(
        {
            "run": run_id,
            "rank": rank,
            "stream": stream,
            "kind": kind,
            "name": ev["name"].to_numpy(),
            "start_ms": start,
            "end_ms": end,
        }
    ).groupby("run", sort=True)
    out = grouped.agg(
        rank=("rank", "first"),
        stream=("stream", "first"),
        kind=("kind", "first"),
        name=("name", "first"),
        count=("name", "size"),
        start_ms=("start_ms", "min"),
        end_ms=("end_ms", "max"),
    )
    many = out["count"] > 1
    out.loc[many, "name"] = [
        f"{k} ×{c} (first: {n})"
        for k, c, n in zip(
            out.loc[many, "kind"], out.loc[many, "count"], out.loc[many, "name"], strict=True
        )
    ]
    return out.reset_index(drop=True)


def breakdown_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """variant, category, seconds: each variant's ``breakdown_s`` (mean seconds per step)."""
    rows = [
        (label, category, float(seconds))
        for label, r in zip(variant_labels(results), results, strict=True)
        for category, seconds in r["breakdown_s"].items()
    ]
    return pd.DataFrame(rows, columns=["variant", "category", "seconds"])


def memory_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """variant, category, bytes, capacity_bytes: each variant's ``memory_breakdown``."""
    rows = [
        (label, category, int(n), int(r["device_memory_bytes"]))
        for label, r in zip(variant_labels(results), results, strict=True)
        for category, n in r["memory_breakdown"].items()
    ]
    return pd.DataFrame(rows, columns=["variant", "category", "bytes", "capacity_bytes"])


def loss_frame(results: list[dict[str, Any]]) -> pd.DataFrame:
    """variant, quantity, bytes: the loss's buffers and its communication per device.

    quantity is ``memory`` (``loss_memory_bytes``) or ``comm <direction>`` for each entry of
    ``loss_comm_bytes_per_device`` (forward / backward).
    """
    rows = []
    for label, r in zip(variant_labels(results), results, strict=True):
        rows.append((label, "memory", int(r["loss_memory_bytes"])))
        for direction, n in r["loss_comm_bytes_per_device"].items():
            rows.append((label, f"comm {direction}", float(n)))
    return pd.DataFrame(rows, columns=["variant", "quantity", "bytes"])
