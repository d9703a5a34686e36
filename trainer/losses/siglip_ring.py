"""The chunked sigmoid loss: text blocks hop around a ring, one b × b block at a time.

Zhai et al. 2023 ("Sigmoid Loss for Language Image Pre-Training", §3.3, the "chunked"
implementation). Rank r of W holds images x (b, d) and texts y (b, d). Its local loss is the
sum over ALL B = W·b texts of its b image rows, divided by b (see ``trainer.losses.siglip``)::

    L_r = -(1/b) Σ_{k=0}^{W-1} Σ_{i,j} log σ(ℓ_ij^k · (t · x_i · y_j^(r-k) + β)),
    ℓ_ij^0 = +1 if i = j else -1,   ℓ^k = -1 for k > 0,   t = exp(t')

where y^(r-k) is the text block of rank (r − k) mod W, which arrives after k hops (each rank
sends its current block to rank r+1 and receives the next from rank r−1).

Memory: an autograd graph over the W hops would keep every hop's b × b logits (and received
blocks), growing with W — the known bug of public chunked-loss implementations. Here the whole
ring is one ``torch.autograd.Function``: forward saves only x, y, t', β (O(b·d)); backward runs
the ring again and uses the analytic block gradient, with G = dL_r/dz (z the logits)::

    G      = (σ(z) − 1[ℓ = +1]) · g / b                    (b × b, g = upstream grad)
    dx    += t · G · y_blk                                  (b × d, stays here)
    dy_blk = t · Gᵀ · x                                     (b × d, travels with the block)
    dt'   += Σ G ⊙ (z − β)          dβ += Σ G

Each text block's gradient accumulator travels one hop behind the block: after W hops it is
back at the owner holding Σ_s dL_s/dy_r, exactly what the gather implementation's
reduce-scatter delivers. Live memory is O(b² + b·d) whatever W is. The next hop's
isend/irecv is posted before the current block is computed, so the transfer hides behind it.
Traffic per rank: forward W − 1 hops of a (b, d) block (the bytes of one all-gather of the
texts); backward W − 1 block hops again (recompute instead of storing W blocks) plus W hops of
the (b, d) accumulator, i.e. (2W − 1)·b·d elements against the gather backward's (W − 1)·b·d
reduce-scatter: the price of O(1)-in-W memory. P2P runs on a dedicated process group
(``ring_group_for``) so that it never interleaves with FSDP's collectives on the main group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

# Distinct tags per hop and per kind (block vs. gradient accumulator) make the matching of
# outstanding sends and receives between two neighbours explicit (gloo honours tags; NCCL
# matches in issue order, which is the same order).
_BLOCK_TAG, _GRAD_TAG = 0, 1


def _hop(
    send: torch.Tensor, group: dist.ProcessGroup, tag: int
) -> tuple[torch.Tensor, list[dist.Work]]:
    """Post: send ``send`` to the next rank, receive a same-shaped tensor from the previous one."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    recv = torch.empty_like(send)
    ops = [
        dist.P2POp(dist.isend, send, group=group, group_peer=(rank + 1) % world, tag=tag),
        dist.P2POp(dist.irecv, recv, group=group, group_peer=(rank - 1) % world, tag=tag),
    ]
    return recv, dist.batch_isend_irecv(ops)


def _wait(works: list[dist.Work]) -> None:
    for work in works:
        work.wait()


