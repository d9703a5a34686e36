"""The fixed reference kernel: how fast this machine is right now, in one number.

The probe times it when it measures a profile (``ComputeProfile.reference``) and the calibration
campaign right before and right after every run (``vlscale.records.ReferenceRecord``); a run's
speed index is its reference time over the profile's (``vlscale.calibrate.noise``). It must not
change, or old times stop comparing: a change gets a new ``KERNEL`` tag, and times of different
tags are never divided.

One call: a chain of ``CHAIN`` fp32 matmuls ``x = tanh(x @ w)`` at (``N``, ``N``) — compute-bound,
what a tower's GEMMs see — then ``c = a + b`` over ``ELEMENTS`` fp32 elements, memory-bound, what
the elementwise and optimizer kernels see. About 65 ms on the 2-core EPYC of
``reports/validation/cpu-epyc-b`` (two threads); the median of ``REPEATS`` calls after one warm-up
call (~0.5 s in all, with the set-up) is the reference time.

On a CPU it runs with ``threads`` torch threads (default: every core, as the probe's all-thread
measurements), restored afterwards; on CUDA on the current device, synchronised.
"""

from __future__ import annotations

import os
import statistics
import time

import torch

from vlscale.specs.machine import ReferenceTime

KERNEL = "ref-v1: 12 x tanh(x @ w) fp32 768^2, add 2^24 fp32"
N = 768
CHAIN = 12
ELEMENTS = 1 << 24
REPEATS = 5


def _once(x: torch.Tensor, w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor):
    y = x
    for _ in range(CHAIN):
        y = torch.tanh(y @ w)  # (N, N) @ (N, N) -> (N, N)
    torch.add(a, b, out=c)  # (ELEMENTS,)
    if y.is_cuda:
        torch.cuda.synchronize()


def reference_time(device: str = "cpu", threads: int | None = None) -> ReferenceTime:
    """The median seconds of ``REPEATS`` calls of the kernel (module docstring)."""
    threads = threads or (os.cpu_count() or 1)
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(threads)
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(N, N, generator=gen).to(device)
        w = (torch.randn(N, N, generator=gen) / N**0.5).to(device)  # keeps tanh unsaturated
        a = torch.randn(ELEMENTS, generator=gen).to(device)
        b, c = torch.randn_like(a), torch.empty_like(a)
        _once(x, w, a, b, c)  # warm-up: thread pool, caches, page faults of c
        times = []
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            _once(x, w, a, b, c)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    used = threads if device == "cpu" else 1
    return ReferenceTime(
        seconds=statistics.median(times), threads=used, device=device.split(":")[0], kernel=KERNEL
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m trainer.probe.reference [--device cuda] [--when before|after]``: the time as
    JSON, or with ``--when`` as the run file's ``reference`` record line (what the campaigns
    append to a run file: ``benchmarks/gpu_calibration.sh``)."""
    import argparse

    from vlscale.records import ReferenceRecord

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--when", choices=("before", "after"), help="print a run-file record")
    args = parser.parse_args(argv)
    ref = reference_time(args.device)
    print((ReferenceRecord(when=args.when, time=ref) if args.when else ref).model_dump_json())


if __name__ == "__main__":
    main()
