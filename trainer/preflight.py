"""Checks before any process group exists, so that a user's mistake costs one line, not a run.

Every rank runs :func:`check_inputs` (the data can be opened, the tokenizer loads, the image
tower's checkpoint exists, the model fits in memory); rank 0 alone then owns ``--out``:
:func:`check_out` (a fresh run refuses a non-empty ``--out`` unless ``--overwrite``; ``--resume``
needs a checkpoint) and :func:`clear_out` (``--overwrite``; undone if the run fails before its
first step). Each failure is a :class:`~vlscale.errors.ConfigError`: one line, exit status 2,
nothing written.

Memory check. ``vlscale.costs.memory.estimate_memory`` (the planner's per-device breakdown for
this model, batch, sharding, precision, optimizer and loss) against the capacity of one rank:
a CUDA device's total memory, or on CPU the host's ``MemAvailable`` (``/proc/meminfo``, what the
kernel can give without swapping) divided by the ranks on this host. On CPU the planner's
allowance for the CUDA context is dropped (the running processes are already out of
``MemAvailable``). ``--force`` turns a refusal into a warning line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from trainer.config import TrainConfig
from trainer.run_lock import LOCK_FILE
from vlscale.errors import ConfigError

GIB = 1 << 30
RUN_FILES = ("run.jsonl", "ckpt")  # what --overwrite removes, with trace_rank*.json


def check_inputs(cfg: TrainConfig, world: int, rank: int, device_type: str) -> list[str]:
    """Data, tokenizer, image-tower checkpoint and memory; returns lines to print."""
    from trainer.checkpoint_files import resolve_checkpoint
    from trainer.data import build_source
    from trainer.init_from import is_openclip_file
    from trainer.tokenizer import build_tokenizer

    spec = cfg.model_spec()
    spec.check_mask_ratio(cfg.recipe_spec().mask_ratio)  # FLIP needs a ViT
    build_tokenizer(
        cfg.tokenizer, context_length=spec.text.context_length, vocab_size=spec.text.vocab_size
    )
    build_source(cfg.data, image_size=spec.vision.image_size, seed=cfg.seed, rank=rank,
                 world_size=world)  # fmt: skip
    if cfg.init_image_from and not is_openclip_file(cfg.init_image_from):
        # a run's DCP checkpoint must be complete and valid; an OpenCLIP file is read at load
        resolve_checkpoint(cfg.init_image_from, "init_image_from")
    return check_memory(cfg, world, device_type)


def check_memory(cfg: TrainConfig, world: int, device_type: str) -> list[str]:
    """Refuse (ConfigError "memory") when the estimate exceeds one rank's capacity. ``world``
    is the launch's ranks, already the layout's ``devices`` (``load_config`` checks it)."""
    spec = cfg.model_spec()
    capacity, what = rank_capacity(device_type)
    if capacity is None:
        return [f"memory check skipped: {what}"]
    need = estimate_rank_memory(cfg, device_type)
    if need <= capacity:
        return []
    text = (
        f"{spec.name} needs an estimated {need / GIB:.1f} GiB per rank (vlscale.costs.memory) but "
        f"{what} offers {capacity / GIB:.1f} GiB"
    )
    if cfg.force:
        return [f"warning: memory: {text}; starting anyway (--force)"]
    raise ConfigError(
        "memory",
        f"{text}; use more ranks (FSDP shards the model states), a smaller --global-batch, "
        "--checkpointing or --precision bf16, or --force to try anyway",
    )


def estimate_rank_memory(cfg: TrainConfig, device_type: str) -> int:
    """Bytes per rank of this run's layout by the planner's estimate: the one call into
    ``vlscale.costs`` (HSDP: the model states are sharded over the shard group; SigLIP 2: the
    largest phase, ``vlscale.costs.siglip2_memory.run_memory``)."""
    from vlscale.costs.memory import DEFAULT_OVERHEAD_BYTES
    from vlscale.costs.siglip2_memory import run_memory

    layout = cfg.layout
    return run_memory(
        cfg.model_spec(),
        layout,
        cfg.recipe_spec(),
        local_batch=layout.micro_batch(cfg.global_batch),
        overhead_bytes=DEFAULT_OVERHEAD_BYTES if device_type == "cuda" else 0,
    ).total


def rank_capacity(device_type: str) -> tuple[int | None, str]:
    """Bytes one rank may use, and where the number comes from (None: unknown)."""
    if device_type == "cuda":
        import torch

        index = int(os.environ.get("LOCAL_RANK", "0"))
        total = torch.cuda.get_device_properties(index).total_memory
        return total, f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    available = host_available_bytes()
    if available is None:
        return None, "no MemAvailable in /proc/meminfo"
    return available // ranks, f"this host (MemAvailable / {ranks} rank{'s' * (ranks > 1)})"


def host_available_bytes(meminfo: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts kB (KiB)
    except (OSError, ValueError, IndexError):
        return None
    return None


def run_entries(out: Path) -> list[str]:
    """Names in ``out`` other than the lock, sorted; empty when it does not exist."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)


def check_out(cfg: TrainConfig) -> None:
    """A fresh run needs an empty (or absent) ``--out`` unless ``--overwrite``; ``--resume``
    needs a complete checkpoint where it looks."""
    from trainer.checkpoint_files import MARKER, _marked_dirs, ckpt_root

    out = Path(cfg.out)
    if cfg.resume:
        target = Path(cfg.resume) if isinstance(cfg.resume, str) else out
        explicit = (target / MARKER).is_file()
        if not explicit and not _marked_dirs(target):
            raise ConfigError(
                "resume",
                f"no complete checkpoint at or under {target} (looked for "
                f"{ckpt_root(target)}/step_*/{MARKER}); start without --resume",
            )
        return
    entries = run_entries(out)
    if entries and not cfg.overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ConfigError(
            "out",
            f"{out} is not empty ({shown}); continue its run with --resume, replace it with "
            "--overwrite, or pick another --out",
        )


OVERWRITTEN = ".overwritten"  # the previous run's files while the new run has not started


def clear_out(out: Path) -> list[str]:
    """``--overwrite``: set the previous run's files (records, checkpoints, traces) aside in
    ``OUT/.overwritten`` (renames: instant, no space needed); other files in ``out`` are left
    alone. They are deleted once the new run's first step is done (:func:`drop_overwritten`)
    and put back if it fails before (:func:`restore_overwritten`), so that a mistake found
    after launch still leaves ``--out`` as it was. Returns the names set aside."""
    moved = []
    aside = out / OVERWRITTEN
    if aside.exists():  # left by a run killed during its first step
        shutil.rmtree(aside)
    for p in sorted(out.iterdir()) if out.is_dir() else []:
        if p.name in RUN_FILES or (p.name.startswith("trace_rank") and p.suffix == ".json"):
            aside.mkdir(exist_ok=True)
            p.rename(aside / p.name)
            moved.append(p.name)
    return moved


def restore_overwritten(out: Path) -> None:
    """Put the files set aside by :func:`clear_out` back (what the new run wrote goes first)."""
    aside = out / OVERWRITTEN
    if not aside.is_dir():
        return
    for p in sorted(aside.iterdir()):
        target = out / p.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        p.rename(target)
    aside.rmdir()


def drop_overwritten(out: Path) -> None:
    """Delete the previous run's files set aside by :func:`clear_out` (the new run started)."""
    shutil.rmtree(out / OVERWRITTEN, ignore_errors=True)
