"""Plan a run: simulate one step, check memory, and turn samples seen into time and money.

``plan(config)`` is what ``vlscale plan`` prints. The step time is the simpy simulation of the
workload that ``vlscale.plan.workload_builder`` builds (stragglers and the input pipeline
included when configured; with neither it equals the analytic critical path). MFU is model FLOPs (no
recompute) per second per device over the dense peak of the compute dtype (PaLM's convention,
Chowdhery et al. 2022, appendix B); HFU counts the FLOPs the hardware really runs (activation
recompute and recomputed ring logits included).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from vlscale.costs.locks import image_forward_flops, locked_state
from vlscale.costs.memory import MemoryBreakdown, max_local_batch
from vlscale.costs.run import FailureModel, plan_run
from vlscale.costs.siglip2 import naflex_model
from vlscale.costs.siglip2_memory import phase_memory
from vlscale.costs.topology import check_shard_size
from vlscale.errors import ConfigError, from_validation_error
from vlscale.plan.compute_model import resolve_compute
from vlscale.plan.config import PlanConfig
from vlscale.plan.phases import Planner, plan_phases
from vlscale.plan.siglip2_step import build_phase_workload
from vlscale.plan.workload_builder import StepCosts, build_workload
from vlscale.sim.workload import Workload
from vlscale.specs.hardware import ClusterSpec, DeviceSpec, load_hardware_file, make_cluster
from vlscale.specs.layout import RunLayout
from vlscale.specs.models import ModelSpec
from vlscale.specs.presets import resolve_model
from vlscale.specs.recipes import RecipeSpec
from vlscale.specs.siglip2 import Phase


@dataclass
class PlanResult:
    """A planned run; ``to_json`` is the stable ``vlscale plan --json`` contract (README)."""

    config: PlanConfig
    recipe: RecipeSpec
    step_time_s: float
    step_time_p50_s: float
    step_time_p95_s: float
    critical_path_s: float
    breakdown: dict[str, float]
    samples_per_s: float
    samples_per_s_per_device: float
    mfu: float
    steps: int
    wall_time_h: float
    device_hours: float
    cost_usd: float
    goodput: float
    checkpoint_interval_s: float | None
    memory_breakdown: dict[str, int]
    memory_per_device_bytes: int
    device_memory_bytes: int
    fits: bool
    max_local_batch: int | None
    loss_memory_bytes: int
    costs: StepCosts
    utilisation_source: str
    compute: dict[str, Any] = field(default_factory=dict)  # framework efficiency, origins
    warnings: list[str] = field(default_factory=list)
    sim: Any = None  # SimResult (events, Chrome trace) when kept
    # what the step was built from, for ``vlscale.plan.explain`` (not in ``to_json``)
    model_spec: ModelSpec | None = None
    cluster: ClusterSpec | None = None
    profile: Any = None  # the compute profile (measured collectives, overheads)
    embedding_pass: dict[str, float] | None = None  # precomputed image embeddings: once
    # SigLIP 2: one entry per phase (``vlscale.plan.phases``) and the phase whose memory binds
    phases: list[dict[str, Any]] | None = None
    binding_phase: str | None = None

    def op_rows(self) -> list[dict[str, Any]]:
        """The per-op table of one micro-step on one rank (``vlscale plan --ops``)."""
        from vlscale.plan.op_table import op_rows

        return op_rows(self.costs.op_times)

    def to_json(self, ops: bool = False) -> dict[str, Any]:
        c, layout = self.config, self.config.layout
        extra = {"ops": self.op_rows()} if ops else {}
        return (
            extra
            | {
                "model": c.model,
                "recipe": self.recipe.name,
                "loss_impl": self.recipe.loss_impl,
                "mask_ratio": self.recipe.mask_ratio,
                "optimizer": self.recipe.optimizer,
                "device": c.device,
                "devices": layout.devices,
                "global_batch": c.global_batch,
                "local_batch": layout.local_batch(c.global_batch),
                "samples": c.samples,
                "precision": layout.precision,
                "sharding": layout.sharding,
                "checkpointing": layout.checkpointing,
                "step_time_s": self.step_time_s,
                "step_time_p50_s": self.step_time_p50_s,
                "step_time_p95_s": self.step_time_p95_s,
                "critical_path_s": self.critical_path_s,
                "breakdown_s": self.breakdown,
                "samples_per_s": self.samples_per_s,
                "samples_per_s_per_device": self.samples_per_s_per_device,
                "mfu": self.mfu,
                "hfu": self.costs.hardware_flops_per_rank
                / (self.step_time_s * self.costs.peak_flops),
                "utilisation": self.costs.utilisation,
                "utilisation_source": self.utilisation_source,
                "steps": self.steps,
                "wall_time_h": self.wall_time_h,
                "device_hours": self.device_hours,
                "cost_usd": self.cost_usd,
                "goodput": self.goodput,
                "checkpoint_interval_s": self.checkpoint_interval_s,
                "memory_per_device_bytes": self.memory_per_device_bytes,
                "memory_breakdown": self.memory_breakdown,
                "device_memory_bytes": self.device_memory_bytes,
                "fits": self.fits,
                "max_local_batch": self.max_local_batch,
                "loss_memory_bytes": self.loss_memory_bytes,
                "comm_bytes_per_device": self.costs.comm_bytes_per_rank,
                "loss_comm_bytes_per_device": self.costs.loss_comm_bytes_per_rank,
                "model_flops_per_step": self.costs.model_flops_per_step,
                "grad_accum": layout.grad_accum,
                "phases_s": self.costs.phases_s,
                "compute_model": self.compute,
                "warnings": self.warnings,
                "layout": layout.model_dump(mode="json"),
                "locked": locked_state(layout),
            }
            | ({"embedding_pass": self.embedding_pass} if self.embedding_pass else {})
            | self._siglip2_json()
        )

    def _siglip2_json(self) -> dict[str, Any]:
        """SigLIP 2's keys (absent for the other recipes: their JSON is unchanged)."""
        if self.recipe.objectives is None:
            return {}
        return {
            "siglip2": self.recipe.objectives.model_dump(mode="json"),
            "phases": self.phases or [],
            "binding_phase": self.binding_phase,
        }


