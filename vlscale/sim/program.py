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
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlscale.sim.workload import ClipGatherLoss, SiglipGatherLoss, SiglipRingLoss, Workload

STREAMS: tuple[str, ...] = ("compute", "collective", "p2p")
COMPUTE_KINDS = frozenset(
    {"host", "forward", "backward", "loss_forward", "loss_backward", "optimizer"}
)
COMM_KINDS: tuple[str, ...] = ("all_gather", "reduce_scatter", "all_reduce", "p2p")


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

    @property
    def synced(self) -> bool:
        """Communication waits for every member: a collective or a neighbour hop."""
        return self.stream != "compute"

    @property
    def scaled(self) -> bool:
        """Compute is what a straggling rank does slower; wire time is not rescaled."""
        return self.stream == "compute"


@dataclass
class Program:
    """The ops of one step, in enqueue order, plus which ops others wait on."""

    ops: list[Op] = field(default_factory=list)

    def add(
        self,
        stream: str,
        kind: str,
        name: str,
        duration_s: float,
        after_end: tuple[int, ...] = (),
        after_start: tuple[int, ...] = (),
    ) -> int:
        idx = len(self.ops)
        # deps must point backwards: enqueue order is then a topological order
        deps = after_end + after_start
        if deps and max(deps) >= idx:
            raise AssertionError(f"{name}: dependency {max(deps)} is not enqueued before it")
        self.ops.append(Op(idx, stream, kind, name, float(duration_s), after_end, after_start))
        return idx

    def by_stream(self) -> dict[str, list[Op]]:
        out: dict[str, list[Op]] = {s: [] for s in STREAMS}
        for op in self.ops:
            out[op.stream].append(op)
        return {s: ops for s, ops in out.items() if ops}

    def waited_on(self) -> tuple[set[int], set[int]]:
        """(ops whose end someone waits for, ops whose start someone waits for)."""
        ends = {d for op in self.ops for d in op.after_end}
        starts = {d for op in self.ops for d in op.after_start}
        return ends, starts


def compile_program(wl: Workload) -> Program:
    """Build the op program of one step of ``wl`` (see the module docstring for the schedule)."""
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

    loss_bwd_first, loss_ends = _add_loss(p, wl, prev_fwd)
    # the compute op whose start issues the first backward re-gather
    issue_op = loss_bwd_first if loss_bwd_first is not None else prev_fwd

    grad_syncs: list[int] = []
    pending_ag: int | None = None
    if fsdp and wl.reshard_after_forward:
        u = wl.units[n - 1]
        pending_ag = p.add(
            "collective", "all_gather", f"ag bwd {names[n - 1]}", u.all_gather_s, (), (issue_op,)
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
                "collective", "all_gather", f"ag bwd {names[i - 1]}", v.all_gather_s, (), (bwd,)
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


def _add_loss(p: Program, wl: Workload, last_fwd: int):
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
    return _add_ring(p, wl.world_size, loss)


def _add_ring(p: Program, world: int, loss: SiglipRingLoss) -> tuple[int, tuple[int, ...]]:
    """The chunked sigmoid loss: forward pass, then backward pass, each over W blocks.

    Double buffering: the hop that receives block k+1 overwrites the buffer of block k-1, so it
    waits for block k-1's compute; block k waits for its hop (block 0 is the local one). The first
    forward hop waits for the last tower unit (the text embeddings), the first backward hop for the
    last forward block. In backward the text gradient accumulator of block k is sent on after the
    block (grad hop k, enqueued after text hop k+1); the W-th grad hop brings it home (none when
    W = 1).
    """
    gate = len(p.ops) - 1  # the last forward unit
    first_bwd = -1
    ends: tuple[int, ...] = ()
    for phase, kind, block_s in (
        ("fwd", "loss_forward", loss.block_forward_s),
        ("bwd", "loss_backward", loss.block_backward_s),
    ):
        blocks: list[int] = []
        hop = -1
        grad = -1
        for k in range(world):
            deps = (hop,) if k > 0 else ()
            blocks.append(p.add("compute", kind, f"ring {phase} block {k}", block_s, deps))
            if phase == "bwd" and k == 0:
                first_bwd = blocks[0]
            if k + 1 < world:
                free = (blocks[k - 1],) if k >= 1 else (gate,)
                hop = p.add("p2p", "p2p", f"ring {phase} hop {k + 1}", loss.hop_s, free)
            if phase == "bwd" and world > 1:
                grad = p.add("p2p", "p2p", f"ring grad hop {k}", loss.grad_hop_s, (blocks[k],))
        gate = blocks[-1]
        ends = (blocks[-1], grad) if grad >= 0 else (blocks[-1],)
    return first_bwd, ends
