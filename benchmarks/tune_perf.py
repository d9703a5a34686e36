"""`vlscale tune` speed: a search over at least 500 layouts, planned on the sweep backends.

ViT-L-14 SigLIP on H100 at global batch 32,768 and 64 ... 2,048 devices: ddp, fsdp and hsdp at
every node-aligned shard size × resharding × checkpointing × accumulation × gather / ring =
3,100 layouts (540 before hsdp joined the search). Target (issue 16): a tune over at least 500
layouts under 30 s on this machine; ``--devices`` picks the device counts searched.

    python benchmarks/tune_perf.py [--repeats 3] [--workers N] [--devices 64 128 ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import time

from vlscale.plan.tune import TuneRequest, tune

TARGET_S = 30.0
REQUEST = TuneRequest(
    model="ViT-L-14",
    recipe="siglip",
    device="H100",
    devices=(64, 128, 256, 512, 1024, 2048),
    samples=12_800_000_000,
    global_batch=32_768,
    top=5,
)


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (the pool's workers): the work,
    which a loaded machine stretches less than the wall time."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: every core")
    parser.add_argument("--devices", type=int, nargs="+", default=list(REQUEST.devices))
    args = parser.parse_args()
    request = dataclasses.replace(REQUEST, devices=tuple(args.devices))
    layouts = len(request.points())
    print(f"{layouts} layouts on {args.workers or os.cpu_count()} processes")
    times = []
    for _ in range(args.repeats):
        load = os.getloadavg()[0]
        cpu0 = _cpu_s()
        start = time.perf_counter()
        result = tune(request, workers=args.workers)
        times.append(time.perf_counter() - start)
        cpu = _cpu_s() - cpu0
        print(f"  {times[-1]:.1f} s, {cpu:.1f} CPU s (load {load:.2f}); {result.summary.line()}")
    median = statistics.median(times)
    best = result.best[0]
    print(f"best: {best['layout']} {best['loss_impl']}, {best['binding']}-bound")
    verdict = "ok" if median < TARGET_S else "MISSED"
    print(f"median {median:.1f} s for {layouts} layouts (target < {TARGET_S:.0f} s): {verdict}")


if __name__ == "__main__":
    main()
