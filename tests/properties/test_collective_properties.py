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


@SETTINGS
@given(groups, sizes)
def test_all_reduce_moves_a_reduce_scatter_plus_an_all_gather(g, n):
    shard = n / g.size
    ar = all_reduce(n, g)
    assert close(
        ar.bytes_moved_per_rank,
        reduce_scatter(shard, g).bytes_moved_per_rank + all_gather(shard, g).bytes_moved_per_rank,
    )
    ring = all_reduce(n, g, "ring")
    assert close(
        ring.time_s, reduce_scatter(shard, g, "ring").time_s + all_gather(shard, g, "ring").time_s
    )


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
def test_ring_exchange_moves_the_bytes_of_one_all_gather(g, n):
    ring = neighbor_exchange(n, g)
    assert close(ring.bytes_moved_per_rank, all_gather(n, g).bytes_moved_per_rank)
    assert close(
        neighbor_exchange(n, g, bidirectional=True).bytes_moved_per_rank, ring.bytes_moved_per_rank
    )


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
