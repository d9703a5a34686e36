"""The contrastive loss (``trainer.losses``) as a layer: the root's parameters and the loss's ops.

fp32 throughout; b local batch, W ranks, B = W·b, e embedding width.

Parameters: ``logit_scale`` (1,) and ``logit_bias`` (1,) (``LOGIT_PARAMS``; the bias is used by
the sigmoid loss only).

Ops (each logit block X·Yᵀ costs 2·b·B·e forward and 4·b·B·e backward, dX and dY):

- every implementation first L2-normalises both embeddings (3 kernels each: norm, clamp, div);
- softmax "gather" (CLIP, OpenCLIP's "local loss"): two logit matmuls (b, B, e) — image·textsᵀ
  and text·imagesᵀ — each scaled (b·B elementwise) and fed to a cross entropy (log-softmax +
  NLL, 2 kernels); backward the cross-entropy and scale gradients and dX, dY of each matmul:
  12·b·B·e FLOPs in all;
- sigmoid "gather" (SigLIP): one matmul (b, B, e), then scale, bias, labels and log-sigmoid over
  b×B (5 kernels); backward 6 kernels over b×B and 2 matmuls: 6·b·B·e;
- sigmoid "ring" (chunked SigLIP): W blocks of b×b, each a matmul (b, b, e) and 5 elementwise
  kernels forward; backward recomputes each block's logits (one more matmul, phase
  "recompute"), forms the analytic gradient G (4 kernels over b×b) and dx += t·G·y,
  dy = t·Gᵀ·x (2 matmuls): 6·b·B·e, 8·b·B·e with the recomputed logits.

Softmax / sigmoid / log terms are elementwise and not counted (as FlopCounterMode). Saved:
``vlscale.costs.loss_buffers.loss_buffer_parts`` (the ``loss_buffers`` category of memory).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlscale.costs.dtypes import FP32, LOSS_BYTES
from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import Op, OpList, Phase, Saved, Shape
from vlscale.costs.loss_buffers import loss_buffer_parts
from vlscale.specs.models import LOGIT_PARAMS


@dataclass(frozen=True)
class RingLossOps:
    """The chunked sigmoid loss's ops on one rank, split as the step schedules them: the
    normalisation outside the ring, and the W blocks of b×b (one per text block that visits)."""

    outside_forward: list[Op]
    blocks_forward: list[Op]
    blocks_backward: list[Op]
    outside_backward: list[Op]


def loss_ops(loss: str, impl: str, b: int, world: int, e: int) -> tuple[list[Op], list[Op]]:
    """(forward ops, backward ops) of the loss on one rank (module docstring)."""
    if impl == "ring":
        ring = ring_loss_ops(b, world, e)
        fwd_ops = [*ring.outside_forward, *ring.blocks_forward]
        return fwd_ops, [*ring.blocks_backward, *ring.outside_backward]
    fwd, bwd = _fp32(), _fp32()
    big = b * b * world  # b×B logits
    fwd.add(_normalize(b, e, "forward"))
    if loss == "softmax":
        for side in ("image", "text"):
            fwd.linear(f"loss.logits_per_{side}", b, b * world, e, False, "forward")
            fwd.elementwise(f"loss.scale_{side}", 2 * big, "forward")
            fwd.elementwise(f"loss.cross_entropy_{side}", 2 * big + b, "forward", kernels=2)
        for side in ("text", "image"):
            bwd.elementwise(f"loss.cross_entropy_{side}.grad", 3 * big, "backward", kernels=2)
            bwd.elementwise(f"loss.scale_{side}.grad", 3 * big, "backward", kernels=2)
            bwd.linear_backward(f"loss.logits_per_{side}", b, b * world, e, False, dx=True)
    else:
        fwd.linear("loss.logits", b, b * world, e, False, "forward")
        fwd.elementwise("loss.sigmoid", 5 * 2 * big, "forward", kernels=5)
        bwd.elementwise("loss.sigmoid.grad", 6 * 3 * big, "backward", kernels=6)
        bwd.linear_backward("loss.logits", b, b * world, e, False, dx=True)
    bwd.add(_normalize(b, e, "backward"))
    return list(fwd), list(bwd)


def ring_loss_ops(b: int, world: int, e: int) -> RingLossOps:
    """The chunked sigmoid loss (``trainer.losses.siglip_ring``): normalise, then per block a
    (b, b, e) logit matmul and 5 kernels forward; backward recomputes the block's logits, forms
    G (4 kernels) and dx, dy (2 matmuls); then the normalisation's gradient."""
    fwd, bwd = _fp32(), _fp32()
    for k in range(world):
        fwd.linear(f"loss.block{k}.logits", b, b, e, False, "forward")
        fwd.elementwise(f"loss.block{k}.sigmoid", 5 * 2 * b * b, "forward", kernels=5)
    for k in range(world):
        bwd.linear(f"loss.block{k}.recompute", b, b, e, False, "recompute")
        bwd.elementwise(f"loss.block{k}.grad", 4 * 3 * b * b, "backward", kernels=4)
        bwd.matmul(f"loss.block{k}.dx", (1, b, e, b), "backward")
        bwd.matmul(f"loss.block{k}.dy", (1, b, e, b), "backward")
    outside_fwd, outside_bwd = [_normalize(b, e, "forward")], [_normalize(b, e, "backward")]
    return RingLossOps(outside_fwd, list(fwd), list(bwd), outside_bwd)


def _fp32() -> OpList:
    return OpList("fp32", FP32)


def _normalize(b: int, e: int, phase: Phase) -> Op:
    """L2-normalise both embeddings: norm, clamp, div for each (6 kernels); backward reads the
    input, the norms and the incoming gradient and writes the outgoing one."""
    ops = _fp32()
    if phase == "forward":
        ops.elementwise("loss.normalize", 2 * 3 * b * e, "forward", kernels=6)
    else:
        ops.elementwise("loss.normalize.grad", 2 * 4 * b * e, "backward", kernels=6)
    return ops.ops[0]


class ContrastiveLoss(Layer, kind="contrastive_loss", role="loss"):
    """The loss ``loss`` / ``impl`` over ``world`` ranks on ``embed_dim``-wide embeddings."""

    embed_dim: int
    loss: str = "softmax"
    impl: str = "gather"
    world: int = 1

    def param_shapes(self) -> list[Shape]:
        return [(1,)] * LOGIT_PARAMS

    def _ops(self, b: int) -> tuple[list[Op], list[Op]]:
        return loss_ops(self.loss, self.impl, b, self.world, self.embed_dim)

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        """The loss's own fp32 ops (never checkpointed: ``phase`` is always forward)."""
        for op in self._ops(b)[0]:
            ops.add(op)

    def backward_ops(self, ops: OpList, b: int) -> None:
        for op in self._ops(b)[1]:
            ops.add(op)

    def saved(self, b: int) -> Saved:
        parts = loss_buffer_parts(self.loss, self.impl, b, self.world, self.embed_dim)
        return Saved(fp32=parts.saved // LOSS_BYTES)
