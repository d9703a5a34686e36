"""Sweep backends: configurations per second serially, on a local process pool and on a local
Dask cluster, and the speed-up over serial. Every backend must return the serial rows.

The grid is ``plan_perf.SWEEP_GRID`` (1,000 points: 5 models x 5 cluster sizes x recipes, loss
implementations, checkpointing and mask ratios; a quarter invalid), so the numbers compare with
that benchmark's serial figure.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep_backends.py [--points 1000] [--workers N]

The Dask cluster is started here (``distributed.LocalCluster``, one single-threaded worker
process per core); its start-up time is reported apart and not counted in its configs/s. Its
workers run with Dask's statistical profiler off (``distributed.worker.profile.enabled``): it
samples the worker thread's stack every 10 ms, which cost these pure-Python plans ~50 % more
CPU time in a worker than in a plain process (one 100-point chunk: 2.2 s vs 1.5 s; 1.85 s
with the profiler off), and a cluster of your own can turn it off the same way.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from plan_perf import SWEEP_GRID  # benchmarks/ is on sys.path

from vlscale.plan.sweep import expand_grid, run_sweep


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def cpu_s() -> float:
    """User + system CPU seconds of this process and its reaped children (pool workers, Dask
    nannies and workers once closed): unlike wall time, it does not move when other jobs
    compete for the cores, so it tells overhead apart from contention."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000, help="first N grid points")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "grid.yaml"
        grid.write_text(yaml.safe_dump(SWEEP_GRID))
        points = expand_grid(grid)[: args.points]
    n = len(points)
    print(f"{n} configurations, {args.workers} local workers, {os.cpu_count()} cores")

    c0 = cpu_s()
    serial, t_serial = timed(lambda: run_sweep(points, progress=False, workers=1))
    c1 = cpu_s()
    print(f"serial      {t_serial:7.2f} s  {n / t_serial:8.1f} configs/s  cpu {c1 - c0:6.1f} s")

    pool, t_pool = timed(lambda: run_sweep(points, progress=False, workers=args.workers))
    c2 = cpu_s()
    pd.testing.assert_frame_equal(pool, serial)
    print(
        f"processes   {t_pool:7.2f} s  {n / t_pool:8.1f} configs/s  cpu {c2 - c1:6.1f} s  "
        f"speed-up x{t_serial / t_pool:.2f} (pool start-up included)"
    )

    try:
        import dask
        from distributed import LocalCluster
    except ImportError:
        print("dask         skipped: pip install 'vlscale[dask]'")
        return
    dask.config.set({"distributed.worker.profile.enabled": False})
    c3 = cpu_s()
    cluster, t_start = timed(
        lambda: LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
    )
    with cluster:
        rows, t_dask = timed(
            lambda: run_sweep(points, progress=False, scheduler=cluster.scheduler_address)
        )
    c4 = cpu_s()
    pd.testing.assert_frame_equal(rows, serial)
    print(
        f"dask        {t_dask:7.2f} s  {n / t_dask:8.1f} configs/s  cpu {c4 - c3:6.1f} s  "
        f"speed-up x{t_serial / t_dask:.2f} (cluster start-up {t_start:.1f} s apart; cpu "
        "includes it)"
    )
    print("rows identical across backends: yes")


if __name__ == "__main__":
    main()
