"""The training loop: one optimizer step (with gradient accumulation), timing and records.

One step, on every rank::

    for each of grad_accum micro-steps:            gradient sync only on the last one
        images, tokens = next(batches)             -> data_time_s
        img, txt = model(images, tokens, r)        (b, d) fp32, L2-normalised     -> forward_s
        loss = recipe loss(img, txt, scale, bias)  local rows, mean               -> loss_s
        (loss / grad_accum).backward()             FSDP reduce-scatters grads     -> backward_s
    clip (or measure) global grad norm
    loss mean over ranks; loss and grad norm finite?   (excluded from step_time_s)
    optimizer.step(); scheduler.step(); zero grads
    clamp logit_scale <= ln 100 (softmax recipes)                                 -> optimizer_s

``step_time_s`` spans all of it (device synchronised at the end) except the finiteness check:
one all-reduce of the loss and a host read of loss and grad norm, timed and subtracted (it
synchronises the device once per step). A non-finite loss or gradient norm stops the run with a
``ConfigError`` naming the last good checkpoint, or with ``--skip-nonfinite`` the step is not
applied (gradients dropped, the schedule still advances) and is counted in the records. Under
fp16 the grad scaler already skips steps with inf/NaN gradients, so only the loss is checked.
Reading the logit parameters, logging, evaluation and checkpointing happen after the clock stops.
Contrastive negatives come from the micro-batch (global_batch / grad_accum samples), as in
plain gradient accumulation without a gradient cache.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from trainer.config import TrainConfig
from trainer.losses import clip_loss, siglip_loss
from trainer.parallelize import full_value, set_gradient_sync
from trainer.profiling import PeakMemory, PhaseTimer, StepProfiler, synchronize
from trainer.records import RecordWriter
from trainer.signals import Stopped, agreed_stop
from vlscale.costs.flops import model_flops_per_sample
from vlscale.costs.locks import image_forward_flops, trainable_layers
from vlscale.errors import ConfigError
from vlscale.records import CheckpointRecord, EvalRecord, StepRecord
from vlscale.specs.recipes import RecipeSpec

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LoopContext:
    """Everything the loop touches; built by ``trainer.train``."""

    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: Iterator[Batch]
    device: torch.device
    rank: int
    world_size: int
    writer: RecordWriter
    peak_flops: float | None
    group: dist.ProcessGroup | None = None
    scaler: torch.amp.GradScaler | None = None
    evaluate: Callable[[int], dict[str, float]] | None = None
    checkpoint: Callable[[int, int], Path] | None = None
    warned_mfu: bool = False  # MFU above 100% was reported once
    log: Callable[[str], None] = print
    start_step: int = 0
    start_samples: int = 0
    last_checkpoint: Path | None = None  # named when a non-finite step stops the run
    after_first_step: Callable[[], None] | None = None  # e.g. drop what --overwrite set aside
    nonfinite_skips: int = 0  # steps skipped by --skip-nonfinite so far (this launch)
    # model FLOPs per sample by mask ratio: the only input of the count that varies over a run,
    # and counting costs tens of ms per call (ViT-B-32), as much as 1 % of a CPU step
    model_flops_cache: dict[tuple, float] = field(default_factory=dict)  # (r, phase)
    siglip2: Any = None  # trainer.siglip2.Siglip2Run for recipe siglip2: phases, teacher
    recipe: RecipeSpec = field(init=False)

    def __post_init__(self) -> None:
        self.recipe = self.cfg.recipe_spec()


def compute_loss(
    recipe: RecipeSpec,
    img: torch.Tensor,
    txt: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    """The recipe's loss: softmax InfoNCE (clip, eva-clip) or pairwise sigmoid (siglip)."""
    if recipe.loss == "sigmoid":
        return siglip_loss(img, txt, scale, bias, group, impl=recipe.loss_impl)
    return clip_loss(img, txt, scale, group)


