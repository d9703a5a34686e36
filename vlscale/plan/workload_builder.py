"""Build the simulator's :class:`~vlscale.sim.Workload` from a model, a recipe and a cluster.

This is the only place where shapes, FLOPs, bytes and bandwidths meet; the simulator sees
durations only. Per rank and per step (b the local micro-batch):

    unit forward      Σ t(op) over the unit's forward ops          (``vlscale.costs.ops``)
    unit backward     Σ t(op) over its backward ops (+ AC recompute), FSDP copies included
    FSDP all-gather   all_gather(shard = params(unit) · bytes(param dtype) / s)
    FSDP reduce-scat. reduce_scatter(shard = params(unit) · 4 / s)        (fp32 reduce)
    DDP all-reduce    all_reduce(params(unit) · 4)                        (fp32 grads)
    HSDP all-reduce   all_reduce(params(unit) · 4 / s) across the W / s replicas, after the
                      reduce-scatter (``unit_comm``)
    loss              its op list (``vlscale.costs.step_ops``); gathers of b·e fp32 embeddings;
                      ring hops of b·e fp32: W−1 text-block hops forward, W−1 again plus W
                      gradient-accumulator hops backward
    optimizer         its op list over the rank's shard (+ gradient clipping)
    host              step overhead + synchronous data loading (CPU profiles)
    per unit          + ``unit_overhead_s`` (hooks and bookkeeping), half in forward, half in
                      backward; every collective + ``collective_overhead_s`` (its cost in the
                      step beyond the transfer: hand-off and waiting for the peer)

s is the shard degree (``RunLayout.shard_group``: W for FSDP, the shard size for HSDP). FSDP's
collectives run over all W ranks; HSDP's all-gather and reduce-scatter over its shard group's
links (NVLink when s ≤ the devices per node) and its all-reduce over the replica group's
(``vlscale.costs.topology.replica_group``: one rank per node per group when s ≥ the node).

t(op) is ``vlscale.costs.compute.op_time``: max(FLOPs / (P·e_mm), bytes / (BW·e_bw)) + launches ·
overhead, the roofline part divided by the framework efficiency γ (catalog devices: the one
constant per device kind solved from a published run, ``vlscale.plan.compute_model``; measured
profiles: fitted by ``vlscale calibrate``). With a CPU profile
``comm_overlap`` < 1 says that collectives run on the cores that compute: the part that does not
hide is added to the unit's compute.

``--utilisation u`` swaps in the old model: every matmul at u · peak, elementwise work free.

FSDP units follow ``trainer.parallelize``: every transformer block, then per tower the rest of
its parameters (stem, positions, norms, pooling head, projection) as the tower's own unit, whose
compute is the stem (before the blocks) plus head and projection (after them). One fp32 rank is
not wrapped at all (``trainer.parallelize.needs_wrapping``): no FSDP copies, no per-unit
overhead, and the optimizer works on plain tensors, not DTensors (``RunLayout.wrapped``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vlscale.costs.collectives import all_gather, all_reduce, neighbor_exchange, reduce_scatter
from vlscale.costs.compute import OpTime, RankResources
from vlscale.costs.dtypes import FP32, LOSS_BYTES, REDUCE_BYTES
from vlscale.costs.flops import model_flops_per_sample, train_flops_per_sample
from vlscale.costs.locks import image_forward_flops, synced_unit_params, trainable_layers
from vlscale.costs.memory import fsdp_units
from vlscale.costs.ops import UnitOps, unit_ops
from vlscale.costs.params import parameter_shapes
from vlscale.costs.step_ops import fsdp_copy_ops, loss_ops, optimizer_ops, ring_loss_ops
from vlscale.costs.topology import Group, Tier, make_group, replica_group
from vlscale.errors import ConfigError
from vlscale.plan.op_pricer import OpPricer
from vlscale.sim.workload import (
    ClipGatherLoss,
    InputPipeline,
    SiglipGatherLoss,
    SiglipRingLoss,
    Unit,
    Workload,
)
from vlscale.specs.hardware import ClusterSpec, DeviceSpec
from vlscale.specs.layout import RunLayout
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import BYTES_PER_ELEMENT, RecipeSpec, check_loss_impl


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
    CPU host), else ``vlscale.costs.collectives`` over the group's tiers; both through
    ``Tier.phase_time``, the one α–β formula."""

    group: Group
    measured: dict
    overhead_s: float = 0.0  # per collective call (ComputeProfile.collective_overhead_s)
    efficiency: float = 1.0  # scales every transfer time by 1 / efficiency (uncertainty draws)

    def _fit(self, kind: str, steps: int, moved: float, default):
        tier = self.measured_tier(kind)
        if tier is None:
            r = default()
            return _Timed(r.time_s / self.efficiency + self.overhead_s, r.bytes_moved_per_rank)
        t = tier.phase_time(steps, moved) / self.efficiency
        return _Timed(t + self.overhead_s, moved)

    def measured_tier(self, kind: str) -> Tier | None:
        """The profile's measured α–β for ``kind`` as a tier with n½ = 0 and η = 1, so that
        formula (1) of ``vlscale.costs.topology`` is its T = steps·α + bytes / B; None when the
        profile has none (then the group's own tiers price the collective)."""
        fit = self.measured.get(kind)
        if fit is None:
            return None
        return Tier(f"measured:{kind}", fit.bandwidth, alpha_s=fit.alpha_s)

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


