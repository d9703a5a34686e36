"""Build the simulator's :class:`~vlscale.sim.Workload` from a model, a recipe and a cluster.

This is the only place where shapes, FLOPs, bytes and bandwidths meet; the simulator sees
durations only. Per rank and per step (b the local micro-batch):

    unit forward      Σ t(op) over the unit's forward ops          (``vlscale.costs.ops``)
    unit backward     Σ t(op) over its backward ops (+ AC recompute), FSDP copies included
    FSDP all-gather   all_gather(shard = params(unit) · bytes(param dtype) / W)
    FSDP reduce-scat. reduce_scatter(shard = params(unit) · 4 / W)        (fp32 reduce)
    DDP all-reduce    all_reduce(params(unit) · 4)                        (fp32 grads)
    loss              its op list (``vlscale.costs.step_ops``); gathers of b·e fp32 embeddings;
                      ring hops of b·e fp32: W−1 text-block hops forward, W−1 again plus W
                      gradient-accumulator hops backward
    optimizer         its op list over the rank's shard (+ gradient clipping)
    host              step overhead + synchronous data loading (CPU profiles)
    per unit          + ``unit_overhead_s`` (hooks and bookkeeping), half in forward, half in
                      backward; every collective + ``collective_overhead_s`` (its cost in the
                      step beyond the transfer: hand-off and waiting for the peer)

t(op) is ``vlscale.costs.compute.op_time``: max(FLOPs / (P·e_mm), bytes / (BW·e_bw)) + launches ·
overhead, the roofline part divided by the framework efficiency γ (catalog devices: the one
constant per device kind solved from a published run, ``vlscale.plan.utilisation``; measured
profiles: fitted by ``vlscale calibrate``). With a CPU profile
``comm_overlap`` < 1 says that collectives run on the cores that compute: the part that does not
hide is added to the unit's compute.

``--utilisation u`` swaps in the old model: every matmul at u · peak, elementwise work free.

FSDP units follow ``trainer.parallelize``: every transformer block, then per tower the rest of
its parameters (stem, positions, norms, pooling head, projection) as the tower's own unit, whose
compute is the stem (before the blocks) plus head and projection (after them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlscale.costs.collectives import all_gather, all_reduce, neighbor_exchange, reduce_scatter
from vlscale.costs.compute import OpTime, RankResources, op_time
from vlscale.costs.dtypes import FP32, LOSS_BYTES, REDUCE_BYTES
from vlscale.costs.flops import model_flops_per_sample
from vlscale.costs.memory import fsdp_unit_params
from vlscale.costs.ops import Op, unit_ops
from vlscale.costs.params import parameter_shapes
from vlscale.costs.step_ops import fsdp_copy_ops, loss_ops, optimizer_ops
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


@dataclass(frozen=True)
class StepCosts:
    """What one step does per rank, besides its durations (for reports and MFU)."""

    model_flops_per_step: float  # model FLOPs of the whole step, all ranks (no recompute)
    hardware_flops_per_rank: float  # FLOPs one rank executes, recompute included
    comm_bytes_per_rank: dict[str, float]  # bytes moved per rank by collective kind
    loss_comm_bytes_per_rank: dict[str, float]  # loss phase: {"forward": .., "backward": ..}
    peak_flops: float  # dense peak of the compute dtype, per device
    utilisation: float  # hardware FLOPs / (compute time · peak): the achieved fraction
    op_times: list[OpTime] = field(default_factory=list, repr=False)  # one micro-step
    phases_s: dict[str, float] = field(default_factory=dict)  # forward/loss/backward/opt/host


@dataclass(frozen=True)
class _Timed:
    """A collective's time and the bytes the busiest rank moves (``CollectiveResult``-like)."""

    time_s: float
    bytes_moved_per_rank: float


@dataclass(frozen=True)
class _Collectives:
    """Collective times: the profile's measured per-collective α–β where it has one (gloo on a
    CPU host), else ``vlscale.costs.collectives`` over the group's tiers."""

    group: Group
    measured: dict
    overhead_s: float = 0.0  # per collective call (ComputeProfile.collective_overhead_s)
    efficiency: float = 1.0  # scales every transfer time by 1 / efficiency (uncertainty draws)

    def _fit(self, kind: str, steps: int, moved: float, default):
        fit = self.measured.get(kind)
        if fit is None:
            r = default()
            return _Timed(r.time_s / self.efficiency + self.overhead_s, r.bytes_moved_per_rank)
        t = (steps * fit.alpha_s + moved / fit.bandwidth) / self.efficiency
        return _Timed(t + self.overhead_s, moved)

    def all_gather(self, shard: float):
        w = self.group.size
        return self._fit(
            "all_gather", w - 1, (w - 1) * shard, lambda: all_gather(shard, self.group)
        )

    def reduce_scatter(self, shard: float):
        w = self.group.size
        return self._fit(
            "reduce_scatter", w - 1, (w - 1) * shard, lambda: reduce_scatter(shard, self.group)
        )

    def all_reduce(self, buffer: float):
        w = self.group.size
        return self._fit(
            "all_reduce",
            2 * (w - 1),
            2 * (w - 1) / w * buffer,
            lambda: all_reduce(buffer, self.group),
        )

    def hop(self, size: float):
        return self._fit("p2p", 1, size, lambda: neighbor_exchange(size, self.group, hops=1))


