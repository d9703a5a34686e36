"""Build the simulator's :class:`~vlscale.sim.Workload` from a model, a recipe and a cluster.

This is the only place where shapes, FLOPs, bytes and bandwidths meet; the simulator sees
durations only. Per rank and per step, with b the local batch, u the utilisation (fraction of the
device's dense peak P for the compute dtype) and F(x) the FLOPs of ``vlscale.costs.flops``:

    unit forward      F_fwd(unit) · b / (u · P)
    unit backward     (2 F_fwd(unit) [F for the patch stem] + recompute F) · b / (u · P)
    FSDP all-gather   all_gather(shard = params(unit) · bytes(param dtype) / W)
    FSDP reduce-scat. reduce_scatter(shard = params(unit) · 4 / W)        (fp32 reduce)
    DDP all-reduce    all_reduce(params(unit) · 4)                        (fp32 grads)
    loss              ``loss_flops`` split forward : backward as 1 : 2 (ring with recompute 1 : 3);
                      gathers of b·e fp32 embeddings; ring hops of b·e fp32: W−1 text-block hops
                      forward, W−1 again plus W gradient-accumulator hops backward
    optimizer         params/W · bytes touched per parameter / (HBM bandwidth · 0.7)
    input pipeline    one worker per rank decoding at ``decode_samples_per_s_per_device``

FSDP units follow ``trainer.parallelize``: every transformer block, then per tower the rest of
its parameters (stem, positions, norms, pooling head, projection) as the tower's own unit, whose
compute is the stem (before the blocks) plus head and projection (after them).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlscale.costs.collectives import all_gather, all_reduce, neighbor_exchange, reduce_scatter
from vlscale.costs.flops import (
    LayerFlops,
    block_recompute_flops,
    loss_flops,
    model_flops_per_sample,
    text_layer_flops,
    vision_layer_flops,
)
from vlscale.costs.memory import fsdp_unit_params
from vlscale.costs.topology import Group
from vlscale.sim.workload import (
    ClipGatherLoss,
    InputPipeline,
    SiglipGatherLoss,
    SiglipRingLoss,
    Unit,
    Workload,
)
from vlscale.specs.hardware import ClusterSpec
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import BYTES_PER_ELEMENT, RecipeSpec

FP32 = 4
REDUCE_BYTES = FP32  # MixedPrecisionPolicy(reduce_dtype=fp32)
EMBED_BYTES = FP32  # the losses gather fp32 embeddings (trainer.losses)
HBM_EFFICIENCY = 0.7  # elementwise optimizer kernels reach ~70% of HBM bandwidth
# Bytes read + written per parameter by one optimizer step on fp32 state:
# AdamW/LAMB read param, grad, m, v and write param, m, v (7 x 4 B); LAMB adds a norm pass
# over params and updates (2 x 4 B); Adafactor reads param, grad, row/col stats, writes param.
OPTIMIZER_BYTES_PER_PARAM = {"adamw": 28, "lamb": 36, "adafactor": 16}


@dataclass(frozen=True)
class StepCosts:
    """What one step does per rank, besides its durations (for reports and MFU)."""

    model_flops_per_step: float  # model FLOPs of the whole step, all ranks (no recompute)
    hardware_flops_per_rank: float  # FLOPs one rank executes, recompute included
    comm_bytes_per_rank: dict[str, float]  # bytes moved per rank by collective kind
    loss_comm_bytes_per_rank: dict[str, float]  # loss phase: {"forward": .., "backward": ..}
    peak_flops: float  # dense peak of the compute dtype, per device
    utilisation: float


def build_workload(
    spec: ModelSpec,
    recipe: RecipeSpec,
    cluster: ClusterSpec,
    group: Group,
    *,
    local_batch: int,
    precision: str,
    sharding: str,
    reshard_after_forward: bool,
    checkpointing: bool,
    utilisation: float,
    decode_samples_per_s: float | None = None,
) -> tuple[Workload, StepCosts]:
    """The durations of one step on one rank (module docstring) and the step's totals."""
    world = cluster.num_devices
    peak = cluster.device.peak(precision)
    rate = peak * utilisation  # achieved FLOP/s
    # tf32 is how fp32 matmuls run on Ampere+; the parameters themselves stay fp32
    param_bytes = BYTES_PER_ELEMENT["fp32" if precision == "tf32" else precision]
    r = recipe.mask_ratio
    comm = dict.fromkeys(("all_gather", "reduce_scatter", "all_reduce", "p2p"), 0.0)

    vision = vision_layer_flops(spec.vision, spec.embed_dim, r)
    text = text_layer_flops(spec.text, spec.embed_dim)
    v_recompute = block_recompute_flops(spec.vision.trunk, spec.vision.seq_len(r))
    t_recompute = block_recompute_flops(spec.text.trunk, spec.text.context_length)
    unit_params = fsdp_unit_params(spec)
    v_depth = spec.vision.trunk.depth
    v_block_params, t_block_params = unit_params[0], unit_params[v_depth]
    v_rest_params, t_rest_params = unit_params[-3], unit_params[-2]

    def comm_for(params: int) -> dict[str, float]:
        if world == 1:
            return {}
        if sharding == "ddp":
            ar = all_reduce(params * REDUCE_BYTES, group)
            comm["all_reduce"] += ar.bytes_moved_per_rank
            return {"all_reduce_s": ar.time_s}
        ag = all_gather(params * param_bytes / world, group)
        rs = reduce_scatter(params * REDUCE_BYTES / world, group)
        gathers = 1 if not reshard_after_forward else 2
        comm["all_gather"] += gathers * ag.bytes_moved_per_rank
        comm["reduce_scatter"] += rs.bytes_moved_per_rank
        return {"all_gather_s": ag.time_s, "reduce_scatter_s": rs.time_s}

    def unit(name: str, layers: list[LayerFlops], recompute: float, params: int) -> Unit:
        fwd = sum(x.total for x in layers)
        bwd = sum(x.total if x.kind == "stem" else 2 * x.total for x in layers)
        bwd += recompute if checkpointing else 0.0
        return Unit(
            name=name,
            forward_s=fwd * local_batch / rate,
            backward_s=bwd * local_batch / rate,
            **comm_for(params),
        )

    units = [
        unit("visual", [x for x in vision if x.kind != "block"], 0.0, v_rest_params),
        *(
            unit(f"visual.blocks.{i}", [x], v_recompute, v_block_params)
            for i, x in enumerate(y for y in vision if y.kind == "block")
        ),
        unit("text", [x for x in text if x.kind != "block"], 0.0, t_rest_params),
        *(
            unit(f"text.blocks.{i}", [x], t_recompute, t_block_params)
            for i, x in enumerate(y for y in text if y.kind == "block")
        ),
    ]
    loss_comm = {"forward": 0.0, "backward": 0.0}
    loss = _loss_phase(spec, recipe, group, world, local_batch, rate, comm, loss_comm)
    optimizer_s = (
        sum(unit_params)
        / (world if sharding == "fsdp" else 1)
        * OPTIMIZER_BYTES_PER_PARAM[recipe.optimizer]
        / (cluster.device.memory.hbm_bandwidth * HBM_EFFICIENCY)
    )
    grad_norm_s = all_reduce(FP32, group).time_s if world > 1 else 0.0
    pipeline = None
    if decode_samples_per_s is not None:
        pipeline = InputPipeline(
            workers=1, batch_decode_s=local_batch / decode_samples_per_s, queue_depth=2
        )
    wl = Workload(
        name=f"{spec.name} {recipe.name}/{recipe.loss_impl} on {cluster.name}",
        world_size=world,
        local_batch=local_batch,
        strategy=sharding,
        reshard_after_forward=reshard_after_forward,
        units=tuple(units),
        loss=loss,
        grad_norm_all_reduce_s=grad_norm_s,
        optimizer_s=optimizer_s,
        input=pipeline,
    )
    model_flops = model_flops_per_sample(
        spec,
        mask_ratio=r,
        loss=recipe.loss,
        loss_impl=recipe.loss_impl,
        local_batch=local_batch,
        world_size=world,
    )
    hardware = sum(u.forward_s + u.backward_s for u in units) * rate
    hardware += _loss_train_flops(recipe, local_batch, world, spec.embed_dim, recompute=True)
    costs = StepCosts(
        model_flops_per_step=model_flops * local_batch * world,
        hardware_flops_per_rank=hardware,
        comm_bytes_per_rank=comm,
        loss_comm_bytes_per_rank=loss_comm,
        peak_flops=peak,
        utilisation=utilisation,
    )
    return wl, costs


