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

A spliced ring (``vlscale.sim.program``) leaves out the middle iterations of a pass. Over that
middle the ring's activity repeats with the period P, so its share of the breakdown is counted
from one period (the iteration four before the splice) tiled across it, under whatever else runs
there (an FSDP all-gather); the rest of the step is partitioned from the events as usual.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlscale.sim.program import COMM_KINDS, COMPUTE_KINDS, Program
from vlscale.sim.workload import Workload

if TYPE_CHECKING:  # pandas is imported when tables are built, keeping `import vlscale.sim` light
    import pandas as pd

EVENT_COLUMNS = ["rank", "step", "stream", "kind", "name", "start_s", "end_s"]
BREAKDOWN_COLUMNS = ["compute", "data_stall", *COMM_KINDS, "idle"]


@dataclass
class SimResult:
    """What a simulation produced; see the module docstring for the tables.

    The step times and the breakdown are numpy arrays computed once; ``events`` and ``steps``
    are pandas tables built on first use (reports, traces): a plain ``vlscale plan`` never
    imports pandas (a third of its cold start)."""

    workload: Workload
    records: list[tuple]  # one per event, in EVENT_COLUMNS order
    step_ends: np.ndarray  # rank 0's step end times
    warmup_steps: int
    breakdown_rows: np.ndarray  # (steps, BREAKDOWN_COLUMNS) seconds
    simulated_ranks: int
    rank_labels: dict[int, str] = field(default_factory=dict)

    @property
    def step_times(self) -> np.ndarray:
        return np.diff(self.step_ends, prepend=0.0)

    def _measured(self) -> np.ndarray:
        return self.step_times[self.warmup_steps :]

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
    def breakdown(self) -> dict[str, float]:
        """Mean seconds per step in each breakdown category (non-warm-up steps)."""
        kept = self.breakdown_rows[self.warmup_steps :].mean(axis=0)
        return dict(zip(BREAKDOWN_COLUMNS, map(float, kept), strict=True))

    @cached_property
    def events(self) -> pd.DataFrame:
        import pandas as pd

        events = pd.DataFrame.from_records(self.records, columns=EVENT_COLUMNS)
        return events.sort_values(["rank", "start_s", "end_s"], kind="stable").reset_index(
            drop=True
        )

    @cached_property
    def steps(self) -> pd.DataFrame:
        import pandas as pd

        ends = self.step_ends
        n = len(ends)
        table = pd.DataFrame(
            {
                "step": np.arange(n),
                "start_s": np.concatenate([[0.0], ends[:-1]]),
                "end_s": ends,
                "step_time_s": self.step_times,
                "warmup": np.arange(n) < self.warmup_steps,
            }
        )
        breakdown = pd.DataFrame(self.breakdown_rows, columns=BREAKDOWN_COLUMNS)
        return pd.concat([table, breakdown], axis=1)

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
    middles: list[list[Window]] | None = None,
) -> SimResult:
    """The step times and the breakdown of rank 0 from the plain records (once, at the end);
    ``middles[step]``: the spliced windows (c1, c2, p0, P) of ``splice_windows``."""
    ends = np.asarray(step_ends[0], dtype=float)
    starts = np.concatenate([[0.0], ends[:-1]])
    # rank 0's events as arrays: (step, stream, kind, start, end)
    rank0 = [r for r in records if r[0] == 0]
    step = np.array([r[1] for r in rank0], dtype=int)
    stream = np.array([r[2] for r in rank0], dtype=object)
    kind = np.array([r[3] for r in rank0], dtype=object)
    start = np.array([r[5] for r in rank0], dtype=float)
    end = np.array([r[6] for r in rank0], dtype=float)
    rows = []
    for s, a, b in zip(range(len(ends)), starts, ends, strict=True):
        mask = (step == s) & (stream != "input")
        cuts = middles[s] if middles else []
        rows.append(_partition_step(kind[mask], stream[mask], start[mask], end[mask], a, b, cuts))
    labels = {0: "rank 0"}
    if simulated_ranks == 2 and wl.world_size > 2:
        labels[1] = f"slowest of the other {wl.world_size - 1} ranks"
    else:
        labels |= {r: f"rank {r}" for r in range(1, simulated_ranks)}
    breakdown = np.array(rows, dtype=float).reshape(len(ends), len(BREAKDOWN_COLUMNS))
    return SimResult(wl, records, ends, warmup_steps, breakdown, simulated_ranks, labels)


