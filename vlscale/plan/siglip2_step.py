"""One SigLIP 2 phase's step as a simulator workload: SigLIP's step
(``vlscale.plan.workload_builder.build_workload``) plus the passes the phase adds
(``vlscale.costs.siglip2.phase_passes``).

    teacher        its FSDP units first in the list, forward only: frozen units gathered for
                   the forward like a locked tower (``workload_builder.unit_comm``), no backward, no
                   gradient sync; parameters sharded like the student's
    student views  the local views and the masked view are further calls of the image tower:
                   each call's units are gathered again in forward and backward and their
                   gradients reduce-scattered again (FSDP2 runs post-backward once per call);
                   the heads and the mask token join the image tower's own unit ("visual")
    decoder        its units ("decoder", "decoder.blocks.i") after the text tower's, trained
                   like the towers' (gathered, reduce-scattered), at b·passes samples
    optimizer      the student's optimizer over the added parameters too, and the teacher's EMA
                   θ_t ← m·θ_t + (1 − m)·θ_s over its shard: one foreach lerp reading θ_t and
                   θ_s and writing θ_t, 3·4·Ψ_t / s bytes

A phase that adds nothing (every objective off) is SigLIP's workload, unchanged. The step's
model FLOPs gain each pass's (``costs.siglip2.pass_model_flops``); the rank's hardware FLOPs the
ops of the passes (checkpoint recompute and the decoder's recomputed logits included).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vlscale.costs.dtypes import FP32
from vlscale.costs.layers import OpList
from vlscale.costs.ops import UnitOps, layers_units, unit_ops
from vlscale.costs.params import parameter_shapes
from vlscale.costs.siglip2 import (
    Pass,
    added_layers,
    phase_model_flops_per_sample,
    phase_passes,
    student_extra_params,
    teacher_unit_params,
)
from vlscale.costs.step_ops import optimizer_ops
from vlscale.errors import ConfigError
from vlscale.plan.op_pricer import OpPricer
from vlscale.plan.workload_builder import (
    build_workload,
    collective_groups,
    compute_dtype,
    timed_unit,
    unit_comm,
    unit_params,
)
from vlscale.specs.siglip2 import Phase


def build_phase_workload(spec, recipe, cluster, layout, phase: Phase | None, **kw) -> tuple:
    """(workload, step costs) of one micro-step of ``phase`` (module docstring); ``kw`` are
    ``build_workload``'s keywords (``local_batch``, ``resources``, ...)."""
    wl, costs = build_workload(spec, recipe, cluster, layout, **kw)
    s2 = recipe.objectives
    if s2 is None or phase is None:
        return wl, costs
    passes = phase_passes(spec, s2, phase)
    added = {k: n for k, n in student_extra_params(spec, s2, phase).items() if n}
    if not passes and not added:
        return wl, costs
    if layout.locks or layout.precomputed_image:
        raise ConfigError(
            "siglip2",
            "SigLIP 2's objectives with a locked or precomputed tower are not modelled; unlock "
            "the towers, or turn the objectives off (--objectives none)",
        )
    return _extend(spec, recipe, cluster, layout, phase, passes, added, wl, costs, kw)


def _extend(spec, recipe, cluster, layout, phase, passes, added, wl, costs, kw):
    """Rebuild the units with the phase's passes; optimizer, FLOPs and bytes to match."""
    b, res = kw["local_batch"], kw["resources"]
    precision = compute_dtype(cluster.device, layout.precision)
    a = 2 if precision in ("bf16", "fp16") else 4
    dtype = "fp32" if precision == "tf32" else precision  # as ``costs.ops.unit_ops``

    def new() -> OpList:
        return OpList(dtype, a)

    gamma = kw.get("framework_efficiency", 1.0)
    price, extra_price = OpPricer(res, gamma), OpPricer(res, gamma)
    groups = collective_groups(cluster, layout, res.profile, kw.get("comm_efficiency", 1.0))
    views, teacher, decoder = _pass_units(passes, b, new, layout.checkpointing)
    for ops in (*(u for _, us in views for u in us), *teacher, *decoder):
        extra_price([*ops.forward, *ops.backward])
    params = unit_params(spec)
    base_params = dict(params)
    for name, n in added.items():
        params[name] = params.get(name, 0) + n
    params |= teacher_unit_params(spec, recipe.objectives, phase)
    overhead = res.profile.unit_overhead_s if layout.wrapped else 0.0
    moved_new: dict[str, float] = {}
    moved_old: dict[str, float] = {}

    def timed(ops: UnitOps, frozen: bool = False, unit: str | None = None):
        n = params[unit or ops.name]
        comm = unit_comm(n, groups, layout, 0 if frozen else None)
        for kind, x in comm.moved.items():
            moved_new[kind] = moved_new.get(kind, 0.0) + x
        return timed_unit(ops, n, comm, layout, price, overhead, frozen)

    base_ops = unit_ops(
        spec,
        local_batch=b,
        mask_ratio=recipe.mask_ratio,
        precision=precision,
        checkpointing=layout.checkpointing,
    )
    student = []
    for ops in base_ops:
        for kind, n in unit_comm(base_params[ops.name], groups, layout).moved.items():
            moved_old[kind] = moved_old.get(kind, 0.0) + n
        student.append(timed(ops))
    units = (
        *(timed(u, frozen=True) for u in teacher),
        *student,
        *(timed(u) for u in decoder),
        # each further call of the image tower (local views, masked view) gathers its units
        # again, forward and backward, and reduce-scatters their gradients again: FSDP2's
        # post-backward runs once per call (the "visual" unit carries the heads' parameters)
        *(timed(UnitOps(f"{u.name} ({name})", u.forward, u.backward), unit=u.name)
          for name, pass_units in views for u in pass_units),
    )  # fmt: skip
    opt_kw = kw | {"phase": phase}
    optimizer_s = _optimizer_s(spec, cluster, layout, recipe, price, opt_kw, added, params, teacher)
    wl2 = wl.model_copy(update={"units": units, "optimizer_s": optimizer_s})
    extra_flops = phase_model_flops_per_sample(spec, recipe.objectives, phase)
    return wl2, _costs(costs, wl, wl2, moved_old, moved_new, extra_price, extra_flops, b, layout)


