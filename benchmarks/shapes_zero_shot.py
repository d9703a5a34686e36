"""Train on the procedural shapes data and record the zero-shot / retrieval curve (issue #4).

Runs ``python -m trainer.train`` (one process, CPU) with evaluation every ``--eval-every`` steps
on the held-out shapes split, then writes the curve as a Markdown table (and prints it):

    .venv/bin/python benchmarks/shapes_zero_shot.py --model tiny-clip --steps 1500 \\
        --out reports/shapes_zero_shot_tiny-clip.md

Zero-shot: 30 colour x shape classes (chance 1/30), prompt-ensembled over the dataset's
templates; retrieval: R@1 over 256 held-out image-caption pairs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vlscale.records import read_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="tiny-clip")
    parser.add_argument("--recipe", default="clip")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Markdown report to write")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [
            sys.executable, "-m", "trainer.train",
            "--model", args.model, "--recipe", args.recipe,
            "--steps", str(args.steps), "--global-batch", str(args.global_batch),
            "--lr", str(args.lr), "--warmup-steps", str(max(1, args.steps // 20)),
            "--eval-every", str(args.eval_every), "--log-every", str(args.eval_every),
            "--seed", str(args.seed), "--out", run_dir,
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=os.environ | {"PYTHONWARNINGS": "ignore"})
        wall = time.perf_counter() - start
        run = read_run(Path(run_dir) / "run.jsonl")

    losses = {s.step: s.loss for s in run.steps}
    lines = [
        f"# Zero-shot on held-out shapes: {args.model} / {args.recipe}",
        "",
        f"`{' '.join(['benchmarks/shapes_zero_shot.py', *sys.argv[1:]])}` — "
        f"{args.steps} steps, global batch {args.global_batch}, lr {args.lr}, "
        f"{run.header.device_name} ({run.header.backend}, world {run.header.world_size}), "
        f"torch {run.header.torch_version}, wall {wall:.0f} s.",
        "",
        "| step | train loss | zero-shot top-1 | chance | image->text R@1 | text->image R@1 |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for ev in run.evals:
        m = ev.metrics
        lines.append(
            f"| {ev.step} | {losses.get(ev.step, float('nan')):.3f} | {m['zeroshot_top1']:.3f} "
            f"| {m['zeroshot_chance']:.3f} | {m['i2t_r1']:.3f} | {m['t2i_r1']:.3f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)


if __name__ == "__main__":
    main()
