"""Trainer run records as the planner sees them: the configuration to predict, what was measured.

A run file (``vlscale.records``) holds its whole resolved configuration in the header, so the
planner can rebuild the exact scenario: model spec, recipe (loss, implementation, mask ratio,
optimizer), world size, global batch, gradient accumulation, precision, sharding, activation
checkpointing, resharding, gradient clipping. Measured values are medians over the steps not
marked warm-up (step time, and the phases when phase timing was on).

A run also carries what says how noisy its measurement is: the reference kernel's times around
it (``ReferenceRecord``, from the campaign) and the machine it ran on (``RunHeader.machine``);
runs of the same configuration share a ``repeat_key`` (the planned configuration as JSON).

A run's identity is a fingerprint of its header line (start time, host, configuration), so the
same file under another name is still the same run.

A SigLIP 2 run measures one step per phase (its steps record the phase they ran in): it is read
as one measured run per phase (``load_measured_runs``), each compared with the planner's step of
that phase. The first step after a phase switch is left out of the phase's median, as warm-up
is at the start: it also creates the teacher (a copy of the student) and first runs the new
passes.
"""

from __future__ import annotations

import hashlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from vlscale.errors import ConfigError
from vlscale.plan.config import PlanConfig, make_plan_config
from vlscale.records import Run, RunHeader, read_run
from vlscale.specs.layout import RunLayout
from vlscale.specs.machine import MachineIdentity, ReferenceTime
from vlscale.specs.presets import get_model

PHASES = ("forward_s", "loss_s", "backward_s", "optimizer_s", "data_time_s")


@dataclass(frozen=True)
class MeasuredRun:
    """One trainer run: where it is, who it is, what to plan, and what it measured."""

    path: str
    run_id: str
    config: PlanConfig
    step_s: float  # median over timed steps
    phases_s: dict[str, float] = field(default_factory=dict)  # medians, when recorded
    peak_memory_bytes: int | None = None
    memory_metric: str = "none"
    timed_steps: int = 0
    label: str = ""
    references: tuple[ReferenceTime, ...] = ()  # the reference kernel before / after the run
    machine: MachineIdentity | None = None  # the host, as the trainer recorded it
    phase: str | None = None  # SigLIP 2: the phase these steps ran in (None: the whole run)

    @property
    def repeat_key(self) -> str:
        """Equal for runs of the same configuration (repeats of one campaign entry)."""
        return self.config.model_dump_json() + (f"#{self.phase}" if self.phase else "")


