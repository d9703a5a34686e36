"""Figure builders of the study page: a tidy table from ``vlscale.report.study`` (or
``vlscale.report.record``) in, a plotly Figure out, no I/O.

    scaling_figure      one panel per metric against device count (log), a line per
                        (variant, global batch); points that do not fit drawn as crosses
    loss_scaling_figure loss buffers, loss traffic and memory per device against world size at
                        a fixed local batch; a dashed line where each gather stops fitting
    flip_figure         model FLOPs per sample and step time against FLIP's mask ratio
    frontier_figure     wall time against cost: fitting configurations per variant, those that
                        do not fit, the Pareto frontier and the cheapest one per deadline
    calibration_figure  predicted against measured step time, one trace per split, y = x
    papers_figure       signed error of every published-run row, calibration rows apart

Trace names are the categories (variant, split, ...), so tests and the legend find them.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vlscale.report.step_figures import LAYOUT
from vlscale.report.study import SCALING_METRICS, first_unfit
from vlscale.report.tables import GIB, MIB

VARIANT_COLOURS: dict[str, str] = {
    "clip/gather": "#4C78A8",
    "siglip/gather": "#F58518",
    "siglip/ring": "#54A24B",
    "eva-clip/gather": "#B279A2",
}
BATCH_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
LOG_METRICS = {"step_time_s", "wall_time_h", "cost_usd"}


def scaling_figure(frame: pd.DataFrame, title: str = "Scaling with devices") -> go.Figure:
    """``study.scaling_frame``: panels in ``SCALING_METRICS`` order, x = devices (log 2).

    One trace per (metric, variant, global batch), named '<variant>, batch <B>'; only the first
    panel's traces show in the legend (the others share its legend group)."""
    metrics = [(m, label) for m, label in SCALING_METRICS if m in set(frame["metric"])]
    if not metrics:  # nothing planned (every point failed): say so instead of failing
        fig = go.Figure()
        fig.add_annotation(text="no configuration of this grid could be planned", showarrow=False)
        fig.update_layout(title=title)
        return fig
    fig = make_subplots(
        rows=len(metrics), cols=1, shared_xaxes=True, subplot_titles=[lbl for _, lbl in metrics]
    )
    batches = sorted(frame["global_batch"].unique())
    for i, (metric, label) in enumerate(metrics, start=1):
        part = frame[frame["metric"] == metric]
        for (variant, batch), line in part.groupby(["variant", "global_batch"], sort=False):
            name = f"{variant}, batch {int(batch):,}"
            fig.add_trace(
                go.Scatter(
                    name=name,
                    legendgroup=name,
                    showlegend=i == 1,
                    x=line["devices"],
                    y=line["value"],
                    mode="lines+markers",
                    line=dict(
                        color=VARIANT_COLOURS.get(str(variant)),
                        dash=BATCH_DASHES[batches.index(batch) % len(BATCH_DASHES)],
                    ),
                    marker=dict(
                        symbol=["circle" if f else "x" for f in line["fits"]],
                        size=[7 if f else 11 for f in line["fits"]],
                    ),
                    customdata=line["fits"].map({True: "fits", False: "does NOT fit"}),
                    hovertemplate=f"{name}<br>%{{x:,}} devices: %{{y:.4g}} {label}"
                    "<br>%{customdata}<extra></extra>",
                ),
                row=i,
                col=1,
            )
        fig.update_yaxes(
            title_text=label, type="log" if metric in LOG_METRICS else "linear", row=i, col=1
        )
    fig.update_xaxes(type="log", dtick=math.log10(2), tickformat=",d")
    fig.update_xaxes(title_text="devices", row=len(metrics), col=1)
    fig.update_layout(title=title, height=260 * len(metrics) + 120, **LAYOUT)
    return fig


