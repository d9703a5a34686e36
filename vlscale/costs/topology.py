"""Interconnect tiers and communication groups: what a collective runs over.

A *tier* is one kind of link with an α–β cost (Hockney 1994): sending a chunk of c bytes in one
step costs

    t(c) = α + c / (B · eff(c)),    eff(c) = η · c / (c + n½)

B is the nominal bandwidth per rank (or per link for a TPU torus) in one direction, η the
asymptotic fraction of it that collectives reach, n½ the chunk size at which half of η is
reached (the saturation curve of NCCL-tests "bus bandwidth" plots). Summed over S steps that
move D bytes through the busiest link direction this is exactly

    T(S, D) = S · α + (D + S · n½) / (B · η)                                 (1)

so n½ behaves as an extra per-step latency of n½ / (B·η), and T grows with D and shrinks with
B. All four parameters are calibratable per tier (``DeviceSpec.measured.links``).

Tiers: ``nvlink`` (GPU, within a node; per-GPU bandwidth), ``nvls`` (the same links when the
NVSwitch reduces: NVLink SHARP, with its own η), ``network`` (GPU, between nodes; the node's NIC
bandwidth shared by its GPUs, as each GPU drives its own rail), ``ici`` (TPU torus, per link),
``dcn`` (TPU, between slices; the host's DCN bandwidth shared by its chips).

Inside a node NVSwitch gives every GPU its full NVLink bandwidth to any peer; without a switch
(V100 DGX-1, a hybrid cube-mesh of point-to-point links) a group of g of the node's G GPUs gets
(g−1)/(G−1) of it (the links to its own members, assuming links spread evenly over peers).

A *group* is the set of p ranks of one collective: ``inner_size`` ranks in each of
``outer_size`` nodes (GPU) or slices (TPU). Ranks are numbered node-major, as torchrun does.

HSDP (``RunLayout.sharding == "hsdp"``, shard size s, W ranks, island size g = devices per node
or TPU slice) uses two kinds of group, as FSDP2's 2-D mesh ``(replicate, shard)`` lays them out
(the shard dimension innermost, so a shard group is s consecutive ranks):

    shard group    ranks k·s .. k·s + s − 1: :func:`make_group` (cluster, s); inside one island
                   when s ≤ g, else s / g whole islands
    replica group  ranks r, r + s, r + 2s, ...: W / s ranks, max(1, g / s) in each island it
                   touches (:func:`replica_group`). The s (or g) replica groups of an island run
                   at once, each on its members' own NIC rails.

s must divide g or be a multiple of it, so that no group holds part of an island.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from vlscale.errors import ConfigError
from vlscale.specs.hardware import ClusterSpec, TierName
from vlscale.specs.layout import fits_island

# Defaults for what datasheets do not give. α per step: order-of-magnitude starting points from
# published small-message latencies (NCCL-tests all-reduce on one 8-GPU NVSwitch node is ~10-20 µs
# for ~2·lg 8 steps; InfiniBand verbs ~2 µs plus NCCL proxy overhead; ICI ~1 µs per hop per the
# scaling book; DCN tens of µs). η, the fraction of the nominal bandwidth NCCL reaches on large
# messages, from NCCL's maintainers: "with the protocol overhead (~20%) NCCL can get an effective
# NVLink bandwidth of 370GB/s" of H100's 450 (0.82), and NVLink SHARP all-reduce peaks at
# "busBw ~480GB/s (algbw ~275GB/s)" on 8 H100 (275 / 450 = 0.61) (both nccl-tests issue #212);
# "24GB/s is the peak performance per 200G NIC" (nccl-tests #119) and 46-48 GB/s per 400G NIC
# (nccl-tests #290): 0.96. NVLS reaches its peak only past ~1 GB ("256M is too small", #212),
# hence its large n½. ICI and DCN η are assumed. Replace any of them with measured values (a
# hardware file's `measured.links`).
DEFAULT_LINKS: dict[str, dict[str, float]] = {
    "nvlink": {"alpha_s": 1.0e-6, "efficiency": 0.82, "n_half_bytes": 512 * 1024},
    "nvls": {"alpha_s": 2.0e-6, "efficiency": 0.61, "n_half_bytes": 16 * 1024 * 1024},
    "network": {"alpha_s": 5.0e-6, "efficiency": 0.96, "n_half_bytes": 128 * 1024},
    "ici": {"alpha_s": 1.0e-6, "efficiency": 0.90, "n_half_bytes": 64 * 1024},
    "dcn": {"alpha_s": 2.0e-5, "efficiency": 0.80, "n_half_bytes": 1024 * 1024},
    # CPU ranks on one host: gloo over loopback / shared memory (measure with trainer.probe)
    "host": {"alpha_s": 5.0e-5, "efficiency": 0.5, "n_half_bytes": 64 * 1024},
}


@dataclass(frozen=True)
class Tier:
    """One kind of link; see the module docstring for the cost formula (1)."""

    name: str
    bandwidth: float  # bytes/s, one direction, per rank (per link on a torus)
    alpha_s: float = 0.0
    efficiency: float = 1.0
    n_half_bytes: float = 0.0

    def __post_init__(self):
        if not self.bandwidth > 0 or not 0 < self.efficiency <= 1:
            raise ConfigError(f"tier {self.name}", "bandwidth must be > 0 and efficiency in (0, 1]")
        if self.alpha_s < 0 or self.n_half_bytes < 0:
            raise ConfigError(f"tier {self.name}", "alpha_s and n_half_bytes must be >= 0")

    def efficiency_at(self, chunk_bytes: float) -> float:
        """eff(c) = η · c / (c + n½): the fraction of B a step of ``chunk_bytes`` reaches."""
        if chunk_bytes <= 0:
            return 0.0
        return self.efficiency * chunk_bytes / (chunk_bytes + self.n_half_bytes)

    def phase_time(self, steps: int, bytes_per_link: float) -> float:
        """T(S, D) = S·α + (D + S·n½) / (B·η): S steps moving D bytes per link direction."""
        if steps <= 0:
            return 0.0
        return steps * self.alpha_s + (bytes_per_link + steps * self.n_half_bytes) / (
            self.bandwidth * self.efficiency
        )


@dataclass(frozen=True)
class Group:
    """The ranks of one collective: ``inner_size`` per node/slice times ``outer_size`` of them.

    GPU: ``inner`` is NVLink, ``outer`` each GPU's share of its node's NICs; ``nvls`` the NVLink
    SHARP tier where the node's NVSwitches reduce (else None); ``in_network_reduction`` when the
    NIC fabric reduces (SHARP, NCCL's CollNet). TPU: ``inner`` is ICI over a sub-torus of
    ``torus_dims`` (with per-axis ``torus_wrap``), ``outer`` the DCN between slices.
    """

    kind: str  # "gpu" or "tpu"
    inner_size: int
    outer_size: int
    inner: Tier
    outer: Tier | None = None
    torus_dims: tuple[int, ...] = ()
    torus_wrap: tuple[bool, ...] = ()
    nvls: Tier | None = None
    in_network_reduction: bool = False

    def __post_init__(self):
        if self.inner_size < 1 or self.outer_size < 1:
            raise ConfigError("group", "group sizes must be >= 1")
        if self.outer_size > 1 and self.outer is None:
            raise ConfigError("group", "a group over several nodes/slices needs an outer tier")
        if self.kind == "tpu" and math.prod(self.torus_dims or (1,)) != self.inner_size:
            raise ConfigError("group", f"torus_dims {self.torus_dims} != {self.inner_size} ranks")

    @property
    def size(self) -> int:
        return self.inner_size * self.outer_size

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """Tiers that the group's links actually use."""
        tiers = (self.inner,) if self.inner_size > 1 else ()
        return tiers + ((self.outer,) if self.outer_size > 1 else ())


def default_tier(name: TierName, bandwidth: float, cluster: ClusterSpec | None = None) -> Tier:
    """A tier with the default α, η, n½, overridden by the device's measured calibration."""
    params = dict(DEFAULT_LINKS[name], bandwidth=bandwidth)
    measured = cluster.device.measured if cluster is not None else None
    if measured is not None and name in measured.links:
        cal = measured.links[name].model_dump(exclude_none=True)
        params.update(cal)
    return Tier(name=name, **params)


def cluster_tiers(cluster: ClusterSpec) -> tuple[Tier, Tier]:
    """(inner, outer) tiers of a cluster from its device's datasheet numbers."""
    dev = cluster.device
    if dev.kind == "cpu":
        # ranks on a host exchange through its memory (bandwidth: measured.links.host)
        inner = default_tier("host", dev.memory.hbm_bandwidth, cluster)
        outer = default_tier("network", dev.network.node_bandwidth / dev.devices_per_node, cluster)
    elif dev.kind == "gpu":
        inner = default_tier("nvlink", dev.nvlink.bandwidth, cluster)
        # Each GPU drives its share of the node's NICs (rail-optimised fabric).
        outer = default_tier("network", dev.network.node_bandwidth / dev.devices_per_node, cluster)
    else:
        inner = default_tier("ici", dev.ici.link_bandwidth, cluster)
        outer = default_tier("dcn", dev.network.node_bandwidth / dev.devices_per_node, cluster)
    return inner, outer


def make_group(cluster: ClusterSpec, size: int | None = None) -> Group:
    """The group of the first ``size`` ranks (default: all) of ``cluster``, node-major.

    ``size`` must be at most one node/slice, or a whole number of them. On a TPU slice a smaller
    group is a sub-block of the slice: it takes whole axes first (keeping their wraparound) and
    a divisor of the next axis (a line, no wraparound).
    """
    size = cluster.num_devices if size is None else size
    if not 1 <= size <= cluster.num_devices:
        raise ConfigError(
            "group_size", f"{size} must be between 1 and the cluster's {cluster.num_devices}"
        )
    inner, outer = cluster_tiers(cluster)
    island = cluster.slice_size  # a GPU node or a TPU slice
    if size > island and size % island:
        unit = "slice" if cluster.device.kind == "tpu" else "node"
        raise ConfigError(
            "group_size",
            f"{size} ranks span a partial {unit} of {island}; use a divisor of {island} or a "
            f"multiple of it (e.g. {island * max(1, size // island)})",
        )
    inner_size, outer_size = (size, 1) if size <= island else (island, size // island)
    if cluster.device.kind == "cpu":  # ranks on one host: gloo through its memory
        return Group("gpu", inner_size, outer_size, inner, outer)
    if cluster.device.kind == "gpu":
        nvlink, full = cluster.device.nvlink, cluster.device.devices_per_node
        if not nvlink.nvswitch and 1 < inner_size < full:
            # Point-to-point links (DGX-1's hybrid cube-mesh): a ring over part of the node can
            # use only the links among its members; spread evenly over the G-1 peers, that is
            # (g-1)/(G-1) of each GPU's links. A whole node's rings use them all.
            inner = replace(inner, bandwidth=inner.bandwidth * (inner_size - 1) / (full - 1))
        nvls = default_tier("nvls", nvlink.bandwidth, cluster) if nvlink.switch_reduction else None
        sharp = cluster.device.network.in_network_reduction
        return Group(
            "gpu", inner_size, outer_size, inner, outer, nvls=nvls, in_network_reduction=sharp
        )
    dims, wrap = _sub_torus(cluster.slice_dims, cluster.wraparound, inner_size)
    return Group("tpu", inner_size, outer_size, inner, outer, dims, wrap)


def _sub_torus(
    dims: tuple[int, ...], wrap: tuple[bool, ...], size: int
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    out_dims, out_wrap, left = [], [], size
    for d, w in zip(dims, wrap, strict=True):
        take = math.gcd(d, left)
        out_dims.append(take)
        out_wrap.append(w and take == d)
        left //= take
    if left != 1:
        raise ConfigError(
            "group_size",
            f"{size} chips are not a sub-block of the {'x'.join(map(str, dims))} slice; "
            "use a product of divisors of the slice dims",
        )
    return tuple(out_dims), tuple(out_wrap)


def replica_group(cluster: ClusterSpec, shard_size: int) -> Group:
    """The ranks that hold the same shard under HSDP with ``shard_size`` ranks per shard group:
    every ``shard_size``-th rank (module docstring). Their tiers are those of a group of
    max(1, g / s) ranks inside one island, repeated over every island the group touches."""
    island = cluster.slice_size
    check_shard_size(cluster, shard_size)
    per_island = max(1, island // shard_size)
    islands = cluster.num_devices // shard_size // per_island
    return replace(make_group(cluster, per_island), outer_size=islands)


def check_shard_size(cluster: ClusterSpec, shard_size: int) -> None:
    """A shard group must be part of one island (dividing it) or whole islands; else a group
    would straddle a node, which no tier describes: one ConfigError naming ``shard_size``."""
    island = cluster.slice_size
    if not fits_island(shard_size, island):
        unit = "TPU slice" if cluster.device.kind == "tpu" else "node"
        fits = [d for d in range(1, island + 1) if island % d == 0]
        raise ConfigError(
            "shard_size",
            f"{shard_size} neither divides the {island} devices per {unit} nor is a multiple "
            f"of it; use one of {fits} or a multiple of {island}",
        )
