"""Per-device memory of a SigLIP 2 phase: SigLIP's (``vlscale.costs.memory.estimate_memory``)
plus what the phase adds (``vlscale.costs.siglip2``). Ψ_x = the student's added parameters
(decoder, heads, mask token: those that train in the phase), Ψ_t = the teacher's (self-distillation
phase only), s the shard degree, p bytes per activation element:

    params           + 4·Ψ_x/s in fp32 training (mixed precision keeps only the fp32 master
                     shard, as for the towers) + 4·Ψ_t/s (the teacher's fp32 shard, always)
    grads            + 4·Ψ_x/s
    master_weights   + 4·Ψ_x/s in mixed precision
    optimizer_state  + 8·Ψ_x/s (AdamW / LAMB; Adafactor: its factored state of the added
                     tensors, ``memory.optimizer_state_bytes``' rule); the teacher has none
    fsdp_buffers     ``memory.unit_buffer_bytes`` over every unit: the towers', the decoder's
                     (its own unit holds the two V×d embedding and head matrices) and the
                     teacher's
    activations      + what each training pass keeps for backward at its samples
                     (b·passes decoder samples, b·n_loc local views, b masked views), as the
                     towers' (``activations.layers_activations``), and the largest single-block
                     recompute peak over towers and passes; the teacher runs under no_grad and
                     keeps nothing (its transient working set is not counted)

Every category still peaks at once (an upper bound, as ``estimate_memory``).
"""

from __future__ import annotations

import dataclasses

from vlscale.costs.activations import activation_bytes, layers_activations
from vlscale.costs.dtypes import FP32
from vlscale.costs.memory import (
    DEFAULT_OVERHEAD_BYTES,
    MemoryBreakdown,
    adafactor_elements,
    estimate_memory,
    fsdp_units,
    unit_buffer_bytes,
)
from vlscale.costs.siglip2 import (
    added_layers,
    naflex_model,
    phase_passes,
    student_extra_params,
    teacher_unit_params,
)
from vlscale.specs.recipes import BYTES_PER_ELEMENT
from vlscale.specs.siglip2 import Phase


def phase_memory(
    spec,
    layout,
    recipe,
    phase: Phase | None,
    *,
    local_batch: int,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
) -> MemoryBreakdown:
    """Peak memory per device in ``phase`` (module docstring); SigLIP's without objectives."""
    base = estimate_memory(
        spec, layout, recipe, local_batch=local_batch, overhead_bytes=overhead_bytes
    )
    s2 = recipe.objectives
    if s2 is None or phase is None:
        return base
    passes = phase_passes(spec, s2, phase)
    added = {k: n for k, n in student_extra_params(spec, s2, phase).items() if n}
    if not passes and not added:
        return base
    s, precision = layout.shard_group, layout.precision
    mixed = precision != "fp32"
    psi_x = sum(added.values())
    teacher = teacher_unit_params(spec, s2, phase)
    shard_x, shard_t = _div(FP32 * psi_x, s), _div(FP32 * sum(teacher.values()), s)
    units = dict(fsdp_units(spec))
    for name, n in added.items():
        units[name] = units.get(name, 0) + n
    buffers = unit_buffer_bytes(units | teacher, s, precision, layout.reshard_after_forward)
    return dataclasses.replace(
        base,
        params=base.params + (0 if mixed else shard_x) + shard_t,
        grads=base.grads + shard_x,
        master_weights=base.master_weights + (shard_x if mixed else 0),
        optimizer_state=base.optimizer_state
        + _optimizer_bytes(spec, s2, phase, recipe.optimizer, s),
        fsdp_buffers=buffers if layout.wrapped else 0,
        activations=_activations(spec, layout, recipe, passes, local_batch),
    )


def _activations(spec, layout, recipe, passes, b: int) -> int:
    """The towers' activations plus every training pass's kept tensors; one recompute peak."""
    a = BYTES_PER_ELEMENT[layout.precision]
    towers = activation_bytes(spec, b, layout.precision, layout.checkpointing, recipe.mask_ratio)
    kept, peak = towers["image"] + towers["text"], towers["recompute"]
    for p in passes:
        if p.trains:
            acts = layers_activations(p.layers, b * p.per_sample, a, layout.checkpointing)
            kept, peak = kept + acts.kept, max(peak, acts.recompute)
    return kept + peak


def _optimizer_bytes(spec, s2, phase, optimizer: str, s: int) -> int:
    """The added parameters' optimizer state per device (``memory.optimizer_state_bytes``)."""
    shapes = [shape for layer in added_layers(spec, s2, phase) for shape in layer.param_shapes()]
    if optimizer != "adafactor":
        return _div(2 * FP32 * sum(_numel(x) for x in shapes), s)
    sharded = sum(x[0] if len(x) == 2 else adafactor_elements(x) for x in shapes)
    replicated = sum(x[1] for x in shapes if len(x) == 2)
    return FP32 * (_div(sharded, s) + replicated)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _div(a: int, b: int) -> int:
    return -(-a // b)


def phases_memory(
    spec, layout, recipe, *, local_batch: int, overhead_bytes: int = DEFAULT_OVERHEAD_BYTES
) -> dict[str, MemoryBreakdown]:
    """Each phase's peak memory per device (the recipe's ``objectives.phases()``); a NaFlex
    phase at its largest over its sequence lengths, each at the local batch it runs
    (``local_batch · batch_scale(n)``, at least 1), as the planner plans them."""
    s2 = recipe.objectives
    out = {}
    for phase in s2.phases():
        lengths = s2.naflex.lengths if phase.naflex else (None,)
        out[phase.name] = max(
            (
                phase_memory(
                    naflex_model(spec, phase, n),
                    layout,
                    recipe,
                    phase,
                    local_batch=local_batch if n is None else s2.naflex.batch_at(local_batch, n),
                    overhead_bytes=overhead_bytes,
                )
                for n in lengths
            ),
            key=lambda m: m.total,
        )
    return out


def run_memory(
    spec, layout, recipe, *, local_batch: int, overhead_bytes: int = DEFAULT_OVERHEAD_BYTES
) -> MemoryBreakdown:
    """The run's peak memory per device: SigLIP 2's largest phase (``phases_memory``), the
    other recipes' ``estimate_memory``."""
    if recipe.objectives is None:
        return estimate_memory(
            spec, layout, recipe, local_batch=local_batch, overhead_bytes=overhead_bytes
        )
    phases = phases_memory(
        spec, layout, recipe, local_batch=local_batch, overhead_bytes=overhead_bytes
    )
    return max(phases.values(), key=lambda m: m.total)
