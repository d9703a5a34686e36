"""Device specifications: one GPU, TPU chip or CPU host, as the hardware catalog describes it.

Every number sits next to the string that says where it comes from (datasheet, Cloud TPU docs,
price page and date). Units are SI base units: FLOP/s (dense, not sparse), bytes, bytes/s
**per direction**. Nominal peaks are upper bounds; what a real machine achieves goes in the
optional ``measured`` block, so that a profile measured on a real machine is just another
:class:`DeviceSpec` (a hardware file's ``measured:`` block).

The catalog of such devices is ``vlscale.specs.catalog``; clusters of them
``vlscale.specs.cluster``; user files ``vlscale.specs.hardware_file``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlscale.errors import ConfigError, from_validation_error
from vlscale.specs.compute_profile import ComputeProfile
from vlscale.specs.fields import (
    ByteRate,
    ByteSize,
    Count,
    Efficiency,
    FlopRate,
    NonNegativeFinite,
    Seconds,
)

Dtype = Literal["fp32", "tf32", "bf16", "fp16"]
TierName = Literal["nvlink", "nvls", "network", "ici", "dcn", "host"]
Wraparound = Literal["full_cube", "full_axis", "always", "never"]


class FrozenSpec(BaseModel):
    """Base of the hardware specs: immutable, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class PeakFlops(FrozenSpec):
    """Dense peak FLOP/s per dtype (None where the device has no such tensor path)."""

    fp32: FlopRate | None = None
    tf32: FlopRate | None = None
    bf16: FlopRate | None = None
    fp16: FlopRate | None = None
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _has_half_precision(self) -> PeakFlops:
        if self.bf16 is None and self.fp16 is None:
            raise ValueError("give at least one of bf16 / fp16 peak FLOP/s (dense)")
        return self


class Memory(FrozenSpec):
    hbm_bytes: ByteSize = Field(description="device memory capacity in bytes")
    hbm_bandwidth: ByteRate = Field(description="bytes/s")
    source: str = Field(min_length=1)


class NVLink(FrozenSpec):
    """GPU scale-up fabric: per-GPU NVLink bandwidth, one direction.

    ``nvswitch``: the node's GPUs meet in NVSwitches (every GPU reaches every other at its full
    bandwidth); without them the links form a fixed graph (DGX-1's hybrid cube-mesh), which
    NCCL covers with rings only. ``generation`` >= 4 with NVSwitch (third-generation NVSwitch:
    HGX H100 / H200 / B200) reduces in the switch: NCCL's NVLS algorithm (NVLink SHARP).
    """

    generation: Count | None = None
    bandwidth: ByteRate = Field(description="bytes/s per GPU, one direction")
    nvswitch: bool
    source: str = Field(min_length=1)

    @property
    def switch_reduction(self) -> bool:
        """NVLink SHARP (NCCL's NVLS): NVSwitch of the third generation or later."""
        return self.nvswitch and (self.generation or 0) >= 4


class Ici(FrozenSpec):
    """TPU inter-chip interconnect: links per chip, per-link bandwidth, pod torus and wrap rule.

    ``wraparound``: "full_cube" -> every axis wraps when all slice dims are multiples of
    ``wrap_unit`` (v4/v5p cubes); "full_axis" -> an axis wraps when it spans the pod axis
    (v5e/v6e); "always" / "never" for user devices.

    Slice shapes (Cloud TPU docs' configuration tables; :func:`check_slice_shape`): "full_cube"
    slices are either smaller than a cube with every dim in {1, 2, 4} (2x2x1, 2x2x2, 2x2x4,
    2x4x4) or whole cubes (every dim a multiple of ``wrap_unit``); "full_axis" slices have
    power-of-two dims at most 2:1 apart (1x1, 2x2, 2x4, 4x4, ..., 16x16). Up to one host's chips
    any shape is accepted (a part of a host). ``max_slice_chips``: the largest single slice
    (v5p: 16x16x24 = 6,144 chips, fewer than the 8,960-chip pod).
    """

    links_per_chip: Count
    link_bandwidth: ByteRate = Field(description="bytes/s per link, one direction")
    pod_dims: tuple[Count, ...] = Field(min_length=1, max_length=3)
    wraparound: Wraparound
    wrap_unit: Count | None = None
    max_slice_chips: Count | None = None
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _unit_for_cubes(self) -> Ici:
        if self.wraparound == "full_cube" and self.wrap_unit is None:
            raise ValueError("wraparound='full_cube' needs wrap_unit (4 for TPU v4/v5p cubes)")
        if any(d <= 0 for d in self.pod_dims):
            raise ValueError(f"pod_dims must be positive, got {self.pod_dims}")
        if self.links_per_chip != 2 * len(self.pod_dims):  # one link each way along every axis
            raise ValueError(
                f"links_per_chip={self.links_per_chip} but a {len(self.pod_dims)}-D torus has 2 "
                f"ICI links per axis; use {2 * len(self.pod_dims)}"
            )
        return self


