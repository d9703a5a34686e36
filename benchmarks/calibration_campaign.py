"""Measurement campaign: the real trainer over a grid of configurations, records committed.

    .venv/bin/python benchmarks/calibration_campaign.py --out reports/validation/cpu
    .venv/bin/python benchmarks/calibration_campaign.py --out /tmp/c --only small-clip  # a subset
    .venv/bin/python benchmarks/calibration_campaign.py --out DIR --set noise --validate NAME
    .venv/bin/python benchmarks/calibration_campaign.py --set noise --dry-run  # order, minutes

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
planner compares medians of the rest, and the load is recorded next to every run. So that the
noise is measured rather than guessed (``vlscale.calibrate.noise``):

- every configuration runs ``--repeats`` times (default 2), never back to back: all
  configurations once, then all again rotated by half the list (``interleaved_order``); the
  second run of a configuration is ``<id>-r2.jsonl``. The repeat dispersion per configuration,
  |a − b| / mean of the median step times, and its median and max go into ``campaign.json``
  (``repeats``) and ``machine.md``;
- the fixed reference kernel (``trainer.probe.reference``) is timed in this process right
  before and right after every run, with every core; both times are appended to the run's file
  as ``reference`` records (and kept in ``campaign.json``), so that ``vlscale validate`` finds
  each run's speed index without this file.

``--set noise`` runs a subset meant for a quiet machine at the end (9 fit and 12 held-out
configurations, one or two per axis of the grid): at 24 steps and 2 repeats its 42 runs take
about 7 minutes on the EPYC of ``reports/validation/cpu-epyc-b`` (5.8 at 16 steps), plus the
probe and the fit (``--dry-run`` prints the order and the estimate from that campaign's wall
and step times). ``--validate NAME`` makes it the whole
loop: the probe first (``OUT/probe.yaml``, device NAME), the runs, then ``vlscale calibrate``
on ``runs/fit`` (``OUT/profile.yaml``) and ``vlscale validate`` with ``--probe-profile``
(``OUT/validation.json``: calibrated and probe-only errors, raw and speed-normalised, beside
the noise floor).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: vlscale and trainer from this checkout

from vlscale.calibrate.noise import dispersion, interleaved_order  # noqa: E402
from vlscale.records import ReferenceRecord, read_run  # noqa: E402

ESTIMATE_FROM = REPO / "reports/validation/cpu-epyc-b"
REFERENCE_S = 0.5  # one reference timing with its set-up (trainer.probe.reference)


SIGLIP2_HALF = "{distill_start: 0.5, naflex: null}"
"""SigLIP 2 with self-distillation from half-way (the paper's 80 % would leave a 24-step run few
timed steps in that phase): both phases are measured and predicted, each a held-out row."""


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
    siglip2: str | None = None  # SigLIP 2's objectives as the trainer's --siglip2 YAML mapping
    split: str = "heldout"

    @property
    def id(self) -> str:
        parts = [self.model, self.recipe]
        if self.recipe in ("siglip", "siglip2"):
            parts.append(self.loss_impl)
        parts += [f"r{self.mask_ratio:g}", f"b{self.global_batch}", f"w{self.world}"]
        sharding = self.sharding + (str(self.shard_size) if self.shard_size else "")
        parts += [self.precision, sharding] + (["ac"] if self.checkpointing else [])
        parts += ["lockimg"] if self.lock_image else []
        parts += ["s2half"] if self.siglip2 == SIGLIP2_HALF else []
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
        # SigLIP 2 (decoder; then EMA teacher, local views, masked view), never fitted: each
        # phase's step time is compared with the planner's phase
        RunConfig("tiny-siglip", recipe="siglip2", global_batch=16, siglip2=SIGLIP2_HALF),
        RunConfig(
            "tiny-siglip",
            recipe="siglip2",
            loss_impl="ring",
            world=2,
            global_batch=16,
            siglip2=SIGLIP2_HALF,
        ),
    ]
    return fit + held


def noise_set() -> list[RunConfig]:
    """The subset for a quiet machine: 9 fit and 14 held-out configurations of ``grid()``, one
    or two per axis (batch, checkpointing, mask ratio, loss, preset, world size, precision,
    sharding, tower), the misses of earlier campaigns included (bf16, tiny-clip at W = 2, HSDP
    at W = 4, the ResNet), and SigLIP 2's two phases at W = 1 and 2."""
    fit = {
        "tiny-clip-clip-r0-b32-w1-fp32-fsdp",
        "small-clip-clip-r0-b16-w1-fp32-fsdp",
        "small-clip-clip-r0-b32-w1-fp32-fsdp",
        "small-clip-clip-r0-b64-w1-fp32-fsdp",
        "small-clip-clip-r0-b32-w1-fp32-fsdp-ac",
        "small-clip-clip-r0.5-b32-w1-fp32-fsdp",
        "small-clip-siglip-gather-r0-b32-w1-fp32-fsdp",
        "tiny-siglip-siglip-gather-r0-b32-w1-fp32-fsdp",
        "tiny-eva-eva-clip-r0.5-b32-w1-fp32-fsdp",
    }
    held = {
        "medium-clip-clip-r0-b16-w1-fp32-fsdp",
        "medium-clip-clip-r0-b32-w1-fp32-fsdp",
        "medium-clip-clip-r0-b32-w2-fp32-fsdp",
        "small-clip-clip-r0-b32-w2-fp32-fsdp",
        "tiny-clip-clip-r0-b32-w2-fp32-fsdp",
        "small-clip-clip-r0.75-b32-w1-fp32-fsdp",
        "small-clip-siglip-ring-r0-b32-w1-fp32-fsdp",
        "small-clip-clip-r0-b32-w1-bf16-fsdp",
        "small-clip-clip-r0-b128-w1-fp32-fsdp",
        "tiny-eva-eva-clip-r0.75-b32-w1-fp32-fsdp",
        "small-clip-clip-r0-b64-w4-fp32-hsdp2",
        "tiny-rn-clip-r0-b32-w1-fp32-fsdp",
        "tiny-siglip-siglip2-gather-r0-b16-w1-fp32-fsdp-s2half",
        "tiny-siglip-siglip2-ring-r0-b16-w2-fp32-fsdp-s2half",
    }
    chosen = [c for c in grid() if c.id in fit | held]
    assert len(chosen) == len(fit | held)
    assert all((c.split == "fit") == (c.id in fit) for c in chosen)
    return chosen


