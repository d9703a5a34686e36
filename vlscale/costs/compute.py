"""Op times: roofline of each op with a matmul-shape efficiency and a per-kernel overhead.

    t(op) = max(F_exec / (P · e_mm(shape)), bytes / (BW · e_bw)) + kernels · t_op

(an SDPA kernel with a measured ``AttentionCost`` adds its per-block term to the compute part:
``vlscale.specs.compute_profile``)

P is the rank's dense peak for the op's dtype, BW its memory bandwidth, e_mm the matmul curve of
``vlscale.specs.compute_profile`` (tile / wave quantisation times a saturation in size), e_bw
the elementwise efficiency and t_op the host's dispatch overhead per kernel launch. The op is
``compute``-, ``memory``- or ``overhead``-bound by whichever term is largest.

With every efficiency 1, no quantisation, no saturation and no overhead, a matmul's time is
exactly F / P (tests/test_compute.py), so the model reduces to the old FLOPs / peak.

CPU ranks share their host: W ranks on a host of N threads get N / W threads each (torchrun's
split, as the trainer applies it), hence a peak of P_host · (N / W) / N and at most their share
of the host's memory bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from vlscale.costs.ops import Op
from vlscale.specs.compute_profile import ComputeProfile, MatmulCurve
from vlscale.specs.hardware import DeviceSpec


@dataclass(frozen=True)
class RankResources:
    """What one rank can use: peak FLOP/s per dtype, memory bandwidth, parallel units."""

    peaks: dict[str, float]
    bandwidth: float
    units_scale: float  # fraction of the device's parallel units this rank drives
    profile: ComputeProfile

    def peak(self, dtype: str) -> float:
        for key in (dtype, "fp32" if dtype == "tf32" else dtype):
            if self.peaks.get(key):
                return self.peaks[key]
        return max(self.peaks.values())


def rank_resources(
    device: DeviceSpec, profile: ComputeProfile, ranks_per_host: int = 1
) -> RankResources:
    """A rank's share of the device (CPU: of the host, ``ranks_per_host`` sharing it)."""
    p = device.peak_flops
    peaks = {k: getattr(p, k) for k in ("fp32", "tf32", "bf16", "fp16") if getattr(p, k)}
    bandwidth = device.memory.hbm_bandwidth * profile.memory_efficiency
    share = 1.0
    if device.kind == "cpu" and ranks_per_host > 1:
        share = 1.0 / ranks_per_host
        peaks = {k: v * share for k, v in peaks.items()}
        per_thread = profile.thread_bandwidth or device.memory.hbm_bandwidth
        threads = max(1, round(profile.curve("fp32").parallel_units * share))
        bandwidth = min(bandwidth * share, per_thread * threads * profile.memory_efficiency)
    return RankResources(peaks, bandwidth, share, profile)


def matmul_efficiency(curve: MatmulCurve, shape: tuple[int, int, int, int], units_scale=1.0):
    """e_mm(g, m, n, k) = peak_fraction · q · F / (F + F½ · q) (``compute_profile`` docstring).

    With F½ = P · peak_fraction · latency this makes a GEMM's time
    F / (P · peak_fraction · q) + latency: the quantised roofline plus ONE fixed latency. (The
    saturation F / (F + F½) without q divided the latency by q as well, so a tiny GEMM that
    fills one tile of 132 SMs cost 132 latencies: a 32×32×768 fp32 logit block 9 ms on an H100.)
    """
    g, m, n, k = shape
    flops = 2.0 * g * m * n * k
    if flops <= 0:
        return curve.peak_fraction
    units = max(1, round(curve.parallel_units * units_scale))
    # GEMM libraries pick a smaller tile for a small output (cuBLAS's heuristics): no tile is
    # taken larger than the output rounded up to a power of two (at least one 16-wide MMA)
    tile_m = min(curve.tile_m, _tile_cap(m))
    tile_n = min(curve.tile_n, _tile_cap(n))
    tiles = g * math.ceil(m / tile_m) * math.ceil(n / tile_n)
    waves = math.ceil(tiles / units)
    quantisation = (g * m * n) / (waves * units * tile_m * tile_n)
    saturation = flops / (flops + curve.flops_half * units_scale * quantisation)
    return curve.peak_fraction * quantisation * saturation


MIN_TILE = 16  # the smallest tensor-core MMA edge (m16n8k16 / 16x16 fragments)


def _tile_cap(dim: int) -> int:
    """The largest tile edge a library would use for an output edge of ``dim``."""
    return max(MIN_TILE, 1 << max(0, math.ceil(math.log2(max(dim, 1)))))


@dataclass(frozen=True)
class OpTime:
    op: Op
    compute_s: float
    memory_s: float
    overhead_s: float

    @cached_property  # read for every op of every table and sum: computed once
    def time_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.overhead_s

    @property
    def bound(self) -> str:
        top = max(self.compute_s, self.memory_s, self.overhead_s)
        if top == self.overhead_s:
            return "overhead"
        return "compute" if top == self.compute_s else "memory"


def op_time(op: Op, res: RankResources, efficiency: float = 1.0) -> OpTime:
    """Roofline time of one op on one rank (module docstring); ``efficiency`` (the framework
    efficiency γ) divides the roofline part, not the per-launch overhead."""
    prof = res.profile
    compute = 0.0
    if op.kind in ("matmul", "attention") and op.executed_flops > 0:
        curve = prof.curve(op.dtype)
        eff = matmul_efficiency(curve, op.shape, res.units_scale)
        block_s = 0.0
        if op.kind == "attention":
            key = f"{op.dtype}.backward" if op.phase == "backward" else op.dtype
            cost = prof.attention_costs.get(key)
            if cost is not None:
                eff *= cost.fraction
                g, s, _, d = op.shape
                # blocks spread over the rank's threads: one of two threads takes twice as long
                block_s = op.kernels * g * (cost.block_s + cost.element_s * s * d)
                block_s /= res.units_scale
            else:
                scale = prof.attention_scale
                eff *= prof.attention_fraction * scale.get(key, scale.get(op.dtype, 1.0))
        compute = (op.executed_flops / (res.peak(op.dtype) * eff) + block_s) / efficiency
    bandwidth = res.bandwidth * prof.memory_scale.get(op.dtype, 1.0)
    memory = op.bytes / (bandwidth * efficiency) if op.bytes else 0.0
    per_launch = {"dtensor": prof.dtensor_op_overhead_s, "plain": prof.plain_op_overhead_s}.get(
        op.dispatch
    )
    if per_launch is None:
        per_launch = prof.op_overhead_s
    return OpTime(op, compute, memory, op.kernels * per_launch)


def ops_time(ops: Iterable[Op], res: RankResources) -> float:
    """Σ t(op): ops of one stream run back to back."""
    return sum(op_time(op, res).time_s for op in ops)


def utilisation_profile(utilisation: float, source: str) -> ComputeProfile:
    """The old single-constant model as a profile: every matmul at ``utilisation`` of the peak,
    no quantisation, no saturation, no overhead, elementwise work free (it was folded into u).
    ``--utilisation`` builds this; it reproduces FLOPs / (u · P)."""
    curve = MatmulCurve(peak_fraction=utilisation, flops_half=0.0, source=source)
    return ComputeProfile(
        matmul={"default": curve},
        memory_efficiency=1.0,
        op_overhead_s=0.0,
        source=source,
        origins={"utilisation": "assumed"},
    )
