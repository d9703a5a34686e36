"""Learning-rate schedule: linear warmup then cosine decay to ``min_lr_ratio`` x the peak.

Multiplier of each group's peak lr at step ``s`` (the scheduler is stepped once per optimizer
step; OpenCLIP ``scheduler.py`` ``cosine_lr``, with a floor as in timm's ``lr_min``)::

    s <  W:        (s + 1) / W
    W <= s < T:    m + (1 - m) * 0.5 * (1 + cos(pi * (s - W) / (T - W)))
    s >= T:        m

with W = warmup_steps, T = total_steps, m = min_lr_ratio. The state (last step) is saved by
``LambdaLR.state_dict``; the multiplier is a plain object so its settings are saved too.
"""

from __future__ import annotations

import math

import torch

from vlscale.errors import ConfigError


class WarmupCosine:
    """The multiplier above as a picklable callable."""

    def __init__(self, warmup_steps: int, total_steps: int, min_lr_ratio: float):
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        w, t, m = self.warmup_steps, self.total_steps, self.min_lr_ratio
        if step < w:
            return (step + 1) / w
        if step >= t:
            return m
        progress = (step - w) / (t - w)
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + cosine ``LambdaLR`` over every param group's own peak lr."""
    if total_steps <= 0:
        raise ConfigError("total_steps", f"must be > 0, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ConfigError(
            "warmup_steps",
            f"must be in [0, total_steps={total_steps}], got {warmup_steps}; shorten the warmup",
        )
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError("min_lr_ratio", f"must be in [0, 1], got {min_lr_ratio}")
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(warmup_steps, total_steps, min_lr_ratio)
    )
