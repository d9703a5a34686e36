"""Planner speed: CLI cold start, one simulated step at 4,096 devices, a 1,000-point sweep.

Targets (issue): `vlscale plan` cold start < 1 s; one plan of a 4,096-device job < 0.5 s
(ViT-L-14 on 4,096 H100 at local batch 32, CLIP gather and SigLIP ring — a ring longer than
512 ranks is spliced, not walked hop by hop: ``benchmarks/ring_plan_scale.py`` times it up to
131,072); 1,000 configurations through
``vlscale.plan.sweep.run_sweep`` < 60 s.

    .venv/bin/python benchmarks/plan_perf.py [--repeats 5] [--skip-sweep]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from cold_start import time_command, vlscale_executable  # benchmarks/ is on sys.path

from vlscale.plan import make_plan_config, plan
from vlscale.plan.sweep import expand_grid, run_sweep

COLD_START_TARGET_S = 1.0
BIG_PLAN_TARGET_S = 0.5
SWEEP_TARGET_S = 60.0

# 5 models x 5 cluster sizes x 2 recipes x 2 loss impls x 2 checkpointing x 5 mask ratios = 1,000
# points; a quarter (clip with ring) are invalid and become error rows, as in real sweeps.
SWEEP_GRID = {
    "base": {"device": "H100", "global_batch": 65_536, "samples": 12.8e9},
    "grid": {
        "model": ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14", "ViT-SO400M-14-SigLIP"],
        "devices": [64, 128, 256, 512, 1024],
        "recipe": ["clip", "siglip"],
        "loss_impl": ["gather", "ring"],
        "checkpointing": [False, True],
        "mask_ratio": [0.0, 0.25, 0.5, 0.6, 0.75],
    },
}


def time_cold_start(repeats: int) -> list[float]:
    argv = [*vlscale_executable(), "plan", "--json"]
    _, samples, rc = time_command(argv, repeats)
    if rc:
        raise SystemExit(f"`{' '.join(argv)}` failed with exit status {rc}")
    return samples


def time_big_plans(repeats: int) -> dict[str, list[float]]:
    out = {}
    for recipe, impl in (("clip", "gather"), ("siglip", "ring")):
        cfg = make_plan_config(
            model="ViT-L-14",
            recipe=recipe,
            loss_impl=impl,
            device="H100",
            devices=4096,
            global_batch=4096 * 32,
        )
        plan(cfg)  # warm: imports and caches are not what this measures
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            plan(cfg)
            samples.append(time.perf_counter() - start)
        out[f"{recipe}/{impl}"] = samples
    return out


def time_sweep() -> tuple[float, int, int]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grid.yaml"
        path.write_text(yaml.safe_dump(SWEEP_GRID))
        points = expand_grid(path)
    start = time.perf_counter()
    frame = run_sweep(points, progress=False)
    elapsed = time.perf_counter() - start
    return elapsed, len(frame), int(frame["error"].isna().sum())


def verdict(value: float, target: float) -> str:
    return "ok" if value < target else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()

    cold = time_cold_start(args.repeats)
    med = statistics.median(cold)
    shown = " ".join(f"{s:.3f}" for s in cold)
    print(f"cold start `vlscale plan --json`: median {med:.3f} s ({shown}) "
          f"target < {COLD_START_TARGET_S} s: {verdict(med, COLD_START_TARGET_S)}")  # fmt: skip

    for name, samples in time_big_plans(args.repeats).items():
        med = statistics.median(samples)
        shown = " ".join(f"{s:.3f}" for s in samples)
        print(f"plan ViT-L-14 on 4096xH100 {name:14s}: median {med:.3f} s ({shown}) "
              f"target < {BIG_PLAN_TARGET_S} s: {verdict(med, BIG_PLAN_TARGET_S)}")  # fmt: skip

    if not args.skip_sweep:
        elapsed, rows, ok = time_sweep()
        print(f"sweep of {rows} configurations ({ok} planned, {rows - ok} invalid): "
              f"{elapsed:.1f} s, {elapsed / rows * 1e3:.1f} ms per point; "
              f"target < {SWEEP_TARGET_S} s: {verdict(elapsed, SWEEP_TARGET_S)}")  # fmt: skip


if __name__ == "__main__":
    main()
