"""The study page ``vlscale report`` writes: sections of text, tables and figures in ONE file.

Sections: the base scenario, scaling curves, softmax vs sigmoid, FLIP, the cost frontier,
calibration (validation results, or the sentence "no validation results"), published runs, the
fidelity on them (held-out error per stack and device, band coverage), SigLIP 2 against SigLIP
at the paper's scale (planned; no published time to check), and the assumptions with the
command that reproduces the page. ``study_report`` is pure given its inputs (the study rows,
published rows, validation results); ``build_study_report`` plans them.
plotly.js is inlined once in ``<head>`` as in ``vlscale.report.html``; the file is written with
``html.write_report_atomic``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from vlscale.report.html import STYLE, summary_table, write_report_atomic
from vlscale.report.study import (
    StudySpec,
    cheapest_layouts,
    cheapest_per_deadline,
    first_unfit,
    flip_frame,
    frontier_frame,
    loss_scaling_frame,
    run_study,
    scaling_frame,
)

NO_VALIDATION = "no validation results"


@dataclass
class Section:
    """A heading and its blocks: HTML strings or plotly Figures, in order."""

    heading: str
    blocks: list[Any] = field(default_factory=list)


def _p(text: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<p{attr}>{html.escape(text)}</p>"


def render_document(title: str, sections: list[Section], intro: str = "") -> str:
    """One HTML document; every Figure becomes a div, plotly.js is inlined once."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE} pre {{ background: #f5f5f5; padding: .6rem; white-space: pre-wrap; }}"
        "</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        intro,
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        for block in section.blocks:
            if isinstance(block, str):
                parts.append(block)
            else:
                parts.append(
                    pio.to_html(
                        block, full_html=False, include_plotlyjs=False, default_height="480px"
                    )
                )
    parts.append("</body></html>")
    return "\n".join(parts)


def _base_summary(base: dict[str, Any]) -> str:
    rows = [
        ["scenario", f"{base['recipe']}/{base['loss_impl']}, {base['devices']:,} {base['device']}"],
        ["global batch", f"{base['global_batch']:,}"],
        ["samples", f"{base['samples']:.3g}"],
        ["step time", f"{base['step_time_s']:.4f} s"],
        ["MFU", f"{base['mfu']:.1%}"],
        ["wall time", f"{base['wall_time_h']:,.1f} h"],
        ["cost", f"${base['cost_usd']:,.0f}"],
        ["memory per device", f"{base['memory_per_device_bytes'] / 2**30:.1f} GiB"],
        ["fits", "yes" if base["fits"] else "NO"],
    ]
    return summary_table(["base scenario", base["model"]], rows)


def study_report(
    spec: StudySpec,
    rows: pd.DataFrame,
    base: dict[str, Any],
    papers: list[dict[str, Any]],
    validation: list[tuple[str, dict[str, Any]]],
    command: str,
    *,
    validation_dir: str = "reports/validation",
    siglip2: dict[str, Any] | None = None,
) -> str:
    """The page's HTML from already-planned inputs (module docstring); ``siglip2``: SigLIP 2
    at the paper's scale (``vlscale.report.siglip2_scale.paper_scale``), a section when given."""
    from vlscale.plan.planner import resolve

    cfg = spec.base
    device = resolve(cfg)[2].device
    title = f"Scaling study: {cfg.model} on {device.name}, {cfg.samples:.3g} samples"
    sections = [
        _scaling_section(rows),
        _loss_section(spec, rows),
        _flip_section(spec, device.name, rows),
        _frontier_section(spec, rows),
        _layout_section(spec, rows),
        _calibration_section(validation, validation_dir),
        _papers_section(papers),
        _fidelity_section(papers),
        *([_siglip2_section(siglip2)] if siglip2 is not None else []),
        _assumptions_section(spec, device, base, command),
    ]
    return render_document(title, sections, _intro(spec, rows, base))