def run_path(cfg: RunConfig, repeat: int) -> str:
    """``runs/<split>/<id>.jsonl`` for the first run, ``<id>-r<k>.jsonl`` for repeat k."""
    suffix = f"-r{repeat + 1}" if repeat else ""
    return f"runs/{cfg.split}/{cfg.id}{suffix}.jsonl"


def reference_now():
    from trainer.probe.reference import reference_time

    return reference_time("cpu")


def load_average() -> float:
    return os.getloadavg()[0]


def run_one(cfg: RunConfig, steps: int, warmup: int, out_dir: Path, repeat: int = 0) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torchrun's defaults
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={cfg.world}", "-m", "trainer.train",
               "--model", cfg.model, "--recipe", cfg.recipe, "--loss-impl", cfg.loss_impl,
               "--global-batch", str(cfg.global_batch),
               "--precision", cfg.precision, "--sharding", cfg.sharding,
               "--steps", str(steps), "--timing-warmup", str(warmup), "--phase-timing",
               "--log-every", "1000", "--out", out]  # fmt: skip
        if cfg.recipe != "siglip2":  # SigLIP 2's masking is its own (siglip2.masked)
            cmd += ["--mask-ratio", str(cfg.mask_ratio)]
        if cfg.checkpointing:
            cmd.append("--checkpointing")
        if cfg.shard_size:
            cmd += ["--shard-size", str(cfg.shard_size)]
        if cfg.lock_image:
            cmd.append("--lock-image")
        if cfg.siglip2:
            cmd += ["--siglip2", cfg.siglip2]
        load_before = load_average()
        before = reference_now()
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = reference_now()
        if proc.returncode:
            return {"id": cfg.id, "repeat": repeat + 1, "error": proc.stderr[-2000:], **asdict(cfg)}
        path = out_dir / run_path(cfg, repeat)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(out) / "run.jsonl", path)
        with path.open("a") as f:  # the reference records: the run's speed index travels with it
            for when, ref in (("before", before), ("after", after)):
                f.write(ReferenceRecord(when=when, time=ref).model_dump_json() + "\n")
    return {
        "id": cfg.id,
        "repeat": repeat + 1,
        "path": run_path(cfg, repeat),
        **asdict(cfg),
        "steps": steps,
        "warmup_steps": warmup,
        "wall_s": round(wall, 2),
        "load_before": load_before,
        "load_after": load_average(),
        "reference_before_s": before.seconds,
        "reference_after_s": after.seconds,
        "reference_kernel": before.kernel,
    }


