"""The rest of a step's op list: the contrastive loss, the optimizer, FSDP's copies.

Loss (``trainer.losses``; fp32 throughout, b local batch, B = W·b, e embedding width):

- every implementation first L2-normalises both embeddings (3 kernels each: norm, clamp, div);
- ``clip`` gather: two logit matmuls (b, B, e) — image·textsᵀ and text·imagesᵀ — each scaled
  (b·B elementwise) and fed to a cross entropy (log-softmax + NLL, 2 kernels); backward: the
  cross-entropy gradient, the scale's gradient, and dX / dY of each matmul (4 matmuls);
- ``siglip`` gather: one matmul (b, B, e), then scale, bias, labels and log-sigmoid over b×B
  (5 kernels); backward 6 kernels over b×B and 2 matmuls;
- ``siglip`` ring: W blocks of b×b, each a matmul (b, b, e) and 5 elementwise kernels forward;
  backward recomputes each block's logits (one more matmul) and forms the analytic gradient
  G (4 kernels over b×b) and dx += t·G·y, dy = t·Gᵀ·x (2 matmuls).

Their FLOPs equal ``vlscale.costs.flops.loss_flops`` (with ``recompute_logits`` for the ring).

Optimizer (per rank, over its shard of the parameters; fp32 state). With foreach / fused
kernels (torch's default on accelerators) AdamW reads param, grad, m, v and writes param, m, v
(28 B / parameter) in about a dozen multi-tensor launches; LAMB adds a norm pass over params and
updates (36 B); Adafactor reads param, grad and factored statistics and writes param (16 B). On
a CPU torch runs the single-tensor implementation: one kernel per arithmetic step and tensor
(``torch.optim.adamw._single_tensor_adamw``: decay, lerp, mul + addcmul, sqrt, div, add, addcdiv
and the step count, 10 kernels, each a full pass: ~84 B / parameter). Gradient clipping adds a
norm and a scale per tensor.

FSDP2 (``fully_shard``) per unit and step: the all-gather copies the fp32 shards into a flat
buffer (casting to the compute dtype under mixed precision), the collective fills it, and the
unsharded parameters are views of it; backward gathers again when ``reshard_after_forward``,
and the reduce-scatter copies the gradients into a flat fp32 buffer and the shard out of it.
Those copies are memory-bound ops here; the collective itself is priced by
``vlscale.costs.collectives``.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlscale.costs.dtypes import FP32
from vlscale.costs.ops import Op, OpList

OPTIMIZER_BYTES_PER_PARAM = {"adamw": 28, "lamb": 36, "adafactor": 16}  # foreach / fused
SINGLE_TENSOR_BYTES_PER_PARAM = {"adamw": 84, "lamb": 100, "adafactor": 48}
OPTIMIZER_KERNELS_PER_TENSOR = {"adamw": 10, "lamb": 14, "adafactor": 12}  # single-tensor
FOREACH_LAUNCHES = 12  # multi-tensor kernels per step (chunks of many tensors each)
CLIP_KERNELS_PER_TENSOR = 2  # per-tensor norm, then scale


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
    fwd, bwd = OpList("fp32", FP32), OpList("fp32", FP32)
    big = b * b * world  # b×B logits
    fwd.add(_normalize(b, e))
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
    bwd.add(_normalize_grad(b, e))
    return list(fwd), list(bwd)


def ring_loss_ops(b: int, world: int, e: int) -> RingLossOps:
    """The chunked sigmoid loss (``trainer.losses.siglip_ring``): normalise, then per block a
    (b, b, e) logit matmul and 5 kernels forward; backward recomputes the block's logits, forms
    G (4 kernels) and dx, dy (2 matmuls); then the normalisation's gradient."""
    fwd, bwd = OpList("fp32", FP32), OpList("fp32", FP32)
    for k in range(world):
        fwd.linear(f"loss.block{k}.logits", b, b, e, False, "forward")
        fwd.elementwise(f"loss.block{k}.sigmoid", 5 * 2 * b * b, "forward", kernels=5)
    for k in range(world):
        bwd.linear(f"loss.block{k}.recompute", b, b, e, False, "recompute")
        bwd.elementwise(f"loss.block{k}.grad", 4 * 3 * b * b, "backward", kernels=4)
        bwd.add(_matmul(f"loss.block{k}.dx", b, e, b, "backward"))
        bwd.add(_matmul(f"loss.block{k}.dy", b, e, b, "backward"))
    return RingLossOps([_normalize(b, e)], list(fwd), list(bwd), [_normalize_grad(b, e)])


