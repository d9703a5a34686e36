"""Timers of the probe: host wall time (CPU kernels, host-side costs) and CUDA events (GPU
kernels, which the host only launches). Both return the median seconds of one ``fn()`` call."""

from __future__ import annotations

import statistics
import time

import torch


def host_seconds(fn, min_s: float = 0.03, reps: int = 5, warmup: int = 2) -> float:
    """Median host seconds of ``fn()`` over at least ``reps`` calls, and over at least ``min_s``
    seconds (at most 200 calls), after ``warmup`` calls that warm thread pools and caches. With
    ``min_s`` = 0 exactly ``reps`` calls (collectives: every rank must make the same calls)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + min_s
    while len(times) < reps or (min_s > 0 and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def cuda_seconds(fn, reps: int = 10, warmup: int = 3) -> float:
    """Median seconds of ``fn()`` on the current stream, each call between two CUDA events."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)  # ms -> s
    return statistics.median(times)
