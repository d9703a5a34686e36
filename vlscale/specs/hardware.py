"""Hardware catalog: devices (one GPU or one TPU chip) and the clusters built from them.

Every number lives in YAML under ``vlscale/specs/data/`` next to the string that says where it
comes from (datasheet, Cloud TPU docs, price page and date). Units are SI base units:
FLOP/s (dense, not sparse), bytes, bytes/s **per direction**. Nominal peaks are upper bounds;
what a real machine achieves goes in the optional ``measured`` block, so that a profile measured
on a real machine is just another :class:`DeviceSpec` (a hardware file's ``measured:`` block).

A cluster is ``num_devices`` devices: GPUs grouped into NVLink nodes of ``devices_per_node``
joined by NICs, or TPU chips in ``num_slices`` slices of ``slice_shape`` (torus dims) joined by
the data-center network (DCN).
"""

from __future__ import annotations

import difflib
import math
import os
import re
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vlscale.errors import ConfigError, from_validation_error
from vlscale.specs.compute_profile import ComputeProfile

DATA_DIR = Path(__file__).parent / "data"
CATALOG_FILES = ("gpus.yaml", "tpus.yaml")

Dtype = Literal["fp32", "tf32", "bf16", "fp16"]
TierName = Literal["nvlink", "nvls", "network", "ici", "dcn", "host"]
Wraparound = Literal["full_cube", "full_axis", "always", "never"]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PeakFlops(_Spec):
    """Dense peak FLOP/s per dtype (None where the device has no such tensor path)."""

    fp32: float | None = Field(default=None, gt=0)
    tf32: float | None = Field(default=None, gt=0)
    bf16: float | None = Field(default=None, gt=0)
    fp16: float | None = Field(default=None, gt=0)
    source: str = Field(min_length=1)

    @model_validator(mode="after")
    def _has_half_precision(self) -> PeakFlops:
        if self.bf16 is None and self.fp16 is None:
            raise ValueError("give at least one of bf16 / fp16 peak FLOP/s (dense)")
        return self


class Memory(_Spec):
    hbm_bytes: float = Field(gt=0, description="device memory capacity in bytes")
    hbm_bandwidth: float = Field(gt=0, description="bytes/s")
    source: str = Field(min_length=1)


class NVLink(_Spec):
    """GPU scale-up fabric: per-GPU NVLink bandwidth, one direction.

    ``nvswitch``: the node's GPUs meet in NVSwitches (every GPU reaches every other at its full
    bandwidth); without them the links form a fixed graph (DGX-1's hybrid cube-mesh), which
    NCCL covers with rings only. ``generation`` >= 4 with NVSwitch (third-generation NVSwitch:
    HGX H100 / H200 / B200) reduces in the switch: NCCL's NVLS algorithm (NVLink SHARP).
    """

    generation: int | None = Field(default=None, ge=1)
    bandwidth: float = Field(gt=0, description="bytes/s per GPU, one direction")
    nvswitch: bool
    source: str = Field(min_length=1)

    @property
    def switch_reduction(self) -> bool:
        """NVLink SHARP (NCCL's NVLS): NVSwitch of the third generation or later."""
        return self.nvswitch and (self.generation or 0) >= 4


class Ici(_Spec):
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

    links_per_chip: int = Field(gt=0)
    link_bandwidth: float = Field(gt=0, description="bytes/s per link, one direction")
    pod_dims: tuple[int, ...] = Field(min_length=1, max_length=3)
    wraparound: Wraparound
    wrap_unit: int | None = Field(default=None, gt=0)
    max_slice_chips: int | None = Field(default=None, gt=0)
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


class Network(_Spec):
    """Scale-out: NICs per node (GPU) or per TPU host (DCN), bytes/s per NIC, one direction.

    ``in_network_reduction``: the fabric reduces in its switches (InfiniBand SHARP), which
    NCCL's CollNet algorithms use; off unless the cluster says it has it."""

    nics_per_node: int = Field(gt=0)
    nic_bandwidth: float = Field(gt=0, description="bytes/s per NIC, one direction")
    in_network_reduction: bool = False
    source: str = Field(min_length=1)

    @property
    def node_bandwidth(self) -> float:
        return self.nics_per_node * self.nic_bandwidth


class Price(_Spec):
    usd_per_hour: float = Field(ge=0, description="USD per device-hour")
    source: str = Field(min_length=1)


