"""Assemble figures and a summary table into ONE self-contained HTML file, written atomically.

plotly.js is inlined once in ``<head>`` (``plotly.offline.get_plotlyjs``, ~4.6 MB) so the file
opens offline; each figure is a ``<div>`` from ``plotly.io.to_html(full_html=False,
include_plotlyjs=False)``. The file is written to a temp file in the target folder and moved into
place with ``os.replace`` (atomic on POSIX when both are on one file system), so a failure never
leaves a half-written report nor a temp file behind.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path

from vlscale.errors import ConfigError
from vlscale.paths import atomic_write_text

SUFFIXES = (".html", ".htm")
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table.summary { border-collapse: collapse; margin: 1rem 0; }
table.summary th, table.summary td { border-bottom: 1px solid #ddd; padding: .3rem .8rem; }
table.summary th { text-align: left; } table.summary td { text-align: right; }
.warning { color: #a33; } .note { color: #666; font-size: .9rem; }
"""


def check_report_path(path: str | Path) -> Path:
    """Fail early (before any planning) on a path the report cannot be written to."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("report", f"'{path}' is a folder; give a file name, e.g. {path}/r.html")
    if path.suffix.lower() not in SUFFIXES:
        raise ConfigError("report", f"'{path}' must end in .html, e.g. --report plan.html")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(
            "report", f"folder '{parent}' does not exist; create it or choose another path"
        )
    if not os.access(parent, os.W_OK):
        raise ConfigError("report", f"folder '{parent}' is not writable; choose another path")
    return path


def summary_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table: ``header`` names the columns, the first cell of each row is its label."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr><th>"
        + html.escape(str(row[0]))
        + "</th>"
        + "".join(f"<td>{html.escape(str(c))}</td>" for c in row[1:])
        + "</tr>"
        for row in rows
    )
    return f'<table class="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_report(
    title: str,
    summary_html: str,
    figures: Sequence[tuple[str, object]],
    notes: Sequence[str] = (),
    warnings: Sequence[str] = (),
) -> str:
    """The whole document: title, summary, warnings, then each (heading, Figure) and notes."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style>",
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        summary_html,
    ]
    parts += [f'<p class="warning">warning: {html.escape(w)}</p>' for w in warnings]
    for heading, fig in figures:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(
            pio.to_html(fig, full_html=False, include_plotlyjs=False, default_height="480px")
        )
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically (``vlscale.paths.atomic_write_text``)."""
    path = check_report_path(path)
    return atomic_write_text(path, text, field="report")