COMM_KINDS = ("all_gather", "reduce_scatter", "all_reduce", "p2p")
# the phases the trainer times (trainer.step): towers forward, loss forward, loss + towers
# backward, optimizer (with the gradient-norm all-reduce), data wait; "other" is the rest
PHASES = ("forward", "loss", "backward", "optimizer", "data", "other")


@dataclass(frozen=True)
class _Groups:
    """The step's collectives by the ranks they span (``vlscale.costs.topology``): ``world`` (the
    loss, the gradient norm), ``shard`` (FSDP / HSDP all-gather and reduce-scatter: all W ranks
    for FSDP, s for HSDP, one for DDP) and ``replicas`` (the gradient all-reduce: all W for
    DDP, the W / s copies of a shard for HSDP, one for FSDP). ``exposed`` is the fraction of a
    collective that does not hide behind compute (0 on one device; 1 − ``comm_overlap``
    otherwise, > 0 on a CPU)."""

    world: _Collectives
    shard: _Collectives
    replicas: _Collectives
    exposed: float


def collective_groups(
    cluster: ClusterSpec, layout: RunLayout, prof, comm_efficiency: float
) -> _Groups:
    def coll(group: Group) -> _Collectives:
        return _Collectives(
            group, dict(prof.collectives), prof.collective_overhead_s, comm_efficiency
        )

    world = coll(make_group(cluster))
    s = layout.shard_group
    if layout.sharding == "hsdp":
        shard, replicas = coll(make_group(cluster, s)), coll(replica_group(cluster, s))
    else:  # one group is the whole world, the other a single rank
        single = coll(make_group(cluster, 1))
        shard, replicas = (world, single) if s > 1 else (single, world)
    exposed = 1 - (1.0 if layout.devices == 1 else prof.comm_overlap)
    return _Groups(world, shard, replicas, exposed)


@dataclass(frozen=True)
class _Comm:
    """One unit's collectives: their times (``Unit`` fields), the bytes each moves per rank by
    kind, and the (forward, backward) time they add to compute where they do not hide."""

    times: dict[str, float] = field(default_factory=dict)
    moved: dict[str, float] = field(default_factory=dict)
    exposed_forward_s: float = 0.0
    exposed_backward_s: float = 0.0


@dataclass(frozen=True)
class _LossCosts:
    """The loss phase, its (forward, backward) time on the compute stream, and its traffic."""

    phase: ClipGatherLoss | SiglipGatherLoss | SiglipRingLoss
    forward_s: float
    backward_s: float
    moved: dict[str, float]  # bytes per rank by collective kind
    per_pass: dict[str, float]  # {"forward": .., "backward": ..} bytes per rank


