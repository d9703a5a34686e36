"""Collective and point-to-point times: α–β models of the algorithms NCCL and XLA really run.

Message-size convention (bytes, per rank):

    all_gather(shard_bytes)      each rank contributes ``shard_bytes``; ends with p · shard
    reduce_scatter(shard_bytes)  each rank starts with p · shard; ends with its reduced shard
    all_reduce(buffer_bytes)     each rank holds and ends with the whole ``buffer_bytes``
    neighbor_exchange(bytes)     each of ``hops`` steps sends ``bytes`` to the next rank

So FSDP's parameter all-gather takes the shard. ``bytes_moved_per_rank`` follows nccl-tests'
bus-bandwidth convention whatever the algorithm ((p−1)·shard for all-gather / reduce-scatter,
2(p−1)/p · buffer for all-reduce; nccl-tests doc/PERFORMANCE.md), so ``bus_bandwidth`` is what
nccl-tests prints as busbw.

Every step is costed with formula (1) of :mod:`vlscale.costs.topology`:
T(S, D) = S·α + (D + S·n½)/(B·η). Phases on different tiers that NCCL pipelines over chunks
(tree, NVLS-tree, CollNet: the intra-node and inter-node parts run at once) share a *stage*: their
α terms add and the slowest bandwidth term counts. GPU group: g GPUs per node, N nodes, p = g·N;
"node NIC" is the g GPUs' NIC shares together (NCCL spreads its channels over the node's NICs).

GPU (NCCL's algorithm set; the tuner takes the fastest for the size, as ``algorithm="auto"``):

ring       all-gather / reduce-scatter: p−1 steps of the shard, each waiting for the slowest edge
           of the ring: NVLink, or the node-crossing edge at the node NIC's bandwidth (one ring per
           channel, each through its own NIC). All-reduce = reduce-scatter + all-gather. Bus
           bandwidth -> min(B_nvlink·η, node NIC·η): never above the NIC ceiling.
pat        all-gather / reduce-scatter with one GPU per node (NCCL >= 2.23, Parallel Aggregated
           Trees): ⌈lg p⌉ latency steps, the ring's bytes through the NIC.
tree       all-reduce across nodes (NCCL's double binary tree; a chain inside each node): reduce
           up, broadcast down, pipelined. Latency 2(⌈lg N⌉ + g − 1) steps. Bytes: S each way on
           NVLink; 2·S per node through its NICs (an inner node of one tree has two children and a
           parent: 3·S/2, plus S/2 as a leaf of the other; NCCL's own tuner also prices tree
           all-reduce at half its bus bandwidth), so its bus bandwidth stays under the NIC ceiling.
nvls       all-reduce inside one NVSwitch-3+ node (H100/H200/B200; NVLink SHARP): the switch
           reduces and multicasts, each GPU sends and receives its buffer once on the ``nvls``
           tier: T = 2α + (S + 2 n½)/(B·η_nvls).
nvls_tree  across such nodes: NVLS inside the node pipelined with the tree across nodes, each
           GPU's rail carrying only its 1/g slice of the node's reduced buffer. On exactly 2 nodes
           the slices are simply swapped (S per node through its NICs, not 2·S): the bus bandwidth
           can pass the NIC ceiling, as measured (470 GB/s on 2 x 8 H100, nccl-tests #309).
collnet    all-reduce when the fabric reduces (InfiniBand SHARP; only when the cluster says so):
           each node sends S up and gets S back: S through the node NIC, pipelined with the
           intra-node part (NVLS where the node has it, else the NVLink chain).

TPU (XLA on ICI; jax-ml "How to Scale Your Model", sharding chapter):

torus      all-gather over every axis of the slice AT ONCE. The data is split into parts, each
           gathered through the axes in its own order, so all axes' links carry traffic together;
           an axis of k chips moves f·(chunk) per link direction with f = (k−1)/2 on a ring
           (wraparound: half the chunks come from each side) or k−1 on a line, the chunk growing
           by k after each axis. The split that minimises the busiest axis is a small linear
           program (``_torus_load``). With every axis wrapped this gives the book's
           T ≈ V / (W_bidi · n_axes); latency Σ ⌈(k−1)/2⌉ hops (the longest path). Reduce-
           scatter runs the same steps reversed; all-reduce = reduce-scatter + all-gather.
multislice several slices over DCN (each chip its host's DCN share): an all-gather of the
           shard across slices, then the torus all-gather of N shards inside each slice
           (all-reduce / reduce-scatter: the mirror), one after the other.
ring       the snake ring through the slice on one link one way (a baseline, never better).

Broadcast: binomial ``tree`` (⌈lg p⌉ steps of the whole buffer) or ``scatter_allgather`` (van de
Geijn; Thakur, Rabenseifner & Gropp 2005: binomial scatter, then the best all-gather). The result
names the algorithm taken and lists the others in ``alternatives``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np

from vlscale.costs.topology import Group, Tier
from vlscale.errors import ConfigError


@dataclass(frozen=True)
class Phase:
    """Consecutive steps on one tier: ``steps`` steps moving ``bytes_per_link`` per direction.

    Phases with the same ``stage`` are pipelined: their bandwidth terms overlap.
    ``time_s`` is the phase on its own."""

    tier: str
    steps: int
    bytes_per_link: float
    time_s: float
    stage: int = 0


@dataclass(frozen=True)
class CollectiveResult:
    """Predicted time of one collective on one group."""

    op: str
    algorithm: str
    group_size: int
    message_bytes: float
    time_s: float
    bytes_moved_per_rank: float
    phases: tuple[Phase, ...] = ()
    alternatives: tuple[tuple[str, float], ...] = field(default=(), compare=False)

    @property
    def bus_bandwidth(self) -> float:
        """bytes_moved_per_rank / time (NCCL-tests busbw), bytes/s; 0 for an empty collective."""
        return self.bytes_moved_per_rank / self.time_s if self.time_s > 0 else 0.0


class _Stage:
    """Identity of a pipelined stage (phases sharing one overlap their bandwidth terms)."""


@dataclass(frozen=True)
class _Step:
    tier: Tier
    steps: int
    moved: float  # bytes per link direction
    stage: _Stage = field(default_factory=_Stage)
    lane: int = 0  # lanes of one stage run concurrently; steps within a lane in sequence


Schedule = list[_Step]


def _seq(*entries: tuple[Tier, int, float]) -> Schedule:
    """Steps run one after another: one stage, one lane."""
    stage = _Stage()
    return [_Step(t, s, d, stage) for t, s, d in entries]


def _pipelined(*entries: tuple[Tier, int, float]) -> Schedule:
    """Phases on different tiers pipelined over chunks: one stage, one lane each."""
    stage = _Stage()
    return [_Step(t, s, d, stage, lane) for lane, (t, s, d) in enumerate(entries)]


def all_gather(shard_bytes: float, group: Group, algorithm: str = "auto") -> CollectiveResult:
    """All-gather of ``shard_bytes`` per rank (each rank ends with p · shard_bytes)."""
    n = _check_bytes(shard_bytes, "shard_bytes")
    moved = (group.size - 1) * n
    return _pick("all_gather", n, group, algorithm, _ag_candidates(n, group), moved)


def reduce_scatter(shard_bytes: float, group: Group, algorithm: str = "auto") -> CollectiveResult:
    """Reduce-scatter ending with ``shard_bytes`` per rank: the all-gather steps reversed."""
    n = _check_bytes(shard_bytes, "shard_bytes")
    cands = {k: (lambda f=f: f()[::-1]) for k, f in _ag_candidates(n, group).items()}
    moved = (group.size - 1) * n
    return _pick("reduce_scatter", n, group, algorithm, cands, moved)


def all_reduce(buffer_bytes: float, group: Group, algorithm: str = "auto") -> CollectiveResult:
    """All-reduce of ``buffer_bytes``: reduce-scatter + all-gather (ring, torus, multislice) or
    one of NCCL's reduction trees (tree, nvls, nvls_tree, collnet)."""
    n = _check_bytes(buffer_bytes, "buffer_bytes")
    shard = n / group.size
    cands = {
        k: (lambda f=f: f()[::-1] + f())
        for k, f in _ag_candidates(shard, group).items()
        if k != "pat"  # NCCL runs PAT for all-gather / reduce-scatter only
    }
    cands |= _ar_trees(n, group)
    moved = 2 * (group.size - 1) * shard
    return _pick("all_reduce", n, group, algorithm, cands, moved)


