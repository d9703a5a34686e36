"""Compile a :class:`Workload` into the static op program every rank runs each step.

Like CUDA streams, each stream executes its ops in the order the host enqueued them, and an op
starts only when (a) the previous op on its stream has ended, (b) every op in ``after_end`` has
ended and (c) every op in ``after_start`` has started (an *issue point*: FSDP issues the next
all-gather when the current unit's compute starts). ``Program.ops`` is in enqueue order, which
is also a topological order, so a single pass computes earliest times (``critical_path``).

FSDP (FSDP2 semantics, prefetch depth one)::

    compute     fwd0 fwd1 ... fwd(n-1) [loss] bwd(n-1) ... bwd0 optimizer
    collective  ag0  ag1  ... ag(n-1)  [loss ags] agB(n-1) [loss rs] agB(n-2) rs(n-1) ... rs0 [norm]
    ag(i)   issued when fwd(i-1) starts (ag0 at step start); fwd(i) waits for it
    agB(i)  backward re-gather, only when reshard_after_forward: issued when the compute op before
            bwd(i) starts (for the first backward unit: when the loss backward starts)
    rs(i)   issued when bwd(i) ends; the optimizer waits for the last collective

DDP: no gathers; ar(i) (the bucket all-reduce) is issued when bwd(i) ends.

The first backward unit waits for the whole loss phase (the embedding gradients come out of the
loss reduce-scatters, or home by the last ring hop). Zero-duration ops are kept, so a duration
growing from zero never changes the dependency structure.

Long rings are spliced (``compile_program(wl, full_ring_max=...)``). Iteration k of a ring pass is
block k, the hop that brings block k+1 and, in backward, grad hop k; iteration k depends only on
iteration k−1 (and k−2 for the buffer), and every iteration but the last has the same ops. Such a
max-plus recurrence becomes periodic: once iteration i+1 is iteration i shifted by the period P on
every stream of every rank, so is every later one, with P = max(slowest block, p2p time of one
iteration) — the compute loop and the hop loop; the mixed cycles are shorter (Baccelli et al.,
*Synchronization and Linearity*, 1992, ch. 3). A spliced pass enqueues only the first ``m`` and
the last ``m`` iterations; the first op after the splice on each stream, and every dependency
that reaches back over it, waits ``n·P`` longer (n skipped iterations, P per step from the
slowdowns). Everything after the splice then happens at its full-walk time; ops outside the
ring (an FSDP all-gather running beside it) are simulated as they are. The engine checks that the
head had become periodic and otherwise retries with a larger ``m`` or walks every block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from vlscale.sim.workload import ClipGatherLoss, SiglipGatherLoss, SiglipRingLoss, Workload

STREAMS: tuple[str, ...] = ("compute", "collective", "p2p")
COMPUTE_KINDS = frozenset(
    {"host", "forward", "backward", "loss_forward", "loss_backward", "optimizer"}
)
COMM_KINDS: tuple[str, ...] = ("all_gather", "reduce_scatter", "all_reduce", "p2p")
# rings up to this many ranks are walked block by block: the recorded plans of tests/golden
# (a SigLIP ring at 512) keep their bytes; a splice moves the last digits (float rounding)
FULL_RING_MAX = 512
SPLICE_HEADS = (16, 64, 256)  # iterations kept on each side of a splice, tried in turn


@dataclass(frozen=True, slots=True)
class Op:
    """One op of the step program; ``synced`` ops end together on every member rank."""

    idx: int
    stream: str
    kind: str
    name: str
    duration_s: float
    after_end: tuple[int, ...] = ()
    after_start: tuple[int, ...] = ()
    # ring splices: ends waited for n·P later, the stream predecessor too, and which splice
    shifted_end: tuple[int, ...] = ()
    shift_pred: bool = False
    splice: int = -1

    @property
    def synced(self) -> bool:
        """Communication waits for every member: a collective or a neighbour hop."""
        return self.stream != "compute"

    @property
    def scaled(self) -> bool:
        """Compute is what a straggling rank does slower; wire time is not rescaled."""
        return self.stream == "compute"


@dataclass(frozen=True)
class RingSplice:
    """Iterations [first, first + skipped) of one ring pass, left out (module docstring).

    ``probe``: op indices (block, hop, grad hop; −1 where absent) of the last iterations before
    the splice, whose times show whether the pass had become periodic."""

    first: int
    skipped: int
    block_s: float  # one block's compute at nominal speed
    p2p_s: float  # the p2p time of one iteration (hop, and the grad hop in backward)
    probe: tuple[tuple[int, int, int], ...]
    resume: int  # the block three iterations after the splice (where the periodic middle ends)

    def period(self, slowest: float) -> float:
        """Seconds per iteration once periodic, when the slowest simulated rank runs at
        ``slowest`` × nominal (hops are synced, so every rank keeps its pace)."""
        return max(self.block_s * slowest, self.p2p_s)

    def shift(self, slowest: float) -> float:
        return self.skipped * self.period(slowest)


@dataclass
class Program:
    """The ops of one step, in enqueue order, plus which ops others wait on."""

    ops: list[Op] = field(default_factory=list)
    splices: list[RingSplice] = field(default_factory=list)

    def add(
        self,
        stream: str,
        kind: str,
        name: str,
        duration_s: float,
        after_end: tuple[int, ...] = (),
        after_start: tuple[int, ...] = (),
        shifted_end: tuple[int, ...] = (),
        shift_pred: bool = False,
        splice: int = -1,
    ) -> int:
        idx = len(self.ops)
        # deps must point backwards: enqueue order is then a topological order
        deps = after_end + after_start + shifted_end
        if deps and max(deps) >= idx:
            raise AssertionError(f"{name}: dependency {max(deps)} is not enqueued before it")
        self.ops.append(
            Op(
                idx,
                stream,
                kind,
                name,
                float(duration_s),
                after_end,
                after_start,
                shifted_end,
                shift_pred,
                splice,
            )
        )
        return idx

    def by_stream(self) -> dict[str, list[Op]]:
        out: dict[str, list[Op]] = {s: [] for s in STREAMS}
        for op in self.ops:
            out[op.stream].append(op)
        return {s: ops for s, ops in out.items() if ops}

    def waited_on(self) -> tuple[set[int], set[int]]:
        """(ops whose end someone waits for, ops whose start someone waits for)."""
        ends = {d for op in self.ops for d in (*op.after_end, *op.shifted_end)}
        starts = {d for op in self.ops for d in op.after_start}
        return ends, starts

    def watched(self) -> frozenset[int]:
        """The ops whose times the splice checks read (probes and resume blocks)."""
        out = {i for sp in self.splices for row in sp.probe for i in row if i >= 0}
        return frozenset(out | {sp.resume for sp in self.splices})


def splice_is_periodic(program: Program, times, slowest) -> bool:
    """Whether every probed iteration is the one before it shifted by the period, on every
    simulated rank and step (``times[(rank, step, op)] = (start, end)``; ``slowest[step]``)."""
    ranks = {key[0] for key in times}
    for sp in program.splices:
        for step, scale in enumerate(slowest):
            period = sp.period(float(scale))
            for rank in ranks:
                for row, nxt in zip(sp.probe, sp.probe[1:], strict=False):
                    for a, b in zip(row, nxt, strict=True):
                        if a < 0 or b < 0:
                            continue
                        ta, tb = times[(rank, step, a)], times[(rank, step, b)]
                        for x, y in zip(ta, tb, strict=True):
                            # float rounding only: 1e-12 of the clock, 1e-9 of the period
                            if abs(y - x - period) > 1e-9 * period + 1e-12 * max(1.0, abs(y)):
                                return False
    return True


@lru_cache(maxsize=4)  # a plan simulates, then takes the critical path, of one workload
def compile_program(wl: Workload, full_ring_max: int | None = None, splice_at: int = 16) -> Program:
    """Build the op program of one step of ``wl`` (see the module docstring for the schedule;
    the program is shared between callers: read it, never change it).

    ``full_ring_max``: a ring pass of more iterations than this is spliced, keeping the first
    and the last ``splice_at`` (None: every iteration is enqueued)."""
    p = Program()
    fsdp = wl.strategy == "fsdp"
    n = len(wl.units)
    names = [u.name if u.name != "unit" else f"unit{i}" for i, u in enumerate(wl.units)]

    # host work first (batch ready, step bookkeeping): nothing is issued before it ends
    host = (p.add("compute", "host", "host", wl.host_s),) if wl.host_s > 0 else ()
    # forward: all-gather of unit i issued when fwd(i-1) starts, fwd(i) waits for it
    prev_fwd: int | None = None
    for i, u in enumerate(wl.units):
        deps_end: tuple[int, ...] = ()
        if fsdp:
            issue = (prev_fwd,) if prev_fwd is not None else ()
            after = host if prev_fwd is None else ()
            ag = p.add(
                "collective", "all_gather", f"ag fwd {names[i]}", u.all_gather_s, after, issue
            )
            deps_end = (ag,)
        prev_fwd = p.add("compute", "forward", f"fwd {names[i]}", u.forward_s, deps_end)

    loss_bwd_first, loss_ends = _add_loss(p, wl, prev_fwd, full_ring_max, splice_at)
    # the compute op whose start issues the first backward re-gather
    issue_op = loss_bwd_first if loss_bwd_first is not None else prev_fwd

    grad_syncs: list[int] = []
    pending_ag: int | None = None
    if fsdp and wl.reshard_after_forward:
        u = wl.units[n - 1]
        pending_ag = p.add(
            "collective", "all_gather", f"ag bwd {names[n - 1]}", _regather_s(u), (), (issue_op,)
        )
    # the loss reduce-scatters are enqueued after the first backward re-gather
    loss_ends = loss_ends() if callable(loss_ends) else loss_ends
    for i in range(n - 1, -1, -1):
        u = wl.units[i]
        deps = tuple(loss_ends) if i == n - 1 else ()
        if pending_ag is not None:
            deps = (*deps, pending_ag)
        bwd = p.add("compute", "backward", f"bwd {names[i]}", u.backward_s, deps)
        pending_ag = None
        if fsdp and wl.reshard_after_forward and i > 0:
            v = wl.units[i - 1]
            pending_ag = p.add(
                "collective", "all_gather", f"ag bwd {names[i - 1]}", _regather_s(v), (), (bwd,)
            )
        if fsdp:
            rs = p.add("collective", "reduce_scatter", f"rs {names[i]}", u.reduce_scatter_s, (bwd,))
        else:
            rs = p.add("collective", "all_reduce", f"ar {names[i]}", u.all_reduce_s, (bwd,))
        grad_syncs.append(rs)

    last_sync = grad_syncs[-1]
    if wl.grad_norm_all_reduce_s > 0:
        last_sync = p.add(
            "collective", "all_reduce", "grad norm", wl.grad_norm_all_reduce_s, (last_sync,)
        )
    # the collective stream is FIFO, so waiting for its last op waits for every gradient sync
    p.add("compute", "optimizer", "optimizer", wl.optimizer_s, (last_sync,))
    return p


def _add_loss(p: Program, wl: Workload, last_fwd: int, full_ring_max, splice_at):
    """Enqueue the loss forward (and, for gathers, its backward compute).

    Returns (the first loss-backward compute op or None, the ops the first backward unit waits
    for). For gathers the second item is a callable that enqueues the reduce-scatters, so that
    they land on the collective stream after the first backward re-gather, as issued.
    """
    loss = wl.loss
    if loss is None:
        return None, ()
    if isinstance(loss, ClipGatherLoss | SiglipGatherLoss):
        sets = ("image", "text") if isinstance(loss, ClipGatherLoss) else ("text",)
        ags = tuple(
            p.add("collective", "all_gather", f"ag {s} emb", loss.all_gather_s, (last_fwd,))
            for s in sets
        )
        p.add("compute", "loss_forward", "loss fwd", loss.forward_s, ags)
        lb = p.add("compute", "loss_backward", "loss bwd", loss.backward_s)

        def enqueue_rs() -> tuple[int, ...]:
            return tuple(
                p.add("collective", "reduce_scatter", f"rs {s} emb", loss.reduce_scatter_s, (lb,))
                for s in sets
            )

        return lb, enqueue_rs
    assert isinstance(loss, SiglipRingLoss)
    keep = None
    if full_ring_max is not None and wl.world_size > max(full_ring_max, 2 * splice_at + 1):
        keep = splice_at
    return _add_ring(p, wl.world_size, loss, keep)


def _add_ring(
    p: Program, world: int, loss: SiglipRingLoss, keep: int | None
) -> tuple[int, tuple[int, ...]]:
    """The chunked sigmoid loss: forward pass, then backward pass, each over W blocks.

    Double buffering: the hop that receives block k+1 overwrites the buffer of block k-1, so it
    waits for block k-1's compute; block k waits for its hop (block 0 is the local one). The first
    forward hop waits for the last tower unit (the text embeddings), the first backward hop for the
    last forward block. In backward the text gradient accumulator of block k is sent on after the
    block (grad hop k, enqueued after text hop k+1); the W-th grad hop brings it home (none when
    W = 1). ``keep``: splice each pass, enqueuing only its first and last ``keep`` iterations.
    """
    gate = len(p.ops) - 1  # the last forward unit
    first_bwd = -1
    ends: tuple[int, ...] = ()
    for phase, kind, block_s, p2p_s in (
        ("fwd", "loss_forward", loss.block_forward_s, loss.hop_s),
        ("bwd", "loss_backward", loss.block_backward_s, loss.hop_s + loss.grad_hop_s),
    ):
        ring = _RingPass(p, world, keep, block_s, p2p_s)
        for k in ring.iterations():
            deps = ring.need("hop", k) if k > 0 else ((), ())
            block = ring.add(k, "block", "compute", kind, f"ring {phase} block {k}", block_s, deps)
            if phase == "bwd" and k == 0:
                first_bwd = block
            if k + 1 < world:
                free = ring.need("block", k - 1) if k >= 1 else ((gate,), ())
                ring.add(k + 1, "hop", "p2p", "p2p", f"ring {phase} hop {k + 1}", loss.hop_s, free)
            if phase == "bwd" and world > 1:
                name = f"ring grad hop {k}"
                ring.add(k, "grad", "p2p", "p2p", name, loss.grad_hop_s, ((block,), ()))
        last_block = ring.ops["block"][world - 1]
        grad = ring.ops["grad"].get(world - 1, -1)
        gate = last_block
        ends = (last_block, grad) if grad >= 0 else (last_block,)
        ring.close()
    return first_bwd, ends


class _RingPass:
    """One pass of the ring as it is enqueued, spliced or not (module docstring)."""

    def __init__(self, p: Program, world: int, keep: int | None, block_s: float, p2p_s: float):
        self.p, self.world = p, world
        self.first, self.skipped = (keep, world - 2 * keep) if keep else (world, 0)
        self.ops: dict[str, dict[int, int]] = {"block": {}, "hop": {}, "grad": {}}
        self.splice = len(p.splices) if keep else -1
        self.block_s, self.p2p_s = block_s, p2p_s
        self._shift_pred = {"compute": bool(keep), "p2p": bool(keep)}

    def iterations(self):
        yield from range(self.first)
        yield from range(self.first + self.skipped, self.world)

    def need(self, what: str, k: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(plain, shifted) end dependencies on the ``what`` of iteration k: an op left out by
        the splice stands for its twin n iterations earlier, n·P later."""
        table = self.ops[what]
        if k in table:
            return (table[k],), ()
        return (), (table[k - self.skipped],)

    def add(self, k: int, what: str, stream, kind, name, duration_s, deps) -> int:
        after, shifted = deps
        late = self.skipped > 0 and k >= self.first + self.skipped
        shift_pred = late and self._shift_pred[stream]
        if late:
            self._shift_pred[stream] = False
        idx = self.p.add(
            stream,
            kind,
            name,
            duration_s,
            after,
            shifted_end=shifted,
            shift_pred=shift_pred,
            splice=self.splice if late else -1,
        )
        self.ops[what][k] = idx
        return idx

    def close(self) -> None:
        """Record the splice with the last iterations before it (the periodicity probe)."""
        if not self.skipped:
            return
        probe = tuple(
            tuple(self.ops[w].get(k, -1) for w in ("block", "hop", "grad"))
            for k in range(self.first - 6, self.first)
        )
        resume = self.ops["block"][self.first + self.skipped + 3]
        self.p.splices.append(
            RingSplice(self.first, self.skipped, self.block_s, self.p2p_s, probe, resume)
        )


def _regather_s(unit) -> float:
    """The backward re-gather of a unit: none for a frozen (locked) one, whose backward never
    runs (FSDP2 registers no pre-backward hook on outputs that require no grad)."""
    return 0.0 if unit.frozen else unit.all_gather_s