def train_step(ctx: LoopContext, step: int, timer: PhaseTimer) -> dict:
    """Run optimizer step ``step`` (1-based); returns the measurements of the step."""
    cfg, model, device = ctx.cfg, ctx.model, ctx.device
    mask_ratio = cfg.mask_ratio_at(step)
    accum = cfg.layout.grad_accum
    loss_sum = torch.zeros((), device=device)
    data_time = 0.0
    if ctx.siglip2 is not None:  # the teacher is created here (once): not in the step time
        ctx.siglip2.begin_step(model, step)
    t0 = time.perf_counter()
    timer.start()
    for micro in range(accum):
        td = time.perf_counter()
        images, tokens = next(ctx.batches)
        images = images.to(device, non_blocking=True)  # (b, 3, H, W) | embeddings (b, d)
        tokens = tokens.to(device, non_blocking=True)  # (b, S)
        timer.skip()
        data_time += time.perf_counter() - td
        set_gradient_sync(model, micro == accum - 1)
        if ctx.siglip2 is not None:  # forward and loss laps inside
            loss = ctx.siglip2.loss(model, images, tokens, step, micro, ctx.group, timer)
        else:
            img, txt = model(images, tokens, mask_ratio=mask_ratio)  # (b, d), (b, d) fp32
            timer.lap("forward")
            scale, bias = model.logit_params()  # (1,), (1,): gathered, differentiable
            loss = compute_loss(ctx.recipe, img, txt, scale, bias, ctx.group)
            timer.lap("loss")
        scaled = loss / accum
        (ctx.scaler.scale(scaled) if ctx.scaler else scaled).backward()
        timer.lap("backward")
        loss_sum += loss.detach()
    lr = current_lr(ctx.optimizer, cfg.lr)
    grad_norm = unscale_and_clip(ctx)
    timer.lap("optimizer")
    tc = time.perf_counter()
    loss, finite = mean_loss_and_finite(ctx, loss_sum, grad_norm)
    check_s = time.perf_counter() - tc
    timer.skip()  # the check is in no phase, as it is not in the step time
    if not finite:
        handle_nonfinite(ctx, step, loss, grad_norm)
    optimizer_step(ctx, apply=finite)
    if ctx.siglip2 is not None:  # the teacher's EMA, part of the step
        ctx.siglip2.end_step(model, step, applied=finite)
    timer.lap("optimizer")
    synchronize(device)
    step_time = time.perf_counter() - t0 - check_s
    return {
        "phase": ctx.siglip2.phase(step).name if ctx.siglip2 is not None else None,
        "mask_ratio": mask_ratio,
        "step_time_s": step_time,
        "data_time_s": data_time,
        "loss": loss,
        "grad_norm": grad_norm,
        "skipped_nonfinite": not finite,
        "lr": lr,
        **{f"{p}_s": timer.get(p) for p in ("forward", "loss", "backward", "optimizer")},
    }


def unscale_and_clip(ctx: LoopContext) -> torch.Tensor:
    """Unscale (fp16), then clip to ``--grad-clip`` (or only measure when clipping is off).
    Returns the pre-clip global gradient norm (replicated on every rank)."""
    params = [p for p in ctx.model.parameters() if p.grad is not None]
    if ctx.scaler:
        ctx.scaler.unscale_(ctx.optimizer)
    if ctx.cfg.grad_clip:
        return torch.nn.utils.clip_grad_norm_(params, ctx.cfg.grad_clip)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def mean_loss_and_finite(
    ctx: LoopContext, loss_sum: torch.Tensor, grad_norm: torch.Tensor
) -> tuple[float, bool]:
    """The step's loss averaged over micro-steps and ranks, and whether it and the gradient norm
    are finite. Both inputs of the decision are global, so every rank decides alike."""
    loss = loss_sum / ctx.cfg.layout.grad_accum
    if ctx.world_size > 1:
        dist.all_reduce(loss, group=ctx.group)  # gloo has no AVG: sum, then divide
        loss = loss / ctx.world_size
    value = loss.item()
    finite = math.isfinite(value)
    if ctx.scaler is None:  # fp16: the scaler skips steps with inf/NaN gradients by design
        finite = finite and math.isfinite(full_value(grad_norm).float().item())
    return value, finite


