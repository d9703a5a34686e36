"""Predicted against measured step times (``vlscale validate --report``): tidy table -> figure.

The figure is a log-log scatter of predicted vs measured median step time, one marker per run,
coloured by split (replay: the runs the profile was fitted to; prediction: held out), with the
y = x line and ±10 % bands (a point inside a band is within 10 % of its measurement). The summary
beside it gives the errors raw and speed-normalised, the probe-only error, and the noise floor
they should be read against (``summary_lines``, also what ``vlscale validate`` prints).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def validation_frame(result: dict) -> pd.DataFrame:
    """One row per run of a ``vlscale validate --json`` result."""
    import pandas as pd

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

    # files written before these keys existed lack them
    normalised = result.get("mape_normalised") or {}
    rows = [
        [
            split,
            sum(r["split"] == split for r in result["runs"]),
            pct(result["mape"][split]),
            pct(normalised.get(split)),
            pct(result["max_error"][split]),
        ]
        for split in ("replay", "prediction")
    ]
    probe = result.get("probe_only")
    if probe:
        rows.append(
            [f"probe only, bias {probe['bias']:+.1%}", probe["runs"], pct(probe["mape"]),
             pct(probe["mape_normalised"]), "–"]
        )  # fmt: skip
    memory = result.get("memory") or {}
    if memory.get("mape") is not None:
        rows.append(
            ["peak memory (what the run measures)", memory["runs_scored"], pct(memory["mape"]),
             "–", "–"]
        )  # fmt: skip
    header = ["split", "runs", "MAPE", "speed-normalised MAPE", "max |error|"]
    summary = summary_table(header, rows)
    frame = validation_frame(result)
    figures = [("Predicted vs measured", validation_figure(frame))]
    return render_report(title, summary, figures, notes=summary_lines(result))


def summary_lines(result: dict) -> list[str]:
    """The errors per split, raw and speed-normalised, the probe-only error and the noise floor
    they should be read against (also the HTML report's)."""
    lines = []
    for split in ("replay", "prediction"):
        m, x = result["mape"][split], result["max_error"][split]
        n = (result.get("mape_normalised") or {}).get(split)
        if m is not None:
            lines.append(
                f"{split}: MAPE {m:.1%}, max |error| {x:.1%}"
                + (f"; speed-normalised MAPE {n:.1%}" if n is not None else "")
            )
    probe = result.get("probe_only")
    if probe:
        n = probe["mape_normalised"]
        lines.append(
            f"probe only ({probe['device']}, nothing fitted, {probe['runs']} runs): MAPE "
            f"{probe['mape']:.1%}, bias {probe['bias']:+.1%}"
            + (f"; speed-normalised MAPE {n:.1%}" if n is not None else "")
        )
    noise = result.get("noise") or {}
    d, sp = noise.get("repeat_dispersion"), noise.get("speed_index_spread")
    lines.append(
        "noise floor: repeat dispersion "
        + (f"{d:.1%} (median over {noise['repeated_configs']} repeated configurations)" if d
           is not None else "– (no configuration ran twice)")
        + ", speed-index spread "
        + (f"{sp:.1%}" if sp is not None else "–")
    )  # fmt: skip
    without = sum(r.get("error_normalised") is None for r in result["runs"])
    if without:
        lines.append(
            f"{without} of {len(result['runs'])} runs have no speed index (no reference-kernel "
            "times in the run, or none in the profile): their error_normalised is null"
        )
    mem = result["memory"]
    if mem["mape"] is not None:
        lines.append(
            f"peak memory (what the run's metric sees): MAPE {mem['mape']:.1%} over "
            f"{mem['runs_scored']} runs measured above {mem['min_measured_bytes'] / 2**20:.0f} MiB"
        )
    return lines
