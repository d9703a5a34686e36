"""Collective cost models: exact hand-computed cases on small topologies.

Reference topology: 2 nodes x 4 GPUs. NVLink B = 100e9 B/s per GPU (β = 1e-11 s/B), α = 1e-6 s;
NIC share per GPU B = 10e9 B/s (node total 40e9), α = 1e-5 s; η = 1 and n½ = 0 unless said.
One step of c bytes on a tier costs α + c/B.
"""

from __future__ import annotations

import pytest

from vlscale.costs.collectives import (
    algorithms,
    all_gather,
    all_reduce,
    broadcast,
    neighbor_exchange,
    reduce_scatter,
)
from vlscale.costs.topology import DEFAULT_LINKS, Group, Tier, make_group
from vlscale.errors import ConfigError
from vlscale.specs.hardware import Measured, get_device, make_cluster

NV = Tier("nvlink", bandwidth=100e9, alpha_s=1e-6)
NET = Tier("network", bandwidth=10e9, alpha_s=1e-5)
G = Group("gpu", inner_size=4, outer_size=2, inner=NV, outer=NET)
N = 1e6  # shard bytes


def approx(x):
    return pytest.approx(x, rel=1e-12)


def test_all_gather_ring():
    # The ring crosses each node boundary once; with one ring per NIC the crossing edge gets
    # the node's 4 x 10e9 = 40e9 B/s. Step: NVLink 1e-6 + 1e6/1e11 = 1.1e-5,
    # network 1e-5 + 1e6/4e10 = 3.5e-5 -> the network. 7 steps: 2.45e-4 s.
    r = all_gather(N, G, "ring")
    assert r.time_s == approx(7 * 3.5e-5)
    assert r.bytes_moved_per_rank == 7 * N


def test_all_gather_halving_doubling():
    # Steps of 1, 2 shards stay inside the node (partner distance < 4): 1e-6 + 1e-5,
    # 1e-6 + 2e-5. The 4-shard step crosses nodes, all 4 GPUs at once on their own NIC
    # share: 1e-5 + 4e6/1e10 = 4.1e-4. Total 4.42e-4.
    r = all_gather(N, G, "halving_doubling")
    assert r.time_s == approx(1.1e-5 + 2.1e-5 + 4.1e-4)
    assert [p.tier for p in r.phases] == ["nvlink", "network"]


def test_all_gather_hierarchical_and_auto():
    # Outer: 1 step across the 2 nodes on each GPU's NIC share: α 1e-5, bandwidth 1e6/1e10.
    # Inner: all-gather of 2e6 over 4 GPUs; halving-doubling (2.1e-5 + 4.1e-5 = 6.2e-5)
    # beats ring (3 x 2.1e-5 = 6.3e-5). Pipelined: α's add (1e-5 + 2e-6), bandwidth terms
    # overlap: max(1e-4, 2e-5 + 4e-5) = 1e-4. Total 1.12e-4.
    r = all_gather(N, G)
    assert r.algorithm == "hierarchical"
    assert r.time_s == approx(1.2e-5 + 1e-4)
    assert r.bytes_moved_per_rank == 7 * N
    assert {p.stage for p in r.phases} == {0}
    assert dict(r.alternatives)["ring"] == approx(2.45e-4)
    assert r.bus_bandwidth == approx(7 * N / 1.12e-4)


def test_reduce_scatter_mirrors_all_gather():
    for alg in algorithms("all_gather", G):
        ag, rs = all_gather(N, G, alg), reduce_scatter(N, G, alg)
        assert rs.time_s == approx(ag.time_s)
        assert [p.tier for p in rs.phases] == [p.tier for p in ag.phases][::-1]


def test_all_reduce_is_reduce_scatter_plus_all_gather():
    # buffer 8e6 -> shards of 1e6. Ring: 2 x 2.45e-4; hierarchical: 2 x 1.12e-4.
    assert all_reduce(8 * N, G, "ring").time_s == approx(2 * 2.45e-4)
    r = all_reduce(8 * N, G)
    assert r.algorithm == "hierarchical" and r.time_s == approx(2 * 1.12e-4)
    assert r.bytes_moved_per_rank == 2 * 7 / 8 * 8 * N


def test_broadcast():
    # tree: ceil(lg 8) = 3 rounds of the whole 8e6 buffer on the slowest tier:
    # 3 x (1e-5 + 8e6/1e10) = 2.43e-3.
    assert broadcast(8 * N, G, "tree").time_s == approx(3 * (1e-5 + 8e-4))
    # scatter (3 rounds, 7/8 of the buffer through the root's NIC share):
    # 3e-5 + 7e6/1e10 = 7.3e-4, then the best all-gather of 1e6 shards, 1.12e-4.
    r = broadcast(8 * N, G)
    assert r.algorithm == "scatter_allgather"
    assert r.time_s == approx(7.3e-4 + 1.12e-4)


def test_neighbor_exchange():
    # 7 hops of 1e6; a single p2p send leaving the node uses its own NIC share:
    # 1e-5 + 1e6/1e10 = 1.1e-4 per hop.
    r = neighbor_exchange(N, G)
    assert r.time_s == approx(7 * 1.1e-4) and r.bytes_moved_per_rank == 7 * N
    both = neighbor_exchange(N, G, bidirectional=True)  # ceil(7/2) = 4 steps
    assert both.time_s == approx(4 * 1.1e-4) and both.bytes_moved_per_rank == 7 * N
    assert neighbor_exchange(N, G, hops=1).time_s == approx(1.1e-4)
    one_node = Group("gpu", 4, 1, NV)
    assert neighbor_exchange(N, one_node).time_s == approx(3 * 1.1e-5)


