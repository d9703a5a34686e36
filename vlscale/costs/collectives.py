"""Collective and point-to-point times: α–β models with an algorithm chosen per message size.

Message-size convention (bytes, per rank):

    all_gather(shard_bytes)      each rank contributes ``shard_bytes``; ends with p · shard
    reduce_scatter(shard_bytes)  each rank starts with p · shard; ends with its reduced shard
    all_reduce(buffer_bytes)     each rank holds and ends with the whole ``buffer_bytes``
    broadcast(buffer_bytes)      the root's ``buffer_bytes`` reach every rank
    neighbor_exchange(bytes)     each of ``hops`` steps sends ``bytes`` to the next rank

So FSDP's parameter all-gather takes the shard, and all_reduce(n) = reduce_scatter(n/p) then
all_gather(n/p). ``bytes_moved_per_rank`` is what the busiest rank sends (= receives) in total;
for ring all-gather it is (p−1)·shard, NCCL-tests' "bus bandwidth" is bytes_moved / time.

Every step is costed with formula (1) of :mod:`vlscale.costs.topology`:
T(S, D) = S·α + (D + S·n½)/(B·η). Algorithms (Thakur, Rabenseifner & Gropp 2005, "Optimization
of Collective Communication Operations in MPICH", IJHPCA 19(1); chunk sizes below are for an
all-gather of shard n, a reduce-scatter runs the same steps in reverse order at the same cost,
the reduction arithmetic is assumed hidden):

ring              p−1 steps of n; each step waits for the slowest link in the ring. Across
                  nodes NCCL runs one ring per channel, each leaving the node through its own
                  NIC, so the node-crossing edge gets the node's whole NIC bandwidth.
                  T = (p−1)·α + (p−1)·n/B (plus n½ terms).
halving_doubling  recursive doubling: ⌈lg p⌉ steps of n, 2n, 4n, ... (Bruck's schedule for
                  p not a power of two: the last step sends the remainder), same (p−1)·n bytes
                  as ring with lg p latency terms. With p and the node size powers of two the
                  first lg g steps stay inside a node; otherwise every step is costed on the
                  slowest tier. Not used on a TPU torus (partners are many hops apart).
hierarchical      GPU nodes / TPU slices: first an all-gather of n across the N nodes between
                  same-local-rank devices (each rail at once, on the outer tier), then the best
                  inner all-gather of N·n within each node/slice. Same (p−1)·n bytes; only
                  (N−1) steps pay the slow tier's α. The two phases are pipelined over chunks:
                  their α terms add, their bandwidth terms overlap (time = Σ S·α + max of
                  the (D + S·n½)/(B·η) terms), which makes it never slower than the flat ring
                  (the proof is in tests/properties/test_collective_properties.py).
torus             TPU ICI (jax-ml "How to Scale Your Model", part 3): one axis after another,
                  bidirectional rings. An axis of k chips with wraparound needs ⌈(k−1)/2⌉ steps
                  moving (k−1)·c/2 bytes each way per link; without wraparound (a line) k−1
                  steps and (k−1)·c bytes: half the bandwidth. The chunk c grows by k after each
                  axis; the best axis order is taken.

all_reduce = reduce_scatter + all_gather of the same family (ring: 2(p−1) steps of n/p;
Rabenseifner's halving-doubling: 2⌈lg p⌉ steps). Broadcast: binomial ``tree`` (⌈lg p⌉ steps of
the whole buffer) or ``scatter_allgather`` (van de Geijn; Thakur et al. §4.1: binomial scatter,
then the best all-gather). As NCCL does, ``algorithm="auto"`` takes the fastest candidate; the
result says which, and lists the others in ``alternatives``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from vlscale.costs.topology import Group, Tier
from vlscale.errors import ConfigError


@dataclass(frozen=True)
class Phase:
    """Consecutive steps on one tier: ``steps`` steps moving ``bytes_per_link`` per direction.

    Phases with the same ``stage`` are pipelined (hierarchical): their bandwidth terms overlap.
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
    """All-reduce of ``buffer_bytes`` = reduce-scatter then all-gather of buffer/p per rank."""
    n = _check_bytes(buffer_bytes, "buffer_bytes")
    shard = n / group.size
    cands = {k: (lambda f=f: f()[::-1] + f()) for k, f in _ag_candidates(shard, group).items()}
    moved = 2 * (group.size - 1) * shard
    return _pick("all_reduce", n, group, algorithm, cands, moved)


def broadcast(buffer_bytes: float, group: Group, algorithm: str = "auto") -> CollectiveResult:
    """Broadcast of ``buffer_bytes`` from one root: binomial tree or scatter + all-gather."""
    n = _check_bytes(buffer_bytes, "buffer_bytes")
    p = group.size
    rounds = math.ceil(math.log2(p)) if p > 1 else 0
    scatter_moved = (p - 1) / p * n

    def tree() -> Schedule:
        return _seq((_bottleneck(group, n), rounds, rounds * n))

    def scatter_allgather() -> Schedule:
        ag = min((f() for f in _ag_candidates(n / p, group).values()), key=_time)
        return [*_seq((_bottleneck(group, n / 2), rounds, scatter_moved)), *ag]

    cands = {"tree": tree, "scatter_allgather": scatter_allgather}
    moved = {"tree": rounds * n, "scatter_allgather": scatter_moved + (p - 1) * n / p}
    return _pick("broadcast", n, group, algorithm, cands, moved)


