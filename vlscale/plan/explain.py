"""Where each number of ``vlscale plan`` comes from (``vlscale plan --explain``).

``QUANTITIES`` names, for every row of the plan table and every column of its breakdown, the
function that computes it (``module.qualname``; a test imports each one) and its formula in one
line. :func:`collective_rows` lists the step's collectives by kind: the group each runs on, the
bytes of one call, the calls per step and their raw time, i.e. before any of it hides behind
compute (the breakdown shows only the exposed part). Times and bytes come from the same
``vlscale.plan.workload_builder`` calls that priced the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlscale.costs import collectives as costs_collectives
from vlscale.costs.dtypes import FP32, LOSS_BYTES, REDUCE_BYTES
from vlscale.costs.topology import Group


@dataclass(frozen=True)
class Explanation:
    quantity: str
    function: str  # module.qualname
    formula: str


def _e(quantity: str, function: str, formula: str) -> Explanation:
    return Explanation(quantity, function, formula)


_SIM = "vlscale.sim.result.partition_window"
_EXPOSED = "no compute and no stall on rank 0 while it runs (split equally when kinds overlap)"

QUANTITIES: tuple[Explanation, ...] = (
    _e(
        "layout",
        "vlscale.plan.planner.resolve_layout",
        "the config's RunLayout with the device's precision, node size and HSDP shard size",
    ),
    _e(
        "step time",
        "vlscale.plan.planner._simulate_step",
        "T = simulated step of build_workload's durations (compute, collective and P2P streams)"
        " + (k − 1) · T(micro-step without gradient sync) under k-step accumulation",
    ),
    _e(
        "op time (in the step)",
        "vlscale.costs.compute.op_time",
        "t(op) = max(FLOPs / (P · e_mm(shape)), bytes / (BW · e_bw)) / γ + launches · overhead",
    ),
    _e(
        "collective time",
        "vlscale.costs.topology.Tier.phase_time",
        "T(S, D) = S · α + (D + S · n½) / (B · η) per tier (measured profile: n½ = 0, η = 1)",
    ),
    _e(
        "collective algorithm",
        "vlscale.costs.collectives.all_gather",
        "the fastest of NCCL's ring / PAT / tree / NVLS schedules (GPU), all torus axes (TPU)",
    ),
    _e("samples/s", "vlscale.plan.planner.plan", "B / T; per device B / (T · W)"),
    _e(
        "MFU",
        "vlscale.plan.planner.plan",
        "model FLOPs per step / (T · W · peak(dtype)), model FLOPs without recompute",
    ),
    _e(
        "model FLOPs per sample",
        "vlscale.costs.flops.model_flops_per_sample",
        "towers forward + backward (3 · F, FLIP-masked) + the loss's matmul FLOPs / b",
    ),
    _e(
        "matmul utilisation",
        "vlscale.plan.workload_builder._step_costs",
        "hardware FLOPs per rank / (time of the ops with FLOPs · peak(dtype))",
    ),
    _e(
        "compute model",
        "vlscale.plan.compute_model.resolve_compute",
        "--utilisation u, else the device's measured profile, else catalog curves with γ",
    ),
    _e("steps", "vlscale.costs.run.steps_for_samples", "⌈samples / B⌉"),
    _e("wall time", "vlscale.costs.run.plan_run", "steps · T / goodput"),
    _e(
        "goodput",
        "vlscale.costs.run.goodput",
        "1 / (1 + δ/τ + (τ/2 + R)/M), τ = √(2δM) (Young 1974), M = MTBF per device / W",
    ),
    _e("device-hours", "vlscale.costs.run.plan_run", "W · wall time / 3600 s"),
    _e("cost", "vlscale.costs.run.plan_run", "device-hours · price per device-hour"),
    _e(
        "memory per device",
        "vlscale.costs.memory.estimate_memory",
        "params + grads + optimizer + master weights (each / s) + FSDP buffers + activations"
        " + loss buffers + overhead",
    ),
    _e(
        "largest local batch",
        "vlscale.costs.memory.max_local_batch",
        "largest b with estimate_memory(b) ≤ device memory (exponential, then binary search)",
    ),
    _e(
        "loss buffers",
        "vlscale.costs.loss_buffers.loss_buffer_bytes",
        "fp32 bytes saved for backward + what backward allocates on top (loss_buffer_parts)",
    ),
    _e("breakdown: compute", _SIM, "time any compute op runs on rank 0"),
    _e("breakdown: data_stall", _SIM, "no compute on rank 0 while it waits for a batch"),
    _e("breakdown: all_gather", _SIM, f"all-gathers: {_EXPOSED}"),
    _e("breakdown: reduce_scatter", _SIM, f"reduce-scatters: {_EXPOSED}"),
    _e("breakdown: all_reduce", _SIM, f"all-reduces: {_EXPOSED}"),
    _e("breakdown: p2p", _SIM, f"ring hops: {_EXPOSED}"),
    _e("breakdown: idle", _SIM, "none of the above (waiting for a straggler at a barrier)"),
)


@dataclass
class _Kind:
    """One row: a collective kind for one purpose on one group, summed over its calls."""

    kind: str
    purpose: str
    coll: Any  # workload_builder._Collectives
    calls: int = 0
    message_bytes: float = 0.0
    time_s: float = 0.0
    algorithms: list[str] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)  # the links the chosen algorithms use

    def add(self, message: float, times: int = 1) -> None:
        """``times`` calls of ``message`` bytes (collectives.py's convention: the shard for
        all-gather / reduce-scatter, the buffer for all-reduce, one hop for p2p)."""
        method = "hop" if self.kind == "p2p" else self.kind
        self.calls += times
        self.message_bytes += times * message
        self.time_s += times * getattr(self.coll, method)(message).time_s
        algorithm, tiers = _algorithm(self.kind, message, self.coll)
        for seen, new in ((self.algorithms, [algorithm]), (self.tiers, tiers)):
            seen.extend(x for x in new if x not in seen)

    def row(self) -> dict[str, Any]:
        group = self.coll.group
        return {
            "collective": self.kind,
            "for": self.purpose,
            "group_size": group.size,
            "group": describe_group(group),
            "tiers": [_describe_tier(name, group, self.coll) for name in self.tiers],
            "algorithm": "/".join(self.algorithms),
            "bytes_per_call": self.message_bytes / self.calls,
            "calls_per_step": self.calls,
            "time_per_call_s": self.time_s / self.calls,
            "raw_time_per_step_s": self.time_s,
        }


def explain_json(result) -> dict[str, Any]:
    """``vlscale plan --explain --json``'s ``explain`` key."""
    return {
        "quantities": [
            {"quantity": q.quantity, "function": q.function, "formula": q.formula}
            for q in QUANTITIES
        ],
        "collectives": collective_rows(result),
    }