def _intro(spec: StudySpec, rows: pd.DataFrame, base: dict[str, Any]) -> str:
    """The base scenario's summary, the grid planned, and the configurations left out."""
    failed = rows[rows["error"].notna()] if "error" in rows else rows.iloc[:0]
    devices = ", ".join(f"{d:,}" for d in spec.devices)
    grid = (
        f"{len(rows):,} configurations planned: devices {devices}; "
        f"global batch {', '.join(f'{b:,}' for b in spec.global_batches)}; "
        f"variants {', '.join(f'{r}/{i}' for r, i in spec.variants)}."
    )
    intro = _base_summary(base) + _p(grid, "note")
    if len(failed):
        intro += _p(
            f"{len(failed)} configurations were invalid and left out: "
            + "; ".join(sorted(set(failed["error"].astype(str)))[:5]),
            "warning",
        )
    return intro


def _scaling_section(rows: pd.DataFrame) -> Section:
    from vlscale.report.study_figures import scaling_figure

    note = (
        "Each line is one variant at one global batch (a batch the device count does not "
        "divide, or smaller than it, is not drawn). Crosses do not fit in device memory. Wall "
        "time and cost are for the whole run's samples, failures and checkpoints included."
    )
    return Section(
        "Scaling with devices and batch", [scaling_figure(scaling_frame(rows)), _p(note, "note")]
    )


def _loss_section(spec: StudySpec, rows: pd.DataFrame) -> Section:
    from vlscale.report.study_figures import loss_scaling_figure

    loss = loss_scaling_frame(rows)
    stop = "; ".join(
        f"{v}: {'fits throughout' if d is None else f'stops fitting at W = {d:,}'}"
        for v, d in first_unfit(loss).items()
    )
    note = (
        f"Fixed local batch {spec.loss_local_batch:,} (global batch = local × W), activation "
        f"checkpointing on so that the loss, not the activations, decides the fit. {stop}."
    )
    return Section(
        "Softmax vs sigmoid: loss memory and traffic against world size",
        [loss_scaling_figure(loss), _p(note, "note")],
    )


def _flip_section(spec: StudySpec, device_name: str, rows: pd.DataFrame) -> Section:
    from vlscale.report.study_figures import flip_figure

    cfg = spec.base
    note = (
        f"CLIP with FLIP patch masking on {cfg.devices:,} {device_name} at global batch "
        f"{cfg.global_batch:,}: masking cuts the image tower's linear FLOPs by (1 − r) and "
        "attention's quadratic part by about (1 − r)²; the text tower is unchanged."
    )
    return Section(
        "FLIP: FLOPs and time against mask ratio",
        [flip_figure(flip_frame(rows)), _p(note, "note")],
    )


def _frontier_section(spec: StudySpec, rows: pd.DataFrame) -> Section:
    """The frontier figure and, per deadline, the cheapest fitting configuration."""
    from vlscale.report.study_figures import frontier_figure

    frontier = frontier_frame(rows)
    cheapest = cheapest_per_deadline(frontier, spec.deadlines_h)
    deadline_rows = [
        [
            f"≤ {d:,.0f} h",
            "none of the study's fitting configurations" if pd.isna(lbl) else lbl,
            "—" if pd.isna(lbl) else f"{w:,.1f} h",
            "—" if pd.isna(lbl) else f"${c:,.0f}",
        ]
        for d, lbl, w, c in cheapest.itertuples(index=False)
    ]
    n_unfit = int((~frontier["fits"]).sum())
    note = (
        f"{n_unfit} of {len(frontier)} configurations do not fit in device memory (grey "
        "crosses) and are never chosen. Frontier: no fitting configuration is both faster and "
        "cheaper."
    )
    header = ["deadline", "cheapest configuration", "wall time", "cost"]
    return Section(
        "Cost frontier: wall time against money",
        [
            frontier_figure(frontier, cheapest),
            summary_table(header, deadline_rows),
            _p(note, "note"),
        ],
    )


