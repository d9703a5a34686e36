"""Measuring the trainer: device peaks for MFU, timers, peak memory, torch.profiler traces.

MFU (PaLM, Chowdhery et al. 2022, App. B) = achieved model FLOP/s / peak FLOP/s, where the model
FLOPs come from ``vlscale.costs.flops.model_flops_per_sample`` (never a second formula here) and
the peak per device is, in this order of preference:

1. ``--peak-flops`` (the user knows their hardware), or ``--peak-from PROFILE``: the peak of the
   device profile that ``python -m trainer.probe`` wrote for this machine (a CPU's divided among
   the ranks of the host): source ``option``; a profile probed on another CPU (or GPU SKU) than
   this host's is warned about in one line (``vlscale.specs.machine``);
2. on CUDA, the dense peak for the training dtype from the hardware catalog
   (``vlscale.specs.hardware``), matched on ``torch.cuda.get_device_name``: source ``lookup``;
3. on CPU (or an unknown GPU), a matmul measured once at start-up: source ``measured``.
   A CPU has no honest datasheet peak for "this process with these threads", so the best
   square matmul this process achieves stands in for it; MFU on CPU is therefore relative to a
   practical, not a nominal, peak (it can approach 1). The best of several short trials is
   taken, and a best that no CPU with these threads could produce is rejected with a warning
   (no MFU, source ``none``) rather than recorded: a busy machine once gave a 100x low peak.
"""

from __future__ import annotations

import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

