"""The two reports the CLI writes: ``vlscale plan --report`` and ``vlscale compare --report``.

plan:    summary (step time, MFU, wall time, cost, memory / fits, ...), the simulated timeline of
         one step, where the step goes, memory per device against the device's capacity.
compare: summary per variant, then step breakdown, memory and the loss's memory and traffic per
         variant side by side (the softmax-gather vs sigmoid-ring story).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlscale.plan.planner import compare_rows
from vlscale.report.html import render_report, summary_table, write_report_atomic
from vlscale.report.step_figures import (
    breakdown_figure,
    loss_figure,
    memory_figure,
    timeline_figure,
)
from vlscale.report.tables import (
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