class LinkCalibration(_Spec):
    """Measured α–β parameters of one interconnect tier; None keeps the default."""

    alpha_s: float | None = Field(default=None, ge=0, description="latency per step, seconds")
    efficiency: float | None = Field(default=None, gt=0, le=1, description="asymptotic bw fraction")
    n_half_bytes: float | None = Field(default=None, ge=0, description="chunk at half efficiency")
    bandwidth: float | None = Field(default=None, gt=0, description="replaces nominal bytes/s")


class Measured(_Spec):
    """What a real machine achieved (from a benchmark on that machine)."""

    matmul_efficiency: float | None = Field(default=None, gt=0, le=1)
    hbm_efficiency: float | None = Field(default=None, gt=0, le=1)
    links: dict[TierName, LinkCalibration] = Field(default_factory=dict)
    source: str = Field(min_length=1)


class DeviceSpec(_Spec):
    """One GPU or one TPU chip, with its node/host and the fabrics around it."""

    name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    kind: Literal["gpu", "tpu", "cpu"]
    tensorcores_per_chip: int = Field(default=1, gt=0, description="TPU: cores per chip")
    devices_per_node: int = Field(gt=0, description="GPUs per node / TPU chips per host")
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


# --------------------------------------------------------------------------- catalog


def _key(name: str) -> str:
    """Lookup key: case-insensitive, ignoring '-', '_', spaces and a 'tpu' prefix on versions."""
    return re.sub(r"[\s_\-]", "", name.lower())


@cache
def _catalog() -> dict[str, DeviceSpec]:
    devices: dict[str, DeviceSpec] = {}
    for fname in CATALOG_FILES:
        for spec in _parse_devices(yaml.safe_load((DATA_DIR / fname).read_text()), fname):
            devices[spec.name] = spec
    return devices


def _parse_devices(entries: Any, where: str) -> list[DeviceSpec]:
    if not isinstance(entries, list):
        raise ConfigError(where, "expected a list of devices")
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(DeviceSpec.model_validate(entry))
        except ValidationError as exc:
            raise _config_error(exc, f"{where}[{i}]") from None
    return out


@cache
def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for spec in _catalog().values():
        for alias in (spec.name, *spec.aliases):
            index[_key(alias)] = spec.name
    return index


def list_devices() -> list[str]:
    """Catalog device names (GPUs first, then TPUs)."""
    return list(_catalog())


def get_device(name: str, extra: dict[str, DeviceSpec] | None = None) -> DeviceSpec:
    """Look a device up by name or alias, case-insensitively; ``extra`` adds user devices."""
    pool = {_key(n): s for n, s in (extra or {}).items()}
    if _key(name) in pool:
        return pool[_key(name)]
    index = _index()
    if _key(name) in index:
        return _catalog()[index[_key(name)]]
    names = list_devices() + list(extra or {})
    close = difflib.get_close_matches(_key(name), [_key(n) for n in names], n=3, cutoff=0.4)
    hint = [n for n in names if _key(n) in close] or names
    raise ConfigError(
        "device",
        f"unknown device '{name}'; did you mean: {', '.join(hint)}? "
        "(add your own with a hardware file: vlscale.specs.hardware.load_hardware_file)",
    )


# --------------------------------------------------------------------------- clusters


