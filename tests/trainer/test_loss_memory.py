"""Loss memory measured on gloo ranks: the ring keeps O(b·d) for backward whatever W is, the
gather losses grow with W, and ``vlscale.costs.loss_buffers.loss_buffer_parts`` equals what the
trainer's losses hold at W = 1, 2 and 4.

Two measurements per rank (fp32; b = 64, e = 32, and b = 32, e = 64, where the ring's peak
moves from its two b × b blocks to its (b, e) buffers):

* saved: bytes autograd keeps for backward, counted once per storage
  (``trainer.losses.saved_memory``), with the two ``F.normalize`` calls inside the count as in
  the trainer (the towers' outputs are normalised right before the loss);
* backward: the CPU allocator's high-water mark during ``loss.backward()`` above its level at
  the start, from torch.profiler's memory events, with x, y leaves (so ``F.normalize``'s own
  backward is not in it), for the ring only. The gather formulas' backward part (their b×B
  logit gradients) is a lower bound, not the allocator's peak (which also depends on when the
  asynchronous reduce-scatter frees its buffers, and differs between ranks); the saved-bytes
  comparison leaves it out (``loss_buffer_parts`` keeps the two parts apart).

At fixed local batch b, going from W = 2 to W = 4 adds 2·b columns to every gathered logit
block, so each gather variant must grow by at least that many fp32 logits per b × B block it
keeps, while the ring must not grow at all.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

from tests.dist_utils import run_distributed
from trainer.losses import clip_loss, create_ring_groups, siglip_loss
from trainer.losses.saved_memory import SavedTensorBytes, allocator_peak_bytes
from vlscale.costs.loss_buffers import loss_buffer_parts

B_LOCAL, DIM, FP32 = 64, 32, 4
SHAPES = ((B_LOCAL, DIM), (DIM, B_LOCAL))  # (b, e): b > e and b < e
IMPLS = ("clip", "siglip-gather", "siglip-ring")
# One-element tensors are not modelled: t', β, exp(t'), their gradients, the ring's running
# dscale / dbias / Σ G sums. Fewer than 16 of them are ever live, 4 bytes each.
SCALAR_BYTES = 16 * FP32


def _measure_by_world(ctx) -> dict[int, dict]:
    """One 4-process spawn measures W = 4 (the world) and W = 2 (the "dp" rows of a 2 × 2 mesh)."""
    mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replica", "dp"))
    create_ring_groups(mesh, "dp")  # subgroups need their ring twins made by every rank
    return {
        2: _measure(ctx.rank, mesh.get_group("dp")),
        4: _measure(ctx.rank, ctx.mesh.get_group("dp")),
    }


def _loss(impl: str, x, y, group):
    scale = torch.tensor([2.3], requires_grad=True)
    bias = torch.tensor([-10.0], requires_grad=True)
    if impl == "clip":
        return clip_loss(x, y, scale, group=group)
    return siglip_loss(x, y, scale, bias, group=group, impl=impl.split("-")[1])


def _measure(rank: int, group) -> dict[tuple[int, int, str], dict[str, int]]:
    g = torch.Generator().manual_seed(rank)
    out = {}
    for (b, e), impl in itertools.product(SHAPES, IMPLS):
        image = torch.randn(b, e, generator=g, requires_grad=True)
        text = torch.randn(b, e, generator=g, requires_grad=True)
        with SavedTensorBytes() as saved:
            loss = _loss(impl, F.normalize(image, dim=-1), F.normalize(text, dim=-1), group)
        loss.backward()
        out[b, e, impl] = {"saved": saved.bytes}
        if impl == "siglip-ring":
            x = F.normalize(image.detach(), dim=-1).requires_grad_()
            y = F.normalize(text.detach(), dim=-1).requires_grad_()
            out[b, e, impl]["backward"] = _backward_peak(_loss(impl, x, y, group))
    return out


def _backward_peak(loss: torch.Tensor) -> int:
    """Allocator high-water mark of ``loss.backward()`` above the level at its start."""
    return allocator_peak_bytes(loss.backward)


@pytest.fixture(scope="module")
def measured() -> dict[int, dict]:
    """{W: {(b, e, impl): {"saved"[, "backward"]}}} for W = 1 (this process), 2, 4 (rank 0)."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # children inherit: no profiler chatter
    per_rank = run_distributed(_measure_by_world, 4)
    for w in (2, 4):
        ranks = [r[w] for r in per_rank]
        assert all(r == ranks[0] for r in ranks), f"ranks disagree at W={w}: {ranks}"
    return {1: _measure(0, None), **per_rank[0]}


@pytest.mark.dist
def test_ring_saved_bytes_do_not_grow_with_world_size(measured):
    def saved(w):
        return {k: v["saved"] for (b, _, k), v in measured[w].items() if b == B_LOCAL}

    one, two, four = saved(1), saved(2), saved(4)
    extra_logits = B_LOCAL * (4 - 2) * B_LOCAL * FP32  # 2·b more columns in one b × B block

    # ring: the normalisations' inputs and norms, x and y, the two scalars -- nothing per hop
    assert four["siglip-ring"] == two["siglip-ring"] == one["siglip-ring"]
    assert four["siglip-ring"] <= 2 * (2 * B_LOCAL * DIM + 2 * B_LOCAL) * FP32 + SCALAR_BYTES
    # gather variants hold at least one b × B block (CLIP: two, one per direction)
    assert four["siglip-gather"] - two["siglip-gather"] >= extra_logits
    assert four["clip"] - two["clip"] >= 2 * extra_logits
    assert four["siglip-ring"] < four["siglip-gather"] < four["clip"]


@pytest.mark.dist
@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("b, e", SHAPES)
def test_loss_buffer_formula_equals_measured_bytes(measured, world, impl, b, e):
    """Saved bytes equal the formula's saved part for every variant; the ring's backward peak
    equals its backward part. Both up to the unmodelled one-element tensors (SCALAR_BYTES)."""
    loss, kind = ("softmax", "gather") if impl == "clip" else ("sigmoid", impl.split("-")[1])
    parts = loss_buffer_parts(loss, kind, b, world, e)
    got = measured[world][b, e, impl]
    print(f"W={world} b={b} e={e} {impl}: saved {got['saved']} B (formula {parts.saved} B)")
    assert 0 <= got["saved"] - parts.saved <= SCALAR_BYTES
    if impl == "siglip-ring":
        print(f"  backward peak {got['backward']} B (formula {parts.backward} B)")
        assert 0 <= got["backward"] - parts.backward <= SCALAR_BYTES