def collective_rows(result) -> list[dict[str, Any]]:
    """The collectives of one optimizer step on one rank, by kind and purpose (module
    docstring); ``result`` is a ``PlanResult``. Empty on one device."""
    from vlscale.costs.locks import synced_unit_params
    from vlscale.plan.workload_builder import collective_groups, param_bytes, unit_params

    layout, spec, recipe = result.config.layout, result.model_spec, result.recipe
    if layout.devices == 1:
        return []
    groups = collective_groups(
        result.cluster, layout, result.profile, result.config.comm_efficiency_scale
    )
    rows = []
    trained = synced_unit_params(spec, layout)  # a locked unit syncs no gradient
    params = [
        (p, trained[name])
        for name, p in unit_params(spec).items()
        if not (layout.precomputed_image and name.split(".")[0] == "visual")
    ]
    if layout.sharding == "ddp":
        rows.append(_Kind("all_reduce", "gradients, per unit", groups.replicas))
        for _, g in params:
            if g:
                rows[-1].add(g * REDUCE_BYTES)
    else:
        rows += _sharded_rows(params, groups, layout, param_bytes(layout))
    b = layout.micro_batch(result.config.global_batch)
    rows += _loss_rows(recipe, spec.embed_dim, groups, layout, b)
    norm = _Kind("all_reduce", "gradient norm", groups.world)
    norm.add(FP32)
    rows.append(norm)
    return [r.row() for r in rows if r.calls]