def neighbor_exchange(
    bytes_per_hop: float, group: Group, hops: int | None = None, bidirectional: bool = False
) -> CollectiveResult:
    """``hops`` (default p−1) ring hops, each sending ``bytes_per_hop`` to the next rank.

    This is the sigmoid-loss ring: W−1 hops of n bytes move (W−1)·n bytes per rank, the same as
    one all-gather of n, but as serial steps that can hide behind block compute. Each hop waits
    for the slowest link of the ring (the NIC once the ring leaves a node). ``bidirectional``
    sends to both neighbours, covering the hops in ⌈hops/2⌉ steps; each rank still receives
    hops·n bytes, through one ingress (a GPU's NVLink, its NIC share, a host's DCN share), so
    only the per-step costs (α, n½) are saved -- except on TPU ICI, where each neighbour comes
    over its own link and each link carries ⌈hops/2⌉·n.
    """
    n = _check_bytes(bytes_per_hop, "bytes_per_hop")
    hops = group.size - 1 if hops is None else hops
    if hops < 0:
        raise ConfigError("hops", f"must be >= 0, got {hops}")
    steps = math.ceil(hops / 2) if bidirectional else hops
    name = "bidirectional_ring" if bidirectional else "ring"
    tier = _bottleneck(group, n)
    own_links = group.kind == "tpu" and tier is group.inner  # one ICI link per neighbour
    per_link = steps * n if own_links else hops * n
    cands = {name: lambda: _seq((tier, steps, per_link))}
    return _pick("neighbor_exchange", n, group, name, cands, hops * n, empty=hops == 0)


