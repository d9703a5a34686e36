"""How fast a device runs the ops of a step: the parameters of ``vlscale.costs.compute``.

An op's time is (``vlscale.costs.compute``)::

    t = max(F / (P_dtype · e_mm), bytes / (BW · e_bw)) + kernels · t_op

with the matmul efficiency curve of the shape (batch g, m, n, k; F = 2·g·m·n·k)::

    e_mm = peak_fraction · q(g, m, n) · F / (F + F½ · q)
    q    = g·m·n / (waves · units · tile_m · tile_n)
    waves = ceil(g · ⌈m / tile_m⌉ · ⌈n / tile_n⌉ / units)

``q`` is tile and wave quantisation (a GEMM is cut into output tiles spread over ``units``
parallel engines — SMs, TPU cores, CPU threads — and the last wave runs partly empty); the
saturation is a fixed per-GEMM latency (F½ = P · peak_fraction · latency), so that a GEMM takes
F / (P · peak_fraction · q) + latency. Attention
(SDPA) uses the same curve times ``attention_fraction``, or, where the probe measured it per
dtype and direction, an :class:`AttentionCost`: the curve at its own fraction plus a cost per
(batch · head) block and per query element of it, what CPU flash-attention kernels spend on
per-block buffers and conversions (bf16's backward is 3-5x fp32's at ViT-tiny shapes but on par
at 257 tokens: no single fraction fits both).

Step-level terms, the few free parameters that ``vlscale calibrate`` fits to trainer runs:
``op_overhead_s`` (host cost per kernel launch inside the towers: module call, autograd,
hooks), ``dtensor_op_overhead_s`` (the same for an op on DTensor parameters — torch's optimizer
step and gradient clipping under FSDP2 — which goes through DTensor's sharding propagation
first), ``unit_overhead_s`` (per FSDP unit and
step: hooks, stream/event bookkeeping), ``step_overhead_s`` (per step: Python loop, logging,
scheduler), ``comm_overlap`` (the fraction of collective time that hides behind compute; a CPU
runs gloo's transfers on the cores that compute, so little hides there), and
``collective_overhead_s`` (what one collective costs a training step beyond its transfer: the
hand-off to the backend's worker thread and the wait for the slower peer).

``memory_scale`` / ``attention_scale`` say how much faster (or slower) elementwise kernels and
attention run in a dtype than in fp32: a CPU converts bf16 to fp32 inside elementwise kernels, so
their bytes move slower than fp32's, while its AMX tiles make bf16 GEMMs fast (probe-measured).
``plain_op_overhead_s`` (a bare tensor op launched from Python, as LAMB's loop over local shards
does) is measured by the probe and not fitted.

Every profile says where its numbers came from (``source``; ``calibration`` after a fit), and
a probed one on which machine (``measured_on``, ``vlscale.specs.machine``) and how fast that
machine ran the fixed reference kernel then (``reference``: the denominator of a run's speed
index, ``vlscale.calibrate.noise``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlscale.specs.fields import (
    MIN_EFFICIENCY,
    ByteRate,
    Count,
    Efficiency,
    NonNegativeFinite,
    Scale,
    Seconds,
)
from vlscale.specs.machine import MachineIdentity, ReferenceTime

Origin = Literal["measured", "calibrated", "assumed", "published"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MatmulCurve(_Spec):
    """e_mm of one dtype (module docstring)."""

    peak_fraction: Efficiency = Field(description="large-GEMM fraction of the peak")
    flops_half: NonNegativeFinite = Field(
        description="GEMM FLOPs at half the asymptotic efficiency"
    )
    tile_m: Count = 1
    tile_n: Count = 1
    parallel_units: Count = Field(default=1, description="SMs / cores / threads")
    source: str = Field(min_length=1)


class AttentionCost(_Spec):
    """One SDPA kernel (a dtype, forward or backward) on g = batch·heads blocks of s queries of
    head dim d, with F its executed FLOPs::

        t = F / (P · e_mm(g, s, s, d) · fraction) + g · (block_s + element_s · s · d)

    fitted by non-negative least squares over a grid of shapes (``fit_attention_cost``)."""

    fraction: float = Field(
        ge=MIN_EFFICIENCY, le=2, description="of the matmul curve, on the FLOPs"
    )
    block_s: Seconds = Field(description="seconds per (batch·head) block, all threads")
    element_s: Seconds = Field(description="seconds per query element (s·d) of a block")


class AlphaBeta(_Spec):
    """T = steps · α + bytes / B for one collective as a library really runs it (gloo's
    reduce-scatter, for one, is not the ring that NCCL runs)."""

    alpha_s: Seconds
    bandwidth: ByteRate = Field(description="bytes/s through the busiest link")


class Calibration(_Spec):
    """What a fit did: parameters fitted, the runs they came from, and how well they fit."""

    parameters: dict[str, float]
    runs: list[str] = Field(description="run ids (header fingerprints) used in fitting")
    run_paths: list[str] = []
    residuals: dict[str, float] = Field(default_factory=dict, description="run id -> rel. error")
    mape: float | None = None
    max_error: float | None = None
    source: str = Field(min_length=1)


class ComputeProfile(_Spec):
    """Op-level efficiencies and overheads of one device (module docstring)."""

    matmul: dict[str, MatmulCurve] = Field(min_length=1, description="per dtype; 'default' too")
    attention_fraction: float = Field(default=1.0, ge=MIN_EFFICIENCY, le=2)
    memory_efficiency: Efficiency = Field(description="elementwise fraction of HBM BW")
    op_overhead_s: Seconds = Field(description="per kernel launch")
    dtensor_op_overhead_s: Seconds | None = Field(
        default=None, description="per op on DTensor parameters (None: op_overhead_s)"
    )
    plain_op_overhead_s: Seconds | None = Field(
        default=None, description="per bare tensor op from Python (None: op_overhead_s)"
    )
    unit_overhead_s: Seconds = Field(default=0.0, description="per FSDP unit per step")
    step_overhead_s: Seconds = Field(default=0.0, description="per step")
    comm_overlap: float = Field(default=1.0, ge=0, le=1)
    collective_overhead_s: Seconds = Field(
        default=0.0, description="host cost of issuing and waiting one collective in a step"
    )
    framework_efficiency: Efficiency = Field(
        default=1.0, description="achieved fraction of the op roofline in training"
    )
    data_s_per_sample: Seconds = Field(default=0.0, description="input pipeline, per sample")
    collectives: dict[Literal["all_gather", "reduce_scatter", "all_reduce", "p2p"], AlphaBeta] = (
        Field(default_factory=dict, description="measured per collective (replaces the tier)")
    )
    memory_scale: dict[str, Scale] = Field(
        default_factory=dict, description="elementwise bytes/s of a dtype relative to fp32"
    )
    attention_scale: dict[str, Scale] = Field(
        default_factory=dict,
        description="attention efficiency relative to fp32 forward, per dtype ('bf16') and for "
        "backward ('fp32.backward', 'bf16.backward')",
    )
    attention_costs: dict[str, AttentionCost] = Field(
        default_factory=dict,
        description="measured SDPA kernels per 'fp32', 'fp32.backward', 'bf16', ... (replace "
        "attention_fraction / attention_scale for those keys)",
    )
    thread_bandwidth: ByteRate | None = Field(
        default=None, description="cpu: memory bandwidth one thread reaches, bytes/s"
    )
    origins: dict[str, Origin] = Field(default_factory=dict, description="parameter -> origin")
    source: str = Field(min_length=1)
    calibration: Calibration | None = None
    measured_on: MachineIdentity | None = Field(
        default=None, description="the probed machine (None: a profile older than the field)"
    )
    reference: ReferenceTime | None = Field(
        default=None,
        description="the reference kernel's time the profile describes: when probed, or after "
        "vlscale calibrate the median around its fit runs (vlscale.calibrate.noise)",
    )

    def curve(self, dtype: str) -> MatmulCurve:
        """The dtype's curve (tf32 falls back to fp32, then 'default')."""
        for key in (dtype, "fp32" if dtype == "tf32" else dtype, "default"):
            if key in self.matmul:
                return self.matmul[key]
        return next(iter(self.matmul.values()))

    def with_parameters(self, **values: Any) -> ComputeProfile:
        """A copy with some scalar parameters replaced (what calibration changes)."""
        return self.model_copy(update=values)
