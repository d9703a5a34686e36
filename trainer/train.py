"""Entry point: ``torchrun --nproc_per_node N -m trainer.train --config run.yaml [overrides]``.

Also runs as plain ``python -m trainer.train`` (world 1: a one-rank gloo/NCCL group on a
HashStore, so collectives, checkpoints and losses take the distributed code paths; one fp32 rank
skips the FSDP wrapping itself, which computes the same at a cost: ``RunLayout.wrapped``).
Multi-node goes through torchrun's rendezvous.

Order: parse + validate the config (torch-free; a bad config exits 2 with one message and writes
nothing) -> process group and the layout's DeviceMesh (1-D ``dp``; 2-D ``replicate x shard`` for
HSDP) -> model on meta -> ``parallelize`` -> optional image tower init (EVA two-stage) ->
optimizer, schedule, data -> optional resume -> run header (with the layout as it runs) ->
``train_loop`` -> destroy the group. The contrastive loss always spans the whole world (the
default group), whatever the parameter mesh.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from trainer.cli_args import env_world_size, load_config
from trainer.config import TrainConfig
from trainer.preflight import check_inputs
from trainer.run_dir import discard_unstarted_run, take_out
from vlscale.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 after one ``error: <field>: <what to do>`` line for any mistake the
    trainer detects, before launch (config, data, tokenizer, memory, --out) or after it
    (checkpoints, unreadable data, a non-finite step), or 128 + N after a graceful stop on
    signal N (143 SIGTERM, 130 SIGINT: ``trainer.signals``)."""
    from trainer import signals

    rank = int(os.environ.get("RANK", "0"))
    lock = cfg = None
    signals.install()  # first SIGTERM / SIGINT: stop after the step (trainer.signals)
    try:
        cfg = load_config(argv, env_world_size())
        device_type = resolve_device_type(cfg)
        notes = check_inputs(cfg, env_world_size(), rank, device_type)
        if rank == 0:  # rank 0 owns --out; the others cannot touch it before the group exists
            lock = take_out(cfg, notes)
            for line in notes:
                print(line, flush=True)
        run(cfg, device_type)
    except ConfigError as exc:
        # From here a signal ends the process at once: torchrun's SIGTERM to a rank that waits
        # in report_error must not be taken for a graceful stop (nor one that came before).
        pending = signals.requested()
        signals.uninstall()
        if pending is not None and rank != 0:
            os.kill(os.getpid(), pending)
        if lock is not None:
            discard_unstarted_run(Path(cfg.out), lock.created_root)
        report_error(exc, rank)
        return 2
    except signals.Stopped as stop:
        if lock is not None and stop.checkpoint is None:
            discard_unstarted_run(Path(cfg.out), lock.created_root)
        if rank == 0:
            print(stop.line(), file=sys.stderr, flush=True)
        return stop.status
    finally:
        if lock is not None:
            from trainer.preflight import drop_overwritten

            drop_overwritten(Path(cfg.out))  # gone already unless the run failed oddly
            lock.release()
        signals.uninstall()
    return 0


ERROR_DELAY_S = 3.0


def report_error(exc: ConfigError, rank: int) -> None:
    """Print the one-line error once. Rank 0 prints at once. Another rank usually fails for the
    same reason as rank 0 (the same config, data and checkpoints), and torchrun stops it as soon
    as rank 0 exits; so it waits a little and prints only if it is still alive, i.e. when the
    error was its own (e.g. only its data shard is unreadable). An error that every rank
    raised alike (``all_ranks``, e.g. a failed checkpoint save) is printed by rank 0 alone."""
    if rank != 0 and getattr(exc, "all_ranks", False):
        return
    if rank != 0:
        time.sleep(ERROR_DELAY_S)
    print(f"error: {exc}" + (f" (rank {rank})" if rank else ""), file=sys.stderr, flush=True)


def resolve_device_type(cfg: TrainConfig) -> str:
    """``auto`` -> cuda when available; asking for cuda without one is a config error."""
    import torch

    has_cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not has_cuda:
        raise ConfigError("device", "no CUDA device is visible; use --device cpu (or auto)")
    if cfg.device == "auto":
        return "cuda" if has_cuda else "cpu"
    return cfg.device