def handle_nonfinite(ctx: LoopContext, step: int, loss: float, grad_norm: torch.Tensor) -> None:
    """Stop the run (a ConfigError naming the last good checkpoint) unless --skip-nonfinite."""
    if ctx.cfg.skip_nonfinite:
        ctx.nonfinite_skips += 1
        ctx.log(f"step {step}: non-finite loss or gradient norm; step skipped (--skip-nonfinite)")
        return
    norm = full_value(grad_norm).float().item()
    last = ctx.last_checkpoint
    where = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
    raise ConfigError(
        "loss",
        f"non-finite at step {step} (loss {loss}, gradient norm {norm}); {where}. Resume from "
        "it with --skip-nonfinite to skip such steps, or start a new run with a lower --lr "
        "(or --weight-decay) or a longer --warmup-steps",
    )


def optimizer_step(ctx: LoopContext, apply: bool = True) -> None:
    """Step (unless ``apply`` is False: the gradients are dropped), schedule, zero, clamp."""
    if not apply:
        if ctx.scaler:
            ctx.scaler.update()  # closes the unscale_ of this step (and lowers the scale)
    elif ctx.scaler:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.recipe.loss == "softmax":
        # CLIP (Radford 2021, Sec. 2.5): temperature clipped so logits scale by at most 100.
        with torch.no_grad():
            ctx.model.logit_scale.clamp_(max=ctx.recipe.max_logit_scale)


def current_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> float:
    """The schedule's lr on the ``--lr`` scale (groups with their own peak lr scale alike)."""
    group = optimizer.param_groups[0]
    peak = group.get("initial_lr", group["lr"])
    return base_lr * group["lr"] / peak if peak else group["lr"]