def build_workload(
    spec: ModelSpec,
    recipe: RecipeSpec,
    cluster: ClusterSpec,
    layout: RunLayout,
    *,
    local_batch: int,
    resources: RankResources,
    framework_efficiency: float = 1.0,
    grad_clip: bool = True,
    decode_samples_per_s: float | None = None,
    comm_efficiency: float = 1.0,
) -> tuple[Workload, StepCosts]:
    """The durations of one step on one rank (module docstring) and the step's totals: the
    units (forward, backward, their collectives) -> the loss -> the optimizer and the host ->
    the workload -> the step's FLOPs and bytes.

    ``layout`` is resolved (``RunLayout.resolved``); ``local_batch`` is the micro-batch."""
    _check_world(layout, cluster)
    precision = compute_dtype(cluster.device, layout.precision)
    prof = resources.profile
    price = OpPricer(resources, framework_efficiency)
    groups = collective_groups(cluster, layout, prof, comm_efficiency)
    comm = dict.fromkeys(COMM_KINDS, 0.0)
    phases = dict.fromkeys(PHASES, 0.0)

    params = unit_params(spec)
    trained = synced_unit_params(spec, layout)  # the unit's trainable parameters (locks)
    trainable = trainable_layers(spec, layout, recipe.mask_ratio) if layout.locks else None
    units = _build_units(
        spec,
        recipe,
        layout,
        (params, trained, trainable),
        groups,
        price,
        prof,
        precision,
        local_batch,
    )
    for unit, moved in units:
        _accumulate(comm, moved)
        phases["forward"] += unit.forward_s
        phases["backward"] += unit.backward_s

    loss = _loss_costs(spec, recipe, groups, local_batch, price, layout)
    _accumulate(comm, loss.moved)
    phases["loss"] = loss.forward_s
    phases["backward"] += loss.backward_s

    total_params = sum(trained.values())
    optimizer_s = _optimizer_time(spec, recipe, cluster, layout, price, grad_clip, total_params)
    grad_norm_s = groups.world.all_reduce(FP32).time_s if layout.devices > 1 else 0.0
    phases["optimizer"] = optimizer_s + grad_norm_s
    phases["data"] = prof.data_s_per_sample * local_batch
    phases["other"] = prof.step_overhead_s
    wl = Workload(
        name=f"{spec.name} {recipe.name}/{recipe.loss_impl} on {cluster.name}",
        world_size=layout.devices,
        local_batch=local_batch,
        # HSDP runs FSDP's schedule: gather per unit, one gradient sync per unit after backward
        strategy="ddp" if layout.sharding == "ddp" else "fsdp",
        reshard_after_forward=layout.reshard_after_forward,
        units=tuple(unit for unit, _ in units),
        loss=loss.phase,
        grad_norm_all_reduce_s=grad_norm_s,
        optimizer_s=optimizer_s,
        host_s=phases["data"] + phases["other"],
        input=_input_pipeline(local_batch, decode_samples_per_s),
    )
    peak = resources.peak(precision)
    costs = _step_costs(
        spec, recipe, layout, local_batch, price, peak, comm, loss.per_pass, trainable
    )
    return wl, dataclasses.replace(costs, phases_s=phases)


def _check_world(layout: RunLayout, cluster: ClusterSpec) -> None:
    if layout.devices != cluster.num_devices:
        raise ConfigError(
            "devices", f"the layout has {layout.devices} ranks, the cluster {cluster.num_devices}"
        )


def _build_units(
    spec, recipe, layout: RunLayout, counts, groups: _Groups, price, prof, precision, local_batch
) -> list[tuple[Unit, dict[str, float]]]:
    """Every FSDP unit timed with its collectives, in forward order, with the bytes each moves
    per rank by collective kind. ``counts`` = (parameters per unit, trainable parameters per
    unit, the trainable layers or None): a unit with no trainable parameter is frozen (forward
    only); with precomputed image embeddings the image tower is not in the step."""
    params, trained, trainable = counts
    out = []
    for ops in unit_ops(
        spec,
        local_batch=local_batch,
        mask_ratio=recipe.mask_ratio,
        precision=precision,
        checkpointing=layout.checkpointing,
        trainable=trainable,
    ):
        if layout.precomputed_image and ops.name.split(".")[0] == "visual":
            continue
        frozen = trained[ops.name] == 0
        comm = unit_comm(params[ops.name], groups, layout, trained[ops.name])
        overhead_s = prof.unit_overhead_s if layout.wrapped else 0.0
        unit = timed_unit(ops, params[ops.name], comm, layout, price, overhead_s, frozen)
        out.append((unit, comm.moved))
    return out