def partition_window(
    kinds: np.ndarray, starts: np.ndarray, ends: np.ndarray, a: float, b: float
) -> list[float]:
    """Split [a, b] into the breakdown categories (priority order in the module docstring),
    given the kinds and times of the events (input-stream events left out) in that step."""
    if b <= a:
        return [0.0] * len(BREAKDOWN_COLUMNS)
    s = starts.clip(a, b)
    e = ends.clip(a, b)
    bounds = np.unique(np.concatenate([[a, b], s, e]))
    seg = np.diff(bounds)

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


Window = tuple[float, float, float, float]


def splice_windows(program: Program, times, slowest) -> list[list[Window]]:
    """Per step, rank 0's spliced windows of ``program``: (c1, c2, p0, P) with [c1, c2] the
    periodic middle (from three iterations before the splice to three after it) and
    [p0, p0 + P] the period tiled over it."""
    out = []
    for step, scale in enumerate(slowest):
        row = []
        for sp in program.splices:
            p0 = times[(0, step, sp.probe[2][0])][0]
            c1 = times[(0, step, sp.probe[3][0])][0]
            c2 = times[(0, step, sp.resume)][0]
            row.append((c1, c2, p0, sp.period(float(scale))))
        out.append(row)
    return out


def _partition_step(kinds, streams, starts, ends, a, b, middles) -> list[float]:
    """``partition_window`` over [a, b], the spliced middles counted period by period."""
    if not middles:
        return partition_window(kinds, starts, ends, a, b)
    total = np.zeros(len(BREAKDOWN_COLUMNS))
    left = a
    for c1, c2, p0, period in sorted(middles):
        total += partition_window(kinds, starts, ends, left, c1)
        total += _periodic_partition(kinds, streams, starts, ends, c1, c2, p0, period)
        left = c2
    total += partition_window(kinds, starts, ends, left, b)
    return [float(x) for x in total]


def _periodic_partition(kinds, streams, starts, ends, c1, c2, p0, period) -> np.ndarray:
    """The breakdown of [c1, c2] where the ring repeats its activity over [p0, p0 + P] and the
    other events (``kinds`` not of the ring) run as recorded."""
    out = np.zeros(len(BREAKDOWN_COLUMNS))
    if c2 <= c1 or period <= 0:
        return out
    ring = (streams == "p2p") | np.isin(kinds, ["loss_forward", "loss_backward"])
    pat = ring & (starts < p0 + period) & (ends > p0)
    pk, ps, pe = kinds[pat], starts[pat] - p0, ends[pat] - p0
    other = ~ring & (starts < c2) & (ends > c1)
    ok, os_, oe = kinds[other], starts[other].clip(c1, c2), ends[other].clip(c1, c2)
    bounds = np.unique(np.concatenate([[c1, c2], os_, oe]))
    for u, v in itertools.pairwise(bounds):
        mid = (u + v) / 2
        live = ok[(os_ <= mid) & (oe >= mid)]

        def tiled(x, y, live=live):
            # the pattern's copies that can reach [x, y], and the other kinds over all of it
            first = int(np.floor((x - p0) / period)) - 1
            last = int(np.floor((y - p0) / period)) + 1
            shifts = p0 + period * np.arange(first, last + 1)
            k = np.concatenate([np.tile(pk, len(shifts)), live])
            s0 = np.concatenate([(ps[None, :] + shifts[:, None]).ravel(), np.full(len(live), x)])
            s1 = np.concatenate([(pe[None, :] + shifts[:, None]).ravel(), np.full(len(live), y)])
            return partition_window(k, s0, s1, x, y)

        whole = int((v - u) // period)
        if whole:
            out += whole * np.asarray(tiled(p0, p0 + period))
        out += tiled(u + whole * period, v)
    return out
