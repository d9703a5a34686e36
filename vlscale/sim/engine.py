"""The simpy simulation of training steps: per rank a compute, a collective and a P2P stream.

Every simulated rank runs a training loop (take a batch from its input queue, then run the step
program) and, per step, one process per stream that walks that stream's ops in enqueue order
(``vlscale.sim.program``). An op waits for its stream predecessor (implicit: the process is
sequential), for the ends/starts it depends on (simpy events), and — if it is communication —
for every simulated rank to arrive (a barrier), then lasts its duration; compute lasts its
duration times the rank's slowdown for that step. Processes take ``env`` first, share no globals
and append plain tuples; tables are built once at the end (``vlscale.sim.result``).

Which ranks are simulated: see ``vlscale.sim.stragglers`` (rank 0 and the slowest of the rest).

Rings longer than ``full_ring_max`` iterations are spliced (``vlscale.sim.program``): a ring on
65,536 ranks costs what one on a few dozen does. The splice is kept only if the iterations before
it were already periodic on every simulated rank and step; otherwise the simulation is run again
with a longer head, and in the end with every block. The step times equal the full walk's up to
float rounding (tests/test_ring_splice.py); the event table then lacks the skipped iterations,
so traces are made with ``full_ring_max=None``.
"""

from __future__ import annotations

import numpy as np
import simpy

from vlscale.errors import ConfigError
from vlscale.sim.pipeline import start_pipeline
from vlscale.sim.program import (
    FULL_RING_MAX,
    SPLICE_HEADS,
    Op,
    Program,
    compile_program,
    splice_is_periodic,
)
from vlscale.sim.result import SimResult, build_result, splice_windows
from vlscale.sim.stragglers import StragglerModel, reduce_slowdowns, slowdown_matrix
from vlscale.sim.workload import Workload, require_workload

MAX_EXPLICIT_RANKS = 256


class _Barriers:
    """Per (step, op) arrival counters; the event fires when every simulated rank has arrived."""

    def __init__(self, env: simpy.Environment, n_ranks: int, n_ops: int):
        self.env, self.n_ranks, self.n_ops = env, n_ranks, n_ops
        self._steps: dict[int, tuple[list[int], list[simpy.Event | None]]] = {}

    def arrive(self, step: int, idx: int) -> simpy.Event:
        table = self._steps.get(step)
        if table is None:
            table = self._steps[step] = ([0] * self.n_ops, [None] * self.n_ops)
        counts, events = table
        ev = events[idx]
        if ev is None:
            ev = events[idx] = self.env.event()
        counts[idx] += 1
        if counts[idx] == self.n_ranks:
            ev.succeed()
        return ev


def simulate(
    workload: Workload | dict,
    *,
    steps: int = 1,
    warmup_steps: int = 0,
    stragglers: StragglerModel | None = None,
    seed: int = 0,
    explicit_ranks: bool = False,
    slowdowns: np.ndarray | None = None,
    full_ring_max: int | None = FULL_RING_MAX,
) -> SimResult:
    """Simulate ``steps`` consecutive training steps of ``workload``.

    ``stragglers``: per-rank per-step compute slowdown (None: everyone nominal). ``seed`` seeds
    the numpy Generator for slowdowns and decode jitter. ``explicit_ranks`` simulates all W ranks
    instead of the two-rank reduction (only for small W; the tests use it to check the reduction).
    ``slowdowns``: a given (W, steps) matrix instead of draws (reduced to two rows unless
    ``explicit_ranks``). ``warmup_steps`` are marked and left out of the summary statistics.
    ``full_ring_max``: longer rings are spliced (module docstring); None walks every block.
    """
    wl = require_workload(workload)
    _check_args(wl, steps, warmup_steps, explicit_ranks, slowdowns)
    rng = np.random.default_rng(seed)
    if slowdowns is not None:
        mult = np.asarray(slowdowns, dtype=float)
        if not explicit_ranks:
            mult = reduce_slowdowns(mult)
    else:
        mult = slowdown_matrix(stragglers, wl.world_size, steps, rng, explicit_ranks)
    decode_seed = int(rng.integers(2**31))
    # a spliced pass depends on the slowest simulated rank of each step (its period)
    slowest = mult.max(axis=0)
    heads = SPLICE_HEADS if full_ring_max is not None and steps_can_splice(wl, steps) else ()
    for head in heads:
        program = compile_program(wl, full_ring_max, head)
        if not program.splices:
            break
        shifts = [[sp.shift(float(m)) for sp in program.splices] for m in slowest]
        run = _run(wl, program, mult, shifts, decode_seed)
        if splice_is_periodic(program, run.times, slowest):
            middles = splice_windows(program, run.times, slowest)
            return build_result(
                wl, run.records, run.step_ends, warmup_steps, mult.shape[0], middles
            )
    program = compile_program(wl)
    run = _run(wl, program, mult, [[] for _ in slowest], decode_seed)
    return build_result(wl, run.records, run.step_ends, warmup_steps, mult.shape[0])


