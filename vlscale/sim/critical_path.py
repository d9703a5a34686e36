"""Analytic step time: earliest start/end of every op with no stragglers and data always ready.

For the op program of ``vlscale.sim.program`` (enqueue order is topological), with s/e the start
and end of an op, ``pred`` its stream predecessor::

    s(op) = max( e(pred), max e(d) for d in after_end, max s(d) for d in after_start, 0 )
    e(op) = s(op) + duration(op)
    step  = max e(op)

This is the longest path through the dependency graph (a max-plus recurrence, so it is
non-decreasing in every duration). The simpy simulation must reproduce it exactly when nothing
random happens — the property tests hold the two together. Long rings are spliced as in the
simulation (``vlscale.sim.program``): a spliced dependency counts n·P later.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlscale.sim.program import (
    FULL_RING_MAX,
    SPLICE_HEADS,
    Program,
    compile_program,
    splice_is_periodic,
)
from vlscale.sim.workload import Workload, require_workload


@dataclass(frozen=True)
class CriticalPath:
    """Step time, per-op (start, end), and the chain of op indices that sets the step time."""

    step_time_s: float
    starts: tuple[float, ...]
    ends: tuple[float, ...]
    path: tuple[int, ...]


def schedule_program(program: Program) -> CriticalPath:
    """Earliest (start, end) of every op of ``program`` and the critical chain."""
    n = len(program.ops)
    starts = [0.0] * n
    ends = [0.0] * n
    # which constraint set each start: used to walk the critical chain back
    why: list[int] = [-1] * n
    last_on: dict[str, int] = {}
    shifts = [sp.shift(1.0) for sp in program.splices]
    for op in program.ops:
        t, src = 0.0, -1
        pred = last_on.get(op.stream)
        if pred is not None and ends[pred] > t:
            t, src = ends[pred], pred
        if op.splice >= 0:
            shift = shifts[op.splice]
            if op.shift_pred and pred is not None and ends[pred] + shift > t:
                t, src = ends[pred] + shift, pred
            for d in op.shifted_end:
                if ends[d] + shift > t:
                    t, src = ends[d] + shift, d
        for d in op.after_end:
            if ends[d] > t:
                t, src = ends[d], d
        for d in op.after_start:
            if starts[d] > t:
                t, src = starts[d], d
        starts[op.idx] = t
        ends[op.idx] = t + op.duration_s
        why[op.idx] = src
        last_on[op.stream] = op.idx
    last = max(range(n), key=ends.__getitem__)
    chain = [last]
    while why[chain[-1]] >= 0:
        chain.append(why[chain[-1]])
    return CriticalPath(ends[last], tuple(starts), tuple(ends), tuple(reversed(chain)))


def critical_path(
    workload: Workload | dict, full_ring_max: int | None = FULL_RING_MAX
) -> CriticalPath:
    """The analytic critical path of one step of ``workload`` (no contention, no stragglers).

    ``full_ring_max``: rings longer than this are spliced (``vlscale.sim.engine``); the starts
    and ends are then those of the ops that were enqueued, and the step time the full walk's.
    None walks every block."""
    wl = require_workload(workload)
    if full_ring_max is not None:
        for head in SPLICE_HEADS:
            program = compile_program(wl, full_ring_max, head)
            if not program.splices:
                break
            cp = schedule_program(program)
            times = {(0, 0, i): (cp.starts[i], cp.ends[i]) for i in program.watched()}
            if splice_is_periodic(program, times, [1.0]):
                return cp
    return schedule_program(compile_program(wl))


def critical_path_time(
    workload: Workload | dict, full_ring_max: int | None = FULL_RING_MAX
) -> float:
    """Shorthand: the analytic step time in seconds."""
    return critical_path(workload, full_ring_max).step_time_s