def _sharded_rows(
    params: list[tuple[int, int]], groups, layout, bytes_per_param: int
) -> list[_Kind]:
    """FSDP / HSDP, per unit (parameters, trainable parameters): all-gathered in forward (and
    again in backward when it reshards and trains) in each of the k micro-steps, its trainable
    parameters' gradients reduce-scattered in the shard group once per step, and under HSDP the
    reduced shard all-reduced across the replicas; a locked unit is gathered for forward only."""
    s, k = layout.shard_group, layout.grad_accum
    ag = _Kind("all_gather", "parameters, per unit", groups.shard)
    rs = _Kind("reduce_scatter", "gradients, per unit", groups.shard)
    ar = _Kind("all_reduce", "gradient shards across replicas", groups.replicas)
    for p, g in params:
        gathers = 2 if layout.reshard_after_forward and g else 1
        if s > 1:
            ag.add(p * bytes_per_param / s, gathers * k)
            if g:
                rs.add(g * REDUCE_BYTES / s)
        if layout.replicas > 1 and g:
            ar.add(g * REDUCE_BYTES / s)
    return [ag, rs, ar]


def _loss_rows(recipe, embed_dim: int, groups, layout, b: int) -> list[_Kind]:
    """The loss on all W ranks, in each of the k micro-steps: the gather implementations
    all-gather the b·e fp32 embeddings (images and texts for softmax, texts for sigmoid) and
    reduce-scatter their gradients; the ring makes W − 1 text-block hops forward, W − 1 again
    and W gradient-accumulator hops backward."""
    w, k = layout.devices, layout.grad_accum
    shard = b * embed_dim * LOSS_BYTES
    if recipe.loss_impl == "ring":
        hops = _Kind("p2p", "loss ring hops (b·e fp32)", groups.world)
        hops.add(shard, (3 * w - 2) * k)
        return [hops]
    n = 2 if recipe.loss == "softmax" else 1
    ag = _Kind("all_gather", "loss embeddings (b·e fp32)", groups.world)
    rs = _Kind("reduce_scatter", "loss embedding gradients", groups.world)
    ag.add(shard, n * k)
    rs.add(shard, n * k)
    return [ag, rs]


def _algorithm(kind: str, message: float, coll) -> tuple[str, list[str]]:
    """The algorithm that prices one call and the tiers its phases run on."""
    measured = coll.measured_tier(kind)
    if measured is not None:
        return "measured α–β", [measured.name]
    group = coll.group
    if kind == "p2p":
        r = costs_collectives.neighbor_exchange(message, group, hops=1)
    else:
        r = getattr(costs_collectives, kind)(message, group)
    return r.algorithm, list(dict.fromkeys(phase.tier for phase in r.phases))


def _describe_tier(name: str, group: Group, coll) -> str:
    """A tier's name with its nominal bandwidth per rank (per link on a TPU torus) and η; a
    ring's node-crossing edge gets the node's whole NIC, all its ranks' shares together."""
    known = [coll.measured_tier(name.removeprefix("measured:")), group.inner, group.outer]
    tier = next((t for t in [*known, group.nvls] if t is not None and t.name == name), None)
    if tier is None:
        return name
    per = "link" if name == "ici" else "rank"
    return f"{name} {tier.bandwidth / 1e9:.3g} GB/s per {per} (η {tier.efficiency:g})"


def describe_group(group: Group) -> str:
    """E.g. "8 = 8 per node x 1 node", "512 = 1 per node x 512 nodes",
    "128 = 4x4x4 torus x 2 slices"."""
    if group.kind == "tpu":
        torus = "x".join(map(str, group.torus_dims)) if group.torus_dims else "1"
        inner = f"{torus} torus"
        unit = "slice"
    else:
        inner, unit = f"{group.inner_size} per node", "node"
    outer = f"{group.outer_size} {unit}{'s' if group.outer_size > 1 else ''}"
    return f"{group.size} = {inner} x {outer}"
