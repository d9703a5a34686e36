"""Measurement campaign: the real trainer over a grid of configurations, records committed.

    .venv/bin/python benchmarks/calibration_campaign.py --out reports/validation/cpu
    .venv/bin/python benchmarks/calibration_campaign.py --out /tmp/c --only small-clip  # a subset

Every configuration runs as `torchrun --standalone --nproc-per-node W -m trainer.train` with
torchrun's thread defaults as the trainer applies them (W = 1: both cores; W = 2: one thread per
rank), phase timing on, and its `run.jsonl` is copied to ``OUT/runs/<split>/<id>.jsonl``. ``OUT/
campaign.json`` lists each run with its configuration, its split and the machine's load (1-min
load average) before and after it; ``OUT/machine.md`` describes the host.

Splits (what ``vlscale calibrate`` may see):

- ``fit``: one process (W = 1), presets tiny-clip / small-clip / tiny-siglip / tiny-eva, fp32,
  FSDP, mask ratios 0 and 0.5 — the runs the free parameters are fitted to;
- ``heldout``: everything else, including whole configurations never seen in fitting: another
  preset (medium-clip, ~10 M parameters), another world size (every W = 2 run, gloo: what a
  collective costs there comes from the probe), another mask ratio (0.75), the SigLIP ring,
  bf16, DDP, a larger batch.

Timings on a shared 2-core machine are noisy: the trainer marks the first 3 steps warm-up, the
planner compares medians of the rest, and the load is recorded next to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class RunConfig:
    model: str
    recipe: str = "clip"
    loss_impl: str = "gather"
    mask_ratio: float = 0.0
    global_batch: int = 32
    world: int = 1
    checkpointing: bool = False
    precision: str = "fp32"
    sharding: str = "fsdp"
    shard_size: int | None = None  # hsdp: ranks per shard group
    lock_image: bool = False  # LiT: the image tower frozen
    split: str = "heldout"

    @property
    def id(self) -> str:
        parts = [self.model, self.recipe]
        if self.recipe == "siglip":
            parts.append(self.loss_impl)
        parts += [f"r{self.mask_ratio:g}", f"b{self.global_batch}", f"w{self.world}"]
        sharding = self.sharding + (str(self.shard_size) if self.shard_size else "")
        parts += [self.precision, sharding] + (["ac"] if self.checkpointing else [])
        parts += ["lockimg"] if self.lock_image else []
        return "-".join(parts)


def grid() -> list[RunConfig]:
    fit = [
        *(RunConfig("tiny-clip", global_batch=b, split="fit") for b in (16, 32, 64)),
        *(RunConfig("small-clip", global_batch=b, split="fit") for b in (16, 32, 64)),
        RunConfig("tiny-clip", checkpointing=True, split="fit"),
        RunConfig("small-clip", checkpointing=True, split="fit"),
        RunConfig("small-clip", mask_ratio=0.5, split="fit"),
        RunConfig("small-clip", recipe="siglip", split="fit"),
        RunConfig("tiny-siglip", recipe="siglip", split="fit"),
        RunConfig("tiny-eva", recipe="eva-clip", mask_ratio=0.5, split="fit"),
        RunConfig("tiny-eva", recipe="eva-clip", mask_ratio=0.0, split="fit"),
    ]
    held = [
        # another preset (never fitted): ~10 M parameters
        RunConfig("medium-clip", global_batch=16),
        RunConfig("medium-clip", global_batch=32),
        RunConfig("medium-clip", checkpointing=True),
        RunConfig("medium-clip", mask_ratio=0.5),
        RunConfig("medium-clip", mask_ratio=0.75),
        RunConfig("medium-clip", recipe="siglip", loss_impl="ring"),
        RunConfig("medium-clip", precision="bf16", global_batch=16),
        RunConfig("medium-clip", world=2),
        RunConfig("medium-clip", world=2, recipe="siglip", loss_impl="ring"),
        # another world size (W = 2 over gloo): nothing at W = 2 is fitted
        *(RunConfig("tiny-clip", world=2, global_batch=b) for b in (32, 64)),
        *(RunConfig("small-clip", world=2, global_batch=b) for b in (32, 64)),
        RunConfig("small-clip", world=2, recipe="siglip"),
        *(
            RunConfig("small-clip", world=2, recipe="siglip", loss_impl="ring", global_batch=b)
            for b in (32, 64)
        ),
        RunConfig("small-clip", world=2, checkpointing=True),
        RunConfig("small-clip", world=2, sharding="ddp"),
        RunConfig("tiny-siglip", world=2, recipe="siglip", loss_impl="ring"),
        RunConfig("tiny-siglip", world=2, recipe="siglip", sharding="ddp"),
        RunConfig("tiny-eva", world=2, recipe="eva-clip", mask_ratio=0.5),
        # another mask ratio, loss implementation, precision or sharding at W = 1
        RunConfig("small-clip", mask_ratio=0.75),
        RunConfig("tiny-eva", recipe="eva-clip", mask_ratio=0.75),
        RunConfig("small-clip", recipe="siglip", loss_impl="ring"),
        RunConfig("small-clip", precision="bf16"),
        RunConfig("small-clip", sharding="ddp"),
        RunConfig("small-clip", global_batch=128),
        # another layout: HSDP 2 x 2 at W = 4 (and FSDP at W = 4 beside it); never fitted
        RunConfig("small-clip", world=4, global_batch=64, sharding="hsdp", shard_size=2),
        RunConfig("small-clip", world=4, global_batch=64),
        RunConfig("tiny-clip", world=4, global_batch=64, sharding="hsdp", shard_size=2),
        RunConfig(
            "small-clip",
            world=4,
            global_batch=64,
            recipe="siglip",
            loss_impl="ring",
            sharding="hsdp",
            shard_size=2,
        ),
        # other towers and training modes, never fitted: CLIP's ResNet, a locked image tower
        RunConfig("tiny-rn", global_batch=32),
        RunConfig("tiny-rn", world=2, global_batch=32),
        RunConfig("small-clip", global_batch=32, lock_image=True),
        RunConfig("small-clip", world=2, global_batch=32, lock_image=True),
    ]
    return fit + held


def load_average() -> float:
    return os.getloadavg()[0]


def run_one(cfg: RunConfig, steps: int, warmup: int, runs_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torchrun's defaults
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={cfg.world}", "-m", "trainer.train",
               "--model", cfg.model, "--recipe", cfg.recipe, "--loss-impl", cfg.loss_impl,
               "--mask-ratio", str(cfg.mask_ratio), "--global-batch", str(cfg.global_batch),
               "--precision", cfg.precision, "--sharding", cfg.sharding,
               "--steps", str(steps), "--timing-warmup", str(warmup), "--phase-timing",
               "--log-every", "1000", "--out", out]  # fmt: skip
        if cfg.checkpointing:
            cmd.append("--checkpointing")
        if cfg.shard_size:
            cmd += ["--shard-size", str(cfg.shard_size)]
        if cfg.lock_image:
            cmd.append("--lock-image")
        load_before = load_average()
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode:
            return {"id": cfg.id, "error": proc.stderr[-2000:], **asdict(cfg)}
        (runs_dir / cfg.split).mkdir(exist_ok=True)
        shutil.copyfile(Path(out) / "run.jsonl", runs_dir / cfg.split / f"{cfg.id}.jsonl")
    return {
        "id": cfg.id,
        "path": f"runs/{cfg.split}/{cfg.id}.jsonl",
        **asdict(cfg),
        "steps": steps,
        "warmup_steps": warmup,
        "wall_s": round(wall, 2),
        "load_before": load_before,
        "load_after": load_average(),
    }


def describe_machine(
    out: Path, started: str, minutes: float, loads: list[float], name: str = "machine.md"
) -> None:
    import torch

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    keep = ("Model name", "Architecture", "CPU(s)", "Thread", "Core", "Socket", "L1d", "L2", "L3")
    lines = [ln.strip() for ln in lscpu.splitlines() if ln.strip().startswith(keep)]
    text = [
        "# The machine of the CPU campaign",
        "",
        f"- started {started} UTC, {minutes:.1f} min, python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.platform()}",
        f"- 1-min load average before each run: median {sorted(loads)[len(loads) // 2]:.2f}, "
        f"max {max(loads):.2f} (2 cores; other jobs may share the machine — timings are medians "
        "over the non-warm-up steps of each run)",
        "- threads: torchrun defaults as the trainer applies them (W = 1: 2 threads; W = 2: one "
        "thread per rank)",
        "",
        "```",
        *lines,
        "```",
        "",
    ]
    (out / name).write_text("\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports/validation/cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", help="run the configurations whose id contains this text")
    args = parser.parse_args()
    runs_dir = args.out / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    configs = [c for c in grid() if not args.only or args.only in c.id]
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t0 = time.perf_counter()
    results = []
    for i, cfg in enumerate(configs, 1):
        row = run_one(cfg, args.steps, args.warmup, runs_dir)
        results.append(row)
        status = "FAILED" if "error" in row else f"{row['wall_s']:.0f} s"
        print(f"[{i}/{len(configs)}] {cfg.id} ({cfg.split}): {status}", flush=True)
    minutes = (time.perf_counter() - t0) / 60
    doc = {"started": started, "minutes": round(minutes, 1), "runs": results}
    if args.only and (args.out / "campaign.json").exists():
        # a partial campaign adds its runs to the record (replacing runs of the same id)
        doc = json.loads((args.out / "campaign.json").read_text())
        done = {r["id"] for r in results}
        doc["runs"] = [r for r in doc["runs"] if r["id"] not in done] + results
        doc.setdefault("added", []).append({"started": started, "only": args.only})
    (args.out / "campaign.json").write_text(json.dumps(doc, indent=1) + "\n")
    loads = [r["load_before"] for r in results if "load_before" in r]
    # a partial campaign describes its own machine beside the original's
    name = "machine-added.md" if args.only else "machine.md"
    describe_machine(args.out, started, minutes, loads or [0.0], name)
    failed = [r["id"] for r in results if "error" in r]
    print(f"{len(results) - len(failed)} runs in {minutes:.1f} min; failed: {failed or 'none'}")


if __name__ == "__main__":
    main()
