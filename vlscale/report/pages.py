"""The two reports the CLI writes: ``vlscale plan --report`` and ``vlscale compare --report``.

plan:    summary (step time, MFU, wall time, cost, memory / fits, ...), the simulated timeline of
         one step, where the step goes, memory per device against the device's capacity.
compare: summary per variant, then step breakdown, memory and the loss's memory and traffic per
         variant side by side (the softmax-gather vs sigmoid-ring story).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlscale.report.figures import breakdown_figure, loss_figure, memory_figure, timeline_figure
from vlscale.report.html import render_report, summary_table, write_report_atomic
from vlscale.report.tables import (
    GIB,
    MIB,
    breakdown_frame,
    loss_frame,
    memory_frame,
    timeline_frame,
    variant_labels,
)


def scenario_title(r: dict[str, Any], *, with_recipe: bool = True) -> str:
    """One line naming the scenario, from a ``vlscale plan --json`` dict."""
    recipe = ""
    if with_recipe:
        recipe = f" {r['recipe']}/{r['loss_impl']} (mask {r['mask_ratio']}, {r['optimizer']})"
    return (
        f"{r['model']}{recipe} on {r['devices']}x{r['device']}, batch {r['global_batch']:,}, "
        f"{r['samples']:.3g} samples, {r['precision']} {r['sharding']}"
    )


def plan_report(result) -> str:
    """HTML for one ``PlanResult`` planned with ``keep_sim=True`` (needs its ``sim``)."""
    from vlscale.plan.planner import summary_rows

    if result.sim is None:
        raise ValueError("plan_report needs plan(config, keep_sim=True)")
    data = result.to_json()
    bars = timeline_frame(result.sim.events, result.sim.steps, rank_labels=result.sim.rank_labels)
    notes = [
        f"Timeline: step {bars.attrs['step']} only ({bars.attrs['events']:,} events); "
        "back-to-back ops of one kind on a row are merged into one bar (hover shows how many). "
        "Breakdown: mean over the simulated non-warm-up steps; communication counts only where "
        "no compute runs (exposed)."
    ]
    summary = summary_table(["", data["model"]], [list(row) for row in summary_rows(result)])
    return render_report(
        scenario_title(data),
        summary,
        [
            ("Simulated step timeline", timeline_figure(bars)),
            ("Where a step goes", breakdown_figure(breakdown_frame([data]))),
            ("Memory per device", memory_figure(memory_frame([data]))),
        ],
        notes=notes,
        warnings=data["warnings"],
    )


def compare_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """Key numbers per variant (the rows of ``vlscale compare``'s table)."""

    def row(label: str, fmt) -> list[str]:
        return [label, *(fmt(r) for r in results)]

    return [
        row("step time (s)", lambda r: f"{r['step_time_s']:.3f}"),
        row("samples/s per device", lambda r: f"{r['samples_per_s_per_device']:,.1f}"),
        row("MFU", lambda r: f"{r['mfu']:.1%}"),
        row("wall time (h)", lambda r: f"{r['wall_time_h']:,.1f}"),
        row("cost (USD)", lambda r: f"{r['cost_usd']:,.0f}"),
        row("memory / device (GiB)", lambda r: f"{r['memory_per_device_bytes'] / GIB:.1f}"),
        row("loss buffers (MiB)", lambda r: f"{r['loss_memory_bytes'] / MIB:,.1f}"),
        row(
            "loss comm / device / step (MiB)",
            lambda r: f"{sum(r['loss_comm_bytes_per_device'].values()) / MIB:,.1f}",
        ),
        row("fits", lambda r: "yes" if r["fits"] else "NO"),
    ]


def compare_report(results: list[dict[str, Any]]) -> str:
    """HTML for ``vlscale compare``: a list of ``vlscale plan --json`` dicts, one per variant."""
    if not results:
        raise ValueError("compare_report needs at least one planned variant")
    labels = variant_labels(results)
    warnings = [
        f"{label}: {w}" for label, r in zip(labels, results, strict=True) for w in r["warnings"]
    ]
    return render_report(
        scenario_title(results[0], with_recipe=False) + ": recipes side by side",
        summary_table(["", *labels], compare_rows(results)),
        [
            ("Where a step goes", breakdown_figure(breakdown_frame(results))),
            ("Memory per device", memory_figure(memory_frame(results))),
            ("The loss: memory and traffic", loss_figure(loss_frame(results))),
        ],
        notes=["Loss communication: bytes the loss itself moves per device per step."],
        warnings=warnings,
    )


def write_plan_report(result, path: str | Path) -> Path:
    return write_report_atomic(plan_report(result), path)


def write_compare_report(results: list[dict[str, Any]], path: str | Path) -> Path:
    return write_report_atomic(compare_report(results), path)
