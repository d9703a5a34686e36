"""Step-granular training checkpoints with torch.distributed.checkpoint (DCP).

Layout of one run directory::

    RUN/ckpt/step_000100/          a complete checkpoint
        .metadata, __0_0.distcp …  DCP files: model + optimizer, sharded (FSDP2 DTensors as is)
        extra_rank00000.pt …       per rank: scheduler, data position, RNG states, step, samples
        COMPLETE                   JSON marker (step, samples_seen, world_size, run identity,
                                   size + sha256 of every other file); written LAST
    RUN/ckpt/step_000200.tmp/      a save in progress (or one that crashed): never loaded

Crash safety. Every rank writes into ``step_N.tmp``; after a barrier rank 0 writes the marker
(``vlscale.paths.atomic_write_bytes``: temp file, fsync, ``os.replace``) and renames the
directory to ``step_N`` in one atomic ``rename(2)``. "Latest" is not a pointer file:
:func:`find_latest` scans for directories whose name is ``step_<digits>`` *and* that hold the
marker, so a save killed at any instant leaves the previous checkpoint as the latest loadable
one. All ranks must see the same directory (shared filesystem), as DCP's file writer already
assumes.

Trust. The marker lists every file of the checkpoint with its size and SHA-256 (FIPS 180-4),
hashed by the ranks in parallel before the marker is written. :func:`choose_checkpoint` verifies
them (again split over the ranks) before anything is loaded: a truncated or bit-flipped
``.distcp``, a random ``.metadata``, a missing rank file or an unreadable marker make a
checkpoint invalid, and a plain resume falls back to the newest valid one. Cost: the checkpoint is
read once more at save and at resume, split over the ranks (SHA-256 ran at ~725 MiB/s on one
core of the 2-core development machine: about 1 s per 0.7 GiB per rank).

Full disk (or any failed write). Each phase of a save (directory, shards and rank files, marker
and rename) ends with the ranks agreeing whether any of them failed, instead of waiting at a
barrier for a rank that raised. On a failure rank 0 removes the partial ``step_N.tmp`` and every
rank raises one ``ConfigError`` (``error: checkpoint: cannot write checkpoint DIR (cause): it
needs about X MiB, Y MiB are free there; ...``), so the run stops with exit status 2. Choice:
stop rather than train on and retry at the next interval, because a disk that was full at one
interval is most likely full at the next, and every step trained meanwhile would be at risk;
stopping keeps the previous checkpoint the newest valid one, to continue from with --resume.

Model and optimizer go through ``torch.distributed.checkpoint.state_dict.get_state_dict`` /
``set_state_dict``, which key the optimizer state by parameter name and keep FSDP2 shards as
DTensors, so every rank writes only its own shard and a checkpoint can be resharded on load.
Works without a process group too (single process: DCP runs with ``no_dist``).

The directory layout, the marker and checksum checks and the choice of checkpoint are in
``trainer.checkpoint_files``; the one-line errors of a failed save in
``trainer.checkpoint_failures``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from trainer.batch_norm import average_running_stats
from trainer.checkpoint_failures import (
    _check_written,
    _is_write_error,
    _state_bytes,
    _write_failure,
)
from trainer.checkpoint_files import (
    MARKER,
    _agreed_problem,
    _distributed,
    _extra_file,
    _gather_dicts,
    _hash_files,
    _rank_world,
    list_checkpoints,
    read_marker,
    resolve_checkpoint,
    step_dir,
)
from trainer.checkpoint_files import (  # re-exported: tests and tools import them from here
    find_latest as find_latest,
)
from vlscale.errors import ConfigError
from vlscale.paths import atomic_write_bytes, fsync_dir

FORMAT_VERSION = 2  # 2: file checksums and run identity in the marker


class Stateful(Protocol):
    """Anything with ``state_dict`` / ``load_state_dict`` (LR scheduler, data loader)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`load_checkpoint` restored: where from and the training position."""

    path: Path
    step: int
    samples_seen: int
    world_size: int


def _dcp(fn, state: dict[str, Any], path: Path) -> None:
    """``dcp.save`` / ``dcp.load``; single-process runs pass ``no_dist`` (its warning is noise)."""
    if _distributed():
        fn(state, checkpoint_id=path)
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        fn(state, checkpoint_id=path, no_dist=True)


# --------------------------------------------------------------------------- atomic files


def _write_marker(path: Path, payload: dict[str, Any]) -> None:
    """The completion marker; the only file whose presence makes a checkpoint loadable."""
    atomic_write_bytes(path / MARKER, json.dumps(payload, indent=1).encode())  # fsyncs path


def _write_extra(path: Path, extra: dict[str, Any]) -> None:
    """One rank's non-tensor-parallel state (scheduler, data position, RNG, step)."""
    torch.save(extra, path)


