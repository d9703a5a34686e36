"""Run identity: which run a checkpoint belongs to, and whether a resume may continue it.

A run is identified by ``(run_id, config_hash, seed)``:

- ``run_id``: 12 random hex digits drawn when a run starts afresh (rank 0, broadcast), kept by
  every resume; it is in the run header (``OUT/run.jsonl``) and in every checkpoint's marker.
- ``config_hash``: the first 16 hex digits of SHA-256 over the JSON (sorted keys) of the
  *identity fields* below, those that fix the run's trajectory.
- ``seed``: the config's seed (also one of the identity fields; kept apart because it is what a
  user varies on purpose between otherwise equal runs).

A resume must match the checkpoint in every identity field and in the world size; anything else
(logging, evaluation and checkpoint cadence, workers, profiling, retention) may change. The
schedule is part of the identity: ``steps`` is the cosine horizon (the learning rate reaches its
floor, 0, at the last step), so extending a run by resuming with a larger ``--steps`` is refused
rather than silently training the new steps at learning rate 0; a longer run is a new run.

Torch-free, like ``trainer.config``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from trainer.config import TrainConfig
from vlscale.errors import ConfigError

IDENTITY_FIELDS = (
    "model",
    "recipe",
    "loss_impl",
    "mask_ratio",
    "optimizer",
    "global_batch",
    "grad_accum",
    "steps",
    "warmup_steps",
    "unmasked_final_steps",
    "lr",
    "image_lr",
    "text_lr",
    "weight_decay",
    "grad_clip",
    "precision",
    "sharding",
    "data",
    "tokenizer",
    "seed",
)


def identity_config(cfg: TrainConfig) -> dict[str, Any]:
    """The identity fields of ``cfg`` as JSON values (layout fields flat, as before the layout
    had a type of its own, so that older checkpoints keep their hash)."""
    values = cfg.flat_dump()
    return {name: values[name] for name in IDENTITY_FIELDS}


def config_hash(cfg: TrainConfig) -> str:
    text = json.dumps(identity_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def make_identity(run_id: str, cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """What every checkpoint marker stores about its run."""
    return {
        "run_id": run_id,
        "config_hash": config_hash(cfg),
        "seed": cfg.seed,
        "world_size": world_size,
        "config": identity_config(cfg),
    }


def check_resume(
    saved: dict[str, Any] | None,
    cfg: TrainConfig,
    world_size: int,
    where: str,
    out_run_id: str | None,
) -> None:
    """Refuse to resume from a checkpoint (identity ``saved``, at ``where``) that belongs to
    another run than the one recorded in ``--out`` (``out_run_id``) or that this configuration
    cannot continue; the message lists every difference. ``saved`` None (a checkpoint of an
    older trainer) is not checked here; the loader still checks world size and shapes."""
    if saved is None:
        return
    if out_run_id is not None and saved["run_id"] != out_run_id:
        raise ConfigError(
            "resume",
            f"{where} belongs to run {saved['run_id']} but {cfg.out} records run {out_run_id}; "
            "resume that run into its own --out, or give this run's checkpoint",
        )
    old = saved["config"]
    now = identity_config(cfg)
    if old.get("steps") != now["steps"]:
        raise ConfigError(
            "steps",
            f"{where} belongs to a run of {old.get('steps')} steps whose cosine schedule ends at "
            f"step {old.get('steps')}; the horizon is part of the run, so resume with --steps "
            f"{old.get('steps')}, or start a new run (another --out) to train for {now['steps']}",
        )
    diffs = [
        f"{name} {old.get(name)!r} -> {now[name]!r}"
        for name in IDENTITY_FIELDS
        if old.get(name) != now[name]
    ]
    if saved.get("world_size") != world_size:
        diffs.append(f"world size {saved.get('world_size')} -> {world_size}")
    if diffs:
        first = next(iter(diffs)).split(" ", 1)[0]
        field = first if first in IDENTITY_FIELDS else "world_size"
        raise ConfigError(
            field,
            f"{where} was written by a run that differs from this one: {', '.join(diffs)} "
            "(checkpoint -> now); resume with the checkpoint's settings, or start a new run",
        )
