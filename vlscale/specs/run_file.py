"""One run file for both halves: which keys the planner reads, which the trainer reads.

``vlscale plan --config run.yaml`` and ``torchrun ... -m trainer.train --config run.yaml`` read
the same file. Each half takes its own keys, ignores (and lists) the keys that belong to the
other half, and refuses a key that belongs to neither (a typo). The run layout's keys
(:class:`~vlscale.specs.layout.RunLayout`) and the model / recipe / batch keys belong to both.

The key lists are plain names, torch-free, so that the planner never imports the trainer:
``tests/trainer/test_config.py`` holds ``TRAINER_KEYS`` to ``trainer.config.TrainConfig`` and
``PLANNER_KEYS`` to ``vlscale.plan.config.PlanConfig``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from vlscale.specs.layout import RunLayout

LAYOUT_KEYS: frozenset[str] = frozenset(RunLayout.model_fields)

SHARED_KEYS: frozenset[str] = frozenset(
    {
        "model",
        "recipe",
        "loss_impl",
        "mask_ratio",
        "optimizer",
        "siglip2",
        "global_batch",
        "seed",
        "layout",
    }
)
"""Keys both halves read besides the layout's (``layout``: the layout as one mapping)."""

PLANNER_KEYS: frozenset[str] = frozenset(
    {
        "image_size",
        "context_length",
        "device",
        "num_slices",
        "slice_shape",
        "hardware_file",
        "samples",
        "grad_clip",
        "utilisation",
        "framework_efficiency",
        "compute_efficiency_scale",
        "comm_efficiency_scale",
        "price_per_device_hour",
        "decode_samples_per_s_per_device",
        "straggler_sigma",
        "stragglers",
        "sim_steps",
        "failures",
        "stack",
    }
)
"""Keys of the planner's run file (``PlanConfig``) that are not layout or shared keys."""

TRAINER_KEYS: frozenset[str] = frozenset(
    {
        "data",
        "tokenizer",
        "out",
        "steps",
        "lr",
        "image_lr",
        "text_lr",
        "weight_decay",
        "warmup_steps",
        "grad_clip",
        "compile",
        "compile_backend",
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
)
"""Keys of the trainer's run file (``TrainConfig``) that are not layout or shared keys."""

KNOWN_KEYS: frozenset[str] = LAYOUT_KEYS | SHARED_KEYS | PLANNER_KEYS | TRAINER_KEYS

TRAINER_DEVICES: frozenset[str] = frozenset({"auto", "cpu", "cuda"})
"""``device`` values that name the trainer's torch device, not a catalog device."""


def key_name(key: Any) -> str:
    """A file key as a field name: ``global-batch`` and ``global_batch`` are the same key."""
    return str(key).replace("-", "_")


def split_keys(
    mapping: Mapping[Any, Any], own_keys: Iterable[str]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """``mapping`` split into ``(own, foreign_known, unknown)``.

    ``own``: the entries whose (normalised) key is in ``own_keys``, keyed by field name;
    ``foreign_known``: the keys (as written) that the other half of the project reads;
    ``unknown``: the keys (as written) that neither half reads."""
    own_set = set(own_keys)
    own: dict[str, Any] = {}
    foreign: list[str] = []
    unknown: list[str] = []
    for key, value in mapping.items():
        name = key_name(key)
        if name in own_set:
            own[name] = value
        elif name in KNOWN_KEYS:
            foreign.append(str(key))
        else:
            unknown.append(str(key))
    return own, foreign, unknown
