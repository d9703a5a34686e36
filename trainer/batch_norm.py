"""Batch-norm running statistics across data-parallel ranks.

Training normalises each rank's local batch by its own statistics (no SyncBatchNorm, as
OpenCLIP), so every rank's running mean and variance drift apart. A checkpoint must hold one
value, and a resumed run must continue from exactly what the uninterrupted run holds; so
``save_checkpoint`` first replaces every rank's running statistics by their mean over the ranks
(timm's ``distribute_bn(..., reduce=True)`` before evaluation and saving), then saves. Both runs
pass through that same step, which keeps resume bit-identical.

One all-reduce of all the statistics flattened together (a few kB to a few MB: two floats per
channel of every batch norm); nothing for models without batch norm or for one rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def running_stats(model: nn.Module) -> list[torch.Tensor]:
    """Every batch norm's ``running_mean`` and ``running_var``, in module order."""
    return [
        buf
        for m in model.modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats
        for buf in (m.running_mean, m.running_var)
    ]


def average_running_stats(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Set every rank's batch-norm running statistics to their mean over ``group`` (collective:
    every rank of the group calls it; a no-op without a process group, on one rank, or for a
    model without batch norm)."""
    stats = running_stats(model)
    if not stats or not dist.is_initialized() or dist.get_world_size(group) == 1:
        return
    flat = torch.cat([s.detach().reshape(-1).float() for s in stats])
    dist.all_reduce(flat, group=group)  # SUM: gloo and NCCL both have it
    flat /= dist.get_world_size(group)
    with torch.no_grad():
        for s, part in zip(stats, flat.split([s.numel() for s in stats]), strict=True):
            s.copy_(part.view_as(s))
