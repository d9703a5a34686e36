"""Chrome trace JSON export of a simulated timeline (the format torch.profiler writes).

Trace Event Format (Google, "Trace Event Format" doc): an object ``{"traceEvents": [...]}`` of
complete events ``{"ph": "X", "name", "cat", "ts", "dur", "pid", "tid", "args"}`` with ts/dur in
microseconds, plus ``"ph": "M"`` metadata naming processes (pid = rank) and threads (tid = stream).
Perfetto and chrome://tracing open it, next to a torch.profiler trace of the real step.
The file is written to a temporary file in the same directory and renamed into place, so a crash
never leaves a half-written trace.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from vlscale.paths import atomic_path

if TYPE_CHECKING:
    import pandas as pd

STREAM_TIDS: dict[str, int] = {"compute": 0, "collective": 1, "p2p": 2, "input": 3}


def chrome_trace_events(events: pd.DataFrame, rank_labels: dict[int, str] | None = None) -> list:
    """The trace events (metadata first, then one "X" event per row of ``events``)."""
    labels = rank_labels or {}
    out: list[dict] = []
    for rank in sorted(int(r) for r in events["rank"].unique()):
        name = labels.get(rank, f"rank {rank}")
        out.append({"ph": "M", "name": "process_name", "pid": rank, "args": {"name": name}})
        for stream, tid in STREAM_TIDS.items():
            out.append(
                {
                    "ph": "M",
                    "name": "thread_name",
                    "pid": rank,
                    "tid": tid,
                    "args": {"name": stream},
                }
            )
    for row in events.itertuples(index=False):
        out.append(
            {
                "ph": "X",
                "name": row.name,
                "cat": row.kind,
                "ts": row.start_s * 1e6,
                "dur": (row.end_s - row.start_s) * 1e6,
                "pid": int(row.rank),
                "tid": STREAM_TIDS.get(row.stream, len(STREAM_TIDS)),
                "args": {"step": int(row.step), "stream": row.stream},
            }
        )
    return out


def write_chrome_trace(
    events: pd.DataFrame, path: str | Path, rank_labels: dict[int, str] | None = None
) -> Path:
    """Write ``events`` as a Chrome trace to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"traceEvents": chrome_trace_events(events, rank_labels), "displayTimeUnit": "ms"}
    with atomic_path(path, field="trace") as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh)  # streamed: a long trace is never one string in memory
    return path