@dataclass
class _Pricer:
    """Prices ops on one rank and remembers them (the ``--ops`` table)."""

    res: RankResources
    efficiency: float  # framework efficiency γ
    table: list[OpTime] = field(default_factory=list)

    def __call__(self, ops) -> float:
        total = 0.0
        for op in ops:
            t = op_time(op, self.res, self.efficiency)
            self.table.append(t)
            total += t.time_s
        return total


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
    resources: RankResources,
    framework_efficiency: float = 1.0,
    grad_clip: bool = True,
    decode_samples_per_s: float | None = None,
    comm_efficiency: float = 1.0,
) -> tuple[Workload, StepCosts]:
    """The durations of one step on one rank (module docstring) and the step's totals."""
    world = cluster.num_devices
    prof = resources.profile
    price = _Pricer(resources, framework_efficiency)
    # tf32 is how fp32 matmuls run on Ampere+; the parameters themselves stay fp32
    param_bytes = BYTES_PER_ELEMENT["fp32" if precision == "tf32" else precision]
    r = recipe.mask_ratio
    comm = dict.fromkeys(("all_gather", "reduce_scatter", "all_reduce", "p2p"), 0.0)
    hidden = 1.0 if world == 1 else prof.comm_overlap  # collectives that hide behind compute
    coll = _Collectives(group, dict(prof.collectives), prof.collective_overhead_s, comm_efficiency)

    def comm_for(params: int) -> tuple[dict[str, float], float, float]:
        """The unit's collective times and the (forward, backward) time they do not hide."""
        if world == 1:
            return {}, 0.0, 0.0
        if sharding == "ddp":
            ar = coll.all_reduce(params * REDUCE_BYTES)
            comm["all_reduce"] += ar.bytes_moved_per_rank
            return {"all_reduce_s": ar.time_s}, 0.0, (1 - hidden) * ar.time_s
        ag = coll.all_gather(params * param_bytes / world)
        rs = coll.reduce_scatter(params * REDUCE_BYTES / world)
        gathers = 1 if not reshard_after_forward else 2
        comm["all_gather"] += gathers * ag.bytes_moved_per_rank
        comm["reduce_scatter"] += rs.bytes_moved_per_rank
        exposed = (1 - hidden) * ag.time_s, (1 - hidden) * ((gathers - 1) * ag.time_s + rs.time_s)
        return {"all_gather_s": ag.time_s, "reduce_scatter_s": rs.time_s}, *exposed

    op_units = unit_ops(
        spec,
        local_batch=local_batch,
        mask_ratio=r,
        precision=precision,
        checkpointing=checkpointing,
    )
    unit_params = _unit_params_in_order(spec)
    units: list[Unit] = []
    # the phases the trainer times (trainer.step): towers forward, loss forward, loss + towers
    # backward, optimizer (with the gradient-norm all-reduce), data wait; "other" is the rest
    phases = dict.fromkeys(("forward", "loss", "backward", "optimizer", "data", "other"), 0.0)
    for ops, params in zip(op_units, unit_params, strict=True):
        collectives, fwd_exposed, bwd_exposed = comm_for(params)
        fwd_ops, bwd_ops = list(ops.forward), list(ops.backward)
        if sharding == "fsdp":
            copy_f, copy_b = fsdp_copy_ops(params, world, param_bytes, reshard_after_forward)
            fwd_ops, bwd_ops = copy_f + fwd_ops, bwd_ops + copy_b
        fwd = price(fwd_ops) + prof.unit_overhead_s / 2 + fwd_exposed
        bwd = price(bwd_ops) + prof.unit_overhead_s / 2 + bwd_exposed
        phases["forward"] += fwd
        phases["backward"] += bwd
        units.append(Unit(name=ops.name, forward_s=fwd, backward_s=bwd, **collectives))

    loss_comm = {"forward": 0.0, "backward": 0.0}
    loss, loss_s = _loss_phase(
        spec, recipe, coll, world, local_batch, price, comm, loss_comm, 1 - hidden
    )
    phases["loss"], phases["backward"] = loss_s[0], phases["backward"] + loss_s[1]
    shard = world if sharding == "fsdp" else 1
    tensors = len(parameter_shapes(spec))
    foreach = cluster.device.kind != "cpu"  # torch's default: foreach kernels on accelerators
    optimizer_s = price(
        optimizer_ops(sum(unit_params) / shard, tensors, recipe.optimizer, grad_clip, foreach)
    )
    grad_norm_s = coll.all_reduce(FP32).time_s if world > 1 else 0.0
    phases["optimizer"] = optimizer_s + grad_norm_s
    phases["data"] = prof.data_s_per_sample * local_batch
    phases["other"] = prof.step_overhead_s
    host_s = phases["data"] + phases["other"]
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
        host_s=host_s,
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
    # FLOPs as FlopCounterMode counts them (recompute included) over the time matmuls take:
    # the rate the matmul work runs at, never below MFU
    hardware = sum(t.op.flops for t in price.table)
    matmul_s = sum(t.time_s for t in price.table if t.op.flops > 0)
    peak = resources.peak(precision)
    costs = StepCosts(
        model_flops_per_step=model_flops * local_batch * world,
        hardware_flops_per_rank=sum(t.op.flops for t in price.table),
        comm_bytes_per_rank=comm,
        loss_comm_bytes_per_rank=loss_comm,
        peak_flops=peak,
        utilisation=hardware / (matmul_s * peak) if matmul_s > 0 else 0.0,
        op_times=price.table,
        phases_s=phases,
    )
    return wl, costs