class ClusterSpec(_Spec):
    """``num_devices`` devices: GPU nodes over NICs, or TPU slices (torus) over DCN.

    GPU: ``devices_per_node`` defaults to the device's node size (or ``num_devices`` when that
    is smaller, a partial node). TPU: ``slice_shape`` defaults to a compact torus shape for
    ``num_devices / num_slices`` chips (:func:`default_slice_shape`).
    """

    name: str = ""
    device: DeviceSpec
    num_devices: int = Field(gt=0)
    devices_per_node: int | None = Field(default=None, gt=0)
    slice_shape: tuple[int, ...] | None = None
    num_slices: int = Field(default=1, gt=0)

    @field_validator("slice_shape", mode="before")
    @classmethod
    def _shape_from_text(cls, value: Any) -> Any:
        return parse_slice_shape(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        if self.device.kind in ("gpu", "cpu"):
            _check_gpu_cluster(self)
        else:
            _check_tpu_cluster(self)
        return self

    @property
    def node_size(self) -> int:
        """GPUs per node (NVLink domain) / TPU chips per host."""
        size = self.devices_per_node or self.device.devices_per_node
        return min(size, self.num_devices)

    @property
    def num_nodes(self) -> int:
        return self.num_devices // self.node_size

    @property
    def slice_size(self) -> int:
        """Devices per ICI/NVLink island: a TPU slice, or a GPU node."""
        return self.num_devices // self.num_slices if self.device.kind == "tpu" else self.node_size

    @property
    def slice_dims(self) -> tuple[int, ...]:
        """TPU slice torus dims (empty for GPUs)."""
        if self.device.kind != "tpu":
            return ()
        return self.slice_shape or default_slice_shape(self.device, self.slice_size)

    @property
    def wraparound(self) -> tuple[bool, ...]:
        """Per slice axis: does it have wraparound links (a ring rather than a line)?"""
        return torus_wraparound(self.device.ici, self.slice_dims) if self.device.ici else ()

    @property
    def usd_per_hour(self) -> float:
        return self.num_devices * self.device.price.usd_per_hour


def _check_gpu_cluster(c: ClusterSpec) -> None:
    if c.slice_shape is not None:
        raise ValueError("slice_shape is for TPU slices; for GPUs set devices_per_node")
    if c.num_slices != 1:
        raise ValueError("num_slices is for TPU multi-slice; GPU nodes come from num_devices")
    node = c.node_size
    if c.num_devices % node:
        lo, hi = (c.num_devices // node) * node, (c.num_devices // node + 1) * node
        raise ValueError(
            f"num_devices={c.num_devices} is not a whole number of {node}-GPU nodes; "
            f"use {lo or node} or {hi}, or set devices_per_node"
        )


def _check_tpu_cluster(c: ClusterSpec) -> None:
    ici = c.device.ici
    if c.num_devices % c.num_slices:
        raise ValueError(
            f"num_devices={c.num_devices} does not split into num_slices={c.num_slices} equal "
            "slices; use a multiple of num_slices"
        )
    dims = c.slice_dims  # raises for impossible default shapes
    if len(dims) != len(ici.pod_dims):
        raise ValueError(
            f"slice_shape {_fmt(dims)} has {len(dims)} dims but {c.device.name} is a "
            f"{len(ici.pod_dims)}-D torus (pod {_fmt(ici.pod_dims)})"
        )
    if any(d <= 0 for d in dims):
        raise ValueError(f"slice_shape dims must be positive, got {_fmt(dims)}")
    if any(d > p for d, p in zip(sorted(dims), sorted(ici.pod_dims), strict=True)):
        raise ValueError(
            f"slice_shape {_fmt(dims)} does not fit in a {c.device.name} pod "
            f"({_fmt(ici.pod_dims)}); use a smaller slice and num_slices > 1 (--num-slices)"
        )
    if math.prod(dims) * c.num_slices != c.num_devices:
        raise ValueError(
            f"slice_shape {_fmt(dims)} ({math.prod(dims)} chips) x num_slices={c.num_slices} "
            f"!= num_devices={c.num_devices}; make them agree"
        )
    problem = check_slice_shape(c.device, dims)
    if problem:
        raise ValueError(problem)


def check_slice_shape(device: DeviceSpec, dims: tuple[int, ...]) -> str | None:
    """Why ``dims`` is not a slice shape of ``device`` (rules in :class:`Ici`), or None."""
    ici, chips = device.ici, math.prod(dims)
    if ici.max_slice_chips is not None and chips > ici.max_slice_chips:
        return (
            f"slice_shape {_fmt(dims)} has {chips} chips; the largest {device.name} slice has "
            f"{ici.max_slice_chips}: use num_slices > 1 (--num-slices)"
        )
    if chips <= device.devices_per_node:  # part of one host
        return None
    if ici.wraparound == "full_cube":
        unit = ici.wrap_unit
        small = chips < unit ** len(dims) and all(d in (1, 2, unit) for d in dims)
        if not (small or all(d % unit == 0 for d in dims)):
            return (
                f"slice_shape {_fmt(dims)} is not a {device.name} slice: below a "
                f"{_fmt([unit] * len(dims))} cube every dim is 1, 2 or {unit} (e.g. 2x2x4, "
                f"2x4x4), from a cube up every dim is a multiple of {unit} (e.g. 4x4x8)"
            )
    elif ici.wraparound == "full_axis":
        pow2 = all(d & (d - 1) == 0 for d in dims)
        if not (pow2 and max(dims) <= 2 * min(dims)):
            return (
                f"slice_shape {_fmt(dims)} is not a {device.name} slice: dims are powers of two "
                "at most 2:1 apart (2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16)"
            )
    return None


def parse_slice_shape(text: str) -> tuple[int, ...]:
    """'4x4x8' -> (4, 4, 8), as Cloud TPU writes topologies; ValueError naming the fix."""
    parts = text.lower().replace(" ", "").split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"'{text}' is not a slice shape; write positive dims joined by x: 4x4x8")
    return tuple(int(p) for p in parts)


def default_slice_shape(device: DeviceSpec, chips: int) -> tuple[int, ...]:
    """A compact torus shape for ``chips``: prime factors go, largest first, to the smallest
    dim, giving the documented shapes for powers of two (v5p: 2x2x1, 2x2x2, 2x4x4, 4x4x4,
    4x4x8; v5e: 2x2, 2x4, 4x4, 4x8, ..., 16x16). Raises ValueError if it does not fit a pod."""
    ici = device.ici
    dims = [1] * len(ici.pod_dims)
    for f in sorted(_prime_factors(chips), reverse=True):
        i = min(range(len(dims)), key=lambda j: dims[j])
        dims[i] *= f
    # Cloud TPU writes shapes ascending with unit dims last: 2x2x1, 2x4x4, 4x4x8, 8x16.
    shape = tuple(sorted(d for d in dims if d > 1)) + tuple(d for d in dims if d == 1)
    if any(d > p for d, p in zip(sorted(shape), sorted(ici.pod_dims), strict=True)):
        raise ValueError(
            f"{chips} chips do not fit in one {device.name} slice (pod {_fmt(ici.pod_dims)}, "
            f"{math.prod(ici.pod_dims)} chips); use num_slices > 1 (--num-slices) or give "
            "slice_shape (--slice-shape)"
        )
    return shape


def torus_wraparound(ici: Ici, dims: tuple[int, ...]) -> tuple[bool, ...]:
    """Which slice axes are rings. An axis of size <= 2 never counts as wrapped (a 2-ring is a
    single link). Rules: see :class:`Ici`."""
    if ici.wraparound == "never":
        flags = [False] * len(dims)
    elif ici.wraparound == "always":
        flags = [True] * len(dims)
    elif ici.wraparound == "full_cube":
        whole = all(d % ici.wrap_unit == 0 for d in dims)
        flags = [whole] * len(dims)
    else:  # full_axis
        flags = [d in ici.pod_dims for d in dims]
    return tuple(f and d > 2 for f, d in zip(flags, dims, strict=True))


def make_cluster(
    device: str | DeviceSpec,
    num_devices: int,
    *,
    devices_per_node: int | None = None,
    slice_shape: tuple[int, ...] | str | None = None,
    num_slices: int = 1,
    name: str = "",
    extra_devices: dict[str, DeviceSpec] | None = None,
) -> ClusterSpec:
    """Build and validate a cluster from a device name and a device count (ConfigError if bad)."""
    spec = device if isinstance(device, DeviceSpec) else get_device(device, extra_devices)
    try:
        return ClusterSpec(
            name=name or f"{num_devices}x{spec.name}",
            device=spec,
            num_devices=num_devices,
            devices_per_node=devices_per_node,
            slice_shape=slice_shape if isinstance(slice_shape, str) else _tuple(slice_shape),
            num_slices=num_slices,
        )
    except ValidationError as exc:
        raise _config_error(exc, "cluster") from None


def _tuple(dims) -> tuple[int, ...] | None:
    return tuple(dims) if dims else None


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return [*out, n] if n > 1 else out


def _fmt(dims) -> str:
    return "x".join(str(d) for d in dims)


# --------------------------------------------------------------------------- user files


class HardwareFile(_Spec):
    """What a user hardware file defines: devices and clusters, by name."""

    devices: dict[str, DeviceSpec] = Field(default_factory=dict)
    clusters: dict[str, ClusterSpec] = Field(default_factory=dict)


def load_hardware_file(path: str | os.PathLike) -> HardwareFile:
    """Read devices and clusters from a YAML or TOML file (one clear ConfigError if bad).

    Layout (YAML; TOML uses ``[[devices]]`` / ``[[clusters]]`` tables)::

        devices:
          - base: H100                 # optional: start from a catalog (or earlier) device
            name: h100-measured
            measured: {matmul_efficiency: 0.62, source: "measured 2025-01-02",
                       links: {nvlink: {alpha_s: 2.0e-6, efficiency: 0.8}}}
        clusters:
          - {name: lab, device: h100-measured, num_devices: 16}
          - {name: pod, device: TPUv5e, num_devices: 512, num_slices: 2}
    """
    path = Path(path)
    field = f"hardware_file {path.name}"
    data = _read_mapping(path, field)
    unknown = set(data) - {"devices", "clusters"}
    if unknown or not data:
        raise ConfigError(
            field,
            f"top-level keys must be 'devices' and/or 'clusters', got {sorted(data) or 'nothing'}",
        )
    devices: dict[str, DeviceSpec] = {}
    for i, entry in enumerate(_entries(data, "devices", field)):
        spec = _device_entry(entry, devices, f"{field}: devices[{i}]")
        if _key(spec.name) in _index():  # it would shadow the catalog's device without a word
            raise ConfigError(
                f"{field}: devices[{i}].name",
                f"'{spec.name}' is a catalog device; give yours another name (e.g. "
                f"{spec.name}-measured) and start from the catalog's with base: {spec.name}",
            )
        devices[spec.name] = spec
    clusters: dict[str, ClusterSpec] = {}
    for i, entry in enumerate(_entries(data, "clusters", field)):
        where = f"{field}: clusters[{i}]"
        entry = dict(entry)
        if not isinstance(entry.get("device"), str) or not entry.get("name"):
            raise ConfigError(where, "each cluster needs a 'name' and a 'device' name")
        entry["device"] = _with_field(get_device, where)(entry["device"], devices)
        try:
            clusters[entry["name"]] = ClusterSpec.model_validate(entry)
        except ValidationError as exc:
            raise _config_error(exc, where) from None
    return HardwareFile(devices=devices, clusters=clusters)


def dump_hardware_file(path: str | os.PathLike, devices=(), clusters=()) -> None:
    """Write devices and clusters as a YAML hardware file, atomically (temp file + rename).

    Cluster devices that are not catalog entries are written too, so the file loads alone."""
    devs = {d.name: d for d in devices}
    for c in clusters:
        if _catalog().get(c.device.name) != c.device:
            devs.setdefault(c.device.name, c.device)
    doc: dict[str, Any] = {}
    if devs:
        doc["devices"] = [d.model_dump(mode="json", exclude_none=True) for d in devs.values()]
    if clusters:
        doc["clusters"] = [
            c.model_dump(mode="json", exclude_none=True) | {"device": c.device.name}
            for c in clusters
        ]
    path = Path(path)
    from vlscale.paths import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))