def init_distributed(device_type: str, layout=None):
    """Process group (gloo on CPU, NCCL on CUDA) and the parameter mesh of ``layout``
    (``trainer.parallelize.build_mesh``); without a layout a 1-D ``dp`` mesh over all ranks."""
    import torch
    import torch.distributed as dist

    from trainer.parallelize import build_mesh
    from vlscale.specs.layout import RunLayout

    backend = "nccl" if device_type == "cuda" else "gloo"
    # Initialising sharded parameters on a CPU mesh triggers this on every run; the ranks still
    # draw distinct shards (tests/trainer/test_parallelize.py checks it), so it is noise here.
    warnings.filterwarnings(
        "ignore", message="DTensor random operators may not have complete support on cpu"
    )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        # Ranks on one host share its cores; torchrun's OMP_NUM_THREADS=1 would idle the rest.
        # A plain `python -m trainer.train` keeps an OMP_NUM_THREADS the user set (the test
        # suite sets 1 so that parallel test workers do not oversubscribe the cores).
        if "RANK" in os.environ or "OMP_NUM_THREADS" not in os.environ:
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if "RANK" in os.environ:  # torchrun: env:// rendezvous
        dist.init_process_group(backend, device_id=device if device_type == "cuda" else None)
    else:  # plain python: a world of one
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    layout = layout or RunLayout(devices=dist.get_world_size(), precision="fp32")
    return device, build_mesh(layout, device_type), backend


def run(cfg: TrainConfig, device_type: str) -> None:
    """Start the process group, train, and always destroy the group."""
    import torch.distributed as dist

    device, mesh, backend = init_distributed(device_type, cfg.layout)
    try:
        train(cfg, device, mesh, backend)
        # Leave together: a rank that tears its group down while another still talks to the
        # store (hosted by rank 0) dies with "terminate called without an active exception".
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train(cfg: TrainConfig, device, mesh, backend: str) -> list:
    """Train on an existing process group / ``mesh``; returns the step records (every rank)."""
    from trainer.preflight import drop_overwritten
    from trainer.step import train_loop

    ctx, loader = build_context(cfg, device, mesh, backend)
    if ctx.rank == 0 and cfg.overwrite:  # the old run's files go once the new one has started
        ctx.after_first_step = lambda: drop_overwritten(Path(cfg.out))
    try:
        return train_loop(ctx)
    finally:
        loader.close()  # decode workers stop here, not in a finaliser at interpreter exit


def build_context(cfg: TrainConfig, device, mesh, backend: str):
    """Everything before the first step: model, optimizer, data, resume, run header.

    ``mesh``: the layout's parameter mesh (``init_distributed``); a 1-D world mesh is replaced
    by the layout's own when they differ (HSDP). Returns ``(LoopContext, loader)``; the caller
    closes the loader. Split from ``train`` so that ``benchmarks/train_overhead.py`` times
    exactly the steps the CLI runs."""
    import torch
    import torch.distributed as dist

    from trainer.data.stream import derived_seed
    from trainer.identity import make_identity, new_run_id
    from trainer.optim import build_optimizer, build_param_groups, build_scheduler
    from trainer.profiling import PeakMemory
    from trainer.step import LoopContext

    rank, world = dist.get_rank(), dist.get_world_size()
    param_mesh = layout_mesh(cfg, mesh, device)
    model = build_parallel_model(cfg, device, param_mesh)
    recipe = cfg.recipe_spec()
    s2run = make_siglip2_run(cfg, param_mesh, device, rank, world)
    groups = build_param_groups(model, cfg.lr, cfg.weight_decay, cfg.image_lr, cfg.text_lr)
    optimizer = build_optimizer(recipe.optimizer, groups, betas=recipe.betas)
    scheduler = build_scheduler(optimizer, cfg.warmup_steps, cfg.steps)
    loader = build_train_loader(cfg, cfg.model_spec(), rank, world)
    # FLIP masks and anything else random must differ between ranks from here on.
    torch.manual_seed(derived_seed(cfg.seed, rank + 1))

    log = (lambda s: print(s, flush=True)) if rank == 0 else (lambda s: None)
    resumed = (
        resume(cfg, world, model, optimizer, scheduler, loader, log, s2run) if cfg.resume else None
    )
    start_step, start_samples = (
        (resumed.info.step, resumed.info.samples_seen) if resumed else (0, 0)
    )
    peak, peak_source = resolve_peak(cfg, device, log)
    memory = PeakMemory(device)
    run_id = broadcast_str(resumed.run_id if resumed and resumed.run_id else new_run_id())
    identity = make_identity(run_id, cfg, world)
    writer = start_records(
        cfg, backend, device, (peak, peak_source), memory.metric, identity, resumed, log
    )

    ctx = LoopContext(
        cfg=cfg,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=loader,
        device=device,
        rank=rank,
        world_size=world,
        writer=writer,
        peak_flops=peak,
        group=dist.group.WORLD,  # the loss spans every rank, also under HSDP
        scaler=torch.amp.GradScaler(device.type) if cfg.layout.precision == "fp16" else None,
        evaluate=build_eval(cfg, cfg.model_spec(), model, device) if cfg.eval_every else None,
        checkpoint=make_saver(cfg, model, optimizer, scheduler, loader, identity, s2run),
        log=log,
        start_step=start_step,
        start_samples=start_samples,
        last_checkpoint=resumed.info.path if resumed else None,
        siglip2=s2run,
    )
    log(describe_run(cfg, world, device, backend, peak, peak_source))
    return ctx, loader


