"""Tables built once from the simulation's records: events, steps, and the time breakdown.

``events``: one row per op, data stall and decode: rank, step, stream, kind, name, start_s, end_s.
Rank 0 is the reported rank; with stragglers, rank 1 is the slowest of the other W−1 (see
``vlscale.sim.stragglers``), or with ``explicit_ranks`` the ranks are the real ones.

``steps``: per step of rank 0, start_s (previous step's end), end_s, step_time_s, warmup flag and
the breakdown columns, which partition [start_s, end_s] of rank 0 by priority::

    compute      any compute op running (forward, backward, loss, optimizer)
    data_stall   no compute, waiting for a batch
    all_gather / reduce_scatter / all_reduce / p2p
                 no compute, no stall, that communication running ("exposed"); when several
                 kinds run at once the instant is split equally between them
    idle         none of the above (e.g. waiting at a barrier for a straggler)

so compute + data_stall + Σ exposed comm + idle = step_time_s (up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlscale.sim.program import COMM_KINDS, COMPUTE_KINDS
from vlscale.sim.workload import Workload

if TYPE_CHECKING:  # pandas is imported when tables are built, keeping `import vlscale.sim` light
    import pandas as pd

EVENT_COLUMNS = ["rank", "step", "stream", "kind", "name", "start_s", "end_s"]
BREAKDOWN_COLUMNS = ["compute", "data_stall", *COMM_KINDS, "idle"]


@dataclass
class SimResult:
    """What a simulation produced; see the module docstring for the tables."""

    workload: Workload
    events: pd.DataFrame
    steps: pd.DataFrame
    simulated_ranks: int
    rank_labels: dict[int, str] = field(default_factory=dict)

    def _measured(self) -> np.ndarray:
        kept = self.steps.loc[~self.steps["warmup"], "step_time_s"].to_numpy()
        return kept

    @property
    def step_time_s(self) -> float:
        """Mean step time over the non-warm-up steps (what a run's wall time scales with)."""
        return float(self._measured().mean())

    @property
    def p50_s(self) -> float:
        return float(np.percentile(self._measured(), 50))

    @property
    def p95_s(self) -> float:
        return float(np.percentile(self._measured(), 95))

    @property
    def breakdown(self) -> pd.Series:
        """Mean seconds per step in each breakdown category (non-warm-up steps)."""
        kept = self.steps.loc[~self.steps["warmup"], BREAKDOWN_COLUMNS]
        return kept.mean()

    def to_chrome_trace(self, path: str | Path) -> Path:
        """Write the events as Chrome trace JSON (opens in Perfetto); atomic. Returns the path."""
        from vlscale.sim.trace import write_chrome_trace

        return write_chrome_trace(self.events, path, self.rank_labels)


def build_result(
    wl: Workload,
    records: list[tuple],
    step_ends: list[list[float]],
    warmup_steps: int,
    simulated_ranks: int,
) -> SimResult:
    """Turn the plain records into tables (once, at the end)."""
    import pandas as pd

    events = pd.DataFrame.from_records(records, columns=EVENT_COLUMNS)
    events = events.sort_values(["rank", "start_s", "end_s"], kind="stable").reset_index(drop=True)
    ends = np.asarray(step_ends[0])
    starts = np.concatenate([[0.0], ends[:-1]])
    steps = pd.DataFrame(
        {
            "step": np.arange(len(ends)),
            "start_s": starts,
            "end_s": ends,
            "step_time_s": ends - starts,
            "warmup": np.arange(len(ends)) < warmup_steps,
        }
    )
    rank0 = events[events["rank"] == 0]
    rows = [
        partition_window(rank0[rank0["step"] == s], a, b)
        for s, a, b in zip(steps["step"], starts, ends, strict=True)
    ]
    steps = pd.concat([steps, pd.DataFrame(rows, columns=BREAKDOWN_COLUMNS)], axis=1)
    labels = {0: "rank 0"}
    if simulated_ranks == 2 and wl.world_size > 2:
        labels[1] = f"slowest of the other {wl.world_size - 1} ranks"
    else:
        labels |= {r: f"rank {r}" for r in range(1, simulated_ranks)}
    return SimResult(wl, events, steps, simulated_ranks, labels)


def partition_window(ev: pd.DataFrame, a: float, b: float) -> list[float]:
    """Split [a, b] into the breakdown categories (priority order in the module docstring)."""
    if b <= a:
        return [0.0] * len(BREAKDOWN_COLUMNS)
    ev = ev[ev["stream"] != "input"]
    s = ev["start_s"].to_numpy().clip(a, b)
    e = ev["end_s"].to_numpy().clip(a, b)
    bounds = np.unique(np.concatenate([[a, b], s, e]))
    seg = np.diff(bounds)
    kinds = ev["kind"].to_numpy()

    def active(mask: np.ndarray) -> np.ndarray:
        # +1 at an interval's first segment, -1 after its last: the running sum counts overlaps
        diff = np.zeros(len(bounds))
        np.add.at(diff, np.searchsorted(bounds, s[mask]), 1)
        np.add.at(diff, np.searchsorted(bounds, e[mask]), -1)
        return np.cumsum(diff)[:-1] > 0

    compute = active(np.isin(kinds, list(COMPUTE_KINDS)))
    stall = active(kinds == "data_stall") & ~compute
    free = ~compute & ~stall
    comm = np.stack([active(kinds == k) & free for k in COMM_KINDS])
    n_comm = comm.sum(axis=0)
    share = np.divide(comm, n_comm, out=np.zeros_like(comm, dtype=float), where=n_comm > 0)
    idle = free & (n_comm == 0)
    return [
        float(seg[compute].sum()),
        float(seg[stall].sum()),
        *(float((seg * share[i]).sum()) for i in range(len(COMM_KINDS))),
        float(seg[idle].sum()),
    ]
