"""Measuring the trainer: device peaks for MFU, timers, peak memory, torch.profiler traces.

MFU (PaLM, Chowdhery et al. 2022, App. B) = achieved model FLOP/s / peak FLOP/s, where the model
FLOPs come from ``vlscale.costs.flops.model_flops_per_sample`` (never a second formula here) and
the peak per device is, in this order of preference:

1. ``--peak-flops`` (the user knows their hardware): source ``option``;
2. on CUDA, the dense peak for the training dtype from the hardware catalog
   (``vlscale.specs.hardware``), matched on ``torch.cuda.get_device_name``: source ``lookup``;
3. on CPU (or an unknown GPU), a matmul measured once at start-up: source ``measured``.
   A CPU has no honest datasheet peak for "this process with these threads", so the best
   square matmul this process achieves stands in for it; MFU on CPU is therefore relative to a
   practical, not a nominal, peak (it can approach 1).
"""

from __future__ import annotations

import re
import resource
import sys
import time
from pathlib import Path

import torch

from trainer.parallelize import DTYPES


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock times mean something (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_flops(
    device: torch.device,
    precision: str = "fp32",
    sizes: tuple[int, ...] = (256, 1024, 2048),
    seconds: float = 0.25,
) -> float:
    """Best achieved FLOP/s of square (n, n) @ (n, n) matmuls (2n³ FLOPs each) over ``sizes``.

    Small sizes under-use wide CPUs; a larger size is tried only if one call of it is predicted
    (n³ scaling) to stay under ``seconds``: fp16 on a CPU without fp16 kernels is orders of
    magnitude slower.
    """
    dtype = DTYPES[precision]
    best_flops = 0.0
    for k, n in enumerate(sizes):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        best = float("inf")
        deadline = time.perf_counter() + seconds
        for i in range(1000):
            t0 = time.perf_counter()
            a @ b
            synchronize(device)
            if i:  # the first call warms up thread pools and kernel selection
                best = min(best, time.perf_counter() - t0)
            if i >= 2 and time.perf_counter() > deadline:
                break
        best_flops = max(best_flops, 2.0 * n**3 / best)
        if k + 1 < len(sizes) and best * (sizes[k + 1] / n) ** 3 > seconds:
            break  # the next size would take too long
    return best_flops


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
    device: torch.device, device_name: str, precision: str, option: float | None
) -> tuple[float | None, str]:
    """(peak FLOP/s per device, source) following the preference order of the module doc."""
    if option is not None:
        return float(option), "option"
    if device.type == "cuda":
        peak = catalog_peak_flops(device_name, precision)
        if peak is not None:
            return peak, "lookup"
    return measure_matmul_flops(device, precision), "measured"


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