def _block_logits(x_scaled: torch.Tensor, y_blk: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """z = (t·x) · y_blkᵀ + β in one fused addmm: a single b × b allocation."""
    return torch.addmm(bias, x_scaled, y_blk.T)  # (b, b)


def sigmoid_nll_sum(z: torch.Tensor, positives_at: int | None) -> torch.Tensor:
    """Σ -log σ(ℓ·z) over a (b, n) logit block; ℓ = +1 at (i, positives_at + i), else -1.

    Every pair is first counted as a negative, -log σ(-z) = softplus(z), then the b positives'
    terms are swapped for -log σ(z) = softplus(-z): no (b, n) label or sign tensor is built.
    """
    nll = F.softplus(z).sum()
    if positives_at is not None:
        zp = z.diagonal(offset=positives_at)  # (b,) the positive pairs' logits
        nll = nll - F.softplus(zp).sum() + F.softplus(-zp).sum()
    return nll


class _SigmoidRing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, logit_scale, logit_bias, group):
        # x, y: (b, d) already in the compute dtype; logit_scale, logit_bias: (1,)
        world = dist.get_world_size(group) if group is not None else 1
        x_scaled = logit_scale.exp() * x  # (b, d): fold t into the small operand
        total = x.new_zeros(())
        blk = y.contiguous()
        for k in range(world):
            works: list[dist.Work] = []
            if k < world - 1:
                nxt, works = _hop(blk, group, tag=_BLOCK_TAG + 2 * k)  # overlap with compute
            z = _block_logits(x_scaled, blk, logit_bias)  # (b, b)
            total = total + sigmoid_nll_sum(z, 0 if k == 0 else None)
            del z
            if works:
                _wait(works)
                blk = nxt
        ctx.save_for_backward(x, y, logit_scale, logit_bias)
        ctx.group, ctx.world = group, world
        return total / x.shape[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, y, logit_scale, logit_bias = ctx.saved_tensors
        group, world = ctx.group, ctx.world
        t = logit_scale.exp()
        x_scaled = t * x  # (b, d)
        coef = grad_out / x.shape[0]
        dx = torch.zeros_like(x)
        dscale = x.new_zeros(())
        dbias = x.new_zeros(())
        blk = y.contiguous()
        acc_in: torch.Tensor | None = None
        acc_works: list[dist.Work] = []
        for k in range(world):
            blk_works: list[dist.Work] = []
            if k < world - 1:
                nxt, blk_works = _hop(blk, group, tag=_BLOCK_TAG + 2 * k)
            z = _block_logits(x_scaled, blk, logit_bias)  # (b, b), recomputed
            grad_z = torch.sigmoid(z)
            if k == 0:
                grad_z.diagonal().sub_(1.0)
            grad_z.mul_(coef)  # (b, b) = dL_r/dz
            # Σ G ⊙ (z − β) as a dot product: no third b × b buffer
            gsum = grad_z.sum()
            dscale = dscale + torch.dot(grad_z.reshape(-1), z.reshape(-1)) - logit_bias * gsum
            dbias = dbias + gsum
            del z
            grad_z.mul_(t)  # dz/dx_i = t·y_j, dz/dy_j = t·x_i: fold t in once
            dx.addmm_(grad_z, blk)  # (b, d)
            contrib = grad_z.T @ x  # (b, d): this rank's share of dL/dy_blk
            del grad_z  # free before the next hop allocates its z: two b × b blocks at most
            if k == 0:
                acc = contrib
            else:
                _wait(acc_works)
                acc = contrib.add_(acc_in)
            if world > 1:
                # the accumulator follows its block one hop behind; after hop W-1 it reaches
                # the block's owner, while this rank receives the finished gradient of its own y
                acc_in, acc_works = _hop(acc, group, tag=_GRAD_TAG + 2 * k)
            if blk_works:
                _wait(blk_works)
                blk = nxt
        if world > 1:
            _wait(acc_works)
            dy = acc_in
        else:
            dy = acc
        return (
            dx,
            dy,
            dscale.reshape(logit_scale.shape),
            dbias.reshape(logit_bias.shape),
            None,
        )


def sigmoid_ring_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    ring_group: dist.ProcessGroup | None,
) -> torch.Tensor:
    """Local sigmoid loss L_r via the ring (inputs already cast); ring_group None = single rank."""
    return _SigmoidRing.apply(x, y, logit_scale, logit_bias, ring_group)