def median_step_s(path: Path) -> float:
    return statistics.median(s.step_time_s for s in read_run(path).timed_steps())


def repeat_dispersion(out: Path, rows: list[dict]) -> dict:
    """Per configuration with 2+ runs: (max − min) / mean of the runs' median step times
    (``vlscale.calibrate.noise.dispersion``); and its median and max over configurations."""
    times: dict[str, list[float]] = {}
    for r in rows:
        if "error" not in r:
            times.setdefault(r["id"], []).append(median_step_s(out / r["path"]))
    per = {k: round(dispersion(t), 4) for k, t in times.items() if len(t) >= 2}
    values = list(per.values())
    return {
        "per_config": per,
        "median": statistics.median(values) if values else None,
        "max": max(values) if values else None,
    }


def estimate_minutes(order, steps: int, source: Path = ESTIMATE_FROM) -> float | None:
    """Minutes the runs of ``order`` should take here, from an earlier campaign of this machine:
    its wall time per configuration plus (steps − its steps) of its median step, and two
    reference timings per run. None when a configuration is not in it."""
    try:
        earlier = {r["id"]: r for r in json.loads((source / "campaign.json").read_text())["runs"]}
    except OSError:
        return None
    total = 0.0
    for cfg, _ in order:
        row = earlier.get(cfg.id)
        if row is None or "error" in row:
            return None
        step = median_step_s(source / row["path"])
        total += row["wall_s"] + (steps - row["steps"]) * step + 2 * REFERENCE_S
    return total / 60


def describe_machine(
    out: Path,
    started: str,
    minutes: float,
    loads: list[float],
    name: str = "machine.md",
    noise: dict | None = None,
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
        *_noise_lines(noise),
        "",
        "```",
        *lines,
        "```",
        "",
    ]
    (out / name).write_text("\n".join(text))


