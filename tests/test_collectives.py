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


def test_pat_with_one_gpu_per_node():
    # 8 nodes of 1 GPU: PAT takes ceil(lg 8) = 3 latency steps for the ring's 7 shards through
    # the NIC: 3e-5 + 7e6/1e10 = 7.3e-4. The ring pays 7 α: 7 x (1e-5 + 1e6/1e10) = 7.7e-4.
    g = Group("gpu", 1, 8, NV, NET)
    r = all_gather(N, g)
    assert r.algorithm == "pat" and r.time_s == approx(3e-5 + 7e-4)
    assert dict(r.alternatives)["ring"] == approx(7 * 1.1e-4)
    assert "pat" not in algorithms("all_gather", G)  # NCCL runs PAT with one GPU per node only
    assert "pat" not in algorithms("all_reduce", g)


def test_reduce_scatter_mirrors_all_gather():
    for g in (G, Group("gpu", 1, 8, NV, NET)):
        for alg in algorithms("all_gather", g):
            ag, rs = all_gather(N, g, alg), reduce_scatter(N, g, alg)
            assert rs.time_s == approx(ag.time_s)
            assert [p.tier for p in rs.phases] == [p.tier for p in ag.phases][::-1]


def test_all_reduce_ring_and_tree():
    # buffer S = 8e6 -> ring: reduce-scatter + all-gather of 1e6 shards, 2 x 2.45e-4.
    assert all_reduce(8 * N, G, "ring").time_s == approx(2 * 2.45e-4)
    # tree: 2 nodes, one level. NIC lane: 2 steps moving 2S = 1.6e7 through the node's
    # 4 x 10e9: 2e-5 + 4e-4. Chain lane: 2(4-1) = 6 NVLink steps moving S: 6e-6 + 8e-5.
    # Pipelined: 2e-5 + 6e-6 + max(4e-4, 8e-5) = 4.26e-4, under the ring's 4.9e-4.
    r = all_reduce(8 * N, G)
    assert r.algorithm == "tree" and r.time_s == approx(2.6e-5 + 4e-4)
    assert r.bytes_moved_per_rank == 2 * 7 / 8 * 8 * N  # nccl-tests' busbw convention
    assert {p.stage for p in r.phases} == {0}


NVS = Tier("nvls", bandwidth=100e9, alpha_s=2e-6, efficiency=0.8)


def test_nvls_and_nvls_tree():
    # One node with NVLink SHARP: 2 steps moving the buffer once: 4e-6 + 8e6/8e10 = 1.04e-4.
    # Ring: 6 steps of 1e-6 + 2e6/1e11 = 1.26e-4. The bus bandwidth passes the link's
    # (2 x 3/4 x 8e6 / 1.04e-4 = 1.15e11 > 1e11): the switch does the reduction.
    node = Group("gpu", 4, 1, NV, nvls=NVS)
    r = all_reduce(8 * N, node)
    assert r.algorithm == "nvls" and r.time_s == approx(1.04e-4)
    assert dict(r.alternatives)["ring"] == approx(6 * 2.1e-5)
    assert r.bus_bandwidth > NV.bandwidth
    # Two such nodes: NVLS pipelined with a swap of each GPU's slice over its rail (S through
    # the node's 4e10): 4e-6 + 2e-5 + max(1e-4, 2e-4) = 2.24e-4, under the tree's 4.26e-4.
    r = all_reduce(8 * N, Group("gpu", 4, 2, NV, NET, nvls=NVS))
    assert r.algorithm == "nvls_tree" and r.time_s == approx(2.4e-5 + 2e-4)
    # From 3 nodes on, every node carries 2S like the tree: bus bandwidth under the NIC's.
    three = Group("gpu", 4, 3, NV, NET, nvls=NVS)
    assert all_reduce(12 * N, three, "nvls_tree").bus_bandwidth <= 4 * NET.bandwidth


def test_collnet_only_with_in_network_reduction():
    assert "collnet" not in algorithms("all_reduce", G)
    sharp = Group("gpu", 4, 2, NV, NET, in_network_reduction=True)
    # Each node sends S up and gets S back (2 steps, 8e6 through 4e10): 2e-5 + 2e-4,
    # pipelined with the NVLink chain (6e-6 + 8e-5): 2.26e-4.
    assert all_reduce(8 * N, sharp, "collnet").time_s == approx(2.6e-5 + 2e-4)