def resolve(
    config: PlanConfig, device_override: DeviceSpec | None = None
) -> tuple[ModelSpec, RecipeSpec, ClusterSpec]:
    """Model spec (at the configured image size), recipe with defaults, validated cluster;
    ``device_override`` replaces the named device (a profile being calibrated)."""
    spec = resolve_model(config.model)
    if config.image_size is not None:
        try:
            spec = spec.with_image_size(config.image_size)
        except ValidationError as exc:  # e.g. a size the patch does not divide
            err = from_validation_error(exc)
            raise ConfigError("image_size", str(err)[len(err.field) + 2 :]) from None
    if config.context_length is not None:
        spec = spec.with_context_length(config.context_length)
    recipe = config.recipe_spec()
    spec.check_mask_ratio(recipe.mask_ratio)  # a ResNet has no patches to drop: r must be 0
    extra: dict[str, DeviceSpec] | None = None
    if config.hardware_file and device_override is None:
        extra = dict(load_hardware_file(config.hardware_file).devices)
    cluster = make_cluster(
        device_override or config.device,
        config.layout.devices,
        devices_per_node=config.layout.devices_per_node,
        slice_shape=config.slice_shape,
        num_slices=config.num_slices,
        extra_devices=extra,
    )
    return spec, recipe, cluster


