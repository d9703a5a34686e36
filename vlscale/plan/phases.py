"""A SigLIP 2 run planned phase by phase (``vlscale.specs.siglip2.Siglip2Spec.phases``).

Each phase is planned as a run of its own (``planner.plan(config, phase=...)``: its step with the
passes it adds, its memory); a NaFlex phase once per sequence length n of ``naflex.lengths``
(the image tower at n patches, the global batch B·batch_scale(n) rounded to whole micro-batches)
and summarised as the lengths are drawn, uniformly per batch:

    step time t_i        the mean over lengths of the step times
    samples per step B_i the mean over lengths of the batches
    memory               the max over lengths
    model FLOPs / step   the mean over lengths

The run integrates the phases: phase i sees the share f_i = end − start of the samples, at its
own samples per second B_i / t_i, so the run's useful time is Σ f_i·samples·t_i / B_i, i.e.
steps·t_eff at the nominal batch B with

    t_eff = Σ_i f_i · t_i · (B / B_i)

and wall time, device-hours, cost and goodput follow ``vlscale.costs.run.plan_run`` at t_eff
(failures and checkpoint writes priced with the binding phase's state). Each phase's share of
the wall time is steps·f_i·t_i·(B / B_i) / goodput, so the shares sum to the run's. The run must
fit in every phase: the top-level memory is the largest phase's (``binding_phase``); the
top-level step numbers (step time, MFU, breakdown, ops) are the first phase's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vlscale.costs.run import plan_run
from vlscale.errors import ConfigError
from vlscale.plan.config import PlanConfig
from vlscale.specs.siglip2 import Phase, check_against_towers


@dataclass(frozen=True)
class Planner:
    """The planner's functions this module calls (passed in, as ``vlscale.plan.planner``
    imports this module): ``plan(config, phase=, length=, ...)``, ``resolve(config, device)``
    and ``failure_model(config, memory)``."""

    plan: Callable[..., Any]
    resolve: Callable[..., Any]
    failure_model: Callable[..., Any]


def plan_phases(config: PlanConfig, planner: Planner, *, keep_sim=False, device_override=None):
    """The whole run of a SigLIP 2 recipe (module docstring): plan every phase, integrate."""
    s2 = config.recipe_spec().objectives
    spec, _, _ = planner.resolve(config, device_override)
    _check_image_tower(s2, spec.vision)
    check_against_towers(s2, spec.vision, spec.text)
    runs = []
    for phase in s2.phases():
        batches = _batches(config, phase, s2)
        kw = {"phase": phase, "device_override": device_override}
        results = [
            (batch, planner.plan(_with_batch(config, batch), length=n, keep_sim=keep_sim, **kw))
            for n, batch in batches
        ]
        runs.append((phase, results))
    return _integrate(config, runs, planner.failure_model)


def _check_image_tower(s2, vision) -> None:
    """Every added objective reads the image tower's patch tokens: a ViT's (a ResNet has
    none); one ConfigError naming the first objective that is on."""
    if vision.kind == "vit":
        return
    for name in ("distill", "masked", "naflex", "decoder"):
        if getattr(s2, name) is not None:
            raise ConfigError(
                f"siglip2.{name}",
                f"needs a ViT image tower's patch tokens, and the model's is a {vision.kind}; "
                f"set {name}: null (--objectives without {name}) or pick a ViT preset",
            )


def _batches(config: PlanConfig, phase: Phase, s2) -> list[tuple[int | None, int]]:
    """(sequence length, global batch) of each plan of the phase: the nominal batch, or per
    NaFlex length B·batch_scale(n) rounded to whole micro-batches of every rank."""
    if not phase.naflex:
        return [(None, config.global_batch)]
    unit = config.layout.devices * config.layout.grad_accum  # divides B (check_batch)
    micro = config.global_batch // unit
    return [(n, s2.naflex.batch_at(micro, n) * unit) for n in s2.naflex.lengths]


def _with_batch(config: PlanConfig, batch: int) -> PlanConfig:
    if batch == config.global_batch:
        return config
    return config.model_copy(update={"global_batch": batch})


def _integrate(config: PlanConfig, runs, failure_model):
    """The top-level PlanResult: the first phase's step, the run over all phases."""
    big = config.global_batch
    rows, t_eff = [], 0.0
    for phase, results in runs:
        step = sum(r.step_time_s for _, r in results) / len(results)
        batch = sum(b for b, _ in results) / len(results)
        share = phase.end_fraction - phase.start_fraction
        t_eff += share * step * (big / batch)
        rows.append((phase, results, step, batch, share))
    binding = max(rows, key=lambda row: max(r.memory_per_device_bytes for _, r in row[1]))
    bind = max((r for _, r in binding[1]), key=lambda r: r.memory_per_device_bytes)
    top = runs[0][1][0][1]
    price = (
        config.price_per_device_hour
        if config.price_per_device_hour is not None
        else top.cluster.device.price.usd_per_hour
    )
    layout = top.config.layout
    memory = _breakdown(bind)
    run = plan_run(
        config.samples,
        big,
        t_eff,
        layout.devices,
        price_per_device_hour=price,
        failures=failure_model(config, memory),
    )
    phases = [_phase_json(row, run, big, layout.devices, price) for row in rows]
    fits = all(r.fits for _, results in runs for _, r in results)
    named = len(runs) > 1
    warnings = list(
        dict.fromkeys(
            f"{_where(phase, r)}: {w}" if named or phase.naflex else w
            for phase, res in runs
            for _, r in res
            for w in r.warnings
        )
    )
    warnings += [w for w in run.warnings if w not in warnings]
    return dataclasses.replace(
        top,
        **run.plan_fields(),
        memory_breakdown=bind.memory_breakdown,
        memory_per_device_bytes=bind.memory_per_device_bytes,
        fits=fits,
        max_local_batch=min(_largest(big, rs) for _, rs in runs),
        loss_memory_bytes=bind.loss_memory_bytes,
        warnings=warnings,
        phases=phases,
        binding_phase=binding[0].name,
    )