def expand_run_paths(paths: list[str]) -> list[Path]:
    """Files as given; a folder stands for the ``*.jsonl`` files under it (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.jsonl"))
            if not found:
                raise ConfigError("runs", f"{p} holds no .jsonl run files; pass run.jsonl files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise ConfigError("runs", f"no such run file or folder: {p}")
    if not out:
        raise ConfigError("runs", "give at least one run file (a trainer's OUT/run.jsonl)")
    return out


def run_fingerprint(path: Path) -> str:
    with path.open("rb") as f:
        header = f.readline().strip()
    return hashlib.sha1(header).hexdigest()[:12]


def load_measured_runs(
    path: str | Path, device: str | None, hardware_file: str | None
) -> list[MeasuredRun]:
    """Read ``path`` and rebuild its plan on ``device`` (a catalog name or a hardware-file
    device, e.g. the probe's profile): one measured run, or one per SigLIP 2 phase."""
    path = Path(path)
    run = read_run(path)
    timed = run.timed_steps()
    if not timed:
        raise ConfigError(
            "runs", f"{path} has no timed steps (all warm-up); run more steps than --timing-warmup"
        )
    config = plan_config_of(run, device, hardware_file)
    names = list(dict.fromkeys(s.phase for s in run.steps if s.phase is not None))
    if not names:
        return [_measured(run, path, config, timed, None)]
    out = []
    for i, name in enumerate(names):
        steps = [s for s in timed if s.phase == name]
        if i and steps and steps[0].step == min(s.step for s in run.steps if s.phase == name):
            steps = steps[1:]  # the switch's own step (module docstring)
        if steps:
            out.append(_measured(run, path, config, steps, name))
    return out


def load_measured_run(
    path: str | Path, device: str | None, hardware_file: str | None
) -> MeasuredRun:
    """The whole of a run that is not measured phase by phase (``load_measured_runs``)."""
    runs = load_measured_runs(path, device, hardware_file)
    if len(runs) != 1:
        raise ConfigError("runs", f"{path} ran in {len(runs)} phases; use load_measured_runs")
    return runs[0]


def _measured(run: Run, path: Path, config: PlanConfig, timed, phase: str | None) -> MeasuredRun:
    """The medians of ``timed`` steps (of ``phase``) of ``run``."""
    phases = {}
    for name in PHASES:
        values = [getattr(s, name) for s in timed if getattr(s, name) is not None]
        if values:
            phases[name] = statistics.median(values)
    peaks = [s.peak_memory_bytes for s in timed if s.peak_memory_bytes is not None]
    h = run.header
    label = (
        f"{h.model.name} {h.recipe.name}/{h.recipe.loss_impl} r={h.recipe.mask_ratio:g} "
        f"B={h.global_batch} W={h.world_size} {h.dtype} {h.sharding}"
        + (" AC" if h.activation_checkpointing else "")
        + (f" [{phase}]" if phase else "")
    )
    fingerprint = run_fingerprint(path)
    return MeasuredRun(
        path=str(path),
        run_id=f"{fingerprint}:{phase}" if phase else fingerprint,
        config=config,
        step_s=statistics.median(s.step_time_s for s in timed),
        phases_s=phases,
        peak_memory_bytes=max(peaks) if peaks else None,
        memory_metric=h.memory_metric,
        timed_steps=len(timed),
        label=label,
        references=tuple(r.time for r in run.references),
        machine=h.machine,
        phase=phase,
    )


def plan_config_of(run: Run, device: str | None, hardware_file: str | None) -> PlanConfig:
    """The PlanConfig that describes ``run`` on ``device`` (one step of its global batch);
    without ``device``, the catalog key the trainer recorded (CUDA runs)."""
    h = run.header
    cfg = h.config
    device = device or h.device_key
    if device is None:
        raise ConfigError(
            "device",
            f"{run.header.device_name} is not a catalog device; pass --device NAME with "
            "--hardware-file PROFILE (python -m trainer.probe writes one)",
        )
    try:
        preset = get_model(h.model.name)
    except ConfigError:
        preset = None
    # the same costs, not necessarily the same dump: fields added to the spec since the run
    # (e.g. a norm eps) take their defaults when an older header is read
    if preset is None or _cost_identity(preset) != _cost_identity(h.model):
        raise ConfigError(
            "runs",
            f"the run's model '{h.model.name}' is not a vlscale preset with that architecture; "
            "validate runs of preset models",
        )
    return make_plan_config(
        model=h.model.name,
        recipe=h.recipe.name,
        loss_impl=h.recipe.loss_impl,
        mask_ratio=h.recipe.mask_ratio,
        optimizer=h.recipe.optimizer,
        siglip2=h.recipe.siglip2,
        device=device,
        layout=layout_of(h),
        hardware_file=hardware_file,
        global_batch=h.global_batch,
        samples=h.global_batch,
        grad_clip=bool(cfg.get("grad_clip")),
        failures={"enabled": False},
    )


def layout_of(header: RunHeader) -> RunLayout:
    """The layout the run ran with: the header's own ``layout``, or for a trainer before it,
    one built from the header's flat fields. A header without ``wrapped`` comes from a trainer
    that wrapped even one fp32 rank. Without a recorded node size, all ranks were one host."""
    h = header
    node = h.devices_per_node or h.world_size
    if h.layout is not None:
        layout = h.layout
        return (
            layout
            if layout.devices_per_node
            else layout.model_copy(update={"devices_per_node": node})
        )
    return RunLayout(
        devices=h.world_size,
        devices_per_node=node,
        sharding=h.sharding,
        reshard_after_forward=h.config.get("reshard_after_forward", True),
        precision=h.dtype,
        checkpointing=h.activation_checkpointing,
        grad_accum=h.grad_accum,
        wrap_one_rank=h.wrapped is not False,
    )


def _cost_identity(spec) -> tuple:
    """What the planner's costs depend on: parameter count and forward FLOPs (with FLIP)."""
    from vlscale.costs.flops import forward_flops
    from vlscale.costs.params import count_params

    # FLIP's masked FLOPs tell ViT variants apart; a ResNet has no patches to drop
    masked = forward_flops(spec, 0.5).total if spec.vision.kind == "vit" else None
    return (count_params(spec).total, forward_flops(spec).total, masked)