def plan(
    config: PlanConfig,
    *,
    keep_sim: bool = False,
    device_override: DeviceSpec | None = None,
    phase: Phase | None = None,
    length: int | None = None,
) -> PlanResult:
    """Simulate, size memory and cost the whole run described by ``config``: resolve the
    inputs (model, recipe, cluster, layout) -> the compute model -> simulate one step -> size
    memory -> failures and price over the whole run. SigLIP 2 goes phase by phase
    (``vlscale.plan.phases``), which plans each ``phase`` [at a NaFlex ``length``] here."""
    from vlscale.sim import critical_path_time

    if phase is None and config.recipe_spec().objectives is not None:
        return _plan_phases(config, keep_sim, device_override)
    spec, recipe, cluster = resolve(config, device_override)
    spec, device = naflex_model(spec, phase, length), cluster.device
    layout = resolve_layout(config, cluster)
    config = config.model_copy(update={"layout": layout})
    compute = resolve_compute(
        device,
        config.utilisation,
        ranks_per_host=cluster.node_size if device.kind == "cpu" else 1,
        framework_efficiency=config.framework_efficiency,
        stack=config.stack,
    )
    step = _simulate_step(config, spec, recipe, cluster, compute, keep_sim, phase)
    fit = _size_memory(spec, layout, recipe, config.global_batch, device, config.stack, phase)
    price = (
        config.price_per_device_hour
        if config.price_per_device_hour is not None
        else device.price.usd_per_hour
    )
    run = plan_run(
        config.samples,
        config.global_batch,
        step.time_s,
        layout.devices,
        price_per_device_hour=price,
        failures=_failure_model(config, fit.memory),
    )
    samples_per_s = config.global_batch / step.time_s
    costs, memory, sim = step.costs, fit.memory, step.sim
    return PlanResult(
        config=config,
        recipe=recipe,
        step_time_s=step.time_s,
        step_time_p50_s=sim.p50_s,
        step_time_p95_s=sim.p95_s,
        critical_path_s=critical_path_time(step.workload),
        breakdown={k: float(v) for k, v in sim.breakdown.items()},
        samples_per_s=samples_per_s,
        samples_per_s_per_device=samples_per_s / layout.devices,
        mfu=costs.model_flops_per_step / (step.time_s * layout.devices * costs.peak_flops),
        **run.plan_fields(),
        memory_breakdown=memory.as_dict(),
        memory_per_device_bytes=memory.total,
        device_memory_bytes=fit.capacity,
        fits=fit.fits,
        max_local_batch=fit.largest,
        loss_memory_bytes=memory.loss_buffers,
        costs=costs,
        utilisation_source=compute.source,
        compute=_compute_json(compute),
        warnings=fit.warnings + list(run.warnings),
        sim=sim if keep_sim else None,
        model_spec=spec,
        cluster=cluster,
        profile=compute.resources.profile,
        embedding_pass=_embedding_pass(config, spec, recipe, cluster, compute, price)
        if layout.precomputed_image
        else None,
    )


def _plan_phases(config: PlanConfig, keep_sim: bool, device_override) -> PlanResult:
    """A SigLIP 2 run, phase by phase (``vlscale.plan.phases``)."""
    planner = Planner(plan, resolve, _failure_model)
    return plan_phases(config, planner, keep_sim=keep_sim, device_override=device_override)


def _embedding_pass(config: PlanConfig, spec, recipe, cluster, compute, price: float) -> dict:
    """The one-off pass that writes the image embeddings (``python -m trainer.embed``): every
    sample through the image tower's forward once, on the same cluster with the same micro-batch
    per device, timed as the locked tower's forward units of the step (FSDP gathers included),
    priced at the same device-hour."""
    layout = config.layout.model_copy(update={"image_embeddings": None, "lock_image": True})
    micro = layout.micro_batch(config.global_batch)
    workload, _ = build_workload(
        spec,
        recipe.model_copy(update={"mask_ratio": 0.0}),
        cluster,
        layout,
        local_batch=micro,
        resources=compute.resources,
        framework_efficiency=compute.framework_efficiency * config.compute_efficiency_scale,
        comm_efficiency=config.comm_efficiency_scale,
    )
    batch_s = sum(u.forward_s for u in workload.units if u.name.split(".")[0] == "visual")
    time_h = config.samples / (micro * layout.devices) * batch_s / 3600.0
    return {
        "flops": config.samples * image_forward_flops(spec),
        "time_h": time_h,
        "cost_usd": time_h * layout.devices * price,
    }