def _layout_section(spec: StudySpec, rows: pd.DataFrame) -> Section:
    """The cheapest fitting layout per device count, as ``vlscale tune`` finds it."""
    best = cheapest_layouts(rows, spec)
    header = ["devices", "layout", "step time", "wall time", "cost", "memory / device", "binds"]
    table = [
        [
            f"{r['devices']:,}",
            _describe_layout(r["layout"]),
            f"{r['step_time_s']:.3f} s",
            f"{r['wall_time_h']:,.1f} h",
            f"${r['cost_usd']:,.0f}",
            f"{r['memory_per_device_bytes'] / 2**30:.1f} GiB",
            r["binding"],
        ]
        for r in best.to_dict("records")
    ]
    cfg = spec.base
    note = (
        f"{cfg.recipe} at global batch {cfg.global_batch:,}: every layout `vlscale tune` "
        "searches (DDP, FSDP and HSDP at each shard size the nodes allow, resharding, "
        "activation checkpointing, gradient accumulation up to 4 micro-steps and, for SigLIP, "
        "the loss implementation), planned; the cheapest that fits, per device count. "
        f"Reproduce one row with `vlscale tune --model {cfg.model} --recipe {cfg.recipe} "
        f"--device {cfg.device} --devices N --global-batch {cfg.global_batch} "
        f"--samples {cfg.samples:.3g}`."
    )
    return Section(
        "The cheapest layout per device count (vlscale tune)",
        [summary_table(header, table) if table else _p("no layout fits", "note"), _p(note, "note")],
    )


def _describe_layout(layout: dict[str, Any]) -> str:
    """'hsdp 8, no reshard, AC, accum 2' from a tune layout."""
    shard = f" {int(layout['shard_size'])}" if layout["shard_size"] else ""
    parts = [layout["sharding"] + shard]
    if layout["sharding"] != "ddp" and not layout["reshard_after_forward"]:
        parts.append("no reshard")
    if layout["checkpointing"]:
        parts.append("AC")
    if layout["grad_accum"] > 1:
        parts.append(f"accum {int(layout['grad_accum'])}")
    return ", ".join(parts)


def _calibration_section(
    validation: list[tuple[str, dict[str, Any]]], validation_dir: str
) -> Section:
    from vlscale.report.record import CALIBRATION_HEADER, calibration_frame, calibration_summary
    from vlscale.report.study_figures import calibration_figure

    heading = "Calibration: predicted vs measured"
    if not validation:
        note = f"{NO_VALIDATION} in {validation_dir} (run `vlscale validate` to add them)."
        return Section(heading, [_p(note)])
    note = (
        "Mean absolute percentage error and largest error as `vlscale validate` reports them, "
        "for its replay and prediction modes; points by split."
    )
    return Section(
        heading,
        [
            calibration_figure(calibration_frame(validation)),
            summary_table(CALIBRATION_HEADER, calibration_summary(validation)),
            _p(note, "note"),
        ],
    )


def _papers_section(papers: list[dict[str, Any]]) -> Section:
    from vlscale.report.record import PAPERS_HEADER, papers_table
    from vlscale.report.study_figures import papers_figure

    note = (
        "error = (predicted − published) / published. Calibration rows reproduce the run their "
        "constant was solved from; every other row is a prediction. `vlscale papers --json` "
        "gives the same rows."
    )
    return Section(
        "Published runs: predicted vs published",
        [
            papers_figure(papers),
            summary_table(PAPERS_HEADER, papers_table(papers)),
            _p(note, "note"),
        ],
    )


FIDELITY_HEADING = "Fidelity: held-out error per stack and device, and band coverage"