def _normalize(b: int, e: int) -> Op:
    """L2-normalise both embeddings: norm, clamp, div for each (6 kernels)."""
    ops = OpList("fp32", FP32)
    ops.elementwise("loss.normalize", 2 * 3 * b * e, "forward", kernels=6)
    return ops.ops[0]


def _normalize_grad(b: int, e: int) -> Op:
    ops = OpList("fp32", FP32)
    ops.elementwise("loss.normalize.grad", 2 * 4 * b * e, "backward", kernels=6)
    return ops.ops[0]


def _matmul(name: str, m: int, n: int, k: int, phase: str) -> Op:
    return Op(
        name, "matmul", phase, 2.0 * m * n * k, (m * k + k * n + m * n) * FP32, 1, (1, m, n, k)
    )


def optimizer_ops(
    params: float,
    tensors: int,
    optimizer: str,
    grad_clip: bool,
    foreach: bool = True,
    dtensor: bool = True,
) -> list[Op]:
    """The optimizer step over ``params`` parameters in ``tensors`` tensors (one rank's shard).

    ``dtensor``: the parameters are DTensors (FSDP2 / replicate). torch's AdamW and gradient
    clipping then dispatch every op through DTensor; LAMB and Adafactor (``trainer.optim``) work
    on the local shards, plain tensors."""
    ops = OpList("fp32", FP32)
    if grad_clip:
        launches = 4 if foreach else CLIP_KERNELS_PER_TENSOR * tensors + 2
        clip = Op(
            "optimizer.clip_grad_norm",
            "elementwise",
            "forward",
            0.0,
            3 * params * FP32,
            launches,
            dispatch="dtensor" if dtensor else "plain",
        )
        ops.add(clip)
    table = OPTIMIZER_BYTES_PER_PARAM if foreach else SINGLE_TENSOR_BYTES_PER_PARAM
    launches = FOREACH_LAUNCHES if foreach else OPTIMIZER_KERNELS_PER_TENSOR[optimizer] * tensors
    step = Op(
        "optimizer.step",
        "elementwise",
        "forward",
        0.0,
        params * table[optimizer],
        launches,
        # torch's AdamW works on the parameters; LAMB / Adafactor on their local shards
        dispatch="dtensor" if dtensor and optimizer == "adamw" else "plain",
    )
    ops.add(step)
    ops.elementwise("optimizer.zero_grad", 0, "forward", kernels=1)
    return list(ops)


def fsdp_copy_ops(
    unit_params: int, world: int, param_bytes: int, reshard_after_forward: bool
) -> tuple[list[Op], list[Op]]:
    """(forward, backward) memory-bound copies FSDP2 makes around one unit's collectives."""
    shard = unit_params / world
    gather_bytes = shard * (FP32 + param_bytes) + unit_params * param_bytes  # copy-in, out
    fwd = [Op("fsdp.all_gather_copies", "elementwise", "forward", 0.0, gather_bytes, 2)]
    bwd = []
    if reshard_after_forward and world > 1:
        bwd.append(Op("fsdp.all_gather_copies", "elementwise", "backward", 0.0, gather_bytes, 2))
    rs_bytes = unit_params * (param_bytes + FP32) + shard * 2 * FP32  # copy-in (cast), out
    bwd.append(Op("fsdp.reduce_scatter_copies", "elementwise", "backward", 0.0, rs_bytes, 2))
    return fwd, bwd