# --------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """This rank's RNG states: python, numpy, torch CPU, and the current CUDA device if any.

    The numpy state is stored as plain lists/ints so that ``torch.load(weights_only=True)``
    can read it back.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    # torch.load returns the tuple's inner list as a list; random.setstate wants tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --------------------------------------------------------------------------- save


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Stateful | None = None,
    loader: Stateful | None = None,
    samples_seen: int = 0,
    keep_last: int | None = None,
    identity: dict[str, Any] | None = None,
    teacher: torch.nn.Module | None = None,
) -> Path:
    """Write checkpoint ``step`` of ``run_dir``; collective: every rank must call it.
    ``teacher``: SigLIP 2's EMA teacher once it exists (``trainer.siglip2``), saved beside the
    model as ``teacher`` (its own sharded state dict); the marker says whether it is there.

    Order: (rank 0) clear a stale ``step_N.tmp`` -> barrier -> batch-norm running statistics
    averaged over the ranks (``trainer.batch_norm``) -> DCP save of model + optimizer
    (all ranks, their own shards) -> per-rank extra state -> barrier -> (rank 0) marker, then
    atomic rename to ``step_N`` and retention of the newest ``keep_last`` -> barrier.
    Returns the final checkpoint directory.
    """
    if step < 0:
        raise ConfigError("step", f"checkpoint step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ConfigError("keep_last", f"must be >= 1 (or None to keep all), got {keep_last}")
    rank, world = _rank_world()
    final = step_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    problem = None
    if rank == 0:
        try:
            if tmp.exists():  # left by a save that crashed; its contents are unknown
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        except OSError as exc:
            problem = _write_failure(exc)
    _check_written(_agreed_problem(problem), run_dir, tmp, rank)

    average_running_stats(model)  # per-rank batch-norm statistics: one value, on every rank
    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    if teacher is not None:
        state["teacher"] = get_model_state_dict(teacher)
    extra = {
        "step": step,
        "samples_seen": samples_seen,
        "rng": capture_rng(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "loader": loader.state_dict() if loader is not None else None,
    }
    problem = None
    try:
        _dcp(dcp.save, state, tmp)
        _write_extra(_extra_file(tmp, rank), extra)
    except (OSError, CheckpointException) as exc:
        problem = _write_failure(exc)
    except RuntimeError as exc:
        if not _is_write_error(exc):
            raise
        problem = _write_failure(exc)
    # every rank learns whether any rank failed (instead of waiting for it at a barrier), and
    # every shard and extra file is on disk before the marker can exist
    _check_written(_agreed_problem(problem), run_dir, tmp, rank, _state_bytes(state) * world)
    files = _gather_dicts(_hash_files(tmp, rank, world))

    problem = None
    if rank == 0:
        try:
            _write_marker(
                tmp,
                {
                    "format": FORMAT_VERSION,
                    "step": step,
                    "samples_seen": samples_seen,
                    "world_size": world,
                    "has_optimizer": optimizer is not None,
                    "teacher": teacher is not None,
                    "time": time.time(),
                    "identity": identity,
                    "files": files,
                },
            )
            _publish(tmp, final)
        except OSError as exc:
            problem = _write_failure(exc)
        if problem is None and keep_last is not None:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    # nobody proceeds (or loads) before the rename is visible
    _check_written(_agreed_problem(problem), run_dir, tmp, rank)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Atomically give ``tmp`` its final name; an existing ``final`` (re-save) is replaced."""
    if final.exists():
        # rename(2) cannot replace a non-empty directory: move the old one aside first. Its
        # new name does not match step_<digits>, so it is never taken for a checkpoint.
        stale = final.with_name(final.name + f".old{os.getpid()}")
        os.rename(final, stale)
        os.rename(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(final.parent)


# --------------------------------------------------------------------------- load


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Stateful | None = None,
    loader: Stateful | None = None,
    restore_rng_state: bool = True,
    teacher: torch.nn.Module | None = None,
) -> CheckpointInfo:
    """Restore everything :func:`save_checkpoint` wrote; collective: every rank must call it.

    ``path`` is a checkpoint directory or a run directory (its latest complete checkpoint is
    used). The model (and optimizer) must already be built and sharded as for training; DCP
    loads each rank's shard in place. RNG states are restored last, so that nothing done while
    loading consumes random numbers after the restore. ``teacher`` (built and sharded already)
    is loaded too when given: pass it when the marker says ``teacher: true``.
    """
    ckpt = resolve_checkpoint(path)
    try:
        marker = read_marker(ckpt)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "resume", f"{ckpt}/{MARKER} is unreadable ({exc}); pick another"
        ) from None
    rank, world = _rank_world()
    if marker["world_size"] != world:
        raise ConfigError(
            "resume",
            f"{ckpt} was written by {marker['world_size']} ranks but this run has {world}; the "
            "per-rank data position and RNG cannot be remapped. Resume with "
            f"{marker['world_size']} ranks, or load weights only with load_model_weights()",
        )
    if optimizer is not None and not marker.get("has_optimizer", True):
        raise ConfigError("resume", f"{ckpt} holds no optimizer state; resume with optimizer=None")

    if teacher is not None:
        if not marker.get("teacher"):
            raise ConfigError("resume", f"{ckpt} holds no SigLIP 2 teacher; pass teacher=None")
        state = {"teacher": get_model_state_dict(teacher)}
        _load_or_explain(state, ckpt)
        set_model_state_dict(teacher, state["teacher"])
    if optimizer is None:
        model_sd = get_model_state_dict(model)
        state = {"model": model_sd}
        _load_or_explain(state, ckpt)
        set_model_state_dict(model, state["model"])
    else:
        # get_state_dict initialises empty optimizer state so DCP has tensors to load into.
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dropped = _drop_unsaved_optim_state(optim_sd, ckpt)
        state = {"model": model_sd, "optim": optim_sd}
        _load_or_explain(state, ckpt)
        # strict=False only so that the dropped entries stay absent; every model key was
        # already required by dcp.load (its default planner fails on a missing key).
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=StateDictOptions(strict=not dropped),
        )

    extra = torch.load(_extra_file(ckpt, rank), weights_only=True)
    if scheduler is not None:
        if extra["scheduler"] is None:
            raise ConfigError("resume", f"{ckpt} holds no scheduler state; pass scheduler=None")
        scheduler.load_state_dict(extra["scheduler"])
    if loader is not None:
        if extra["loader"] is None:
            raise ConfigError("resume", f"{ckpt} holds no data position; pass loader=None")
        loader.load_state_dict(extra["loader"])
    if restore_rng_state:
        restore_rng(extra["rng"])
    return CheckpointInfo(
        path=ckpt,
        step=int(extra["step"]),
        samples_seen=int(extra["samples_seen"]),
        world_size=int(marker["world_size"]),
    )


def _load_or_explain(state: dict[str, Any], ckpt: Path) -> None:
    """``dcp.load``; its errors (missing keys, other shapes: another model) become one line."""
    try:
        _dcp(dcp.load, state, ckpt)
    except Exception as exc:  # DCP raises CheckpointException / RuntimeError with tracebacks
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise ConfigError(
            "resume",
            f"cannot load {ckpt} ({first[:200]}); it was written for another model or optimizer: "
            "resume with the run's --model / --optimizer, or start a new run",
        ) from None


def _drop_unsaved_optim_state(optim_sd: dict[str, Any], ckpt: Path) -> bool:
    """Forget optimizer state entries that the checkpoint does not hold.

    ``get_state_dict`` on a fresh optimizer creates state for *every* parameter (one step with
    zero gradients), but a parameter that never had a gradient has no state in the saved
    optimizer (e.g. ``logit_bias`` under the softmax loss). Dropping those entries makes the
    restored optimizer match the saved one exactly instead of failing on a missing key.
    """
    try:
        saved = set(dcp.FileSystemReader(ckpt).read_metadata().state_dict_metadata)
    except Exception as exc:  # unpickling garbage raises anything
        raise ConfigError(
            "resume", f"{ckpt}/.metadata is unreadable ({exc}); pick another"
        ) from None
    dropped = False
    for fqn in list(optim_sd.get("state", {})):
        entry = optim_sd["state"][fqn]
        for key in list(entry):
            if f"optim.state.{fqn}.{key}" not in saved:
                del entry[key]
                dropped = True
        if not entry:
            del optim_sd["state"][fqn]
    return dropped


def load_model_weights(
    model: torch.nn.Module, path: str | os.PathLike, *, prefix: str = "", field: str = "init_from"
) -> list[str]:
    """Load the model parameters (optionally only those whose name starts with ``prefix``).

    Optimizer, scheduler, data position and RNG are left alone. Works across world sizes
    (DCP reshards). Returns the names loaded. Collective under a process group.
    """
    ckpt = resolve_checkpoint(path, field)
    full = get_model_state_dict(model)
    wanted = {k: v for k, v in full.items() if k.startswith(prefix)}
    if not wanted:
        raise ConfigError(
            "prefix", f"no parameter of the model starts with {prefix!r}; check the tower name"
        )
    state = {"model": wanted}
    try:
        _dcp(dcp.load, state, ckpt)
    except Exception as exc:  # DCP raises plain RuntimeErrors for missing keys / bad shapes
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        raise ConfigError(
            field,
            f"cannot load {prefix or 'model'} weights from {ckpt} ({first[:200]}); the "
            "checkpoint must come from a model with the same tower architecture",
        ) from None
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    return sorted(wanted)


def load_image_tower(
    model: torch.nn.Module, ckpt_dir: str | os.PathLike, *, prefix: str = "visual."
) -> list[str]:
    """EVA-CLIP two-stage recipe: initialise only the image tower (``visual.*``) from a checkpoint.

    Text tower, logit scale/bias and everything else keep their fresh initialisation
    (Sun et al. 2023, "EVA-CLIP", Sec. 2: the image encoder starts from a pre-trained EVA).
    """
    return load_model_weights(model, ckpt_dir, prefix=prefix, field="init_image_from")