def test_neighbor_exchange():
    # 7 hops of 1e6; a single p2p send leaving the node uses its own NIC share:
    # 1e-5 + 1e6/1e10 = 1.1e-4 per hop.
    r = neighbor_exchange(N, G)
    assert r.time_s == approx(7 * 1.1e-4) and r.bytes_moved_per_rank == 7 * N
    # both ways: ceil(7/2) = 4 steps, but the 7 blocks still arrive through the one NIC share:
    # 4e-5 + 7e6/1e10 = 7.4e-4
    both = neighbor_exchange(N, G, bidirectional=True)
    assert both.time_s == approx(4e-5 + 7e-4) and both.bytes_moved_per_rank == 7 * N
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
        # 4x4 torus, shard c = 1e6, every axis at once. Orders (X, Y) and (Y, X) each gather a
        # fraction of the data; on a ring axis of 4 a chunk moves 3/2 of itself per link
        # direction, on a line 3 of itself; the second axis sees chunks 4x larger.
        # Rings: loads (1.5, 6) and (6, 1.5) per unit; half each: 3.75c on both axes.
        # 2 + 2 hops: 4e-6 + 3.75e6/1e10 (the book's V/(2 W_bidi) = 4e-4, times 15/16).
        ((True, True), 4e-6 + 3.75e-4),
        # Lines: loads (3, 12) and (12, 3): 7.5c; 3 + 3 hops.
        ((False, False), 6e-6 + 7.5e-4),
        # X ring, Y line: loads (1.5, 12) and (6, 3). A fraction x on (X, Y): the axes carry
        # 6 - 4.5x and 3 + 9x, equal at x = 2/9: 5c; 2 + 3 hops.
        ((True, False), 5e-6 + 5e-4),
    ],
)
def test_torus_all_gather_uses_every_axis_at_once(wrap, expected):
    g = Group("tpu", 16, 1, ICI, None, (4, 4), wrap)
    r = all_gather(N, g)
    assert r.algorithm == "torus" and r.time_s == approx(expected)
    # The snake ring uses one link one way: 15 x (1e-6 + 1e6/1e10).
    assert dict(r.alternatives)["ring"] == approx(15 * 1.01e-4)
    assert r.bytes_moved_per_rank == 15 * N


def test_one_axis_is_the_books_bidirectional_ring():
    # k = 8 with wraparound: ceil(7/2) = 4 hops moving 7c/2 each way: 4e-6 + 3.5e6/1e10.
    g = Group("tpu", 8, 1, ICI, None, (8,), (True,))
    assert all_gather(N, g).time_s == approx(4e-6 + 3.5e-4)


def test_multislice_all_gather():
    # 2 slices of a 4-chip ring (wraparound) over DCN at 1e9 B/s per chip, α = 1e-5.
    # DCN first: 1 step 1e-5 + 1e6/1e9; then the ICI all-gather of 2e6: 2 hops moving
    # 1.5 x 2e6 each way: 2e-6 + 3e6/1e10. One after the other: 1.01e-3 + 3.02e-4.
    dcn = Tier("dcn", bandwidth=1e9, alpha_s=1e-5)
    g = Group("tpu", 4, 2, ICI, dcn, (4,), (True,))
    r = all_gather(N, g)
    assert r.algorithm == "multislice" and r.time_s == approx(1.01e-3 + 3.02e-4)
    # Snake ring: 7 steps each waiting for a chip's own DCN share: 7 x 1.01e-3.
    assert dict(r.alternatives)["ring"] == approx(7 * 1.01e-3)


def test_group_from_catalog_cluster_uses_datasheet_and_defaults():
    c = make_cluster("H100", 16)
    g = make_group(c)
    dev = get_device("H100")
    assert (g.inner_size, g.outer_size) == (8, 2)
    assert g.inner.bandwidth == dev.nvlink.bandwidth
    assert g.outer.bandwidth == dev.network.nics_per_node * dev.network.nic_bandwidth / 8
    assert g.inner.alpha_s == DEFAULT_LINKS["nvlink"]["alpha_s"]
    assert g.nvls.efficiency == DEFAULT_LINKS["nvls"]["efficiency"]
    assert make_group(c, 4).outer_size == 1
    with pytest.raises(ConfigError, match="group_size"):
        make_group(c, 12)
    # NVLink SHARP needs third-generation NVSwitch: not A100 (2nd), not DGX-1 (no switch).
    assert make_group(make_cluster("A100-40GB", 8)).nvls is None
    assert make_group(make_cluster("V100", 8)).nvls is None
    assert not g.in_network_reduction
    sharp = dev.model_copy(
        update={"network": dev.network.model_copy(update={"in_network_reduction": True})}
    )
    assert "collnet" in algorithms("all_reduce", make_group(make_cluster(sharp, 16)))


def test_a_node_without_nvswitch_gives_part_of_it_part_of_the_links():
    v100 = get_device("V100").nvlink.bandwidth
    assert make_group(make_cluster("V100", 8)).inner.bandwidth == v100  # the whole cube-mesh
    # 4 of 8 GPUs on point-to-point links: 3 of 7 peers' links; a switch gives all of them
    assert make_group(make_cluster("V100", 4)).inner.bandwidth == approx(v100 * 3 / 7)
    assert make_group(make_cluster("V100", 16), 4).inner.bandwidth == approx(v100 * 3 / 7)
    h100 = make_group(make_cluster("H100", 4)).inner.bandwidth
    assert h100 == get_device("H100").nvlink.bandwidth


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
    with pytest.raises(ConfigError, match="algorithm"):
        all_reduce(N, G, "nvls")  # no NVLink SHARP in this group
    with pytest.raises(ConfigError):
        Tier("x", bandwidth=0)
    with pytest.raises(ConfigError, match="outer"):
        Group("gpu", 4, 2, NV)
