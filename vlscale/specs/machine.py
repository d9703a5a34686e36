"""Which machine measured a number: the CPU's identity (and the GPU's, on CUDA), torch-free.

The probe stores it in a profile (``ComputeProfile.measured_on``) and the trainer in every run
header (``RunHeader.machine``), so that a profile used on another machine can say so. Two CPUs
of the same marketing name can differ a lot: two "AMD EPYC" VMs here, with different cache sizes,
ran the same training step at 326 ms and 590 ms (``reports/validation/README.md``).

- CPU: ``vendor_id``, ``cpu family``, ``model``, ``stepping``, ``model name`` and ``flags`` of the
  first processor in ``/proc/cpuinfo``; L1d / L2 / L3 sizes from
  ``/sys/devices/system/cpu/cpu0/cache/index*/{level,type,size}`` (per core or per slice, as the
  kernel reports them). Flags are compared by a digest (SHA-256 of the sorted names, 12 hex
  digits); the warning names a few that differ.
- GPU: ``torch.cuda.get_device_name``, total memory and compute capability (the trainer reads
  them; this module only compares).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

CPUINFO = Path("/proc/cpuinfo")
CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
FLAGS_SHOWN = 4  # differing flags named in a warning; the rest are counted


class _Identity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CpuIdentity(_Identity):
    vendor: str | None = None
    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    model_name: str | None = None
    l1d_bytes: int | None = None
    l2_bytes: int | None = None
    l3_bytes: int | None = None
    flags_digest: str | None = None
    flags: tuple[str, ...] = Field(default=(), description="sorted")


class GpuIdentity(_Identity):
    name: str
    memory_bytes: int | None = None
    capability: str | None = Field(default=None, description="compute capability, e.g. '9.0'")


class MachineIdentity(_Identity):
    """The host's CPU and, when the run or profile used one, its GPU."""

    cpu: CpuIdentity | None = None
    gpu: GpuIdentity | None = None

    def describe(self) -> str:
        """A short name: the GPU when there is one, else the CPU with its L2 / L3."""
        if self.gpu is not None:
            return self.gpu.name
        c = self.cpu or CpuIdentity()
        caches = ", ".join(
            f"{lvl} {_size(v)}" for lvl, v in (("L2", c.l2_bytes), ("L3", c.l3_bytes)) if v
        )
        return f"{c.model_name or 'an unknown CPU'}" + (f" ({caches})" if caches else "")


# the fields compared, with the words a warning uses for them
_CPU_FIELDS = {
    "vendor": "vendor",
    "family": "family",
    "model": "model",
    "stepping": "stepping",
    "model_name": "model name",
    "l1d_bytes": "L1d cache",
    "l2_bytes": "L2 cache",
    "l3_bytes": "L3 cache",
}
_GPU_FIELDS = {"name": "GPU", "memory_bytes": "GPU memory", "capability": "compute capability"}


def parse_cpuinfo(text: str) -> CpuIdentity:
    """The first processor's identity in ``/proc/cpuinfo`` text (fields it lacks stay None)."""
    first: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if first:
                break  # the first processor's block ends at the first blank line
            continue
        key, sep, value = line.partition(":")
        if sep:
            first.setdefault(key.strip(), value.strip())
    flags = tuple(sorted(set(first.get("flags", "").split())))

    def number(key: str) -> int | None:
        value = first.get(key, "")
        return int(value) if value.isdigit() else None

    return CpuIdentity(
        vendor=first.get("vendor_id"),
        family=number("cpu family"),
        model=number("model"),
        stepping=number("stepping"),
        model_name=re.sub(r"\s+", " ", first["model name"]) if "model name" in first else None,
        flags_digest=flags_digest(flags) if flags else None,
        flags=flags,
    )


def flags_digest(flags) -> str:
    """SHA-256 of the sorted, space-joined flag names, first 12 hex digits."""
    return hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:12]


