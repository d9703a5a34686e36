"""The rest of a step's op list: the optimizer and FSDP's copies. The contrastive loss's ops
are its layer's (``vlscale.costs.layers.loss``: ``loss_ops``, ``ring_loss_ops``, re-exported here).

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

from vlscale.costs.dtypes import FP32
from vlscale.costs.layers import Op, OpList, RingLossOps, loss_ops, ring_loss_ops

__all__ = ["RingLossOps", "fsdp_copy_ops", "loss_ops", "optimizer_ops", "ring_loss_ops"]

OPTIMIZER_BYTES_PER_PARAM = {"adamw": 28, "lamb": 36, "adafactor": 16}  # foreach / fused
SINGLE_TENSOR_BYTES_PER_PARAM = {"adamw": 84, "lamb": 100, "adafactor": 48}
OPTIMIZER_KERNELS_PER_TENSOR = {"adamw": 10, "lamb": 14, "adafactor": 12}  # single-tensor
FOREACH_LAUNCHES = 12  # multi-tensor kernels per step (chunks of many tensors each)
CLIP_KERNELS_PER_TENSOR = 2  # per-tensor norm, then scale


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