def resolve_layout(config: PlanConfig, cluster: ClusterSpec) -> RunLayout:
    """The config's layout with the device's defaults filled in (precision, devices per node,
    HSDP's shard size) and its HSDP shard groups checked against the cluster's nodes."""
    layout = config.layout.resolved(default_precision(cluster.device), cluster.node_size)
    if layout.sharding == "hsdp":
        check_shard_size(cluster, layout.shard_group)
    return layout


@dataclass(frozen=True)
class _Step:
    """One optimizer step: the simulated first micro-step (``sim``, ``workload``), the whole
    step's time with the earlier micro-steps, and its costs (FLOPs of every micro-step)."""

    sim: Any
    workload: Workload
    time_s: float
    costs: StepCosts


def _simulate_step(
    config: PlanConfig, spec, recipe, cluster, compute, keep_sim: bool, phase=None
) -> _Step:
    """Build the workload of one micro-step (of a SigLIP 2 ``phase``) and simulate it; under
    gradient accumulation the k − 1 earlier micro-steps run without gradient sync or
    optimizer."""
    from vlscale.sim import StragglerModel, simulate

    layout = config.layout
    workload, costs = build_phase_workload(
        spec,
        recipe,
        cluster,
        layout,
        phase,
        local_batch=layout.micro_batch(config.global_batch),
        resources=compute.resources,
        framework_efficiency=compute.framework_efficiency * config.compute_efficiency_scale,
        grad_clip=config.grad_clip,
        decode_samples_per_s=config.decode_samples_per_s_per_device,
        comm_efficiency=config.comm_efficiency_scale,
    )
    stragglers = StragglerModel(sigma=config.straggler_sigma) if config.straggler_sigma else None
    # a kept simulation (traces) walks every ring block; a plan splices long rings (vlscale.sim)
    ring = {"full_ring_max": None} if keep_sim else {}
    sim = simulate(
        workload, steps=config.sim_steps, stragglers=stragglers, seed=config.seed, **ring
    )
    step_time = sim.step_time_s
    k = layout.grad_accum
    if k > 1:  # the earlier micro-steps: no gradient sync, no optimizer
        micro = simulate(_without_sync(workload), steps=config.sim_steps, seed=config.seed)
        step_time += (k - 1) * micro.step_time_s
        costs = replace(
            costs,
            model_flops_per_step=k * costs.model_flops_per_step,
            hardware_flops_per_rank=k * costs.hardware_flops_per_rank,
        )
    return _Step(sim, workload, step_time, costs)


@dataclass(frozen=True)
class _Fit:
    """Memory per device against the device's capacity."""

    memory: MemoryBreakdown
    capacity: int
    largest: int  # the largest micro-batch that fits (0: not even one sample)
    fits: bool
    warnings: list[str]


def _size_memory(
    spec, layout: RunLayout, recipe, global_batch: int, device, stack: str | None = None, phase=None
) -> _Fit:
    memory = phase_memory(spec, layout, recipe, phase, local_batch=layout.micro_batch(global_batch))
    memory = _stack_memory(memory, spec, layout, recipe, global_batch, stack)
    capacity = int(device.memory.hbm_bytes)

    def need(b: int) -> int:
        return phase_memory(spec, layout, recipe, phase, local_batch=b).total

    try:
        largest = max_local_batch(spec, capacity, layout, recipe, memory=need if phase else None)
    except ConfigError:
        largest = 0
    fits = memory.total <= capacity
    warnings = []
    if not fits:
        warnings.append(
            f"does not fit: {memory.total / 2**30:.1f} GiB needed per device, "
            f"{capacity / 2**30:.1f} GiB available; largest local batch that fits: {largest} "
            "(try --checkpointing, more devices or a smaller batch)"
        )
    return _Fit(memory, capacity, largest, fits, warnings)