def _read_mapping(path: Path, field: str) -> dict:
    if not path.is_file():
        raise ConfigError(field, f"no such file: {path}; check the path")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                raise ConfigError(field, "TOML needs Python >= 3.11; use a .yaml file") from None
            data = tomllib.loads(text)
        else:
            raise ConfigError(field, f"unknown extension '{path.suffix}'; use .yaml, .yml or .toml")
    except (yaml.YAMLError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        first = str(exc).strip().splitlines()
        raise ConfigError(field, f"cannot parse: {' '.join(first[:3])}") from None
    if not isinstance(data, dict):
        raise ConfigError(field, "expected a mapping with 'devices' and/or 'clusters'")
    return data


def _entries(data: dict, key: str, field: str) -> list[dict]:
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{field}: {key}", "expected a list of mappings")
    return entries


def _device_entry(entry: dict, known: dict[str, DeviceSpec], where: str) -> DeviceSpec:
    entry = dict(entry)
    base_name = entry.pop("base", None)
    if base_name is not None:
        parent = _with_field(get_device, where)(str(base_name), known)
        base = parent.model_dump()
        if entry.get("name", base["name"]) != base["name"]:
            base["aliases"] = ()  # the catalog's aliases belong to the catalog device
        # same silicon: the catalog's op-level defaults and γ still apply (vlscale.plan)
        base["derived_from"] = parent.derived_from or parent.name
        entry = _deep_merge(base, entry)
    try:
        return DeviceSpec.model_validate(entry)
    except ValidationError as exc:
        raise _config_error(exc, where) from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


_HINTS = {
    "Field required": "missing; add it (vlscale/specs/data/*.yaml show every field)",
    "Extra inputs are not permitted": "unknown field; check its spelling",
}


def _config_error(exc: ValidationError, where: str) -> ConfigError:
    """A pydantic error as one ConfigError, with pydantic's terse phrases turned into fixes."""
    err = from_validation_error(exc, prefix=where)
    msg = str(err)[len(err.field) + 2 :]
    return ConfigError(err.field, _HINTS.get(msg, msg))


def _with_field(fn, where: str):
    """Re-raise a ConfigError from ``fn`` with ``where`` in front, so the file position shows."""

    def call(*args):
        try:
            return fn(*args)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.field}", str(exc)[len(exc.field) + 2 :]) from None

    return call