def _step_costs(
    spec, recipe, layout: RunLayout, local_batch, price, peak, comm, loss_per_pass, trainable
) -> StepCosts:
    """The step's totals: model FLOPs of all ranks (a locked layer's forward only; none of a
    precomputed image tower), the FLOPs one rank executes and the rate its matmul work runs
    at, and the bytes it moves (``comm``, ``loss_per_pass``)."""
    model_flops = _model_flops_per_sample(
        spec,
        mask_ratio=recipe.mask_ratio,
        loss=recipe.loss,
        loss_impl=recipe.loss_impl,
        local_batch=local_batch,
        world_size=layout.devices,
        trainable=trainable,
    ) - (image_forward_flops(spec) if layout.precomputed_image else 0.0)
    # FLOPs as FlopCounterMode counts them (recompute included) over the time matmuls take:
    # the rate the matmul work runs at, never below MFU
    hardware = price.total(lambda t: t.op.flops)
    matmul_s = price.total(lambda t: t.time_s, lambda t: t.op.flops > 0)
    return StepCosts(
        model_flops_per_step=model_flops * local_batch * layout.devices,
        hardware_flops_per_rank=hardware,
        comm_bytes_per_rank=comm,
        loss_comm_bytes_per_rank=loss_per_pass,
        peak_flops=peak,
        utilisation=hardware / (matmul_s * peak) if matmul_s > 0 else 0.0,
        op_times=price.table,
    )


def unit_params(spec: ModelSpec) -> dict[str, int]:
    """Parameters per unit of ``unit_ops`` by name; the root's logit_scale / logit_bias (a few
    bytes) ride with the image tower's own unit, the first in forward order."""
    units = fsdp_units(spec)
    root = units.pop("root")
    units["visual"] += root
    return units


def unit_comm(params: int, groups: _Groups, layout: RunLayout, grads: int | None = None) -> _Comm:
    """A unit's collectives: DDP all-reduces its fp32 gradients in backward; FSDP all-gathers
    its parameters (again in backward when it reshards after forward) and reduce-scatters its
    fp32 gradients; HSDP does FSDP's inside its shard group of s ranks, then all-reduces the
    reduce-scattered fp32 shard (params / s) across the W / s replicas, on the same stream
    right after the reduce-scatter (FSDP2), so the two make the unit's one gradient sync.
    ``grads``: the unit's trainable parameters (None: all), whose gradients alone are synced;
    a unit with none (all its parameters locked) is gathered for its forward only."""
    if layout.devices == 1:
        return _Comm()
    exposed = groups.exposed
    grads = params if grads is None else grads
    if grads == 0:
        return _frozen_unit_comm(params, groups, layout)
    if layout.sharding == "ddp":
        ar = groups.replicas.all_reduce(grads * REDUCE_BYTES)
        moved = {"all_reduce": ar.bytes_moved_per_rank}
        return _Comm({"all_reduce_s": ar.time_s}, moved, 0.0, exposed * ar.time_s)
    s = layout.shard_group
    none = _Timed(0.0, 0.0)
    sharded = s > 1
    ag = groups.shard.all_gather(params * param_bytes(layout) / s) if sharded else none
    rs = groups.shard.reduce_scatter(grads * REDUCE_BYTES / s) if sharded else none
    replicated = layout.replicas > 1
    ar = groups.replicas.all_reduce(grads * REDUCE_BYTES / s) if replicated else none
    gathers = 1 if not layout.reshard_after_forward else 2
    moved = {
        "all_gather": gathers * ag.bytes_moved_per_rank,
        "reduce_scatter": rs.bytes_moved_per_rank,
    }
    if replicated:
        moved["all_reduce"] = ar.bytes_moved_per_rank
    sync_s = rs.time_s + ar.time_s
    return _Comm(
        {"all_gather_s": ag.time_s, "reduce_scatter_s": sync_s},
        moved,
        exposed * ag.time_s,
        exposed * ((gathers - 1) * ag.time_s + sync_s),
    )


def _frozen_unit_comm(params: int, groups: _Groups, layout: RunLayout) -> _Comm:
    """A locked unit: one forward all-gather under FSDP / HSDP, nothing under DDP."""
    s = layout.shard_group
    if layout.sharding == "ddp" or s == 1:
        return _Comm()
    ag = groups.shard.all_gather(params * param_bytes(layout) / s)
    moved = {"all_gather": ag.bytes_moved_per_rank}
    return _Comm({"all_gather_s": ag.time_s}, moved, groups.exposed * ag.time_s, 0.0)


