"""The ring keeps O(b·d) for backward whatever W is; the gather losses grow with W.

Bytes saved for backward are counted per rank over unique storages
(trainer.losses.saved_memory). At fixed local batch b, going from W = 2 to W = 4 adds 2·b
columns to every gathered logit block, so each gather variant must grow by at least that many
fp32 logits per b × B block it keeps, while the ring must not grow at all.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

from tests.dist_utils import run_distributed
from trainer.losses import clip_loss, create_ring_groups, siglip_loss
from trainer.losses.saved_memory import SavedTensorBytes

B_LOCAL, DIM, FP32 = 64, 32, 4
IMPLS = ("clip", "siglip-gather", "siglip-ring")


def _saved_bytes_by_world(ctx) -> dict[int, dict[str, int]]:
    """One 4-process spawn measures W = 4 (the world) and W = 2 (the "dp" rows of a 2 × 2 mesh)."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replica", "dp"))
    create_ring_groups(mesh, "dp")  # subgroups need their ring twins made by every rank
    return {
        2: _saved_bytes(ctx.rank, mesh.get_group("dp")),
        4: _saved_bytes(ctx.rank, ctx.mesh.get_group("dp")),
    }


def _saved_bytes(rank: int, group) -> dict[str, int]:
    g = torch.Generator().manual_seed(rank)
    out = {}
    for impl in IMPLS:
        x = F.normalize(torch.randn(B_LOCAL, DIM, generator=g), dim=-1).requires_grad_()
        y = F.normalize(torch.randn(B_LOCAL, DIM, generator=g), dim=-1).requires_grad_()
        scale = torch.tensor([2.3], requires_grad=True)
        bias = torch.tensor([-10.0], requires_grad=True)
        with SavedTensorBytes() as saved:
            if impl == "clip":
                loss = clip_loss(x, y, scale, group=group)
            else:
                loss = siglip_loss(x, y, scale, bias, group=group, impl=impl.split("-")[1])
        loss.backward()
        out[impl] = saved.bytes
    return out


@pytest.mark.dist
def test_ring_saved_bytes_do_not_grow_with_world_size():
    per_rank = run_distributed(_saved_bytes_by_world, 4)
    for w in (2, 4):
        ranks = [r[w] for r in per_rank]
        assert all(r == ranks[0] for r in ranks), f"ranks disagree at W={w}: {ranks}"
    two, four = per_rank[0][2], per_rank[0][4]
    extra_logits = B_LOCAL * (4 - 2) * B_LOCAL * FP32  # 2·b more columns in one b × B block

    # ring: nothing but the local (b, d) embeddings and the two scalars
    assert four["siglip-ring"] == two["siglip-ring"]
    assert four["siglip-ring"] <= 2 * B_LOCAL * DIM * FP32 + 2 * 64
    # gather variants hold at least one b × B block (CLIP: two, one per direction)
    assert four["siglip-gather"] - two["siglip-gather"] >= extra_logits
    assert four["clip"] - two["clip"] >= 2 * extra_logits
    assert four["siglip-ring"] < four["siglip-gather"] < four["clip"]