from trainer.parallelize import DTYPES


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock times mean something (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Physical bounds of a CPU matmul rate per thread, to reject a measurement that makes no sense.
# Lower (fp32 only): any x86 / Arm core of the last 15 years runs an fp32 GEMM at >= 4 FLOP per
# cycle at >= 1 GHz; far below that the probe was starved (e.g. an OpenMP barrier waiting each call
# for a thread that another process holds off its core), which once gave 1.7 GFLOP/s on 2 threads
# where 187 GFLOP/s is normal, and a median MFU of 143 %. bf16 / fp16 have no lower bound: a CPU
# without kernels for them is slow for real. Upper: AVX-512 with two FMA units does 64 fp32 FLOP
# per cycle, AMX 1024 bf16 FLOP per cycle, at < 6 GHz; the bounds leave room above both.
CPU_FLOPS_PER_THREAD = {"fp32": (4e9, 1e12), "bf16": (0.0, 1e13), "fp16": (0.0, 1e13)}
PEAK_TRIALS = 3


def matmul_flops_trials(
    device: torch.device,
    precision: str = "fp32",
    sizes: tuple[int, ...] = (256, 1024, 2048),
    seconds: float = 0.1,
    trials: int = PEAK_TRIALS,
    clock=time.perf_counter,
) -> list[float]:
    """The best FLOP/s of each of ``trials`` trials over ``sizes``, in order.

    Why several short trials and their best: a busy machine slows a trial down (never speeds it
    up), and the slow-down comes in bursts, so one pathological trial must not decide the peak.
    Within a trial the first call of each size warms up thread pools and kernel selection and is
    not timed. Small sizes under-use wide CPUs; a larger size is tried only if one call of it is
    predicted (n³ scaling) to stay under ``seconds``: fp16 on a CPU without fp16 kernels is
    orders of magnitude slower. ``clock`` is the timer (tests replace it).
    """
    dtype = DTYPES[precision]
    mats = {n: torch.randn(n, n, device=device, dtype=dtype) for n in sizes}
    return [trial_flops(device, mats, seconds, clock) for _ in range(trials)]


def trial_flops(
    device: torch.device, mats: dict[int, torch.Tensor], seconds: float, clock
) -> float:
    """One trial of ``matmul_flops_trials``: the best FLOP/s of ``a @ a`` over the sizes of
    ``mats`` (size -> (n, n) matrix), in order."""
    sizes = list(mats)
    best_flops = 0.0
    for k, n in enumerate(sizes):
        a = mats[n]
        best = float("inf")
        deadline = clock() + seconds
        for i in range(1000):
            t0 = clock()
            a @ a
            synchronize(device)
            t1 = clock()
            if i:  # the first call warms up thread pools and kernel selection
                best = min(best, t1 - t0)
            if i >= 2 and t1 > deadline:
                break
        best_flops = max(best_flops, 2.0 * n**3 / best)
        if k + 1 < len(sizes) and best * (sizes[k + 1] / n) ** 3 > seconds:
            break  # the next size would take too long
    return best_flops


def check_cpu_peak(rates: list[float], precision: str, threads: int) -> tuple[float | None, str]:
    """(peak, note) from the trials' rates: their best, or None when even the best is outside
    the physical bounds of ``threads`` CPU threads (``CPU_FLOPS_PER_THREAD``); the note (empty
    when all is well) says what was wrong and what to do."""
    best = max(rates)
    low, high = (threads * x for x in CPU_FLOPS_PER_THREAD.get(precision, (0.0, float("inf"))))
    fix = (
        "pass --peak-flops, or --peak-from a device profile (python -m trainer.probe), for a "
        "reliable MFU"
    )
    if not low <= best <= high:
        side = "below" if best < low else "above"
        return None, (
            f"warning: the measured {precision} matmul peak, {best / 1e9:.3g} GFLOP/s on "
            f"{threads} threads, is {side} what {threads} CPU threads can do "
            f"({low / 1e9:.3g}-{high / 1e9:.3g} GFLOP/s; the machine was probably busy): MFU is "
            f"not recorded; {fix}"
        )
    spread = statistics.median(rates) / best
    if spread < 0.5:
        return best, (
            f"note: the peak-FLOP trials disagree ({', '.join(f'{r / 1e9:.3g}' for r in rates)} "
            f"GFLOP/s; the machine is busy); the best is used; {fix}"
        )
    return best, ""


def catalog_peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak of a CUDA device from the hardware catalog, or None when it is not listed."""
    from vlscale.specs.hardware import get_device

    key = catalog_device_key(device_name)
    return None if key is None else getattr(get_device(key).peak_flops, precision, None)


def catalog_device_key(device_name: str) -> str | None:
    """The hardware catalog's name for a CUDA device, or None when it is not listed.

    ``torch.cuda.get_device_name`` says e.g. "NVIDIA H100 80GB HBM3"; the catalog entry whose
    name or alias is the longest substring of it wins (so "A100-SXM4-80GB" beats "A100"):
    ``vlscale.specs.catalog.find_device``.
    """
    from vlscale.specs.catalog import find_device

    return find_device(device_name.removeprefix("NVIDIA "))


def resolve_peak_flops(
    device: torch.device,
    device_name: str,
    precision: str,
    option: float | None,
    profile: str | None = None,
    ranks_per_host: int = 1,
) -> tuple[float | None, str, str]:
    """(peak FLOP/s per device or None, source, note) following the module doc's order; the
    note (empty when all is well) is for the log."""
    if option is not None:
        return float(option), "option", ""
    if profile is not None:
        peak = profile_peak_flops(profile, device, precision, ranks_per_host)
        return peak, "option", profile_identity_note(profile, device)
    if device.type == "cuda":
        peak = catalog_peak_flops(device_name, precision)
        if peak is not None:
            return peak, "lookup", ""
        return max(matmul_flops_trials(device, precision)), "measured", ""
    rates = matmul_flops_trials(device, precision)
    peak, note = check_cpu_peak(rates, precision, torch.get_num_threads())
    return peak, ("measured" if peak is not None else "none"), note


def profile_peak_flops(
    path: str, device: torch.device, precision: str, ranks_per_host: int = 1
) -> float:
    """The ``precision`` peak per rank of the one device of ``device``'s kind in a hardware
    file (``python -m trainer.probe`` writes one for a CPU). A CPU profile's peak is the whole
    host's (all threads), so each of ``ranks_per_host`` ranks gets its share, as the planner
    does (``vlscale.costs.compute.rank_resources``)."""
    from vlscale.errors import ConfigError

    found = _profile_device(path, device)
    try:
        peak = found.peak(precision)
    except ConfigError as exc:
        raise ConfigError("peak_from", f"{path}: {exc}; pass --peak-flops instead") from None
    return peak / ranks_per_host if found.kind == "cpu" else peak


def profile_identity_note(path: str, device: torch.device) -> str:
    """A one-line warning when the profile was probed on another machine than this one (empty
    when they agree, or when the profile does not say where it was measured)."""
    from vlscale.specs.machine import mismatch_warning

    compute = _profile_device(path, device).compute
    measured_on = compute.measured_on if compute is not None else None
    here = machine_identity(device)
    return mismatch_warning(Path(path).name, measured_on, here, "this machine is") or ""


def _profile_device(path: str, device: torch.device):
    """The one device of ``device``'s kind in the hardware file at ``path``."""
    from vlscale.errors import ConfigError
    from vlscale.specs.hardware import load_hardware_file

    kind = "cpu" if device.type == "cpu" else "gpu"
    found = [d for d in load_hardware_file(path).devices.values() if d.kind == kind]
    if len(found) != 1:
        names = ", ".join(d.name for d in found) or "none"
        raise ConfigError(
            "peak_from",
            f"{path} must hold exactly one {kind} device to take the peak from (it has: "
            f"{names}); pass --peak-flops instead",
        )
    return found[0]


def machine_identity(device: torch.device):
    """This host's ``MachineIdentity``: the CPU (``/proc/cpuinfo``, sysfs caches) and, on CUDA,
    the GPU's name, memory and compute capability."""
    from vlscale.specs.machine import GpuIdentity, MachineIdentity, this_cpu

    gpu = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = GpuIdentity(
            name=props.name,
            memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
        )
    return MachineIdentity(cpu=this_cpu(), gpu=gpu)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model() or "cpu"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of this process, as honestly as the device allows (see
    ``vlscale.records.MemoryMetric``): CUDA max allocated per step, or on CPU the growth of the
    process's peak RSS since construction (a running maximum, not per step)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.metric = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_max_rss_delta"
        self._rss0 = _max_rss_bytes()

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_bytes(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        rss = _max_rss_bytes()
        return None if rss is None or self._rss0 is None else max(0, rss - self._rss0)


def _max_rss_bytes() -> int | None:
    try:
        kib_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return None
    return kib_or_bytes if sys.platform == "darwin" else kib_or_bytes * 1024  # Linux: KiB


class PhaseTimer:
    """Wall time of named phases; each phase ends with a device sync when ``enabled``.

    Disabled, it costs nothing and reports None (so the record says "not measured").
    """

    def __init__(self, device: torch.device, enabled: bool):
        self.device = device
        self.enabled = enabled
        self.times: dict[str, float] = {}
        self._t = 0.0

    def start(self) -> None:
        self.times = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        """Charge the time since the last lap to ``name`` (accumulating over micro-steps)."""
        if not self.enabled:
            return
        synchronize(self.device)
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._t
        self._t = now

    def skip(self) -> None:
        """Restart the clock without charging anyone (e.g. after waiting for data)."""
        if self.enabled:
            synchronize(self.device)
        self._t = time.perf_counter()

    def get(self, name: str) -> float | None:
        return self.times.get(name) if self.enabled else None


class StepProfiler:
    """torch.profiler over 1-based steps [first, last]; Chrome trace to out/trace_rank{r}.json."""

    def __init__(self, steps: tuple[int, int] | None, out_dir: Path, rank: int, device):
        self.steps = steps
        self.path = Path(out_dir) / f"trace_rank{rank}.json"
        self.device = device
        self._prof: torch.profiler.profile | None = None

    def before_step(self, step: int) -> None:
        """Start recording when ``step`` is the first profiled one."""
        if self.steps is None or step != self.steps[0]:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(activities=activities)
        self._prof.__enter__()

    def after_step(self, step: int) -> Path | None:
        """Stop after ``last`` and write the trace; returns its path then."""
        if self._prof is None or step != self.steps[1]:
            return None
        self._prof.__exit__(None, None, None)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prof.export_chrome_trace(str(self.path))
        self._prof = None
        return self.path