def train_loop(ctx: LoopContext) -> list[StepRecord]:
    """Steps ``start_step + 1 .. cfg.steps``; writes a record per step; returns them.

    Before each step the ranks agree whether one of them got SIGTERM / SIGINT
    (``trainer.signals``); if so the run stops there (:func:`stop_run`). A signal during the
    last step lets the run finish as usual."""
    cfg = ctx.cfg
    meters = StepMeters(ctx)
    records = []
    t_start = time.perf_counter()
    saved_at = ctx.start_step if ctx.last_checkpoint else None  # step of the newest checkpoint
    for step in range(ctx.start_step + 1, cfg.steps + 1):
        signum = agreed_stop_or_failure(ctx)
        if signum is not None:
            stop_run(ctx, signum, step - 1, saved_at)
        record = run_step(ctx, step, meters)
        records.append(record)
        if ctx.after_first_step is not None:
            ctx.after_first_step()
            ctx.after_first_step = None
        if step % cfg.log_every == 0 or step == cfg.steps:
            ctx.log(format_log(record, cfg.steps))
        if ctx.evaluate and cfg.eval_every and step % cfg.eval_every == 0:
            t = time.perf_counter()
            metrics = ctx.evaluate(step)
            ctx.writer.write(EvalRecord(step=step, time_s=time.perf_counter() - t, metrics=metrics))
            ctx.log(f"eval @ {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if ctx.checkpoint and cfg.ckpt_every and (step % cfg.ckpt_every == 0 or step == cfg.steps):
            t = time.perf_counter()
            path = ctx.checkpoint(
                step, ctx.start_samples + (step - ctx.start_step) * cfg.global_batch
            )
            dt = time.perf_counter() - t
            ctx.writer.write(CheckpointRecord(step=step, time_s=dt, path=str(path)))
            ctx.last_checkpoint, saved_at = path, step
            ctx.log(f"checkpoint of step {step} saved to {path} ({dt:.1f} s)")
    agreed_stop_or_failure(ctx)  # the last step's records are on disk too
    if records:
        ctx.log(format_summary(records, time.perf_counter() - t_start, ctx.writer.path))
    else:
        ctx.log(f"nothing to train: the checkpoint is at the last step ({cfg.steps})")
    return records


def agreed_stop_or_failure(ctx: LoopContext) -> int | None:
    """The stop signal any rank got (None: none), after raising on every rank when rank 0
    could not append to run.jsonl (a full disk). Collective: one small all-reduce."""
    signum, failed = agreed_stop(
        ctx.group, ctx.device, ctx.world_size, failed=bool(ctx.writer.failed)
    )
    if failed:
        err = ConfigError("out", ctx.writer.failed or "rank 0 cannot append to run.jsonl")
        err.all_ranks = True  # rank 0 prints it
        raise err
    return signum


def stop_run(ctx: LoopContext, signum: int, step: int, saved_at: int | None) -> None:
    """Checkpoint ``step`` (the last one done) unless it is saved already, then raise
    ``Stopped`` on every rank, together. Needs ``ctx.checkpoint`` for the save: every run has
    an ``--out``, so the stop saves even with ``--ckpt-every 0``."""
    if step > ctx.start_step and saved_at != step and ctx.checkpoint is not None:
        t = time.perf_counter()
        path = ctx.checkpoint(
            step, ctx.start_samples + (step - ctx.start_step) * ctx.cfg.global_batch
        )
        dt = time.perf_counter() - t
        ctx.writer.write(CheckpointRecord(step=step, time_s=dt, path=str(path)))
        ctx.last_checkpoint = path
        ctx.log(f"checkpoint of step {step} saved to {path} ({dt:.1f} s)")
    if ctx.world_size > 1:
        dist.barrier(group=ctx.group)  # leave together (the group is destroyed next)
    last = ctx.last_checkpoint
    raise Stopped(signum, step, str(last) if last is not None else None)


class StepMeters:
    """The per-run measuring tools of ``run_step``: phase timer, peak memory, profiler."""

    def __init__(self, ctx: LoopContext):
        cfg = ctx.cfg
        self.timer = PhaseTimer(ctx.device, cfg.phase_timing)
        self.memory = PeakMemory(ctx.device)
        profile = cfg.profile_range() if cfg.profile_steps else None
        self.profiler = StepProfiler(profile, Path(cfg.out), ctx.rank, ctx.device)
        self.spec = cfg.model_spec()


def run_step(ctx: LoopContext, step: int, meters: StepMeters) -> StepRecord:
    """One step of ``train_loop`` with its record (written): profile, train, measure."""
    meters.profiler.before_step(step)
    meters.memory.reset()
    m = train_step(ctx, step, meters.timer)
    trace = meters.profiler.after_step(step)
    if trace is not None:
        ctx.log(f"profile of steps {ctx.cfg.profile_steps} written to {trace}")
    record = make_record(ctx, step, m, meters.memory.peak_bytes(), meters.spec)
    ctx.writer.write(record)
    return record


def format_summary(records: list[StepRecord], wall_s: float, path: Path) -> str:
    """End-of-run line: steps, median samples/s and MFU (timed steps; all if none), final loss."""
    timed = [r for r in records if not r.warmup] or records
    sps = statistics.median(r.samples_per_s for r in timed)
    mfus = [r.mfu for r in timed if r.mfu is not None]
    mfu = f"{statistics.median(mfus):.1%}" if mfus else "n/a"
    skipped = records[-1].nonfinite_skips
    note = f", {skipped} non-finite steps skipped" if skipped else ""
    return (
        f"done: steps {records[0].step}-{records[-1].step} in {wall_s:.1f} s, median "
        f"{sps:.1f} samples/s, MFU {mfu}, final loss {records[-1].loss:.4f}{note}; records {path}"
    )


def step_model_flops(ctx: LoopContext, spec, mask_ratio: float, phase: str | None) -> float:
    """Model FLOPs per sample (no recompute): the same MFU numerator as ``vlscale plan``. SigLIP
    2 adds its phase's passes (``vlscale.costs.siglip2.phase_model_flops_per_sample``: the
    decoder, local and masked views, the teacher's forward)."""
    key = (mask_ratio, phase)
    if key in ctx.model_flops_cache:
        return ctx.model_flops_cache[key]
    cfg = ctx.cfg
    flops = model_flops_per_sample(
        spec,
        mask_ratio=mask_ratio,
        loss=ctx.recipe.loss,
        loss_impl=ctx.recipe.loss_impl,
        local_batch=cfg.local_batch(ctx.world_size),
        trainable=trainable_layers(spec, cfg.layout, mask_ratio) if cfg.layout.locks else None,
        world_size=ctx.world_size,
    ) - (image_forward_flops(spec) if cfg.layout.precomputed_image else 0.0)
    if ctx.siglip2 is not None:
        from vlscale.costs.siglip2 import phase_model_flops_per_sample

        run = ctx.siglip2
        phase_spec = next(p for p in run.phases if p.name == phase)
        flops += phase_model_flops_per_sample(spec, run.s2, phase_spec)
    ctx.model_flops_cache[key] = flops
    return flops


def make_record(ctx: LoopContext, step: int, m: dict, peak_memory: int | None, spec) -> StepRecord:
    """Collectives first (every rank), then the record (used on rank 0)."""
    cfg = ctx.cfg
    scale = full_value(ctx.model.logit_scale).detach().float().item()
    bias = full_value(ctx.model.logit_bias).detach().float().item()
    norm = m["grad_norm"]
    norm = None if norm is None else full_value(norm).float().item()
    flops = step_model_flops(ctx, spec, m["mask_ratio"], m["phase"])
    t = m["step_time_s"]
    mfu = None
    if ctx.peak_flops:
        mfu = flops * cfg.global_batch / (t * ctx.world_size * ctx.peak_flops)
        if mfu > 1.0 and not ctx.warned_mfu:
            # only possible when the peak is too low, e.g. measured on a busy CPU
            ctx.warned_mfu = True
            ctx.log(
                f"warning: MFU {mfu:.0%} > 100%: the peak of {ctx.peak_flops / 1e9:.1f} "
                "GFLOP/s/device is too low (a CPU peak measured while the machine was busy, or "
                "a wrong --peak-flops); pass the device's real peak with --peak-flops"
            )
    return StepRecord(
        step=step,
        samples_seen=ctx.start_samples + (step - ctx.start_step) * cfg.global_batch,
        warmup=step - ctx.start_step <= cfg.timing_warmup,
        mask_ratio=m["mask_ratio"],
        step_time_s=t,
        data_time_s=m["data_time_s"],
        forward_s=m["forward_s"],
        loss_s=m["loss_s"],
        backward_s=m["backward_s"],
        optimizer_s=m["optimizer_s"],
        loss=m["loss"],
        grad_norm=norm,
        lr=m["lr"],
        logit_scale=scale,
        logit_bias=bias,
        peak_memory_bytes=peak_memory,
        samples_per_s=cfg.global_batch / t,
        flops_per_sample=flops,
        mfu=mfu,
        skipped_nonfinite=m["skipped_nonfinite"],
        nonfinite_skips=ctx.nonfinite_skips,
        phase=m["phase"],
    )


def format_log(r: StepRecord, total: int) -> str:
    mfu = "n/a" if r.mfu is None else f"{r.mfu:.1%}"
    warm = " (warmup)" if r.warmup else ""
    return (
        f"step {r.step}/{total} loss {r.loss:.4f} lr {r.lr:.2e} scale {math.exp(r.logit_scale):.1f}"
        f" | {r.step_time_s * 1e3:.0f} ms (data {r.data_time_s * 1e3:.0f} ms)"
        f" {r.samples_per_s:.1f} samples/s MFU {mfu}{warm}"
    )
