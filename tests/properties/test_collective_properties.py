"""Properties of the collective cost models over random tiers and topologies (hypothesis).

The ceilings below are physics, written here independently of the models: what a rank or a
node must receive through its links, over those links' nominal bandwidth.

- Ring, tree and PAT across nodes: busbw <= the node's NIC bandwidth (a ring passes every
  byte through each node's NICs; NCCL's tree moves 2S per node). NVLS-tree on 2 nodes and
  CollNet may pass it, but no all-reduce has algbw above the node NIC: each node must receive
  at least the buffer's worth of other nodes' contributions.
- Any all-gather across N nodes: each node receives (N−1)·g·shard through its NICs.
- Inside one node, ring bandwidth <= the NVLink bandwidth; NVLS algbw <= its tier's.
- A TPU chip receives (p−1)·shard through at most 2 links per axis (1 on an axis of 2).
- Adding a wrapped axis to a wrapped torus never slows an all-gather of the same gathered bytes
  per chip (bandwidth regime, α = n½ = 0): the book's T = V / (W_bidi · n_axes).
- An all-reduce is never faster than a reduce-scatter plus an all-gather of the same data on the
  same algorithm.
- No collective beats the bytes a rank must receive (textbook lower bounds) over all its links
  together; doubling a message at most doubles the time; a bigger ring on the same link is never
  faster; and one small case is computed by hand.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vlscale.costs.collectives import (
    algorithms,
    all_gather,
    all_reduce,
    neighbor_exchange,
    reduce_scatter,
)
from vlscale.costs.topology import Group, Tier

SETTINGS = settings(max_examples=150, deadline=None)

sizes = st.floats(min_value=1.0, max_value=1e10, allow_nan=False)


@st.composite
def tiers(draw, name):
    return Tier(
        name,
        bandwidth=draw(st.floats(1e8, 1e12)),
        alpha_s=draw(st.floats(0.0, 1e-4)),
        efficiency=draw(st.floats(0.05, 1.0)),
        n_half_bytes=draw(st.floats(0.0, 1e7)),
    )


@st.composite
def gpu_groups(draw, min_outer=1, min_inner=1):
    inner = draw(st.integers(min_inner, 8))
    outer = draw(st.integers(min_outer, 6))
    nvls = draw(st.one_of(st.none(), tiers("nvls")))
    sharp = draw(st.booleans())
    nvlink, net = draw(tiers("nvlink")), draw(tiers("network"))
    return Group("gpu", inner, outer, nvlink, net, nvls=nvls, in_network_reduction=sharp)


@st.composite
def tpu_groups(draw):
    dims = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    wrap = tuple(draw(st.booleans()) and d > 2 for d in dims)
    outer = draw(st.integers(1, 3))
    return Group("tpu", math.prod(dims), outer, draw(tiers("ici")), draw(tiers("dcn")), dims, wrap)


groups = st.one_of(gpu_groups(), tpu_groups())
OPS = {
    "all_gather": all_gather,
    "reduce_scatter": reduce_scatter,
    "all_reduce": all_reduce,
    "neighbor_exchange": neighbor_exchange,
}


def close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def _receive_ceiling(g: Group) -> float:
    """Bytes/s one rank can receive through all its links at once, generously: NVLink, the
    node's NICs together (a ring's node-crossing edge gets all of them), NVLink SHARP; on a TPU
    an ICI link from each neighbour on every axis (two, one on an axis of 2), plus the host's
    DCN share."""
    total = 0.0
    if g.kind == "gpu":
        if g.inner_size > 1:
            total += g.inner.bandwidth + (g.nvls.bandwidth if g.nvls is not None else 0.0)
    else:
        total += sum(2 if k > 2 else 1 for k in g.torus_dims if k > 1) * g.inner.bandwidth
    if g.outer_size > 1:
        total += g.inner_size * g.outer.bandwidth
    return total


IN_NETWORK = {"nvls", "nvls_tree", "collnet"}  # the switch / fabric reduces


def _must_receive(op: str, n: float, p: int, algorithm: str) -> float:
    """Bytes each rank must receive, whatever the schedule (textbook lower bounds):
    all-gather and reduce-scatter of a shard n (S = p·n): (p−1)/p·S = (p−1)·n, the other ranks'
    blocks, or their contributions to its own block; all-reduce of S without in-network
    reduction: 2(p−1)/p·S (Patarasuk & Yuan 2009, "Bandwidth optimal all-reduce algorithms for
    clusters of workstations"); with it, the reduced buffer S itself. A neighbour exchange of
    p−1 hops hands each rank the p−1 other blocks: an all-gather's (p−1)·n."""
    if op == "all_reduce":
        return n if algorithm in IN_NETWORK else 2 * (p - 1) / p * n
    return (p - 1) * n


@SETTINGS
@given(
    groups,
    sizes,
    st.sampled_from(["all_gather", "reduce_scatter", "all_reduce", "neighbor_exchange"]),
)
def test_no_collective_beats_what_a_rank_must_receive(g, n, op):
    """time >= bytes a rank must receive / everything its links can bring in at once (α >= 0,
    n½ >= 0 and η <= 1 only add), for every algorithm the model has for ``op``."""
    assume(g.size > 1)
    ceiling = _receive_ceiling(g)
    for alg in algorithms(op, g):
        if op == "neighbor_exchange":
            r = neighbor_exchange(n, g, bidirectional=alg == "bidirectional_ring")
        else:
            r = OPS[op](n, g, alg)
        assert r.time_s * LEEWAY >= _must_receive(op, n, g.size, alg) / ceiling, alg


@SETTINGS
@given(groups, sizes, st.sampled_from(["all_gather", "reduce_scatter", "all_reduce"]))
def test_doubling_the_message_at_most_doubles_the_time(g, n, op):
    """Each step's cost α + (D + n½)/(Bη) is affine in D with a non-negative intercept, so
    T(2S) <= 2·T(S) for every algorithm, and hence for the fastest one; and T(2S) >= T(S)."""
    one, two = OPS[op](n, g).time_s, OPS[op](2 * n, g).time_s
    assert one * (1 - 1e-12) <= two <= 2 * one * LEEWAY


@SETTINGS
@given(
    st.integers(2, 16),
    tiers("nvlink"),
    sizes,
    st.sampled_from(["all_gather", "reduce_scatter", "all_reduce", "neighbor_exchange"]),
)
def test_a_bigger_ring_on_the_same_link_is_never_faster(p, link, n, op):
    """Ring on one NVLink tier: all-gather / reduce-scatter / neighbour exchange take p−1 steps
    of the same block, all-reduce 2(p−1) steps of S/p, i.e. 2(p−1)/p·S in total and 2(p−1)
    latencies -- all non-decreasing in p."""

    def ring(size):
        g = Group("gpu", size, 1, link, None)
        if op == "neighbor_exchange":  # its third argument is the hop count
            return neighbor_exchange(n, g).time_s
        return OPS[op](n, g, "ring").time_s

    assert ring(p + 1) * LEEWAY >= ring(p)


def test_ring_times_by_hand():
    """4 GPUs on one NVLink tier: B = 100 GB/s, α = 10 µs, η = 0.5, n½ = 1 MB; no NVLS, so ring
    is the only algorithm. T(S steps, D bytes per link) = S·α + (D + S·n½)/(B·η)."""
    link = Tier("nvlink", bandwidth=100e9, alpha_s=1e-5, efficiency=0.5, n_half_bytes=1e6)
    g = Group("gpu", 4, 1, link, None)
    bw = 100e9 * 0.5
    # all-gather / reduce-scatter of an 8 MB shard: 3 steps of 8 MB
    for op in (all_gather, reduce_scatter):
        r = op(8e6, g)
        assert r.algorithm == "ring" and close(r.time_s, 3e-5 + (24e6 + 3e6) / bw)
        assert r.bytes_moved_per_rank == 24e6
    # all-reduce of 8 MB: 6 steps (reduce-scatter then all-gather) of 2 MB
    r = all_reduce(8e6, g)
    assert close(r.time_s, 6e-5 + (12e6 + 6e6) / bw)  # 4.2e-4 s
    assert r.bytes_moved_per_rank == 12e6  # 2·(4−1)/4 · 8 MB
    # the sigmoid ring: 3 hops of an 8 MB block; both directions at once: 2 steps, but the
    # three blocks still come in through the GPU's one NVLink ingress (24 MB)
    r = neighbor_exchange(8e6, g)
    assert close(r.time_s, 3e-5 + (24e6 + 3e6) / bw) and r.bytes_moved_per_rank == 24e6
    r = neighbor_exchange(8e6, g, bidirectional=True)
    assert close(r.time_s, 2e-5 + (24e6 + 2e6) / bw) and r.bytes_moved_per_rank == 24e6
    # on a TPU ring of 4 chips each neighbour has its own ICI link: 2 steps of 8 MB per link
    ici = replace(link, name="ici")
    tpu = Group("tpu", 4, 1, ici, None, (4,), (True,))
    r = neighbor_exchange(8e6, tpu, bidirectional=True)
    assert close(r.time_s, 2e-5 + (16e6 + 2e6) / bw)


@SETTINGS
@given(groups, sizes, st.floats(1.0, 100.0), st.sampled_from(sorted(OPS)))
def test_time_never_decreases_with_message_size(g, n, factor, op):
    assert OPS[op](n * factor, g).time_s >= OPS[op](n, g).time_s * (1 - 1e-12)


@SETTINGS
@given(
    groups,
    sizes,
    st.floats(1.0, 100.0),
    st.sampled_from(["inner", "outer"]),
    st.sampled_from(sorted(OPS)),
)
def test_time_never_decreases_when_bandwidth_falls(g, n, factor, which, op):
    tier = getattr(g, which)
    slower = replace(g, **{which: replace(tier, bandwidth=tier.bandwidth / factor)})
    assert OPS[op](n, slower).time_s >= OPS[op](n, g).time_s * (1 - 1e-12)


@SETTINGS
@given(st.one_of(tiers("nvlink"), tiers("ici")), sizes, st.sampled_from(sorted(OPS)))
def test_single_rank_costs_nothing(tier, n, op):
    kind = "tpu" if tier.name == "ici" else "gpu"
    g = Group(kind, 1, 1, tier, None, (1,) if kind == "tpu" else ())
    r = OPS[op](n, g)
    assert r.time_s == 0.0 and r.bytes_moved_per_rank == 0.0


@SETTINGS
@given(groups, sizes)
def test_both_directions_never_slow_the_ring_exchange(g, n):
    """Sending to both neighbours covers the p−1 hops in ⌈(p−1)/2⌉ steps: never slower, and the
    same blocks reach every rank."""
    one_way, two_way = neighbor_exchange(n, g), neighbor_exchange(n, g, bidirectional=True)
    assert two_way.time_s <= one_way.time_s * LEEWAY
    assert two_way.bytes_moved_per_rank == one_way.bytes_moved_per_rank


@SETTINGS
@given(groups, sizes, st.sampled_from(["all_gather", "reduce_scatter", "all_reduce"]))
def test_auto_takes_the_fastest_algorithm(g, n, op):
    assume(g.size > 1)
    best = OPS[op](n, g)
    times = [OPS[op](n, g, alg).time_s for alg in algorithms(op, g)]
    assert close(best.time_s, min(times))
    assert best.algorithm in algorithms(op, g)


@SETTINGS
@given(tpu_groups(), sizes)
def test_wraparound_never_hurts(g, n):
    assume(g.outer_size == 1 and g.size > 1)
    lines = replace(g, torus_wrap=tuple(False for _ in g.torus_dims))
    assert all_gather(n, g).time_s <= all_gather(n, lines).time_s * (1 + 1e-12)


@pytest.mark.parametrize("k", [3, 5, 8, 16])
def test_wraparound_halves_bandwidth_time(k):
    """One axis, α = n½ = 0, shard n: a ring moves (k−1)n/2 per link, a line (k−1)n."""
    ici = Tier("ici", bandwidth=1e10)
    ring = all_gather(1e6, Group("tpu", k, 1, ici, None, (k,), (True,)), "torus")
    line = all_gather(1e6, Group("tpu", k, 1, ici, None, (k,), (False,)), "torus")
    assert close(line.time_s, 2 * ring.time_s)


LEEWAY = 1 + 1e-9


def _node_nic(g: Group) -> float:
    return g.outer.bandwidth * g.inner_size


@SETTINGS
@given(gpu_groups(min_outer=2), sizes, st.sampled_from(["all_gather", "reduce_scatter"]))
def test_multi_node_bus_bandwidth_never_above_the_nic_ceiling(g, n, op):
    for alg in algorithms(op, g):
        assert OPS[op](n, g, alg).bus_bandwidth <= _node_nic(g) * LEEWAY, alg
    for alg in ("ring", "tree"):
        assert all_reduce(n, g, alg).bus_bandwidth <= _node_nic(g) * LEEWAY, alg
    for alg in algorithms("all_reduce", g):  # algbw <= node NIC, whatever the algorithm
        assert n / all_reduce(n, g, alg).time_s <= _node_nic(g) * LEEWAY, alg
    # every node receives (N-1) g shards through its NICs
    floor = (g.outer_size - 1) * g.inner_size * n / _node_nic(g)
    assert all_gather(n, g).time_s * LEEWAY >= floor


@SETTINGS
@given(gpu_groups(min_inner=2), sizes)
def test_inside_a_node_no_faster_than_its_links(g, n):
    g = replace(g, outer_size=1)
    assert all_gather(n, g, "ring").bus_bandwidth <= g.inner.bandwidth * LEEWAY
    assert all_reduce(n, g, "ring").bus_bandwidth <= g.inner.bandwidth * LEEWAY
    if g.nvls is not None:
        assert n / all_reduce(n, g, "nvls").time_s <= g.nvls.bandwidth * LEEWAY


@SETTINGS
@given(tpu_groups(), sizes)
def test_a_chip_receives_no_faster_than_its_links(g, n):
    assume(g.outer_size == 1 and g.size > 1)
    links = sum(2 if k > 2 else 1 for k in g.torus_dims if k > 1)
    assert all_gather(n, g).bus_bandwidth <= links * g.inner.bandwidth * LEEWAY


wrapped_axes = st.lists(st.integers(3, 16), min_size=1, max_size=2)


@SETTINGS
@given(wrapped_axes, st.integers(3, 16), st.floats(1e3, 1e10), st.floats(0.05, 1.0))
def test_adding_an_axis_never_slows_an_all_gather_of_the_same_bytes(dims, k, v, eff):
    ici = Tier("ici", bandwidth=1e10, efficiency=eff)

    def gather(shape):
        shape = tuple(shape)
        g = Group("tpu", math.prod(shape), 1, ici, None, shape, (True,) * len(shape))
        return all_gather(v / g.size, g, "torus").time_s  # v: gathered bytes per chip

    assert gather([*dims, k]) <= gather(dims) * LEEWAY


@SETTINGS
@given(groups, sizes)
def test_all_reduce_never_beats_reduce_scatter_plus_all_gather(g, n):
    assume(g.size > 1)
    shard = n / g.size
    shared = set(algorithms("all_reduce", g)) & set(algorithms("all_gather", g))
    assert shared  # ring at least
    for alg in shared:
        split = reduce_scatter(shard, g, alg).time_s + all_gather(shard, g, alg).time_s
        assert all_reduce(n, g, alg).time_s * LEEWAY >= split