def layout_mesh(cfg: TrainConfig, mesh, device):
    """``mesh`` when it is the layout's parameter mesh, else the layout's (a collective)."""
    from trainer.parallelize import HSDP_DIMS, build_mesh

    hsdp = cfg.layout.sharding == "hsdp"
    if hsdp == (tuple(mesh.mesh_dim_names or ()) == HSDP_DIMS):
        return mesh
    return build_mesh(cfg.layout, device.type)


def build_parallel_model(cfg: TrainConfig, device, mesh):
    """The model built on meta, parallelized as the layout says, initialised (seeded alike on
    every rank), then loaded from ``--init-from`` / ``--init-image-from``."""
    import torch

    from models import build_model, init_weights
    from trainer.parallelize import parallelize

    recipe = cfg.recipe_spec()
    torch.manual_seed(cfg.seed)  # same init stream on every rank
    build = build_model
    if recipe.objectives is not None:  # SigLIP 2: the student with its added modules
        from models.siglip2 import build_siglip2_model

        build = functools.partial(build_siglip2_model, s2=recipe.objectives)
    model = build(
        cfg.model_spec(),
        device="meta",
        init_logit_scale=recipe.init_logit_scale,
        init_logit_bias=recipe.init_logit_bias,
    )
    if cfg.layout.precomputed_image:
        model.drop_image_tower()  # --image-embeddings: the step has no image tower
    backend = cfg.compile_backend if cfg.compile else None
    parallelize(model, mesh, cfg.layout, device, init_weights, compile_backend=backend)
    init_from_files(cfg, model)
    return model


def resolve_peak(cfg: TrainConfig, device, log) -> tuple[float | None, str]:
    """Peak FLOP/s per device for MFU and where it comes from (the mean over ranks)."""
    from trainer.profiling import device_name, resolve_peak_flops

    ranks_per_host = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    peak, source, note = resolve_peak_flops(
        device,
        device_name(device),
        cfg.layout.precision,
        cfg.peak_flops,
        cfg.peak_from,
        ranks_per_host,
    )
    peak = mean_over_ranks(peak, device)
    if note:
        log(note)
    return peak, source if peak is not None else "none"


def start_records(cfg: TrainConfig, backend, device, peak, memory_metric, identity, resumed, log):
    """The run file's writer (rank 0 writes), started with the header (and after a resume the
    resume record); ``peak`` is (FLOP/s, source)."""
    import torch.distributed as dist

    from trainer.records import RecordWriter
    from vlscale.records import ResumeRecord

    rank, world = dist.get_rank(), dist.get_world_size()
    writer = RecordWriter(cfg.out, active=rank == 0)
    header = make_header(cfg, world, backend, device, *peak, memory_metric, identity)
    writer.start(header, resume_step=resumed.info.step if resumed else None)
    log(
        f"run {identity['run_id']} (config {identity['config_hash']}, seed {cfg.seed}): "
        f"records {writer.path}"
    )
    if resumed is not None:
        info = resumed.info
        writer.write(
            ResumeRecord(step=info.step, path=str(info.path), passed_over=resumed.passed_over)
        )
    return writer


def make_siglip2_run(cfg: TrainConfig, mesh, device, rank: int, world: int):
    """Recipe siglip2: its per-run state (``trainer.siglip2.Siglip2Run``) with the teacher's
    sharding on the student's mesh; None for the other recipes."""
    s2 = cfg.recipe_spec().objectives
    if s2 is None:
        return None
    from trainer.parallelize import shard_teacher
    from trainer.siglip2 import Siglip2Run
    from trainer.tokenizer import build_tokenizer

    spec = cfg.model_spec()
    tok = build_tokenizer(
        cfg.tokenizer, context_length=spec.text.context_length, vocab_size=spec.text.vocab_size
    )
    run = Siglip2Run(cfg, spec, s2, tok.pad_id, rank, world)
    run.shard = lambda teacher: shard_teacher(teacher, mesh, cfg.layout, device)
    return run


