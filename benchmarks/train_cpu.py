"""CPU training benchmark: samples/s and MFU of ``small-clip`` at W=1 and W=2, and the FLIP
speed-up of the image tower's forward + backward at mask ratios 0.5 and 0.75.

    .venv/bin/python benchmarks/train_cpu.py [--steps 12] [--global-batch 32]

Throughput runs the real entry point (``torchrun -m trainer.train``) and reads its run file, so
the numbers are exactly what the run records hold: median over non-warm-up steps.
MFU there is against the matmul peak each rank measures at start-up (see trainer.profiling), so
W=2 on a 2-core machine compares two 1-thread ranks with a 1-thread peak each.

FLIP: measured time(r) / time(0) of ``model.visual`` fwd+bwd on one process, next to the FLOP
ratio from ``vlscale.costs.flops.flip_flop_ratio`` (the expected speed-up is its inverse when the
tower is compute-bound).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def throughput(world: int, steps: int, global_batch: int, model: str) -> dict:
    from vlscale.records import read_run

    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={world}", "-m", "trainer.train", "--model", model,
               "--steps", str(steps), "--global-batch", str(global_batch), "--out", out,
               "--log-every", "1000", "--timing-warmup", "3"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"W={world} run failed:\n{proc.stderr[-3000:]}")
        run = read_run(Path(out) / "run.jsonl")
    timed = run.timed_steps()
    return {
        "world": world,
        "samples_per_s": statistics.median(s.samples_per_s for s in timed),
        "step_ms": 1e3 * statistics.median(s.step_time_s for s in timed),
        "mfu": statistics.median(s.mfu for s in timed if s.mfu is not None),
        "peak_gflops_per_rank": (run.header.peak_flops_per_device or 0) / 1e9,
    }


def flip_speedup(model_name: str, batch: int, repeats: int = 5) -> list[dict]:
    import torch

    from models import build_model
    from vlscale.costs.flops import flip_flop_ratio
    from vlscale.specs import get_model

    spec = get_model(model_name)
    torch.manual_seed(0)
    model = build_model(spec)
    size = spec.vision.image_size
    images = torch.randn(batch, 3, size, size)  # (B, 3, H, W)

    def fwd_bwd_s(r: float) -> float:
        best = float("inf")
        for _ in range(repeats + 1):  # first call warms up
            t = time.perf_counter()
            model.visual(images, mask_ratio=r).float().pow(2).mean().backward()
            best = min(best, time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
        return best

    base = fwd_bwd_s(0.0)
    rows = []
    for r in (0.5, 0.75):
        t = fwd_bwd_s(r)
        ratio = flip_flop_ratio(spec.vision, spec.embed_dim, r).total
        rows.append({"mask_ratio": r, "measured_speedup": base / t, "flop_speedup": 1 / ratio})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small-clip")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--flip-model", default="ViT-B-16")
    parser.add_argument("--flip-batch", type=int, default=4)
    args = parser.parse_args()
    print(f"{args.model}, global batch {args.global_batch}, {args.steps} steps (3 warm-up)")
    for world in (1, 2):
        r = throughput(world, args.steps, args.global_batch, args.model)
        print(
            f"  W={r['world']}: {r['samples_per_s']:.1f} samples/s, {r['step_ms']:.0f} ms/step, "
            f"MFU {r['mfu']:.1%} (peak {r['peak_gflops_per_rank']:.0f} GFLOP/s per rank)"
        )
    print(f"FLIP, {args.flip_model} image tower fwd+bwd, batch {args.flip_batch}")
    for row in flip_speedup(args.flip_model, args.flip_batch):
        print(
            f"  r={row['mask_ratio']}: measured {row['measured_speedup']:.2f}x, "
            f"FLOP ratio predicts {row['flop_speedup']:.2f}x"
        )


if __name__ == "__main__":
    main()