def _stack_memory(memory, spec, layout: RunLayout, recipe, global_batch: int, stack: str | None):
    """A stack's extra bytes (``vlscale.costs.stack_memory``): math attention's saved scores
    into ``activations``, OpenCLIP's global logits into ``loss_buffers``. The default stack is
    this project's trainer: nothing is added (``max_local_batch`` does not count them)."""
    if stack is None:
        return memory
    from dataclasses import replace

    from vlscale.costs.stack_memory import attention_score_bytes, global_logit_bytes
    from vlscale.specs.stacks import get_stack

    profile = get_stack(stack)
    micro = layout.micro_batch(global_batch)
    extra_act = extra_loss = 0
    if profile.attention == "math":
        extra_act = attention_score_bytes(
            spec, micro, layout.precision, layout.checkpointing, recipe.mask_ratio or 0.0
        )
    if profile.loss == "global":
        extra_loss = global_logit_bytes(recipe.loss, micro, layout.devices)
    return replace(
        memory,
        activations=memory.activations + extra_act,
        loss_buffers=memory.loss_buffers + extra_loss,
    )


def _compute_json(compute) -> dict[str, Any]:
    """The compute model's origin for ``plan --json``: source, γ, per-parameter origins."""
    profile = compute.profile
    mape = profile.calibration.mape if profile.calibration is not None else None
    return {
        "source": compute.source,
        "framework_efficiency": compute.framework_efficiency,
        "origins": dict(profile.origins),
        "op_overhead_s": profile.op_overhead_s,
        **({"calibration_mape": mape} if mape is not None else {}),
    }


def _without_sync(wl: Workload) -> Workload:
    """A micro-step under gradient accumulation (``set_requires_gradient_sync(False)``): the
    same compute and all-gathers, no reduce-scatter / all-reduce, no optimizer."""
    units = tuple(
        u.model_copy(update={"reduce_scatter_s": 0.0, "all_reduce_s": 0.0}) for u in wl.units
    )
    return wl.model_copy(update={"units": units, "optimizer_s": 0.0, "grad_norm_all_reduce_s": 0.0})


def default_precision(device: DeviceSpec) -> str:
    """The device's 16-bit training type: bf16 where it has a bf16 path, else fp16 (V100)."""
    return "bf16" if device.peak_flops.bf16 is not None else "fp16"


def _failure_model(config: PlanConfig, memory: MemoryBreakdown) -> FailureModel | None:
    """Failures with a checkpoint write time estimated from the per-device state (weights,
    master weights, optimizer state) over ``checkpoint_write_bandwidth`` unless given."""
    f = config.failures
    if not f.enabled:
        return None
    write_s = f.checkpoint_write_s
    if write_s is None:
        state = memory.params + memory.master_weights + memory.optimizer_state
        write_s = max(1.0, state / f.checkpoint_write_bandwidth)
    return FailureModel(
        mtbf_device_h=f.mtbf_device_h,
        checkpoint_write_s=write_s,
        restart_s=f.restart_s,
        checkpoint_interval_s=f.checkpoint_interval_s,
    )


def describe_layout(layout: RunLayout) -> str:
    """One line: e.g. "hsdp: 512 replicas x shard groups of 8, bf16, AC, reshard after fwd"."""
    if layout.sharding == "hsdp":
        parts = [f"hsdp: {layout.replicas} replicas x shard groups of {layout.shard_group}"]
    else:
        parts = [f"{layout.sharding} over {layout.devices}"]
    parts.append(str(layout.precision))
    if layout.sharding != "ddp":
        parts.append("reshard after fwd" if layout.reshard_after_forward else "no reshard")
    if layout.checkpointing:
        parts.append("AC")
    if layout.grad_accum > 1:
        parts.append(f"{layout.grad_accum} micro-steps")
    if not layout.wrapped:
        parts.append("unwrapped")
    parts += describe_locks(layout)
    return ", ".join(parts)