def _noise_lines(noise: dict | None) -> list[str]:
    if not noise:
        return []
    lines = []
    d = noise.get("repeats") or {}
    if d.get("median") is not None:
        lines.append(
            f"- repeat dispersion (|a - b| / mean of a configuration's two median step times): "
            f"median {d['median']:.1%}, max {d['max']:.1%} over {len(d['per_config'])} "
            "configurations"
        )
    refs = noise.get("reference_s") or []
    if len(refs) >= 2:
        lo, hi, mid = min(refs), max(refs), statistics.median(refs)
        lines.append(
            f"- reference kernel before / after the runs: median {mid * 1e3:.1f} ms, "
            f"{lo * 1e3:.1f}-{hi * 1e3:.1f} ms (spread {(hi - lo) / mid:.1%})"
        )
    return lines


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "reports/validation/cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", help="run the configurations whose id contains this text")
    parser.add_argument("--set", choices=("all", "noise"), default="all", help="grid or subset")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration (>= 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the order and an estimate")
    parser.add_argument(
        "--validate", metavar="NAME", help="probe first (device NAME), then calibrate and validate"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats: at least 1")
    return args


def chosen_configs(args: argparse.Namespace) -> list[RunConfig]:
    configs = noise_set() if args.set == "noise" else grid()
    return [c for c in configs if not args.only or args.only in c.id]


def vlscale_cli(*argv: str) -> None:
    cmd = [sys.executable, "-c", "from vlscale.cli import main; main()", *argv]
    subprocess.run(cmd, cwd=REPO, check=True)


def probe(out: Path, name: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "trainer.probe", "--out", str(out / "probe.yaml"), "--name", name]
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def calibrate_and_validate(out: Path) -> None:
    """``vlscale calibrate`` on the fit runs, ``vlscale validate`` of all with the probe-only
    errors beside (``validation.json``, ``validation.html``)."""
    vlscale_cli(
        "calibrate",
        str(out / "runs/fit"),
        "--hardware-file",
        str(out / "probe.yaml"),
        "--out",
        str(out / "profile.yaml"),
    )
    vlscale_cli("validate", str(out / "runs"), "--hardware-file", str(out / "profile.yaml"),
                "--probe-profile", str(out / "probe.yaml"), "--out", str(out / "validation.json"),
                "--report", str(out / "validation.html"))  # fmt: skip


def merge_partial(out: Path, doc: dict, results: list[dict], started: str, only: str) -> dict:
    """A partial campaign adds its runs to the record, replacing runs of the same id and repeat
    (records before repeats count as repeat 1)."""
    old = json.loads((out / "campaign.json").read_text())
    done = {(r["id"], r["repeat"]) for r in results}
    old["runs"] = [r for r in old["runs"] if (r["id"], r.get("repeat", 1)) not in done] + results
    old.setdefault("added", []).append({"started": started, "only": only})
    refs = old.get("reference_s", []) + doc["reference_s"]
    return old | {"repeats": repeat_dispersion(out, old["runs"]), "reference_s": refs}


def main() -> None:
    args = parse_args()
    configs = chosen_configs(args)
    order = [(configs[i], p) for i, p in interleaved_order(len(configs), args.repeats)]
    estimate = estimate_minutes(order, args.steps)
    guess = f"~{estimate:.1f} min (from {ESTIMATE_FROM.name})" if estimate else "no estimate"
    print(f"{len(order)} runs, {len(configs)} configurations x {args.repeats}: {guess}")
    if len(configs) == 1 and args.repeats > 1:
        print("note: one configuration: its repeats run back to back")
    if args.dry_run:
        for cfg, p in order:
            print(f"  {cfg.id} ({cfg.split}) run {p + 1}")
        return
    (args.out / "runs").mkdir(parents=True, exist_ok=True)
    if args.validate:
        probe(args.out, args.validate)
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    t0 = time.perf_counter()
    results = []
    for i, (cfg, p) in enumerate(order, 1):
        row = run_one(cfg, args.steps, args.warmup, args.out, p)
        results.append(row)
        status = "FAILED" if "error" in row else f"{row['wall_s']:.0f} s"
        print(f"[{i}/{len(order)}] {cfg.id} run {p + 1} ({cfg.split}): {status}", flush=True)
    minutes = (time.perf_counter() - t0) / 60
    refs = [r[k] for r in results for k in ("reference_before_s", "reference_after_s") if k in r]
    doc = {"started": started, "minutes": round(minutes, 1), "repeats_per_config": args.repeats,
           "set": args.set, "repeats": repeat_dispersion(args.out, results), "reference_s": refs,
           "runs": results}  # fmt: skip
    if args.only and (args.out / "campaign.json").exists():
        doc = merge_partial(args.out, doc, results, started, args.only)
    (args.out / "campaign.json").write_text(json.dumps(doc, indent=1) + "\n")
    loads = [r["load_before"] for r in results if "load_before" in r]
    # a partial campaign describes its own machine beside the original's
    name = "machine-added.md" if args.only else "machine.md"
    describe_machine(args.out, started, minutes, loads or [0.0], name, doc)
    failed = [r["id"] for r in results if "error" in r]
    print(f"{len(results) - len(failed)} runs in {minutes:.1f} min; failed: {failed or 'none'}")
    print(*_noise_lines(doc), sep="\n")
    if args.validate:
        calibrate_and_validate(args.out)


if __name__ == "__main__":
    main()
