"""Rank-local views of FSDP2 (DTensor) parameters and the one batched cross-shard sum.

Both LAMB and Adafactor need statistics of the WHOLE parameter (norms, column sums) while each
rank holds a dim-0 shard: they compute local partial sums, then ``sum_across_shards`` adds them
over the ranks that shard each parameter with one flat all-reduce per (mesh, sharded dims).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor, Shard


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """The rank-local storage of ``t`` (a DTensor's shard, or ``t`` itself); in-place safe."""
    return t._local_tensor if isinstance(t, DTensor) else t


def reduce_key(p: torch.Tensor):
    """(mesh, sharded mesh dims) for a DTensor whose norm needs a cross-rank sum, else None."""
    if not isinstance(p, DTensor):
        return None
    dims = tuple(i for i, pl in enumerate(p.placements) if isinstance(pl, Shard))
    return (p.device_mesh, dims) if dims else None


def sum_across_shards(items: list[tuple[object, list[torch.Tensor]]]) -> list[list[torch.Tensor]]:
    """Sum each item's tensors over the ranks that shard it: ONE flat all-reduce per key.

    ``items`` are (key, tensors); key None means the tensors are already global and are returned
    as is. ``dist.all_reduce`` is looked up at call time so that tests can count calls.
    """
    out: list[list[torch.Tensor]] = [list(ts) for _, ts in items]
    keys = list(dict.fromkeys(k for k, _ in items if k is not None))  # first-seen order
    for key in keys:
        mesh, dims = key
        members = [i for i, (k, _) in enumerate(items) if k == key]
        tensors = [t for i in members for t in items[i][1]]
        wide = any(t.dtype == torch.float64 for t in tensors)
        dtype = torch.float64 if wide else torch.float32
        flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])  # (sum of numels,)
        for dim in dims:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=mesh.get_group(dim))
        pieces = iter(flat.split([t.numel() for t in tensors]))
        for i in members:
            out[i] = [next(pieces).view(t.shape).to(t.dtype) for t in items[i][1]]
    return out