def parse_cache_size(text: str) -> int | None:
    """Bytes of a sysfs cache ``size`` ('48K', '1024K', '32M'); None if unreadable."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text)
    if not m:
        return None
    return int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]


def read_cache_sizes(cache_dir: Path = CACHE_DIR) -> dict[str, int]:
    """``{'l1d_bytes', 'l2_bytes', 'l3_bytes'}`` that ``cache_dir`` describes (data and unified
    caches; instruction caches are left out)."""
    out: dict[str, int] = {}
    for index in sorted(cache_dir.glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = parse_cache_size((index / "size").read_text())
        except OSError:
            continue
        if kind == "Instruction" or size is None:
            continue
        key = "l1d_bytes" if level == "1" else f"l{level}_bytes"
        if key in ("l1d_bytes", "l2_bytes", "l3_bytes"):
            out.setdefault(key, size)
    return out


def this_cpu(cpuinfo: Path = CPUINFO, cache_dir: Path = CACHE_DIR) -> CpuIdentity | None:
    """This host's CPU identity; None where ``/proc/cpuinfo`` cannot be read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    return parse_cpuinfo(text).model_copy(update=read_cache_sizes(cache_dir))


def identity_differences(a: MachineIdentity, b: MachineIdentity) -> list[str]:
    """What differs between two identities, in words ('L2 cache', 'stepping', 'flags (+amx_bf16,
    -avx512f)'); a field unknown on either side is not compared. GPUs are compared when both
    sides have one; the CPU otherwise (a GPU run's speed is the GPU's)."""
    if a.gpu is not None and b.gpu is not None:
        return _differing(a.gpu, b.gpu, _GPU_FIELDS)
    if a.gpu is not None or b.gpu is not None:
        return ["GPU (one side has none)"]
    if a.cpu is None or b.cpu is None:
        return []
    out = _differing(a.cpu, b.cpu, _CPU_FIELDS)
    da, db = a.cpu.flags_digest, b.cpu.flags_digest
    if da and db and da != db:
        gained = sorted(set(b.cpu.flags) - set(a.cpu.flags))
        lost = sorted(set(a.cpu.flags) - set(b.cpu.flags))
        named = [f"+{f}" for f in gained] + [f"-{f}" for f in lost]
        more = len(named) - FLAGS_SHOWN
        shown = ", ".join(named[:FLAGS_SHOWN]) + (f", {more} more" if more > 0 else "")
        out.append(f"flags ({shown})" if shown else "flags")
    return out


def _differing(a: BaseModel, b: BaseModel, fields: dict[str, str]) -> list[str]:
    out = []
    for name, words in fields.items():
        x, y = getattr(a, name), getattr(b, name)
        if x is not None and y is not None and x != y:
            out.append(words)
    return out


def mismatch_warning(
    profile: str, measured_on: MachineIdentity | None, here: MachineIdentity | None, what: str
) -> str | None:
    """One line when the profile's machine differs from ``here``; ``what`` names it with its
    verb ('this machine is', '3 of these 48 runs are'). None when they agree or either is
    unknown (files older than the field)."""
    if measured_on is None or here is None:
        return None
    diffs = identity_differences(measured_on, here)
    if not diffs:
        return None
    return (
        f"warning: {profile} was measured on {measured_on.describe()}; {what} {here.describe()} "
        f"(differs in: {', '.join(diffs)}); predictions may be off by a lot"
    )


def _size(n: int) -> str:
    return f"{n // 2**20} MiB" if n >= 2**20 and n % 2**20 == 0 else f"{n // 2**10} KiB"


class ReferenceTime(_Identity):
    """How long the fixed reference kernel (``trainer.probe.reference``) took on a machine:
    the median of a few repeats, with the threads and device it ran on. The speed index of a
    run is its reference time over the profile's (``vlscale.calibrate.noise``)."""

    seconds: float = Field(gt=0)
    threads: int = Field(ge=1)
    device: str = "cpu"
    kernel: str = Field(min_length=1, description="the kernel's version tag")