def describe_locks(layout: RunLayout) -> list[str]:
    """ "image locked", "text: last 2 groups train", "image embeddings precomputed"."""
    out = []
    for tower, state in locked_state(layout).items():
        if tower == "image" and layout.precomputed_image:
            out.append("image embeddings precomputed")
        elif state == "all":
            out.append(f"{tower} locked")
        elif state != "none":
            out.append(f"{tower}: last {state} groups train")
    return out


def summary_rows(result: PlanResult) -> list[tuple[str, str]]:
    """(label, value) pairs for the human-readable table."""
    r = result
    gib = 2**30
    return [
        ("layout", describe_layout(r.config.layout)),
        (
            "step time (mean / p50 / p95)",
            f"{r.step_time_s:.3f} / {r.step_time_p50_s:.3f} / {r.step_time_p95_s:.3f} s",
        ),
        ("samples/s (per device)", f"{r.samples_per_s:,.0f} ({r.samples_per_s_per_device:,.1f})"),
        ("MFU", f"{r.mfu:.1%} (matmuls at {r.costs.utilisation:.0%} of peak)"),
        ("compute model", r.utilisation_source),
        ("steps", f"{r.steps:,}"),
        ("wall time", f"{r.wall_time_h:,.1f} h ({r.wall_time_h / 24:,.2f} days)"),
        ("goodput (failures + checkpoints)", f"{r.goodput:.3f}"),
        ("device-hours", f"{r.device_hours:,.0f}"),
        ("cost", f"${r.cost_usd:,.0f}"),
        (
            "memory per device",
            f"{r.memory_per_device_bytes / gib:.1f} of "
            f"{r.device_memory_bytes / gib:.1f} GiB ({'fits' if r.fits else 'DOES NOT FIT'})",
        ),
        ("largest local batch that fits", f"{r.max_local_batch}"),
        ("loss buffers", f"{r.loss_memory_bytes / 2**20:,.1f} MiB"),
        *_embedding_pass_rows(r),
    ]


def _embedding_pass_rows(r: PlanResult) -> list[tuple[str, str]]:
    if not r.embedding_pass:
        return []
    e = r.embedding_pass
    text = f"{e['flops']:.3g} FLOPs, {e['time_h']:,.1f} h, ${e['cost_usd']:,.0f} (once)"
    return [("image embedding pass", text)]


def compare_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    """Key numbers per variant (the rows of ``vlscale compare``'s table)."""

    def row(label: str, fmt) -> list[str]:
        return [label, *(fmt(r) for r in results)]

    return [
        row("step time (s)", lambda r: f"{r['step_time_s']:.3f}"),
        row("samples/s per device", lambda r: f"{r['samples_per_s_per_device']:,.1f}"),
        row("MFU", lambda r: f"{r['mfu']:.1%}"),
        row("wall time (h)", lambda r: f"{r['wall_time_h']:,.1f}"),
        row("cost (USD)", lambda r: f"{r['cost_usd']:,.0f}"),
        row("memory / device (GiB)", lambda r: f"{r['memory_per_device_bytes'] / 2**30:.1f}"),
        row("loss buffers (MiB)", lambda r: f"{r['loss_memory_bytes'] / 2**20:,.1f}"),
        row(
            "loss comm fwd / device (MiB)",
            lambda r: f"{r['loss_comm_bytes_per_device']['forward'] / 2**20:,.1f}",
        ),
        row(
            "loss comm total / device (MiB)",
            lambda r: f"{sum(r['loss_comm_bytes_per_device'].values()) / 2**20:,.1f}",
        ),
        row("fits", lambda r: "yes" if r["fits"] else "NO"),
    ]


def as_dict(result: PlanResult) -> dict[str, Any]:
    """Plain dict including the config (for sweeps)."""
    out = result.to_json()
    out["costs"] = asdict(result.costs)
    return out
