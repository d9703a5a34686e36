"""Figure builders: a tidy table from ``vlscale.report.tables`` in, a plotly Figure out.

Each builder is pure (no I/O) and draws one trace per category, named after the category, so
that the legend, hover and tests can find them by name. Colours are fixed per kind across every
figure (compute is blue, FSDP all-gather orange, ...), so a report reads the same way throughout.

    timeline_figure    horizontal bars (``go.Bar`` with ``base`` = start) per (rank, stream) row
    breakdown_figure   stacked bars: seconds per step in each breakdown category, per variant
    memory_figure      stacked bars: GiB per device by category, device capacity as a line
    loss_figure        two panels: loss buffers (MiB) and loss communication per device (MiB)
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vlscale.report.tables import GIB, MIB

KIND_COLOURS: dict[str, str] = {
    "forward": "#4C78A8",
    "backward": "#2E4F7A",
    "loss_forward": "#72B7B2",
    "loss_backward": "#3E8A85",
    "optimizer": "#9D755D",
    "compute": "#4C78A8",
    "all_gather": "#F58518",
    "reduce_scatter": "#E45756",
    "all_reduce": "#B279A2",
    "p2p": "#54A24B",
    "data_stall": "#EECA3B",
    "decode": "#BAB0AC",
    "idle": "#D3D3D3",
}
MEMORY_COLOURS: dict[str, str] = {
    "params": "#4C78A8",
    "master_weights": "#72B7B2",
    "grads": "#54A24B",
    "optimizer_state": "#9D755D",
    "fsdp_buffers": "#F58518",
    "activations": "#E45756",
    "loss_buffers": "#B279A2",
    "overhead": "#BAB0AC",
}
LAYOUT = dict(template="plotly_white", legend=dict(traceorder="normal"), margin=dict(t=60))


def timeline_figure(bars: pd.DataFrame, title: str = "Simulated step timeline") -> go.Figure:
    """Gantt-like chart of ``tables.timeline_frame``: one row per (rank, stream), one trace
    per kind, each bar from ``start_ms`` to ``end_ms`` (hover: op name and how many merged)."""
    step_ms = bars.attrs.get("step_ms")
    notes = []
    if step_ms is not None:
        notes.append(f"step {bars.attrs.get('step', 0)}: {step_ms:,.2f} ms")
    if bars.attrs.get("clipped"):
        notes.append(f"first {len(bars):,} bars shown, {bars.attrs['clipped']:,} later ones cut")
    rows = list(dict.fromkeys(bars["row"]))  # first-seen order: rank, then stream
    fig = go.Figure()
    for kind, part in bars.groupby("kind", sort=False):
        fig.add_trace(
            go.Bar(
                name=str(kind),
                orientation="h",
                y=part["row"],
                base=part["start_ms"],
                x=part["end_ms"] - part["start_ms"],
                marker=dict(color=KIND_COLOURS.get(str(kind)), line=dict(width=0)),
                customdata=part[["name", "count", "start_ms", "end_ms"]].to_numpy(),
                hovertemplate=(
                    "%{customdata[0]}<br>%{customdata[2]:.3f} → %{customdata[3]:.3f} ms"
                    f"<extra>{kind}</extra>"
                ),
            )
        )
    fig.update_layout(
        title=title + (f" ({'; '.join(notes)})" if notes else ""),
        barmode="overlay",
        bargap=0.3,
        xaxis_title="time since step start (ms)",
        yaxis=dict(title="rank · stream", categoryorder="array", categoryarray=rows[::-1]),
        height=max(250, 60 * len(rows) + 150),
        **LAYOUT,
    )
    return fig


def breakdown_figure(frame: pd.DataFrame, title: str = "Where a step goes") -> go.Figure:
    """Stacked bars of ``tables.breakdown_frame``: one bar per variant, one trace per category
    (compute, data stall, exposed communication by kind, idle) in seconds per step."""
    fig = go.Figure()
    for category, part in frame.groupby("category", sort=False):
        fig.add_trace(
            go.Bar(
                name=str(category),
                x=part["variant"],
                y=part["seconds"],
                marker_color=KIND_COLOURS.get(str(category)),
                hovertemplate="%{x}: %{y:.4f} s" + f"<extra>{category}</extra>",
            )
        )
    fig.update_layout(
        title=title,
        barmode="stack",
        xaxis_title="variant",
        yaxis_title="mean time per step (s)",
        **LAYOUT,
    )
    return fig


def memory_figure(frame: pd.DataFrame, title: str = "Memory per device") -> go.Figure:
    """Stacked bars of ``tables.memory_frame`` in GiB, with the device capacity as a line.

    Categories that are zero for every variant are left out (e.g. ``params`` under mixed
    precision FSDP, which keeps no low-precision copy).
    """
    fig = go.Figure()
    for category, part in frame.groupby("category", sort=False):
        if not (part["bytes"] > 0).any():
            continue
        fig.add_trace(
            go.Bar(
                name=str(category),
                x=part["variant"],
                y=part["bytes"] / GIB,
                marker_color=MEMORY_COLOURS.get(str(category)),
                hovertemplate="%{x}: %{y:.2f} GiB" + f"<extra>{category}</extra>",
            )
        )
    capacity = frame.groupby("variant", sort=False)["capacity_bytes"].first() / GIB
    fig.add_trace(
        go.Scatter(
            name="device memory",
            x=list(capacity.index),
            y=list(capacity.to_numpy()),
            # one variant: a marker alone would hide behind the bar; a dashed line reads as a limit
            mode="lines+markers" if len(capacity) > 1 else "markers",
            line=dict(color="black", dash="dash"),
            marker=dict(color="black", symbol="line-ew-open", size=40, line=dict(width=2)),
            hovertemplate="%{x}: %{y:.1f} GiB<extra>device memory</extra>",
        )
    )
    fig.update_layout(
        title=title,
        barmode="stack",
        xaxis_title="variant",
        yaxis_title="bytes per device (GiB)",
        **LAYOUT,
    )
    return fig


def loss_figure(frame: pd.DataFrame, title: str = "The loss: memory and traffic") -> go.Figure:
    """Two panels of ``tables.loss_frame`` in MiB per device: the loss's buffers (left) and what
    the loss moves, forward and backward stacked (right) — softmax gathers both embedding sets,
    the sigmoid ring moves text blocks only, in W−1 hops."""
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("loss buffers per device", "loss communication per device"),
    )
    mem = frame[frame["quantity"] == "memory"]
    fig.add_trace(
        go.Bar(
            name="loss buffers",
            x=mem["variant"],
            y=mem["bytes"] / MIB,
            marker_color=MEMORY_COLOURS["loss_buffers"],
            hovertemplate="%{x}: %{y:,.1f} MiB<extra>loss buffers</extra>",
        ),
        row=1,
        col=1,
    )
    comm = frame[frame["quantity"] != "memory"]
    for quantity, part in comm.groupby("quantity", sort=False):
        fig.add_trace(
            go.Bar(
                name=str(quantity),
                x=part["variant"],
                y=part["bytes"] / MIB,
                marker_color="#54A24B" if quantity == "comm forward" else "#2F6B2A",
                hovertemplate="%{x}: %{y:,.1f} MiB" + f"<extra>{quantity}</extra>",
            ),
            row=1,
            col=2,
        )
    fig.update_layout(title=title, barmode="stack", **LAYOUT)
    fig.update_yaxes(title_text="MiB per device", row=1, col=1)
    fig.update_yaxes(title_text="MiB per device per step", row=1, col=2)
    return fig
