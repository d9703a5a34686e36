"""What the trainer costs on top of a bare training loop, at world size 1 (issue 11).

    nice -n -20 .venv/bin/python benchmarks/train_overhead.py --model ViT-B-32 --batch 16 \\
        --steps 6 [--threads 2] [--grad-clip 1.0] [--sharding fsdp] [--profile]

One process, one thread count, one batch, interleaved (one step of each in turn, the order
rotating from step to step):

* trainer: the CLI's own code: ``trainer.train.init_distributed`` + ``build_context`` (a world
  of one, ``parallelize``, the optimizer, schedule and records the CLI builds) and
  ``trainer.step.run_step`` (``train_step`` + the step record), with ``--phase-timing``;
* bare: the same ``models/`` towers with the trainer's initial weights, the same loss
  (``clip_loss``/``siglip_loss``), ``torch.optim.AdamW`` over the same parameter groups, the same
  clipping and logit-scale clamp, one host read of the loss; nothing else.

``--compare-wrapped`` adds the trainer with FSDP forced at W=1 (how it ran before issue 11) and
``--control`` a second bare loop (the noise floor: how far apart two identical loops measure).

All see the same synthetic batch (the first batch of the trainer's ``shapes`` loader), so data
loading is out of both (the trainer's ``data_time_s`` stays in its records). Reported: median
wall time per step of each (the trainer's including its bookkeeping after the clock), the
trainer's recorded ``step_time_s``, the ratio trainer / bare (goal <= 1.05), the per-phase
medians of each, the largest loss difference (the two compute the same losses), the load
(``os.getloadavg``), and with ``--profile`` the top ops of one step of each (torch.profiler).
Results go to ``reports/train_overhead_<model>_b<batch>[_ddp][_noclip][_control].{json,md}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHASES = ("forward", "loss", "backward", "optimizer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small-clip")
    p.add_argument("--recipe", default="clip")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8, help="timed steps of each (after warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--grad-clip", type=float, default=1.0, help="0: off")
    p.add_argument("--sharding", default="fsdp", choices=("fsdp", "ddp"))
    p.add_argument("--profile", action="store_true", help="torch.profiler top ops, one step each")
    p.add_argument(
        "--control",
        action="store_true",
        help="also a second, identical bare loop: how far apart two equal loops measure",
    )
    p.add_argument(
        "--compare-wrapped",
        action="store_true",
        help="also the trainer with FSDP / replicate forced at W=1 (how it ran before)",
    )
    p.add_argument("--out-dir", default=str(REPO / "reports"))
    return p.parse_args(argv)


def build_trainer(args, out: str, wrapped: bool = False):
    """The CLI's objects for a world of one (the process group must exist); returns a step
    function (appending to its rows) and the batch it trains on.

    ``wrapped``: FSDP / replicate even for one fp32 rank (``--wrap-one-rank``), as the trainer
    did before it learnt to skip the wrapping there (``RunLayout.wrapped``): the "before" of the
    issue, measured next to the "after"."""
    from trainer.cli_args import load_config
    from trainer.step import StepMeters, run_step
    from trainer.train import build_context

    total = args.warmup + args.steps + (1 if args.profile else 0)
    argv = ["--model", args.model, "--recipe", args.recipe, "--global-batch", str(args.batch),
            "--steps", str(total), "--out", out, "--phase-timing", "--log-every", str(10**6),
            "--grad-clip", str(args.grad_clip), "--sharding", args.sharding, "--device", "cpu",
            "--peak-flops", "1e12"] + (["--wrap-one-rank"] if wrapped else [])  # fmt: skip
    cfg = load_config(argv, world_size=1)
    ctx, loader = build_context(cfg, *args.group)
    batch = next(loader)
    loader.close()
    ctx.batches = itertools.repeat(batch)  # the same batch as the bare loop, no data loading
    ctx.log = lambda s: None
    meters, rows, step = StepMeters(ctx), [], [0]

    def train_step():
        step[0] += 1
        t = time.perf_counter()
        r = run_step(ctx, step[0], meters)
        wall = time.perf_counter() - t
        phases = {p: getattr(r, f"{p}_s") for p in PHASES}
        rows.append({"wall_s": wall, "step_time_s": r.step_time_s, "loss_value": r.loss} | phases)

    return ctx, batch, train_step, rows


class BareLoop:
    """The same towers, loss and optimizer as the trainer, with none of its machinery."""

    def __init__(self, ctx, batch):
        import torch

        from models import build_model
        from trainer.optim import build_optimizer, build_param_groups, build_scheduler
        from trainer.parallelize import full_value

        cfg, recipe = ctx.cfg, ctx.recipe
        self.recipe, self.clip = recipe, cfg.grad_clip
        self.model = build_model(
            cfg.model_spec(),
            device="cpu",
            init_logit_scale=recipe.init_logit_scale,
            init_logit_bias=recipe.init_logit_bias,
        )
        with torch.no_grad():  # the trainer's initial weights (parameter order is the same)
            for q, p in zip(self.model.parameters(), ctx.model.parameters(), strict=True):
                q.copy_(full_value(p))
        groups = build_param_groups(self.model, cfg.lr, cfg.weight_decay)
        self.optimizer = build_optimizer(recipe.optimizer, groups, betas=recipe.betas)
        self.scheduler = build_scheduler(self.optimizer, cfg.warmup_steps, cfg.steps)
        self.images, self.tokens = batch

    def step(self) -> tuple[float, dict[str, float]]:
        import torch

        from trainer.step import compute_loss

        m, times = self.model, {}
        t = time.perf_counter()
        img, txt = m(self.images, self.tokens)
        times["forward"], t = time.perf_counter() - t, time.perf_counter()
        loss = compute_loss(self.recipe, img, txt, m.logit_scale, m.logit_bias, None)
        times["loss"], t = time.perf_counter() - t, time.perf_counter()
        loss.backward()
        times["backward"], t = time.perf_counter() - t, time.perf_counter()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(m.parameters(), self.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.recipe.loss == "softmax":
            with torch.no_grad():
                m.logit_scale.clamp_(max=self.recipe.max_logit_scale)
        value = loss.item()
        times["optimizer"] = time.perf_counter() - t
        return value, times


def bare_stepper(bare: BareLoop):
    """A step function of ``bare`` appending to the rows it returns with it."""
    rows = []

    def step():
        t = time.perf_counter()
        loss, phases = bare.step()
        rows.append({"wall_s": time.perf_counter() - t, "loss_value": loss} | phases)

    return step, rows


def profile_top(fn, rows: int = 15) -> str:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from trainer.train import init_distributed

    load_before = os.getloadavg()
    device, mesh, backend = init_distributed("cpu")
    torch.set_num_threads(args.threads)
    args.group = (device, mesh, backend)
    with tempfile.TemporaryDirectory() as out:
        ctx, batch, trainer_step, trainer_rows = build_trainer(args, f"{out}/plain")
        steps, rows = {"trainer": trainer_step}, {"trainer": trainer_rows}
        if args.compare_wrapped:
            _, _, steps["trainer_wrapped"], rows["trainer_wrapped"] = build_trainer(
                args, f"{out}/wrapped", wrapped=True
            )
        for name in ("bare", "bare_control") if args.control else ("bare",):
            steps[name], rows[name] = bare_stepper(BareLoop(ctx, batch))
        names = list(steps)
        for i in range(args.warmup + args.steps):
            for name in names[i % len(names) :] + names[: i % len(names)]:  # rotate the order
                steps[name]()
        profiles = {}
        if args.profile:
            profiles = {name: profile_top(fn) for name, fn in steps.items()}
        torch.distributed.destroy_process_group()
    load_after = os.getloadavg()
    result = summarise(args, rows, load_before, load_after, profiles)
    write(args, result)
    return 0


def summarise(args, rows, load_before, load_after, profiles) -> dict:
    import torch

    def med(name, key):
        timed = rows[name][args.warmup : args.warmup + args.steps]
        return statistics.median(r[key] for r in timed)

    bare = med("bare", "wall_s")
    variants = {}
    for name in rows:
        n = min(len(rows[name]), len(rows["bare"]))
        diff = max(
            abs(rows[name][i]["loss_value"] - rows["bare"][i]["loss_value"]) for i in range(n)
        )
        variants[name] = {
            "wall_s": med(name, "wall_s"),
            "step_time_s": med(name, "step_time_s") if name.startswith("trainer") else None,
            "ratio_to_bare": med(name, "wall_s") / bare,
            "max_loss_diff_to_bare": diff,
            "phases": {p: med(name, p) for p in PHASES},
        }
    return {
        "model": args.model,
        "recipe": args.recipe,
        "batch": args.batch,
        "threads": args.threads,
        "grad_clip": args.grad_clip,
        "sharding": args.sharding,
        "steps": args.steps,
        "warmup": args.warmup,
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "load_before": load_before,
        "load_after": load_after,
        "ratio": variants["trainer"]["ratio_to_bare"],
        "variants": variants,
        "rows": rows,
        "profiles": profiles,
    }


def cpu_model() -> str:
    import torch

    from trainer.profiling import device_name

    return device_name(torch.device("cpu"))


def write(args, r: dict) -> None:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variant = ("_ddp" if args.sharding == "ddp" else "") + ("" if args.grad_clip else "_noclip")
    variant += "_control" if args.control else ""
    stem = out / f"train_overhead_{args.model}_b{args.batch}{variant}"
    stem.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n")
    v = r["variants"]
    names = list(v)
    lines = [
        f"# Trainer overhead: {r['model']} / {r['recipe']}, batch {r['batch']}, fp32, "
        f"{r['threads']} threads, {r['sharding']}, clip {r['grad_clip'] or 'off'}",
        "",
        f"{r['cpu']}, torch {r['torch']}; {r['steps']} timed steps of each after {r['warmup']} "
        f"warm-up, interleaved in one process; load {r['load_before'][0]:.2f} before, "
        f"{r['load_after'][0]:.2f} after (1-min average).",
        "",
        "| median (s) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| wall per step | " + " | ".join(f"{v[n]['wall_s']:.3f}" for n in names) + " |",
    ]
    for p in PHASES:
        lines.append(f"| {p} | " + " | ".join(f"{v[n]['phases'][p]:.3f}" for n in names) + " |")
    lines += [
        "| ratio to bare | " + " | ".join(f"{v[n]['ratio_to_bare']:.3f}" for n in names) + " |",
        "| max loss diff to bare | "
        + " | ".join(f"{v[n]['max_loss_diff_to_bare']:.1e}" for n in names)
        + " |",
        "",
        f"Trainer recorded step_time_s (median): {v['trainer']['step_time_s']:.3f} s. "
        f"Ratio trainer / bare: **{r['ratio']:.3f}** (goal <= 1.05).",
    ]
    head = len(lines)
    for name, table in r["profiles"].items():
        title = f"## torch.profiler, one {name} step (top ops by self CPU time)"
        lines += ["", title, "", "```", table, "```"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:head]))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    sys.exit(main())