def algorithms(op: str, group: Group) -> list[str]:
    """Algorithms available for ``op`` on ``group``."""
    if op == "neighbor_exchange":
        return ["ring", "bidirectional_ring"]
    ag = list(_ag_candidates(1.0, group))
    if op == "all_reduce":
        return [k for k in ag if k != "pat"] + list(_ar_trees(1.0, group))
    return ag


# --------------------------------------------------------------------------- all-gather schedules


def _ag_candidates(n: float, group: Group) -> dict[str, Callable[[], Schedule]]:
    """All-gather schedules (shard n) available on ``group``, by algorithm name (on a tie the
    first listed wins: XLA's torus algorithms before the snake ring)."""
    cands: dict[str, Callable[[], Schedule]] = {}
    if group.kind == "gpu":
        cands["ring"] = lambda: _ring(n, group)
        if group.inner_size == 1 and group.outer_size > 1:
            cands["pat"] = lambda: _pat(n, group)
        return cands
    if group.inner_size > 1 and group.outer_size == 1:
        cands["torus"] = lambda: _torus(n, group)
    elif group.outer_size > 1:
        cands["multislice"] = lambda: _multislice(n, group)
    cands["ring"] = lambda: _ring(n, group)
    return cands


def _ring(n: float, group: Group) -> Schedule:
    p = group.size
    return _seq((_bottleneck(group, n, ring=group.kind == "gpu"), p - 1, (p - 1) * n))


def _pat(n: float, group: Group) -> Schedule:
    p = group.size
    return _seq((group.outer, math.ceil(math.log2(p)), (p - 1) * n))


def _torus(n: float, group: Group) -> Schedule:
    axes = tuple((k, w) for k, w in zip(group.torus_dims, group.torus_wrap, strict=True) if k > 1)
    steps = sum(math.ceil((k - 1) / 2) if w else k - 1 for k, w in axes)
    return _seq((group.inner, steps, _torus_load(axes) * n))


def _multislice(n: float, group: Group) -> Schedule:
    slices = group.outer_size
    dcn = _seq((group.outer, slices - 1, (slices - 1) * n))
    if group.inner_size == 1:
        return dcn
    inner = Group("tpu", group.inner_size, 1, group.inner, None, group.torus_dims, group.torus_wrap)
    return dcn + _torus(n * slices, inner)


@cache
def _torus_load(axes: tuple[tuple[int, bool], ...]) -> float:
    """Bytes through the busiest ICI link direction per byte of shard, all axes at once.

    Each order o of the axes gathers a fraction x_o of the data; on axis a it moves
    L_o[a] = f(k_a) · Π(k_b for b before a in o) per byte of shard. Minimise t subject to
    Σ_o x_o L_o[a] <= t for every axis, Σ x_o = 1, x >= 0. A linear program with at most 3 axes
    and 6 orders: its optimum is a vertex where at least as many axis constraints are tight as
    orders are used, so every (orders S, tight axes A, |S| = |A|) system is solved exactly.
    """
    if not axes:
        return 0.0
    m = len(axes)
    loads = []
    for order in itertools.permutations(range(m)):
        row, grown = [0.0] * m, 1.0
        for a in order:
            k, wrap = axes[a]
            row[a] = ((k - 1) / 2 if wrap else k - 1) * grown
            grown *= k
        loads.append(row)
    loads_arr = np.array(loads)  # orders x axes
    best = min(max(r) for r in loads)  # one order alone (a vertex with |S| = 1)
    for s in range(2, m + 1):
        for orders in itertools.combinations(range(len(loads)), s):
            for tight in itertools.combinations(range(m), s):
                # unknowns x_S (s) and t: Σ_o x_o L_o[a] − t = 0 (a in A), Σ x_o = 1
                mat = np.zeros((s + 1, s + 1))
                mat[:s, :s] = loads_arr[np.ix_(orders, tight)].T
                mat[:s, s] = -1.0
                mat[s, :s] = 1.0
                rhs = np.zeros(s + 1)
                rhs[s] = 1.0
                try:
                    sol = np.linalg.solve(mat, rhs)
                except np.linalg.LinAlgError:
                    continue
                x, t = sol[:s], sol[s]
                if (x < -1e-12).any():
                    continue
                if (x @ loads_arr[list(orders)] <= t * (1 + 1e-12) + 1e-12).all():
                    best = min(best, float(t))
    return best