class Network(FrozenSpec):
    """Scale-out: NICs per node (GPU) or per TPU host (DCN), bytes/s per NIC, one direction.

    ``in_network_reduction``: the fabric reduces in its switches (InfiniBand SHARP), which
    NCCL's CollNet algorithms use; off unless the cluster says it has it."""

    nics_per_node: Count
    nic_bandwidth: ByteRate = Field(description="bytes/s per NIC, one direction")
    in_network_reduction: bool = False
    source: str = Field(min_length=1)

    @property
    def node_bandwidth(self) -> float:
        return self.nics_per_node * self.nic_bandwidth


class Price(FrozenSpec):
    usd_per_hour: NonNegativeFinite = Field(description="USD per device-hour")
    source: str = Field(min_length=1)


class LinkCalibration(FrozenSpec):
    """Measured α–β parameters of one interconnect tier; None keeps the default."""

    alpha_s: Seconds | None = Field(default=None, description="latency per step, seconds")
    efficiency: Efficiency | None = Field(default=None, description="asymptotic bw fraction")
    n_half_bytes: NonNegativeFinite | None = Field(
        default=None, description="chunk at half efficiency"
    )
    bandwidth: ByteRate | None = Field(default=None, description="replaces nominal bytes/s")


class Measured(FrozenSpec):
    """What a real machine achieved (from a benchmark on that machine)."""

    matmul_efficiency: Efficiency | None = None
    hbm_efficiency: Efficiency | None = None
    links: dict[TierName, LinkCalibration] = Field(default_factory=dict)
    source: str = Field(min_length=1)


class DeviceSpec(FrozenSpec):
    """One GPU or one TPU chip, with its node/host and the fabrics around it."""

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    kind: Literal["gpu", "tpu", "cpu"]
    tensorcores_per_chip: Count = Field(default=1, description="TPU: cores per chip")
    devices_per_node: Count = Field(description="GPUs per node / TPU chips per host")
    peak_flops: PeakFlops
    memory: Memory
    nvlink: NVLink | None = None
    ici: Ici | None = None
    network: Network
    price: Price
    measured: Measured | None = None
    compute: ComputeProfile | None = Field(
        default=None, description="op-level efficiencies (vlscale.costs.compute); catalog defaults"
    )
    derived_from: str | None = Field(
        default=None, description="catalog device a hardware-file entry is based on (base:)"
    )

    @model_validator(mode="after")
    def _fabric_matches_kind(self) -> DeviceSpec:
        if self.kind == "gpu" and (self.nvlink is None or self.ici is not None):
            raise ValueError("a gpu needs an 'nvlink' block and no 'ici' block")
        if self.kind == "tpu" and (self.ici is None or self.nvlink is not None):
            raise ValueError("a tpu needs an 'ici' block and no 'nvlink' block")
        if self.kind == "cpu" and (self.ici is not None or self.nvlink is not None):
            raise ValueError(
                "a cpu has no 'nvlink' or 'ici' block; its ranks talk through host memory "
                "(measured.links.host)"
            )
        return self

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; ConfigError if the device has no such path."""
        value = getattr(self.peak_flops, dtype, None) if dtype in Dtype.__args__ else None
        if value is None:
            have = [d for d in Dtype.__args__ if getattr(self.peak_flops, d) is not None]
            raise ConfigError("dtype", f"{self.name} has no {dtype} peak; use one of {have}")
        return value

    def chips_from_cores(self, cores: int) -> int:
        """Papers count TPU TensorCores; "256 TPU-v3 cores" is 128 chips."""
        if cores % self.tensorcores_per_chip:
            raise ConfigError(
                "cores",
                f"{cores} cores is not a whole number of {self.name} chips "
                f"({self.tensorcores_per_chip} cores each); pass a multiple of "
                f"{self.tensorcores_per_chip}",
            )
        return cores // self.tensorcores_per_chip


_HINTS = {
    "Field required": "missing; add it (vlscale/specs/data/*.yaml show every field)",
    "Extra inputs are not permitted": "unknown field; check its spelling",
}


def spec_error(exc: ValidationError, where: str, model: type | None = None) -> ConfigError:
    """A pydantic error as one ConfigError, with pydantic's terse phrases turned into fixes;
    with ``model`` (the class validated) an unknown key names the closest known one."""
    err = from_validation_error(exc, prefix=where, model=model)
    msg = str(err)[len(err.field) + 2 :]
    return ConfigError(err.field, _HINTS.get(msg, msg))