def _pass_units(passes: tuple[Pass, ...], b: int, new, checkpointing: bool):
    """The passes' units in forward order: the student views' (per view pass, its name and its
    calls of the image tower's units), the teacher's (forward only) and the decoder's."""
    views: list[tuple[str, list[UnitOps]]] = []
    teacher: list[UnitOps] = []
    decoder: list[UnitOps] = []
    for p in passes:
        prefix = {"teacher": "teacher.visual", "decoder": "decoder"}.get(p.name, "visual")
        trainable = None if p.trains else frozenset()
        units = layers_units(
            prefix, p.layers, b * p.per_sample, new, checkpointing and p.trains, trainable
        )
        if p.name == "teacher":
            teacher += units
        elif p.name == "decoder":
            decoder += units
        else:
            views.append((p.name, units))
    return views, teacher, decoder


def _optimizer_s(spec, cluster, layout, recipe, price, kw, added, params, teacher) -> float:
    """The optimizer over every trainable parameter (the towers', the root's and the added
    ones) on this rank's shard, and the teacher's EMA over its shard."""
    s = layout.shard_group
    trained = sum(unit_params(spec).values()) + sum(added.values())
    extra = added_layers(spec, recipe.objectives, kw["phase"])
    tensors = len(parameter_shapes(spec)) + sum(len(x.param_shapes()) for x in extra)
    foreach = cluster.device.kind != "cpu"
    ops = optimizer_ops(
        trained / s,
        tensors,
        recipe.optimizer,
        kw.get("grad_clip", True),
        foreach,
        dtensor=layout.wrapped,
    )
    psi_t = sum(params[u.name] for u in teacher)
    if psi_t:
        ema = OpList("fp32", FP32)
        ema.elementwise("teacher.ema", 3 * psi_t / s, "forward")  # foreach lerp, one launch
        ops += list(ema)
    return price(ops)


def _costs(costs, wl, wl2, moved_old, moved_new, extra_price, extra_flops, b, layout):
    """The step's totals with the passes: model FLOPs, the rank's FLOPs, matmul rate, bytes,
    and the trainer's phases (forward / backward / optimizer) from the rebuilt units."""
    comm = dict(costs.comm_bytes_per_rank)
    for kind in comm:
        comm[kind] += moved_new.get(kind, 0.0) - moved_old.get(kind, 0.0)
    hardware = costs.hardware_flops_per_rank + extra_price.total(lambda t: t.op.flops)
    base_matmul_s = (
        costs.hardware_flops_per_rank / (costs.utilisation * costs.peak_flops)
        if costs.utilisation > 0
        else 0.0
    )
    matmul_s = base_matmul_s + extra_price.total(lambda t: t.time_s, lambda t: t.op.flops > 0)
    phases: dict[str, Any] = dict(costs.phases_s)
    phases["forward"] += sum(u.forward_s for u in wl2.units) - sum(u.forward_s for u in wl.units)
    phases["backward"] += sum(u.backward_s for u in wl2.units) - sum(u.backward_s for u in wl.units)
    phases["optimizer"] += wl2.optimizer_s - wl.optimizer_s
    return dataclasses.replace(
        costs,
        model_flops_per_step=costs.model_flops_per_step + extra_flops * b * layout.devices,
        hardware_flops_per_rank=hardware,
        comm_bytes_per_rank=comm,
        utilisation=hardware / (matmul_s * costs.peak_flops) if matmul_s > 0 else 0.0,
        op_times=[*costs.op_times, *extra_price.table],
        phases_s=phases,
    )