def make_saver(cfg: TrainConfig, model, optimizer, scheduler, loader, identity, s2run=None):
    """``save(step, samples)`` writing a DCP checkpoint of everything (SigLIP 2's teacher once
    it exists): at every ``--ckpt-every`` steps, and on a graceful stop (``trainer.signals``)
    even without ``--ckpt-every``."""
    from trainer import checkpoint as ckpt

    def save(step: int, samples: int):
        return ckpt.save_checkpoint(
            cfg.out,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            loader=loader,
            samples_seen=samples,
            keep_last=cfg.keep_last,
            identity=identity,
            teacher=s2run.teacher if s2run is not None else None,
        )

    return save


def describe_run(cfg: TrainConfig, world, device, backend, peak, peak_source) -> str:
    """The line that says what runs: model, recipe, ranks, layout, batch and peak."""
    from trainer.profiling import device_name

    layout, recipe = cfg.layout, cfg.recipe_spec()
    sharding = layout.sharding
    if layout.sharding == "hsdp":
        sharding = f"hsdp {layout.replicas} x {layout.shard_group}"
    if not layout.wrapped:
        sharding += ": one rank, unwrapped"
    return (
        f"{cfg.model_spec().name} / {recipe.name} ({recipe.loss_impl}) on {world} x "
        f"{device_name(device)} [{backend}, {sharding}, {layout.precision}], global batch "
        f"{cfg.global_batch}, peak {peak / 1e9 if peak else float('nan'):.1f} GFLOP/s/device "
        f"({peak_source})"
    )


@dataclass(frozen=True)
class Resumed:
    info: Any  # trainer.checkpoint.CheckpointInfo
    run_id: str | None  # None: a checkpoint of an older trainer, without run identity
    passed_over: list[str]


def resume(
    cfg: TrainConfig, world: int, model, optimizer, scheduler, loader, log, s2run=None
) -> Resumed:
    """Pick the checkpoint (verified; newest valid unless --resume names one), refuse another
    run's or an incompatible one, load it, and say which one was loaded. Collective. A SigLIP 2
    checkpoint that holds the teacher (after the switch) brings it back too."""
    from trainer import checkpoint as ckpt
    from trainer.checkpoint_files import choose_checkpoint, read_marker
    from trainer.identity import check_resume

    out_run_id = header_run_id(Path(cfg.out))  # read before rank 0 can rewrite the file
    target = cfg.resume if isinstance(cfg.resume, str) else cfg.out
    path, passed_over = choose_checkpoint(target)
    for bad in passed_over:
        log(f"resume: skipping invalid checkpoint {bad}")
    marker = read_marker(path)
    saved = marker.get("identity")
    check_resume(saved, cfg, world, str(path), out_run_id)
    teacher = s2run.make_teacher() if s2run is not None and marker.get("teacher") else None
    info = ckpt.load_checkpoint(
        path, model=model, optimizer=optimizer, scheduler=scheduler, loader=loader, teacher=teacher
    )
    fell = " (newest valid checkpoint)" if passed_over else ""
    log(f"resumed from {path}{fell}: step {info.step}, {info.samples_seen} samples seen")
    return Resumed(info, saved["run_id"] if saved else None, passed_over)


def header_run_id(out: Path) -> str | None:
    """The run id in ``OUT/run.jsonl``'s header; None without a file or an id."""
    try:
        with open(out / "run.jsonl") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return header.get("run_id") if isinstance(header, dict) else None


def broadcast_str(value: str) -> str:
    """Rank 0's ``value`` on every rank."""
    import torch.distributed as dist

    if dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def build_train_loader(cfg: TrainConfig, spec, rank: int, world: int):
    """This rank's loader of local micro-batches (``trainer.data``), tokenised by --tokenizer."""
    from trainer.data import build_loader
    from trainer.data.embeddings import EmbeddingLoader
    from trainer.tokenizer import build_tokenizer

    if cfg.layout.precomputed_image:
        return EmbeddingLoader(cfg.layout.image_embeddings, cfg.local_batch(world), rank, world)

    tokenizer = build_tokenizer(
        cfg.tokenizer, context_length=spec.text.context_length, vocab_size=spec.text.vocab_size
    )
    return build_loader(
        cfg.data,
        tokenizer,
        image_size=spec.vision.image_size,
        batch_size=cfg.local_batch(world),
        seed=cfg.seed,
        rank=rank,
        world_size=world,
        num_workers=cfg.num_workers,
    )


