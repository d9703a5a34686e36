"""Solve the utilisation constant that reproduces each published run (vlscale.plan.published),
and show what the FLIP rows predict. Paste the solved numbers into
vlscale/plan/utilisation.py:CALIBRATED.

    .venv/bin/python benchmarks/calibrate_published.py
"""

from __future__ import annotations

from vlscale.plan.planner import plan
from vlscale.plan.published import FLIP_TABLE_1A, PUBLISHED_RUNS, flip_config, solve_utilisation
from vlscale.plan.utilisation import CALIBRATED


def main() -> None:
    print(f"{'case':26s} {'solved u':>9s} {'stored u':>9s} {'MFU':>6s} {'wall h':>8s}")
    for name, run in PUBLISHED_RUNS.items():
        u = solve_utilisation(run)
        stored = CALIBRATED.get(run.config.device, (float("nan"), ""))[0]
        result = plan(run.config.model_copy(update={"utilisation": u}))
        print(f"{name:26s} {u:9.4f} {stored:9.4f} {result.mfu:6.3f} {result.wall_time_h:8.1f}")
    print("\nFLIP Table 1a (ViT-L/16, 128 TPU-v3 chips): predicted vs published")
    base = plan(flip_config(FLIP_TABLE_1A[0]))
    for row in FLIP_TABLE_1A:
        result = plan(flip_config(row))
        print(
            f"  mask {row.mask_ratio:4.2f} batch {row.global_batch:6d}: wall "
            f"{result.wall_time_h / base.wall_time_h:.3f} (published {row.relative_wall_time})"
        )


if __name__ == "__main__":
    main()