def test_efficiency_curve():
    # η = 0.5, n½ = 1e6: eff(1e6) = 0.5 * 1e6 / 2e6 = 0.25. Ring on one 4-GPU node, shard 1e6:
    # 3 steps: 3e-6 + (3e6 + 3 * 1e6) / (1e11 * 0.5) = 1.23e-4, i.e. each step
    # α + c / (B * eff(c)) = 1e-6 + 1e6 / 2.5e10.
    slow = Tier("nvlink", bandwidth=100e9, alpha_s=1e-6, efficiency=0.5, n_half_bytes=1e6)
    assert slow.efficiency_at(1e6) == approx(0.25)
    assert slow.efficiency_at(1e12) == pytest.approx(0.5, rel=1e-5)
    r = all_gather(N, Group("gpu", 4, 1, slow), "ring")
    assert r.time_s == approx(1.23e-4) == approx(3 * (1e-6 + 1e6 / 2.5e10))


ICI = Tier("ici", bandwidth=1e10, alpha_s=1e-6)


@pytest.mark.parametrize(
    "wrap, expected",
    [
        # 4x4 torus, shard 1e6. Axis with wraparound, k = 4: ceil(3/2) = 2 steps moving
        # 3c/2 each way; axis 1 (c = 1e6): 2e-6 + 1.5e6/1e10 = 1.52e-4; axis 2 (c = 4e6):
        # 2e-6 + 6e6/1e10 = 6.02e-4.
        ((True, True), 1.52e-4 + 6.02e-4),
        # Lines: 3 steps moving 3c: 3e-6 + 3e6/1e10 = 3.03e-4, then 3e-6 + 1.2e7/1e10.
        ((False, False), 3.03e-4 + 1.203e-3),
        # Mixed: the line first (small chunk), then the ring: 3.03e-4 + 6.02e-4.
        ((True, False), 3.03e-4 + 6.02e-4),
    ],
)
def test_torus_all_gather(wrap, expected):
    g = Group("tpu", 16, 1, ICI, None, (4, 4), wrap)
    r = all_gather(N, g)
    assert r.algorithm == "torus" and r.time_s == approx(expected)
    # The snake ring uses one link one way: 15 x (1e-6 + 1e6/1e10).
    assert dict(r.alternatives)["ring"] == approx(15 * 1.01e-4)
    assert r.bytes_moved_per_rank == 15 * N


def test_multislice_all_gather():
    # 2 slices of a 4-chip ring (wraparound) over DCN at 1e9 B/s per chip, α = 1e-5.
    # DCN: 1 step 1e-5 + 1e6/1e9; ICI all-gather of 2e6: 2 steps moving 3e6 each way:
    # 2e-6 + 3e6/1e10. Pipelined: 1.2e-5 + max(1e-3, 3e-4).
    dcn = Tier("dcn", bandwidth=1e9, alpha_s=1e-5)
    g = Group("tpu", 4, 2, ICI, dcn, (4,), (True,))
    r = all_gather(N, g)
    assert r.algorithm == "hierarchical" and r.time_s == approx(1.2e-5 + 1e-3)
    # Flat ring: the crossing edge gets 4 chips' DCN (4e9): 1e-5 + 2.5e-4 per step, 7 steps.
    assert dict(r.alternatives)["ring"] == approx(7 * 2.6e-4)


def test_group_from_catalog_cluster_uses_datasheet_and_defaults():
    c = make_cluster("H100", 16)
    g = make_group(c)
    dev = get_device("H100")
    assert (g.inner_size, g.outer_size) == (8, 2)
    assert g.inner.bandwidth == dev.nvlink.bandwidth
    assert g.outer.bandwidth == dev.network.nics_per_node * dev.network.nic_bandwidth / 8
    assert g.inner.alpha_s == DEFAULT_LINKS["nvlink"]["alpha_s"]
    assert make_group(c, 4).outer_size == 1
    with pytest.raises(ConfigError, match="group_size"):
        make_group(c, 12)


def test_measured_calibration_replaces_defaults():
    measured = Measured(source="bench", links={"nvlink": {"alpha_s": 7e-6, "bandwidth": 2e11}})
    dev = get_device("H100").model_copy(update={"measured": measured})
    g = make_group(make_cluster(dev, 8))
    assert (g.inner.alpha_s, g.inner.bandwidth) == (7e-6, 2e11)
    assert g.inner.efficiency == DEFAULT_LINKS["nvlink"]["efficiency"]


def test_tpu_sub_block_groups():
    c = make_cluster("v5p", 64)  # 4x4x4, wraparound on every axis
    g = make_group(c, 16)
    assert (g.torus_dims, g.torus_wrap) == ((4, 4, 1), (True, True, False))
    line = make_group(c, 2)
    assert line.torus_dims == (2, 1, 1) and line.torus_wrap == (False, False, False)
    with pytest.raises(ConfigError, match="sub-block"):
        make_group(c, 12)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="shard_bytes"):
        all_gather(-1, G)
    with pytest.raises(ConfigError, match="algorithm"):
        all_gather(N, G, "torus")  # a GPU group has no torus
    with pytest.raises(ConfigError):
        Tier("x", bandwidth=0)
    with pytest.raises(ConfigError, match="outer"):
        Group("gpu", 4, 2, NV)
