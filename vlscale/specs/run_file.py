"""One run file for both halves: which of its keys the planner reads and which the trainer reads.

``vlscale plan --config run.yaml`` and ``torchrun ... -m trainer.train --config run.yaml`` read
the same file. Each half takes the keys it knows and lists the others as ignored (one line on
stderr); a key that neither half knows is still an error (a typo must not pass silently).

The trainer's key names are written out here (:data:`TRAINER_KEYS`) because ``vlscale`` never
imports ``trainer`` (nor torch); a trainer test holds them equal to ``TrainConfig``'s fields.
The run layout's keys (:data:`LAYOUT_KEYS`) are read by both, flat or as a ``layout:`` mapping.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vlscale.specs.layout import RunLayout

LAYOUT_KEYS: frozenset[str] = frozenset(RunLayout.model_fields) | {"layout"}
"""The run layout, flat (``devices``, ``sharding``, ``shard_size``, ...) or nested."""

TRAINER_KEYS: frozenset[str] = LAYOUT_KEYS | {
    # trainer.config.TrainConfig, besides the layout
    "model",
    "recipe",
    "loss_impl",
    "mask_ratio",
    "optimizer",
    "global_batch",
    "steps",
    "data",
    "tokenizer",
    "out",
    "lr",
    "image_lr",
    "text_lr",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "compile",
    "compile_backend",
    "seed",
    "eval_every",
    "ckpt_every",
    "resume",
    "phase_timing",
    "profile_steps",
    "unmasked_final_steps",
    "init_image_from",
    "init_from",
    "peak_flops",
    "peak_from",
    "timing_warmup",
    "log_every",
    "device",
    "num_workers",
    "overwrite",
    "keep_last",
    "skip_nonfinite",
    "force",
}
"""Every key ``trainer.train --config`` reads."""

TRAINER_DEVICES: frozenset[str] = frozenset({"auto", "cpu", "cuda"})
"""``device`` values that name the trainer's torch device, not a catalog device."""


def split_keys(
    data: Mapping[str, Any], used: Iterable[str], known_elsewhere: Iterable[str] = TRAINER_KEYS
) -> tuple[dict[str, Any], list[str]]:
    """(the entries whose key is in ``used``, the sorted keys that only the other half reads).

    Keys in neither set stay in the first part, so that the reader's own validation refuses
    them by name."""
    used, elsewhere = set(used), set(known_elsewhere)
    ignored = sorted(k for k in data if k not in used and k in elsewhere)
    return {k: v for k, v in data.items() if k not in ignored}, ignored