def _unit_params_in_order(spec: ModelSpec) -> list[int]:
    """Parameters per unit in ``unit_ops`` order: visual rest, visual blocks, text rest, text
    blocks (``fsdp_unit_params`` lists blocks first and the root's logit parameters last)."""
    per = fsdp_unit_params(spec)
    v_depth, t_depth = spec.vision.trunk.depth, spec.text.trunk.depth
    v_blocks, t_blocks = per[:v_depth], per[v_depth : v_depth + t_depth]
    v_rest, t_rest, root = per[v_depth + t_depth :]
    # the root's logit_scale / logit_bias ride with the first unit (a few bytes)
    return [v_rest + root, *v_blocks, t_rest, *t_blocks]


def _loss_phase(spec, recipe, coll, world, b, price, comm, loss_comm, exposed):
    """Durations of the loss phase for the recipe's loss implementation (module docstring);
    returns the phase and its (forward, backward) time on the compute stream, with the
    communication that does not hide (all of it when ``exposed``: a CPU)."""
    e = spec.embed_dim
    fwd_ops, bwd_ops = loss_ops(recipe.loss, recipe.loss_impl, b, world, e)
    shard = b * e * LOSS_BYTES
    if recipe.loss_impl == "ring":
        blocks_f = _per_block(fwd_ops)
        blocks_b = _per_block(bwd_ops)
        block_f, block_b = price(blocks_f[1]) / world, price(blocks_b[1]) / world
        head_f, head_b = price(blocks_f[0]), price(blocks_b[0])
        hop = coll.hop(shard).time_s if world > 1 else 0.0
        if world > 1:
            loss_comm["forward"] = (world - 1) * shard  # W-1 hops of the text block
            # backward: the text blocks hop again, and each block's gradient accumulator makes
            # W hops behind it (trainer.losses.siglip_ring)
            loss_comm["backward"] = (world - 1) * shard + world * shard
            comm["p2p"] += loss_comm["forward"] + loss_comm["backward"]
        # hops that do not hide (CPU) lengthen each block
        extra_f = exposed * hop * (world - 1) / world
        extra_b = exposed * hop * (2 * world - 1) / world
        phase = SiglipRingLoss(
            hop_s=hop,
            grad_hop_s=hop,
            block_forward_s=block_f + (head_f / world) + extra_f,
            block_backward_s=block_b + (head_b / world) + extra_b,
        )
        return phase, (world * phase.block_forward_s, world * phase.block_backward_s)
    ag = coll.all_gather(shard) if world > 1 else None
    rs = coll.reduce_scatter(shard) if world > 1 else None
    n = 2 if recipe.loss == "softmax" else 1
    comm_s = n * (ag.time_s + rs.time_s) if ag else 0.0
    if ag is not None:
        comm["all_gather"] += n * ag.bytes_moved_per_rank
        comm["reduce_scatter"] += n * rs.bytes_moved_per_rank
        loss_comm["forward"] = n * ag.bytes_moved_per_rank
        loss_comm["backward"] = n * rs.bytes_moved_per_rank
    cls = ClipGatherLoss if recipe.loss == "softmax" else SiglipGatherLoss
    fwd = price(fwd_ops) + exposed * comm_s / 2
    bwd = price(bwd_ops) + exposed * comm_s / 2
    phase = cls(
        all_gather_s=ag.time_s if ag else 0.0,
        forward_s=fwd,
        backward_s=bwd,
        reduce_scatter_s=rs.time_s if rs else 0.0,
    )
    gathers = (phase.all_gather_s * n, phase.reduce_scatter_s * n) if exposed else (0.0, 0.0)
    return phase, (fwd + gathers[0], bwd + gathers[1])


def _per_block(ops: list[Op]) -> tuple[list[Op], list[Op]]:
    """(ops outside the ring's blocks, ops of all W blocks)."""
    inside = [o for o in ops if ".block" in o.name]
    return [o for o in ops if ".block" not in o.name], inside