def _where(phase: Phase, result) -> str:
    """Where a warning comes from: "base phase", or "naflex phase at 576 patches"."""
    if phase.naflex:
        return f"{phase.name} phase at {result.model_spec.vision.num_patches} patches"
    return f"{phase.name} phase"


def _largest(big: int, results) -> int:
    """The largest local batch at the nominal global batch ``big`` at which every plan of a
    phase fits: a NaFlex length planned at batch B_n fits L_n local samples, i.e. L_n·B / B_n
    at the nominal batch."""
    return min(r.max_local_batch * big // batch for batch, r in results)


def _breakdown(result):
    """The binding result's memory as ``_failure_model`` reads it."""
    from vlscale.costs.memory import MemoryBreakdown

    return MemoryBreakdown(**result.memory_breakdown)


def _phase_json(row, run, big: int, devices: int, price: float) -> dict[str, Any]:
    phase, results, step, batch, share = row
    wall_h = run.steps * share * step * (big / batch) / run.goodput / 3600.0
    out = {
        "name": phase.name,
        "start_fraction": phase.start_fraction,
        "end_fraction": phase.end_fraction,
        "objectives": [k for k in ("decoder", "distill", "masked", "naflex") if getattr(phase, k)],
        "step_time_s": step,
        "samples_per_step": batch,
        "samples_per_s": batch / step,
        "memory_per_device_bytes": max(r.memory_per_device_bytes for _, r in results),
        "model_flops_per_step": sum(r.costs.model_flops_per_step for _, r in results)
        / len(results),
        "fits": all(r.fits for _, r in results),
        "wall_time_h": wall_h,
        "cost_usd": wall_h * devices * price,
    }
    if phase.naflex:
        out["lengths"] = [
            {
                "length": n,
                "global_batch": b,
                "step_time_s": r.step_time_s,
                "memory_per_device_bytes": r.memory_per_device_bytes,
            }
            for n, (b, r) in zip(phase_lengths(results, phase), results, strict=True)
        ]
    return out


def phase_lengths(results, phase: Phase) -> list[int]:
    """The NaFlex lengths of a phase's results, in order (the plans' image sequences)."""
    if not phase.naflex:
        raise ConfigError("phase", f"{phase.name} has no sequence lengths")
    return [r.model_spec.vision.num_patches for _, r in results]