def loss_scaling_figure(
    frame: pd.DataFrame, title: str = "Softmax vs sigmoid: the loss against world size"
) -> go.Figure:
    """``study.loss_scaling_frame``: three panels against W (log 2) — loss buffers (MiB), bytes
    the loss moves per device per step (MiB), memory per device (GiB) with the capacity.

    One trace per (panel, variant) plus one 'device memory' trace; a vertical dashed line at the
    first W where a variant no longer fits (``study.first_unfit``)."""
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "loss buffers per device",
            "loss traffic per device per step",
            "memory per device",
        ),
    )
    panels = (
        ("loss_memory_bytes", MIB, "MiB"),
        ("loss_comm_bytes", MIB, "MiB"),
        ("memory_bytes", GIB, "GiB"),
    )
    for col, (column, unit, unit_name) in enumerate(panels, start=1):
        for variant, part in frame.groupby("variant", sort=False):
            fig.add_trace(
                go.Scatter(
                    name=str(variant),
                    legendgroup=str(variant),
                    showlegend=col == 1,
                    x=part["devices"],
                    y=part[column] / unit,
                    mode="lines+markers",
                    line=dict(color=VARIANT_COLOURS.get(str(variant))),
                    hovertemplate=f"{variant}<br>W=%{{x:,}}: %{{y:,.1f}} {unit_name}"
                    "<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_yaxes(title_text=unit_name, type="log", row=1, col=col)
    capacity = frame.groupby("devices", sort=True)["capacity_bytes"].first() / GIB
    fig.add_trace(
        go.Scatter(
            name="device memory",
            x=list(capacity.index),
            y=list(capacity.to_numpy()),
            mode="lines",
            line=dict(color="black", dash="dash"),
            hovertemplate="%{y:.1f} GiB<extra>device memory</extra>",
        ),
        row=1,
        col=3,
    )
    notes = []
    for variant, devices in first_unfit(frame).items():
        if devices is None:
            continue
        notes.append(f"{variant} stops fitting at W={devices:,}")
        for col in (1, 2, 3):
            fig.add_vline(
                x=devices,
                line=dict(color=VARIANT_COLOURS.get(variant, "grey"), dash="dot"),
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log", dtick=math.log10(2), tickformat=",d", title_text="world size W")
    suffix = "; ".join(notes) if notes else "every variant fits across the range"
    batch = frame["global_batch"] / frame["devices"]
    local = f"local batch {int(batch.iloc[0]):,}" if len(batch) else ""
    fig.update_layout(title=f"{title} ({local}; {suffix})", height=480, **LAYOUT)
    return fig


def flip_figure(frame: pd.DataFrame, title: str = "FLIP: masking image patches") -> go.Figure:
    """``study.flip_frame``: FLOPs per sample (GFLOP, left) and step time (s, right) against
    the mask ratio; two traces named 'model FLOPs per sample' and 'step time'."""
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("model FLOPs per sample", "step time (and wall time)")
    )
    fig.add_trace(
        go.Scatter(
            name="model FLOPs per sample",
            x=frame["mask_ratio"],
            y=frame["flops_per_sample"] / 1e9,
            mode="lines+markers",
            line=dict(color="#4C78A8"),
            hovertemplate="mask %{x:.2f}: %{y:,.1f} GFLOP<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(
            name="step time",
            x=frame["mask_ratio"],
            y=frame["step_time_s"],
            customdata=frame[["wall_time_h", "cost_usd"]].to_numpy(),
            mode="lines+markers",
            line=dict(color="#E45756"),
            hovertemplate="mask %{x:.2f}: %{y:.4f} s/step<br>run: %{customdata[0]:,.1f} h, "
            "$%{customdata[1]:,.0f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    fig.update_xaxes(title_text="mask ratio r")
    fig.update_yaxes(title_text="GFLOP per sample (fwd + bwd)", row=1, col=1)
    fig.update_yaxes(title_text="seconds per step", row=1, col=2)
    fig.update_layout(title=title, height=420, **LAYOUT)
    return fig


def frontier_figure(
    frame: pd.DataFrame, cheapest: pd.DataFrame, title: str = "Cost frontier: time vs money"
) -> go.Figure:
    """``study.frontier_frame`` and ``study.cheapest_per_deadline``: x = wall time (h, log),
    y = cost (USD, log). Traces: one per variant (fitting points), 'does not fit' (when any),
    'frontier', 'cheapest per deadline' (when any deadline is met); deadlines as dotted lines."""
    fig = go.Figure()
    fitting = frame[frame["fits"]]
    for variant, part in fitting.groupby("variant", sort=False):
        fig.add_trace(
            go.Scatter(
                name=str(variant),
                x=part["wall_time_h"],
                y=part["cost_usd"],
                mode="markers",
                marker=dict(color=VARIANT_COLOURS.get(str(variant)), size=8, opacity=0.7),
                text=part["label"],
                hovertemplate="%{text}<br>%{x:,.1f} h, $%{y:,.0f}<extra></extra>",
            )
        )
    unfit = frame[~frame["fits"]]
    if len(unfit):
        fig.add_trace(
            go.Scatter(
                name="does not fit",
                x=unfit["wall_time_h"],
                y=unfit["cost_usd"],
                mode="markers",
                marker=dict(color="#999999", symbol="x", size=9),
                text=unfit["label"],
                hovertemplate="%{text} (does NOT fit)<br>%{x:,.1f} h, $%{y:,.0f}<extra></extra>",
            )
        )
    front = frame[frame["on_frontier"]]
    fig.add_trace(
        go.Scatter(
            name="frontier",
            x=front["wall_time_h"],
            y=front["cost_usd"],
            mode="lines",
            line=dict(color="black", shape="hv"),
            hoverinfo="skip",
        )
    )
    met = cheapest.dropna(subset=["wall_time_h"])
    if len(met):
        fig.add_trace(
            go.Scatter(
                name="cheapest per deadline",
                x=met["wall_time_h"],
                y=met["cost_usd"],
                mode="markers",
                marker=dict(symbol="star", size=16, color="#EECA3B", line=dict(width=1)),
                text=[
                    f"≤ {d:,.0f} h: {lbl}"
                    for d, lbl in zip(met["deadline_h"], met["label"], strict=True)
                ],
                hovertemplate="%{text}<br>%{x:,.1f} h, $%{y:,.0f}<extra></extra>",
            )
        )
    for deadline in cheapest["deadline_h"]:
        fig.add_vline(x=float(deadline), line=dict(color="#aaaaaa", dash="dot"))
        # annotations on a log axis take log10 of the value (shapes take the value itself)
        fig.add_annotation(
            x=math.log10(float(deadline)),
            y=1.0,
            yref="paper",
            yanchor="bottom",
            text=f"{deadline:,.0f} h",
            showarrow=False,
            font=dict(color="#777777"),
        )
    fig.update_layout(
        title=title,
        xaxis=dict(title="wall time (h)", type="log"),
        yaxis=dict(title="cost (USD)", type="log"),
        height=560,
        **LAYOUT,
    )
    return fig


def calibration_figure(
    frame: pd.DataFrame, title: str = "Calibration: predicted vs measured step time"
) -> go.Figure:
    """``record.calibration_frame``: one scatter per split, x = measured, y = predicted step
    time (s, log-log), and the y = x line named 'predicted = measured'."""
    fig = go.Figure()
    for split, part in frame.groupby("split", sort=False):
        fig.add_trace(
            go.Scatter(
                name=str(split),
                x=part["measured_step_s"],
                y=part["predicted_step_s"],
                mode="markers",
                marker=dict(size=9),
                customdata=part[["run", "error"]].to_numpy(),
                hovertemplate="%{customdata[0]}<br>measured %{x:.4g} s, predicted %{y:.4g} s"
                "<br>error %{customdata[1]:+.1%}<extra></extra>",
            )
        )
    values = pd.concat([frame["measured_step_s"], frame["predicted_step_s"]])
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (1e-3, 1.0)
    fig.add_trace(
        go.Scatter(
            name="predicted = measured",
            x=[lo, hi],
            y=[lo, hi],
            mode="lines",
            line=dict(color="black", dash="dash"),
            hoverinfo="skip",
        )
    )
    fig.update_layout(
        title=title,
        xaxis=dict(title="measured step time (s)", type="log"),
        yaxis=dict(title="predicted step time (s)", type="log"),
        height=480,
        **LAYOUT,
    )
    return fig


def papers_figure(
    rows: list[dict], title: str = "Published runs: predicted vs published"
) -> go.Figure:
    """``vlscale papers --json`` rows: bars of the signed error (%), one trace for predictions
    and one for calibration cases; a bar per 'id · metric'."""
    fig = go.Figure()
    for calib, name, colour in (
        (False, "prediction", "#4C78A8"),
        (True, "calibration case", "#BAB0AC"),
    ):
        # a run listed as not plannable has no error to draw
        part = [r for r in rows if r["calibration"] == calib and r["error"] is not None]
        if not part:
            continue
        fig.add_trace(
            go.Bar(
                name=name,
                x=[f"{r['id']} · {r['metric']}" for r in part],
                y=[100 * r["error"] for r in part],
                marker_color=colour,
                customdata=[[r["published"], r["predicted"]] for r in part],
                hovertemplate="%{x}<br>published %{customdata[0]:.4g}, predicted "
                "%{customdata[1]:.4g}<br>error %{y:+.1f} %<extra></extra>",
            )
        )
    fig.update_layout(
        title=title,
        xaxis=dict(title="run · metric", tickangle=-30),
        yaxis=dict(title="error (predicted − published) / published, %"),
        height=480,
        **LAYOUT,
    )
    return fig


def fidelity_figure(
    rows: list[dict], title: str = "Held-out error per stack and device"
) -> go.Figure:
    """``vlscale papers --json`` rows: one point per run at its signed leave-one-out error (%),
    one column (and trace) per 'stack / device kind' group of ``papers_table.loo_groups``,
    and a line at 0."""
    from vlscale.plan.papers_table import loo_groups

    fig = go.Figure()
    for key, part in loo_groups(rows).items():
        fig.add_trace(
            go.Scatter(
                name=key,
                x=[key] * len(part),
                y=[100 * r["loo_error"] for r in part],
                mode="markers",
                marker=dict(size=8, opacity=0.75),
                customdata=[[r["id"], r["split"]] for r in part],
                hovertemplate="%{customdata[0]} (%{customdata[1]})<br>held-out error "
                "%{y:+.1f} %<extra></extra>",
            )
        )
    fig.add_hline(y=0, line=dict(color="black", dash="dash"))
    fig.update_layout(
        title=title,
        xaxis=dict(title="stack / device kind"),
        yaxis=dict(title="held-out error (predicted − published) / published, %"),
        height=420,
        showlegend=False,
        **LAYOUT,
    )
    return fig