def _loss_train_flops(recipe, b, world, e, recompute: bool = False) -> float:
    ring = recipe.loss_impl == "ring"
    return loss_flops(
        recipe.loss, recipe.loss_impl, b, world, e, recompute_logits=ring and recompute
    )


def _loss_phase(spec, recipe, group, world, b, rate, comm, loss_comm):
    """Durations of the loss phase for the recipe's loss implementation (module docstring)."""
    e = spec.embed_dim
    total = _loss_train_flops(recipe, b, world, e, recompute=True)
    shard = b * e * EMBED_BYTES
    if recipe.loss_impl == "ring":
        block_total = total / world  # W blocks of b x b per pass
        hop = neighbor_exchange(shard, group, hops=1) if world > 1 else None
        grad_hop = neighbor_exchange(shard, group, hops=1) if world > 1 else None
        if world > 1:
            loss_comm["forward"] = (world - 1) * shard  # W-1 hops of the text block
            # backward: the text blocks hop again, and each block's gradient accumulator makes
            # W hops behind it (trainer.losses.siglip_ring)
            loss_comm["backward"] = (world - 1) * shard + world * shard
            comm["p2p"] += loss_comm["forward"] + loss_comm["backward"]
        return SiglipRingLoss(
            hop_s=hop.time_s if hop else 0.0,
            grad_hop_s=grad_hop.time_s if grad_hop else 0.0,
            block_forward_s=block_total / 4 / rate,
            block_backward_s=3 * block_total / 4 / rate,
        )
    ag = all_gather(shard, group) if world > 1 else None
    rs = reduce_scatter(shard, group) if world > 1 else None
    n = 2 if recipe.loss == "softmax" else 1
    if ag is not None:
        comm["all_gather"] += n * ag.bytes_moved_per_rank
        comm["reduce_scatter"] += n * rs.bytes_moved_per_rank
        loss_comm["forward"] = n * ag.bytes_moved_per_rank
        loss_comm["backward"] = n * rs.bytes_moved_per_rank
    cls = ClipGatherLoss if recipe.loss == "softmax" else SiglipGatherLoss
    return cls(
        all_gather_s=ag.time_s if ag else 0.0,
        forward_s=total / 3 / rate,
        backward_s=2 * total / 3 / rate,
        reduce_scatter_s=rs.time_s if rs else 0.0,
    )