EVAL_SAMPLES = 256


def build_eval(cfg: TrainConfig, spec, model, device):
    """Zero-shot and retrieval on the held-out shapes split (identical tensors on every rank);
    other datasets have no class list, so evaluation is shapes-only for now."""
    import torch

    from trainer.data import ImageTransform, ShapesDataset
    from trainer.evaluate import build_class_prompts, evaluate
    from trainer.tokenizer import build_tokenizer

    if cfg.data != "shapes":
        return None
    tok = build_tokenizer(
        cfg.tokenizer, context_length=spec.text.context_length, vocab_size=spec.text.vocab_size
    )
    size = spec.vision.image_size
    held_out = ShapesDataset(size, seed=cfg.seed, split="eval", rank=0, world_size=1)
    transform = ImageTransform(size)
    images, labels, captions = [], [], []
    for i in range(EVAL_SAMPLES):
        image, caption = held_out.decode(i)
        images.append(transform(image))
        labels.append(held_out.attrs(i).class_index)
        captions.append(caption)
    data = {
        "images": torch.stack(images),  # (N, 3, H, W)
        "labels": torch.tensor(labels),  # (N,)
        "class_prompts": build_class_prompts(
            held_out.classes, list(held_out.templates), tok
        ),  # (C, K, L)
        "captions": tok(captions),  # (N, L)
    }
    return lambda step: evaluate(model, **data, device=device)


def mean_over_ranks(value: float | None, device) -> float | None:
    """Per-device peak as the mean of what the ranks measured (they measured concurrently);
    None on every rank when any rank has none (its measurement was rejected). Collective."""
    import torch
    import torch.distributed as dist

    if dist.get_world_size() == 1:
        return value
    t = torch.tensor([value or 0.0, value is None], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return None if t[1].item() else t[0].item() / dist.get_world_size()


def init_from_files(cfg: TrainConfig, model) -> None:
    """``--init-from`` (OpenCLIP file) then ``--init-image-from`` (DCP checkpoint or OpenCLIP
    file, image tower only) into the parallelized model."""
    from trainer import checkpoint as ckpt
    from trainer.init_from import is_openclip_file, load_openclip_weights

    if cfg.init_from:
        load_openclip_weights(model, cfg.init_from, field="init_from")
    if cfg.init_image_from and is_openclip_file(cfg.init_image_from):
        load_openclip_weights(model, cfg.init_image_from, field="init_image_from", prefix="visual.")
    elif cfg.init_image_from:
        ckpt.load_image_tower(model, cfg.init_image_from)


def make_header(
    cfg: TrainConfig,
    world,
    backend,
    device,
    peak,
    peak_source,
    memory_metric,
    identity=None,
):
    """The run header: what ran, with the layout as it ran (``wrapped`` and the flat fields
    stay for readers of older records)."""
    import torch

    from trainer.profiling import catalog_device_key, device_name, machine_identity
    from vlscale.records import RunHeader

    name = device_name(device)

    return RunHeader(
        start_time=datetime.now(timezone.utc).isoformat(),  # noqa: UP017 (py3.10)
        host=socket.gethostname(),
        torch_version=torch.__version__,
        backend=backend,
        device_type=device.type,
        device_name=name,
        device_key=catalog_device_key(name) if device.type == "cuda" else None,
        devices_per_node=cfg.layout.devices_per_node,
        world_size=world,
        dtype=cfg.layout.precision,
        model=cfg.model_spec(),
        recipe=cfg.recipe_spec(),
        global_batch=cfg.global_batch,
        local_batch=cfg.local_batch(world),
        grad_accum=cfg.layout.grad_accum,
        sharding=cfg.layout.sharding,
        layout=cfg.layout,
        wrapped=cfg.layout.wrapped,
        activation_checkpointing=cfg.layout.checkpointing,
        peak_flops_per_device=peak,
        peak_flops_source=peak_source,
        memory_metric=memory_metric,
        config=cfg.flat_dump(),
        run_id=identity["run_id"] if identity else None,
        config_hash=identity["config_hash"] if identity else None,
        seed=cfg.seed,
        machine=machine_identity(device),
    )


def exit_now(status: int) -> None:
    """Leave without interpreter finalisation once everything is written and the groups are
    destroyed: gloo's C++ worker threads can still hold tensors at finalisation, and releasing
    them then aborts the process ("terminate called without an active exception", exit -6) —
    seen rarely under load at the end of otherwise complete torchrun runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    exit_now(main())
