"""Solve the framework efficiency γ that reproduces each published run (vlscale.plan.published_runs)
with the per-op model, show the single-utilisation model next to it ("before"), the absolute
predictions, the FLIP rows and the H100 / A100 ratio. Paste the solved γ of the calibration
cases into vlscale/plan/compute_model.py:CALIBRATED.

    .venv/bin/python benchmarks/calibrate_published.py
"""

from __future__ import annotations

from vlscale.plan.compute_model import CALIBRATED
from vlscale.plan.config import make_plan_config
from vlscale.plan.planner import plan
from vlscale.plan.published_runs import (
    FLIP_TABLE_1A,
    PREDICTED_RUNS,
    PUBLISHED_RUNS,
    flip_config,
    solve_framework_efficiency,
)

# the single-constant model this replaced (u per device kind, solved from the same two runs)
OLD_UTILISATION = {"V100": 0.2525, "A100-40GB": 0.1135}


def main() -> None:
    print(
        f"{'case':26s} {'published':>9s} {'before u':>9s} {'after':>9s} {'error':>7s} "
        f"{'solved γ':>9s} {'stored γ':>9s}"
    )
    for name, run in {**PUBLISHED_RUNS, **PREDICTED_RUNS}.items():
        gamma = solve_framework_efficiency(run)
        stored = CALIBRATED.get(run.config.device, (float("nan"), ""))[0]
        old = plan(
            run.config.model_copy(update={"utilisation": OLD_UTILISATION[run.config.device]})
        )
        new = plan(run.config)
        err = new.wall_time_h / run.wall_time_h - 1
        role = "pin" if name in PUBLISHED_RUNS else "prediction"
        print(
            f"{name:26s} {run.wall_time_h:9.1f} {old.wall_time_h:9.1f} {new.wall_time_h:9.1f} "
            f"{err:+7.1%} {gamma:9.4f} {stored:9.4f}  ({role})"
        )
    print("\nFLIP Table 1a (ViT-L/16, 128 TPU-v3 chips): predicted vs published")
    base = plan(flip_config(FLIP_TABLE_1A[0]))
    for row in FLIP_TABLE_1A:
        result = plan(flip_config(row))
        print(
            f"  mask {row.mask_ratio:4.2f} batch {row.global_batch:6d}: wall "
            f"{result.wall_time_h / base.wall_time_h:.3f} (published {row.relative_wall_time})"
        )
    cfg = dict(
        model="ViT-L-14",
        devices=256,
        global_batch=32768,
        samples=12_800_000_000,
        sharding="ddp",
        checkpointing=True,
    )
    print("\nViT-L-14, 256 GPUs, DDP, checkpointing: samples/s per device")
    rates = {}
    for device, precision in (("V100", "fp16"), ("A100-40GB", "bf16"), ("H100", "bf16")):
        r = plan(make_plan_config(cfg, device=device, precision=precision))
        rates[device] = r.samples_per_s_per_device
        print(f"  {device:10s} {r.samples_per_s_per_device:7.1f}  MFU {r.mfu:.1%}")
    print(
        f"  H100 / A100 = {rates['H100'] / rates['A100-40GB']:.2f} "
        f"(dense bf16 peaks: {989.5 / 312:.2f})"
    )


if __name__ == "__main__":
    main()
