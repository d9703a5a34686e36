"""Process-group plumbing shared by the contrastive losses.

Three small jobs:

* ``group_rank_size``: this rank's index and the group size, with ``group=None`` meaning "no
  distribution" (rank 0 of 1) when torch.distributed is not initialised, and WORLD otherwise.
* ``all_gather_with_grad``: concatenate every rank's (b, d) block into (W·b, d) so that autograd
  turns the gather into a reduce-scatter (sum) in backward.
* ``ring_group_for`` / ``create_ring_groups``: a dedicated process group, same members as
  ``group``, reserved for the sigmoid ring's point-to-point hops so that they never interleave
  with FSDP collectives issued on the main group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# Why `all_gather_single_autograd`: in torch 2.13 `torch.distributed.nn.functional.all_gather`
# and `_functional_collectives.all_gather_tensor_autograd` both emit deprecation warnings that
# point to the `_functional_collectives.*_single` family. `all_gather_single_autograd` is the
# non-deprecated, documented "same as all_gather_single but propagates the backward gradient"
# entry point; its registered backward is `reduce_scatter_tensor(..., "sum")`, exactly the
# gradient routing the local-loss formulation needs.
from torch.distributed._functional_collectives import all_gather_single_autograd
from torch.distributed.device_mesh import DeviceMesh

# Ring groups are created once per main group and reused: `new_group` is a collective call and
# far too expensive to issue every step. Keyed by the group object itself (kept alive by the
# dict) so a re-initialised world never hits a stale entry.
_RING_GROUPS: dict[object, dist.ProcessGroup] = {}


def is_distributed(group: dist.ProcessGroup | None) -> bool:
    """True when the loss must talk to other ranks (an initialised world, or an explicit group)."""
    return group is not None or (dist.is_available() and dist.is_initialized())


def group_rank_size(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank within ``group``, ``group`` size); (0, 1) when not distributed."""
    if not is_distributed(group):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def resolve_group(group: dist.ProcessGroup | None) -> dist.ProcessGroup | None:
    """``group``, or WORLD when it is None and a world exists, or None when single-process."""
    if group is not None:
        return group
    return dist.group.WORLD if is_distributed(None) else None


def all_gather_with_grad(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Gather (b, d) blocks from all ranks into (W·b, d), rank order, differentiable.

    Backward: reduce-scatter (sum) of the (W·b, d) gradient, so rank r receives
    sum over ranks s of dL_s/dx_r, the gradient of the SUM of all ranks' losses.
    """
    group = resolve_group(group)
    if group is None or dist.get_world_size(group) == 1:
        return x
    # funcol returns an AsyncCollectiveTensor; wait() materialises it (and the wait is a
    # registered identity in autograd, so the graph is unchanged).
    out = all_gather_single_autograd(x.contiguous(), 0, group)  # (W·b, d)
    return out.wait() if hasattr(out, "wait") else out


def ring_group_for(group: dist.ProcessGroup | None) -> dist.ProcessGroup:
    """The dedicated ring group registered for ``group`` (created lazily if ``group`` is WORLD).

    A group spanning the whole world gets its twin on first use: every rank reaches its first
    ring loss together, so the collective ``new_group`` call lines up. A data-parallel
    SUBgroup cannot be created that way (``new_group`` needs every world rank, with the same
    ranks list, and ``use_local_synchronization=True`` deadlocks on gloo once other subgroups
    exist): call ``create_ring_groups(mesh, dim)`` on every rank at set-up instead.
    """
    group = resolve_group(group)
    if group is None:
        raise RuntimeError("ring_group_for needs an initialised torch.distributed world")
    ring = _RING_GROUPS.get(group)
    if ring is not None:
        return ring
    if dist.get_world_size(group) != dist.get_world_size():
        raise RuntimeError(
            "no ring group registered for this data-parallel subgroup; call "
            "trainer.losses.create_ring_groups(mesh, dim) on every rank at set-up"
        )
    ring = dist.new_group(ranks=dist.get_process_group_ranks(group), group_desc="siglip_ring")
    _RING_GROUPS[group] = ring
    return ring


def create_ring_groups(mesh: DeviceMesh, dim: str) -> dist.ProcessGroup:
    """Create a ring twin of every ``dim`` subgroup of ``mesh``; return this rank's.

    Collective over the whole world: every rank must call it, in the same order relative to
    other group creations. The twin of ``mesh.get_group(dim)`` is then found by
    ``ring_group_for``.
    """
    layout = mesh.mesh  # (d0, d1, ...) global ranks
    axis = mesh.mesh_dim_names.index(dim)
    rows = layout.movedim(axis, -1).reshape(-1, layout.shape[axis]).tolist()  # one per subgroup
    me = dist.get_rank()
    mine = None
    for ranks in rows:
        ring = dist.new_group(ranks=ranks, group_desc="siglip_ring")
        if me in ranks:
            mine = ring
    _RING_GROUPS[mesh.get_group(dim)] = mine
    return mine