def param_bytes(layout: RunLayout) -> int:
    """Bytes of a gathered parameter: the layout's precision (fp32 matmuls may run in tf32;
    the parameters stay fp32)."""
    return BYTES_PER_ELEMENT[layout.precision]


def timed_unit(
    ops: UnitOps,
    params: int,
    comm: _Comm,
    layout: RunLayout,
    price: OpPricer,
    overhead_s: float,
    frozen: bool = False,
) -> Unit:
    """The unit's forward and backward time: its ops (with FSDP's copies around the
    collectives), half the per-unit overhead each, and the communication that does not hide.
    A ``frozen`` unit has no backward at all (no ops, copies, hooks or collectives)."""
    fwd_ops, bwd_ops = list(ops.forward), list(ops.backward)
    if layout.sharding != "ddp" and layout.wrapped:
        copy_f, copy_b = fsdp_copy_ops(
            params, layout.shard_group, param_bytes(layout), layout.reshard_after_forward
        )
        fwd_ops, bwd_ops = copy_f + fwd_ops, bwd_ops + ([] if frozen else copy_b)
    fwd = price(fwd_ops) + overhead_s / 2 + comm.exposed_forward_s
    bwd = 0.0 if frozen else price(bwd_ops) + overhead_s / 2 + comm.exposed_backward_s
    return Unit(name=ops.name, forward_s=fwd, backward_s=bwd, frozen=frozen, **comm.times)


def _accumulate(total: dict[str, float], moved: dict[str, float]) -> None:
    for kind, n in moved.items():
        total[kind] += n


def _loss_costs(spec, recipe, groups: _Groups, b, price, layout) -> _LossCosts:
    """The loss phase for the recipe's implementation (module docstring); it spans all W ranks
    whatever the sharding."""
    if recipe.loss_impl == "ring":
        return _ring_loss(spec.embed_dim, groups, b, price, layout)
    return _gather_loss(recipe.loss, spec.embed_dim, groups, b, price, layout)


def _ring_loss(e, groups: _Groups, b, price, layout) -> _LossCosts:
    """The chunked sigmoid loss: W blocks per pass, each one W-th of the blocks' ops and of the
    normalisation; W−1 text-block hops forward; backward the text blocks hop again and each
    block's gradient accumulator makes W hops behind it (``trainer.losses.siglip_ring``). Hops
    that do not hide (a CPU) lengthen each block. The W blocks have the same ops (block 0's,
    ``ring_loss_ops(b, 1, e)``), priced once and repeated: O(1) in W but for the sums."""
    world, coll, exposed = layout.devices, groups.world, groups.exposed
    ops = ring_loss_ops(b, 1, e)
    block_f = price.repeat(ops.blocks_forward, world) / world
    block_b = price.repeat(ops.blocks_backward, world) / world
    outside_f, outside_b = price(ops.outside_forward), price(ops.outside_backward)
    shard = b * e * LOSS_BYTES
    hop = coll.hop(shard).time_s if world > 1 else 0.0
    per_pass = {"forward": 0.0, "backward": 0.0}
    moved: dict[str, float] = {}
    if world > 1:
        per_pass = {"forward": (world - 1) * shard, "backward": (world - 1) * shard + world * shard}
        moved = {"p2p": per_pass["forward"] + per_pass["backward"]}
    phase = SiglipRingLoss(
        hop_s=hop,
        grad_hop_s=hop,
        block_forward_s=block_f + (outside_f / world) + exposed * hop * (world - 1) / world,
        block_backward_s=block_b + (outside_b / world) + exposed * hop * (2 * world - 1) / world,
    )
    return _LossCosts(
        phase, world * phase.block_forward_s, world * phase.block_backward_s, moved, per_pass
    )


