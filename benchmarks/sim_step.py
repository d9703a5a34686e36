"""Benchmark: simulate one step of a 4,096-device ViT-L-ish job, and a 1,000-workload sweep.

Run: ``.venv/bin/python benchmarks/sim_step.py``. Budget (Task F): one simulated step of the
big job < 0.5 s wall (median of 5).

The workload is illustrative, not a prediction: 48 FSDP units (24 ViT-L/14 image blocks, 24 text
blocks of width 1024), CLIP gather loss, durations from round numbers — a ViT-L/14 block at 224²
(257 tokens) is ~2·12.6M·257 ≈ 6.5 GFLOP per sample forward; at local batch 32 and ~400 TFLOP/s
achieved, forward ≈ 0.52 ms, backward 2× that; a block's bf16 parameters (25 MB) all-gathered
over 4,096 ranks at ~40 GB/s effective take ≈ 0.63 ms, the fp32 gradient reduce-scatter twice
that. Stragglers: lognormal σ = 0.05, so the reduction to two simulated ranks is exercised.
"""

from __future__ import annotations

import statistics
import time

from vlscale.sim import (
    ClipGatherLoss,
    SiglipRingLoss,
    StragglerModel,
    Unit,
    Workload,
    simulate,
)

WORLD = 4096
LOCAL_BATCH = 32


def vit_l_workload(scale: float = 1.0, world: int = WORLD) -> Workload:
    """48 units of ViT-L-ish durations; ``scale`` stretches compute (for the sweep)."""
    fwd, ag, rs = 0.52e-3 * scale, 0.63e-3, 1.26e-3
    units = [
        Unit(
            name=f"{tower}{i}",
            forward_s=fwd,
            backward_s=2 * fwd,
            all_gather_s=ag,
            reduce_scatter_s=rs,
        )
        for tower in ("img", "txt")
        for i in range(24)
    ]
    loss = ClipGatherLoss(all_gather_s=2e-3, forward_s=3e-3, backward_s=6e-3, reduce_scatter_s=2e-3)
    return Workload(
        name="vit-l-ish",
        world_size=world,
        local_batch=LOCAL_BATCH,
        units=units,
        loss=loss,
        optimizer_s=4e-3,
    )


def time_one_step(repeats: int = 5) -> float:
    wl = vit_l_workload()
    times = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        simulate(wl, steps=1, stragglers=StragglerModel(sigma=0.05), seed=seed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_ring_step(repeats: int = 5) -> float:
    """The ring has ~5·W ops per step: the worst case for op count."""
    ring = SiglipRingLoss(hop_s=2e-6, grad_hop_s=2e-6, block_forward_s=3e-6, block_backward_s=6e-6)
    wl = vit_l_workload().model_copy(update={"loss": ring})
    times = []
    for seed in range(repeats):
        t0 = time.perf_counter()
        simulate(wl, steps=1, stragglers=StragglerModel(sigma=0.05), seed=seed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_sweep(n: int = 1000) -> float:
    """A proxy for a sweep: n distinct workloads (compute scaled 0.5x..1.5x), one step each."""
    t0 = time.perf_counter()
    for i in range(n):
        simulate(vit_l_workload(scale=0.5 + i / n), steps=1)
    return time.perf_counter() - t0


def main() -> None:
    med = time_one_step()
    print(
        f"one step, {WORLD} devices, 48 units, stragglers: median of 5 = {med * 1e3:.1f} ms "
        f"(budget 500 ms) {'OK' if med < 0.5 else 'OVER BUDGET'}"
    )
    total = time_sweep()
    print(f"1000-workload sweep (1 step each): {total:.2f} s total, {total:.2f} ms per workload")
    ring = time_ring_step()
    print(
        f"one step, {WORLD} devices, SigLIP ring loss ({WORLD} blocks x 2 passes): "
        f"median of 5 = {ring * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
