"""Plans stay cheap at any scale: `vlscale plan` wall time and peak RSS against the world size.

Each run is a fresh process (`python -m vlscale.cli plan ... --json`), so the time includes the
CLI's cold start and the RSS is the whole process's peak (``os.wait4``'s ``ru_maxrss``). ViT-L-14
on H100 at local batch 16, DDP, SigLIP with the ring loss (the W-1 hops that long rings splice,
``vlscale.sim.program``) and CLIP gather for reference.

Target (issue 16): under 1 s and under 150 MB for any world size up to 131,072.

    python benchmarks/ring_plan_scale.py [--repeats 3] [--worlds 4096 65536 131072]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

TARGET_S = 1.0
TARGET_MB = 150.0
RECIPES = {
    "siglip ring": ["--recipe", "siglip", "--loss-impl", "ring"],
    "clip gather": ["--recipe", "clip"],
}


def run_once(argv: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one process running ``argv``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"`{' '.join(argv)}` failed: {proc.stderr.read().decode()}")
    proc.stderr.close()
    cpu = usage.ru_utime + usage.ru_stime  # less bent by a loaded machine than wall time
    return elapsed, cpu, usage.ru_maxrss / 1024  # Linux reports kilobytes


def plan_argv(world: int, recipe_flags: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vlscale.cli",
        "plan",
        "--model",
        "ViT-L-14",
        *recipe_flags,
        "--devices",
        str(world),
        "--global-batch",
        str(16 * world),
        "--sharding",
        "ddp",
        "--json",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worlds", type=int, nargs="+", default=[4096, 65536, 131072])
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f} (1 min); median of {args.repeats} runs")
    print(f"{'recipe':<12} {'devices':>8} {'time s':>8} {'cpu s':>8} {'peak MB':>8}  target")
    worst = True
    for name, flags in RECIPES.items():
        for world in args.worlds:
            runs = [run_once(plan_argv(world, flags)) for _ in range(args.repeats)]
            t = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            mb = max(r[2] for r in runs)
            ok = t < TARGET_S and mb < TARGET_MB
            worst &= ok
            verdict = "ok" if ok else "MISSED"
            print(f"{name:<12} {world:>8} {t:>8.2f} {cpu:>8.2f} {mb:>8.0f}  {verdict}")
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")
    print("all within target" if worst else f"some runs missed {TARGET_S} s / {TARGET_MB} MB")


if __name__ == "__main__":
    main()