def _model_flops_per_sample(
    spec: ModelSpec,
    *,
    mask_ratio,
    loss,
    loss_impl,
    local_batch: int,
    world_size: int,
    trainable: frozenset[tuple[str, str]] | None = None,
) -> float:
    """``vlscale.costs.flops.model_flops_per_sample``, the same float, without writing out a
    ring's W blocks: ``loss_flops`` sums its op list with ``sum``; here the same values in the
    same order (block 0's FLOPs, W times) go through the same ``sum``."""
    kw = dict(mask_ratio=mask_ratio, loss=loss, loss_impl=loss_impl, local_batch=local_batch)
    kw |= {"trainable": trainable}
    if loss_impl != "ring":
        return model_flops_per_sample(spec, world_size=world_size, **kw)
    check_loss_impl(loss, loss_impl)
    if local_batch < 1 or world_size < 1:
        return model_flops_per_sample(spec, world_size=world_size, **kw)  # its error
    one = ring_loss_ops(local_batch, 1, spec.embed_dim)
    fwd = [o.flops for o in one.blocks_forward if o.phase != "recompute"]
    bwd = [o.flops for o in one.blocks_backward if o.phase != "recompute"]
    flops = [
        *(o.flops for o in one.outside_forward),
        *(fwd * world_size),
        *(bwd * world_size),
        *(o.flops for o in one.outside_backward),
    ]
    towers = train_flops_per_sample(spec, mask_ratio, trainable=trainable)
    return towers + sum(flops) / local_batch


def _gather_loss(loss, e, groups: _Groups, b, price, layout) -> _LossCosts:
    """The gather implementations: all-gather the b·e fp32 embeddings (images and texts for
    softmax, texts for sigmoid) and reduce-scatter their gradients in backward."""
    world, coll, exposed = layout.devices, groups.world, groups.exposed
    fwd_ops, bwd_ops = loss_ops(loss, "gather", b, world, e)
    shard = b * e * LOSS_BYTES
    ag = coll.all_gather(shard) if world > 1 else None
    rs = coll.reduce_scatter(shard) if world > 1 else None
    n = 2 if loss == "softmax" else 1
    comm_s = n * (ag.time_s + rs.time_s) if ag else 0.0
    moved: dict[str, float] = {}
    per_pass = {"forward": 0.0, "backward": 0.0}
    if ag is not None:
        moved = {
            "all_gather": n * ag.bytes_moved_per_rank,
            "reduce_scatter": n * rs.bytes_moved_per_rank,
        }
        per_pass = {"forward": moved["all_gather"], "backward": moved["reduce_scatter"]}
    cls = ClipGatherLoss if loss == "softmax" else SiglipGatherLoss
    fwd = price(fwd_ops) + exposed * comm_s / 2
    bwd = price(bwd_ops) + exposed * comm_s / 2
    phase = cls(
        all_gather_s=ag.time_s if ag else 0.0,
        forward_s=fwd,
        backward_s=bwd,
        reduce_scatter_s=rs.time_s if rs else 0.0,
    )
    gathers = (phase.all_gather_s * n, phase.reduce_scatter_s * n) if exposed else (0.0, 0.0)
    return _LossCosts(phase, fwd + gathers[0], bwd + gathers[1], moved, per_pass)


def _optimizer_time(spec, recipe, cluster, layout, price, grad_clip, params) -> float:
    """The optimizer step (and gradient clipping) over the rank's shard of the parameters;
    foreach kernels on accelerators, torch's default."""
    shard = layout.shard_group
    tensors = len(parameter_shapes(spec))
    foreach = cluster.device.kind != "cpu"
    ops = optimizer_ops(
        params / shard, tensors, recipe.optimizer, grad_clip, foreach, dtensor=layout.wrapped
    )
    return price(ops)


def _input_pipeline(local_batch: int, decode_samples_per_s: float | None) -> InputPipeline | None:
    """One decode worker feeding a queue of two batches, when a decode rate is given."""
    if decode_samples_per_s is None:
        return None
    return InputPipeline(
        workers=1, batch_decode_s=local_batch / decode_samples_per_s, queue_depth=2
    )


def compute_dtype(device: DeviceSpec, precision: str) -> str:
    """The dtype the matmuls run in: fp32 training runs them in tf32 where the device has it
    (PyTorch's default for convolutions, and what ``torch.backends.cuda.matmul.allow_tf32``
    enables for matmuls); else the layout's precision, which the device must have."""
    if precision == "fp32" and device.peak_flops.tf32 is not None:
        return "tf32"
    if getattr(device.peak_flops, precision) is None:
        have = [d for d in ("bf16", "fp16", "fp32") if getattr(device.peak_flops, d) is not None]
        raise ConfigError(
            "precision", f"{device.name} has no {precision} tensor path; use one of {have}"
        )
    return precision
