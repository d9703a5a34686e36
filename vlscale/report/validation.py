"""Predicted against measured step times (``vlscale validate --report``): tidy table -> figure.

The figure is a log-log scatter of predicted vs measured median step time, one marker per run,
coloured by split (replay: the runs the profile was fitted to; prediction: held out), with the
y = x line and ±10 % bands (a point inside a band is within 10 % of its measurement).
"""

from __future__ import annotations

import pandas as pd


def validation_frame(result: dict) -> pd.DataFrame:
    """One row per run of a ``vlscale validate --json`` result."""
    rows = [
        {
            "label": r.get("label") or r["path"],
            "split": r["split"],
            "measured_s": r["measured_step_s"],
            "predicted_s": r["predicted_step_s"],
            "error": r["error"],
        }
        for r in result["runs"]
    ]
    return pd.DataFrame(rows, columns=["label", "split", "measured_s", "predicted_s", "error"])


def validation_figure(frame: pd.DataFrame):
    """Scatter of predicted vs measured with y = x and ±10 % lines (log axes)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    lo = float(min(frame["measured_s"].min(), frame["predicted_s"].min())) * 0.8
    hi = float(max(frame["measured_s"].max(), frame["predicted_s"].max())) * 1.25
    for factor, dash, name in (
        (1.0, "solid", "predicted = measured"),
        (1.1, "dot", "±10 %"),
        (0.9, "dot", None),
    ):
        fig.add_trace(
            go.Scatter(
                x=[lo, hi],
                y=[lo * factor, hi * factor],
                mode="lines",
                name=name or "",
                showlegend=name is not None,
                line={"dash": dash, "color": "#999"},
                hoverinfo="skip",
            )
        )
    for split, colour in (("replay", "#1f77b4"), ("prediction", "#d62728")):
        part = frame[frame["split"] == split]
        if part.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=part["measured_s"],
                y=part["predicted_s"],
                mode="markers",
                name=split,
                marker={"color": colour, "size": 9},
                text=[
                    f"{lab}<br>error {e:+.1%}"
                    for lab, e in zip(part["label"], part["error"], strict=True)
                ],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        xaxis={"title": "measured median step time (s)", "type": "log"},
        yaxis={"title": "predicted step time (s)", "type": "log"},
        height=560,
    )
    return fig


def validation_report(result: dict, title: str) -> str:
    from vlscale.report.html import render_report, summary_table

    def pct(x):
        return "–" if x is None else f"{x:.1%}"

    rows = [
        [
            split,
            sum(r["split"] == split for r in result["runs"]),
            pct(result["mape"][split]),
            pct(result["max_error"][split]),
        ]
        for split in ("replay", "prediction")
    ]
    memory = result.get("memory") or {}  # files written before memory was compared lack it
    if memory.get("mape") is not None:
        rows.append(
            ["peak memory (what the run measures)", memory["runs_scored"], pct(memory["mape"]), "–"]
        )
    summary = summary_table(["split", "runs", "MAPE", "max |error|"], rows)
    frame = validation_frame(result)
    return render_report(title, summary, [("Predicted vs measured", validation_figure(frame))])