def steps_can_splice(wl: Workload, steps: int) -> bool:
    """A splice shortens each step; with an input pipeline over several steps that would
    change which steps stall, so those simulations walk every block."""
    return wl.input is None or steps == 1


class _Run:
    """What one simpy run leaves: records, per-rank step ends, and the probed ops' times."""

    def __init__(self, n_ranks: int):
        self.records: list[tuple] = []
        self.step_ends: list[list[float]] = [[] for _ in range(n_ranks)]
        self.times: dict[tuple[int, int, int], tuple[float, float]] = {}


def _run(wl: Workload, program: Program, mult: np.ndarray, shifts, decode_seed: int) -> _Run:
    """Simulate ``program`` on the simulated ranks (rows of ``mult``) for its steps."""
    env = simpy.Environment()
    run = _Run(mult.shape[0])
    barriers = _Barriers(env, mult.shape[0], len(program.ops))
    steps = mult.shape[1]
    for rank in range(mult.shape[0]):
        store = None
        if wl.input is not None:
            store = start_pipeline(env, wl.input, steps, rank, decode_seed, run.records)
        env.process(_rank_loop(env, rank, program, mult[rank], store, barriers, run, shifts))
    env.run()
    return run


def _check_args(wl, steps, warmup_steps, explicit_ranks, slowdowns) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError("steps", f"got {steps!r}; simulate at least 1 step")
    if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < steps:
        raise ConfigError(
            "warmup_steps", f"got {warmup_steps!r}; use 0 <= warmup_steps < steps ({steps})"
        )
    if explicit_ranks and wl.world_size > MAX_EXPLICIT_RANKS:
        raise ConfigError(
            "explicit_ranks",
            f"world_size {wl.world_size} > {MAX_EXPLICIT_RANKS}; drop explicit_ranks: the "
            "two-rank reduction gives the same timeline",
        )
    if slowdowns is not None:
        shape = np.shape(slowdowns)
        if shape != (wl.world_size, steps):
            raise ConfigError(
                "slowdowns",
                f"shape {shape}; give one row per rank and one column per step "
                f"({wl.world_size}, {steps})",
            )
        if not np.all(np.isfinite(slowdowns)) or np.any(np.asarray(slowdowns) <= 0):
            raise ConfigError("slowdowns", "every slowdown must be a finite number > 0")


def _rank_loop(env, rank, program: Program, mult, store, barriers, run: _Run, shifts):
    """One rank: per step, wait for a batch (recording a stall), then run all its streams."""
    by_stream = program.by_stream()
    need_end, need_start = program.waited_on()
    watched = program.watched()
    n = len(program.ops)
    for step in range(len(mult)):
        if store is not None:
            ready = env.now
            yield store.get()
            if env.now > ready:
                run.records.append(
                    (rank, step, "compute", "data_stall", "data stall", ready, env.now)
                )
        ended = [env.event() if i in need_end else None for i in range(n)]
        started = [env.event() if i in need_start else None for i in range(n)]
        ctx = _StepContext(rank, step, float(mult[step]), started, ended, shifts[step], watched)
        procs = [env.process(_stream(env, ops, ctx, barriers, run)) for ops in by_stream.values()]
        yield env.all_of(procs)
        run.step_ends[rank].append(env.now)


class _StepContext:
    """One rank's step: its slowdown, the op events, the splice shifts, the ops to time."""

    __slots__ = ("ended", "rank", "scale", "shifts", "started", "step", "watched")

    def __init__(self, rank, step, scale, started, ended, shifts, watched):
        self.rank, self.step, self.scale = rank, step, scale
        self.started, self.ended, self.shifts, self.watched = started, ended, shifts, watched


def _stream(env, ops: list[Op], ctx: _StepContext, barriers, run: _Run):
    """Run the ops of one stream in order (see the module docstring for the rules)."""
    many = barriers.n_ranks > 1
    started, ended = ctx.started, ctx.ended
    last_end = env.now
    for op in ops:
        for d in op.after_end:
            yield ended[d]
        for d in op.after_start:
            yield started[d]
        if op.splice >= 0:  # after a ring splice: wait for the twins' times + n·P
            shift = ctx.shifts[op.splice]
            ready = last_end + shift if op.shift_pred else env.now
            for d in op.shifted_end:
                ready = max(ready, (yield ended[d]) + shift)
            if ready > env.now:
                yield env.timeout(ready - env.now)
        if many and op.synced:
            yield barriers.arrive(ctx.step, op.idx)
        t0 = env.now
        if started[op.idx] is not None:
            started[op.idx].succeed(t0)
        dur = op.duration_s * ctx.scale if op.scaled else op.duration_s
        if dur > 0:
            yield env.timeout(dur)
        last_end = env.now
        run.records.append((ctx.rank, ctx.step, op.stream, op.kind, op.name, t0, last_end))
        if op.idx in ctx.watched:
            run.times[(ctx.rank, ctx.step, op.idx)] = (t0, last_end)
        if ended[op.idx] is not None:
            ended[op.idx].succeed(last_end)