def _fidelity_section(papers: list[dict[str, Any]]) -> Section:
    """``vlscale papers``'s summary of the same rows (``papers_table.fidelity``)."""
    from vlscale.plan.papers_table import fidelity
    from vlscale.report.record import FIDELITY_HEADER, fidelity_summary, fidelity_table
    from vlscale.report.study_figures import fidelity_figure

    fid = fidelity(papers)
    note = (
        "Leave-one-out (LOO): a calibration run predicted with γ fitted on the other runs of its "
        "(stack, device kind) group; a prediction's LOO error is its error. Worst: the signed "
        "LOO error of largest magnitude. Bands: P10–P90 and P5–P95 around each held-out "
        "prediction from its group's LOO spread. `vlscale papers` prints the same numbers; "
        "`vlscale papers --coverage --json` gives the coverage."
    )
    return Section(
        FIDELITY_HEADING,
        [
            _p(fidelity_summary(fid)),
            summary_table(FIDELITY_HEADER, fidelity_table(fid)),
            fidelity_figure(papers),
            _p(note, "note"),
        ],
    )


def _siglip2_section(data: dict[str, Any]) -> Section:
    """SigLIP 2 against SigLIP at the paper's scale (``vlscale.report.siglip2_scale``)."""
    from vlscale.report.siglip2_scale import (
        NO_PUBLISHED_TIME,
        SIGLIP2_HEADER,
        SIGLIP2_HEADING,
        siglip2_rows,
    )

    s = data["scenario"]
    setting = (
        f"{s['devices']:,} {s['device']} ({s['num_slices']} slices of {s['slice_shape']}), "
        f"global batch {s['global_batch']:,}, {s['samples'] / 1e9:.0f}B examples, "
        f"{s['sharding']}, {s['precision']}, checkpointing, the sigmoid loss's "
        f"'{s['loss_impl']}'; SigLIP 2 with the paper's phases (decoder throughout; "
        "self-distillation and masked prediction from 80 %; NaFlex from 90 %)."
    )
    note = (
        "An objective's share is (cost with it − cost without it) / cost with it. Without "
        "NaFlex the self-distillation phase runs to the end, so NaFlex's share is negative when "
        "distillation's passes cost more than NaFlex's lengths. `python "
        "benchmarks/siglip2_paper_scale.py` writes the plans and phases to reports/siglip2/."
    )
    return Section(
        SIGLIP2_HEADING,
        [
            _p(setting),
            _p(NO_PUBLISHED_TIME),
            summary_table(SIGLIP2_HEADER, siglip2_rows(data)),
            _p(note, "note"),
        ],
    )


def _assumptions_section(spec: StudySpec, device, base: dict[str, Any], command: str) -> Section:
    """Hardware and efficiencies with their sources, and the command that reproduces the page."""
    from vlscale.report.assumptions import (
        EFFICIENCY_HEADER,
        HARDWARE_HEADER,
        efficiency_rows,
        hardware_rows,
    )

    cfg = spec.base
    return Section(
        "Assumptions",
        [
            summary_table(HARDWARE_HEADER, hardware_rows(device, cfg.layout.precision)),
            summary_table(EFFICIENCY_HEADER, efficiency_rows(device, cfg, base)),
            "<p>Reproduce this page:</p>",
            f"<pre><code>{html.escape(command)}</code></pre>",
        ],
    )


def build_study_report(
    spec: StudySpec,
    *,
    command: str,
    validation_dir: str | Path = "reports/validation",
    progress: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
) -> str:
    """Plan the study, the base scenario and the published runs, read validation results, and
    return the page's HTML."""
    from vlscale.plan.papers_table import paper_rows
    from vlscale.plan.planner import plan
    from vlscale.report.record import read_validation
    from vlscale.report.siglip2_scale import paper_scale

    validation = read_validation(validation_dir)  # a bad file fails before any planning
    rows = run_study(spec, progress=progress, workers=workers, scheduler=scheduler)
    base = plan(spec.base).to_json()
    return study_report(
        spec,
        rows,
        base,
        paper_rows(),
        validation,
        command,
        validation_dir=str(validation_dir),
        siglip2=paper_scale(),
    )


def write_study_report(html_text: str, path: str | Path) -> Path:
    return write_report_atomic(html_text, path)