# --------------------------------------------------------------------------- all-reduce trees


def _ar_trees(n: float, group: Group) -> dict[str, Callable[[], Schedule]]:
    """NCCL's all-reduce algorithms that are not reduce-scatter + all-gather (GPU only)."""
    if group.kind != "gpu":
        return {}
    g, nodes = group.inner_size, group.outer_size
    cands: dict[str, Callable[[], Schedule]] = {}
    nvls = group.nvls if g > 1 else None
    if nodes == 1:
        if nvls is not None:
            cands["nvls"] = lambda: _seq((nvls, 2, n))
        return cands
    node_nic = _node_nic(group)
    levels = math.ceil(math.log2(nodes))
    chain = (group.inner, 2 * (g - 1), n) if g > 1 else None

    def tree() -> Schedule:
        return _pipelined(*filter(None, [(node_nic, 2 * levels, 2 * n), chain]))

    cands["tree"] = tree
    if nvls is not None:
        swap = 1 if nodes == 2 else 2
        cands["nvls_tree"] = lambda: _pipelined((nvls, 2, n), (node_nic, 2 * levels, swap * n))
    if group.in_network_reduction:
        intra = (nvls, 2, n) if nvls is not None else chain
        cands["collnet"] = lambda: _pipelined(*filter(None, [(node_nic, 2, n), intra]))
    return cands


# --------------------------------------------------------------------------- helpers


def _node_nic(group: Group) -> Tier:
    """The node's NICs together: NCCL spreads its channels over them (one per rail)."""
    return replace(group.outer, bandwidth=group.outer.bandwidth * group.inner_size)


def _bottleneck(group: Group, chunk: float, ring: bool = False) -> Tier:
    """The tier whose one step of ``chunk`` is slowest: a synchronous step waits for it.

    ``ring``: a flat ring crosses each node boundary once per ring, and NCCL runs one ring per
    channel out of each NIC, so the crossing edge gets the node's whole NIC bandwidth
    (``inner_size`` times the per-rank share)."""
    tiers = list(group.tiers or (group.inner,))
    if ring and group.outer_size > 1:
        tiers[-1] = _node_nic(group)
    return max(tiers, key=lambda t: t.phase_time(1, chunk))


def _time(schedule: Schedule) -> float:
    """Σ over stages of (Σ S·α + the longest lane's Σ (D + S·n½)/(B·η))."""
    total, i = 0.0, 0
    while i < len(schedule):
        j = i
        while j < len(schedule) and schedule[j].stage is schedule[i].stage:
            j += 1
        lanes: dict[int, float] = {}
        for st in schedule[i:j]:
            alpha = st.steps * st.tier.alpha_s
            total += alpha
            lanes[st.lane] = (
                lanes.get(st.lane, 0.0) + st.tier.phase_time(st.steps, st.moved) - alpha
            )
        total += max(lanes.values())
        i = j
    return total


def _pick(op, n, group, algorithm, cands, moved, empty=False) -> CollectiveResult:
    if algorithm != "auto" and algorithm not in cands:
        raise ConfigError(
            "algorithm", f"'{algorithm}' is not available for {op} here; use one of {list(cands)}"
        )
    if group.size == 1 or n == 0 or empty:
        return CollectiveResult(op, "none", group.size, n, 0.0, 0.0)
    times = {k: _time(f()) for k, f in cands.items()}
    name = min(times, key=times.get) if algorithm == "auto" else algorithm
    schedule = [st for st in cands[name]() if st.steps > 0]
    stage_ids: dict[int, int] = {}
    phases = tuple(
        Phase(
            st.tier.name,
            st.steps,
            st.moved,
            st.tier.phase_time(st.steps, st.moved),
            stage_ids.setdefault(id(st.stage), len(stage_ids)),
        )
        for st in schedule
    )
    bytes_moved = moved[name] if isinstance(moved, dict) else moved
    alternatives = tuple(sorted(times.items(), key=lambda kv: kv[1]))
    return CollectiveResult(
        op, name, group.size, n, _time(schedule), bytes_moved, phases, alternatives
    )


def _check_bytes(value: float, name: str) -> float:
    if not (value >= 0 and math.isfinite(value)):
        raise ConfigError(name, f"message size must be a finite number of bytes >= 0, got {value}")
    return float(value)