def neighbor_exchange(
    bytes_per_hop: float, group: Group, hops: int | None = None, bidirectional: bool = False
) -> CollectiveResult:
    """``hops`` (default p−1) ring hops, each sending ``bytes_per_hop`` to the next rank.

    This is the sigmoid-loss ring: W−1 hops of n bytes move (W−1)·n bytes per rank, the same as
    one all-gather of n, but as serial steps that can hide behind block compute. Each hop waits
    for the slowest link of the ring (the NIC once the ring leaves a node). ``bidirectional``
    sends to both neighbours, covering the hops in ⌈hops/2⌉ steps.
    """
    n = _check_bytes(bytes_per_hop, "bytes_per_hop")
    hops = group.size - 1 if hops is None else hops
    if hops < 0:
        raise ConfigError("hops", f"must be >= 0, got {hops}")
    steps = math.ceil(hops / 2) if bidirectional else hops
    name = "bidirectional_ring" if bidirectional else "ring"
    cands = {name: lambda: _seq((_bottleneck(group, n), steps, steps * n))}
    return _pick("neighbor_exchange", n, group, name, cands, hops * n, empty=hops == 0)


def algorithms(op: str, group: Group) -> list[str]:
    """Algorithms available for ``op`` on ``group``."""
    if op == "broadcast":
        return ["tree", "scatter_allgather"]
    if op == "neighbor_exchange":
        return ["ring", "bidirectional_ring"]
    return list(_ag_candidates(1.0, group))


# --------------------------------------------------------------------------- all-gather schedules


def _ag_candidates(n: float, group: Group) -> dict[str, Callable[[], Schedule]]:
    """All-gather schedules (shard n) available on ``group``, by algorithm name."""
    cands: dict[str, Callable[[], Schedule]] = {"ring": lambda: _ring(n, group)}
    if group.kind == "gpu":
        cands["halving_doubling"] = lambda: _halving_doubling(n, group)
    elif group.inner_size > 1 and group.outer_size == 1:
        cands["torus"] = lambda: _torus(n, group)
    if group.outer_size > 1 and group.inner_size > 1:
        cands["hierarchical"] = lambda: _hierarchical(n, group)
    return cands


def _ring(n: float, group: Group) -> Schedule:
    p = group.size
    return _seq((_bottleneck(group, n, ring=True), p - 1, (p - 1) * n))


def _halving_doubling(n: float, group: Group) -> Schedule:
    p, g = group.size, group.inner_size
    schedule = []
    have = 1  # shards held so far
    split = _pow2(p) and _pow2(g) and group.outer_size > 1
    while have < p:
        chunk = min(have, p - have) * n
        tier = group.inner if (split and have < g) or group.outer_size == 1 else None
        schedule.append((tier or _bottleneck(group, chunk), 1, chunk))
        have += min(have, p - have)
    return _merge(_seq(*schedule))


def _torus(n: float, group: Group) -> Schedule:
    axes = [(k, w) for k, w in zip(group.torus_dims, group.torus_wrap, strict=True) if k > 1]
    best: list[tuple[Tier, int, float]] = []
    for order in itertools.permutations(axes):
        schedule, chunk = [], n
        for k, wrap in order:
            if wrap:  # bidirectional ring: half of the k−1 chunks arrive from each side
                schedule.append((group.inner, math.ceil((k - 1) / 2), (k - 1) * chunk / 2))
            else:  # a line: the end chip gets all k−1 chunks through one link
                schedule.append((group.inner, k - 1, (k - 1) * chunk))
            chunk *= k
        if not best or _time(_seq(*schedule)) < _time(_seq(*best)):
            best = schedule
    return _seq(*best)


def _hierarchical(n: float, group: Group) -> Schedule:
    outer_group = Group(group.kind, 1, group.outer_size, group.inner, group.outer)
    outer = min(
        (f() for k, f in _ag_candidates(n, outer_group).items() if k != "hierarchical"),
        key=_time,
    )
    inner_group = Group(
        group.kind, group.inner_size, 1, group.inner, None, group.torus_dims, group.torus_wrap
    )
    inner = min(
        (f() for f in _ag_candidates(n * group.outer_size, inner_group).values()), key=_time
    )
    stage = _Stage()  # the two phases are pipelined over chunks: one stage, two lanes
    return [_Step(st.tier, st.steps, st.moved, stage, 0) for st in outer] + [
        _Step(st.tier, st.steps, st.moved, stage, 1) for st in inner
    ]


# --------------------------------------------------------------------------- helpers


def _bottleneck(group: Group, chunk: float, ring: bool = False) -> Tier:
    """The tier whose one step of ``chunk`` is slowest: a synchronous step waits for it.

    ``ring``: a flat ring crosses each node boundary once per ring, and NCCL runs one ring per
    channel out of each NIC, so the crossing edge gets the node's whole NIC bandwidth
    (``inner_size`` times the per-rank share)."""
    tiers = list(group.tiers or (group.inner,))
    if ring and group.outer_size > 1:
        tiers[-1] = replace(group.outer, bandwidth=group.outer.bandwidth * group.inner_size)
    return max(tiers, key=lambda t: t.phase_time(1, chunk))


def _merge(schedule: Schedule) -> Schedule:
    """Join consecutive steps on the same tier and stage (one Phase each)."""
    out: Schedule = []
    for st in schedule:
        last = out[-1] if out else None
        if last and (last.tier, last.stage, last.lane) == (st.tier, st.stage, st.lane):
            out[-1] = _Step(
                st.tier, last.steps + st.steps, last.moved + st.moved, st.stage, st.lane
            )
        else:
            out.append(st)
    return out


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


def _pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0
