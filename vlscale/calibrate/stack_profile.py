"""A stack's γ measured from this project's trainer runs (``vlscale stacks fit``; torch-free).

The published stacks' γ (``vlscale.plan.published_record``) is solved per run so that the plan
reproduces the published figure, then pooled per (device kind, stack). The trainer's own stack
(``pytorch-fsdp2``, the default) is measured the same way from its run records:

- per run: γ_i in (0, 1] such that the planned step time equals the measured median step time
  (``published_record.solve_factor``; step time falls as γ rises, like a wall time);
- the stack's γ on the device kind = the geometric mean of the γ_i;
- leave-one-out: each run planned with the geometric mean of the others' γ_i; ``sigma`` = RMS of
  log(predicted / measured) over those held-out predictions (the spread ``--uncertainty`` uses).

Runs are planned as ``vlscale validate`` plans them: on the catalog device the trainer recorded
(a CUDA run: the γ the planner's catalog plans use), or on a hardware file's device (a CPU run
with the probe's profile: γ then replaces that profile's framework efficiency). The result is a
fragment (``vlscale.specs.stacks.FRAGMENT_KEYS``) the stacks loader reads from its measured folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from vlscale.calibrate.runs import MeasuredRun
from vlscale.errors import ConfigError
from vlscale.specs.hardware import DeviceSpec

SOLVE_ITERS = 30  # a small run's fixed overheads slow the fixed point down (published: 8)


@dataclass(frozen=True)
class StackMeasurement:
    """γ of ``stack`` on ``kind`` from named trainer runs, with the leave-one-out errors."""

    stack: str
    kind: str
    device: str
    gamma: float
    solved: dict[str, float]
    loo_gamma: dict[str, float]
    loo_log_residual: dict[str, float]
    measured_step_s: dict[str, float]

    @property
    def runs(self) -> tuple[str, ...]:
        return tuple(self.solved)

    @property
    def sigma(self) -> float | None:
        """RMS of the leave-one-out log residuals (None with fewer than two runs)."""
        r = list(self.loo_log_residual.values())
        return math.sqrt(sum(x * x for x in r) / len(r)) if r else None

    def loo_error(self, name: str) -> float | None:
        """(held-out predicted − measured) / measured of one run."""
        r = self.loo_log_residual.get(name)
        return None if r is None else math.expm1(r)

    def fragment(self, source: str) -> dict:
        """The measured fragment the stacks loader reads (``vlscale.specs.stacks``)."""
        sigma = self.sigma
        return {
            "stack": self.stack,
            "device_kind": self.kind,
            "gamma": round(self.gamma, 4),
            "sigma": None if sigma is None else round(sigma, 4),
            "fitted_on": list(self.runs),
            "source": source,
            "device": self.device,
            "solved": {k: round(v, 4) for k, v in self.solved.items()},
            "loo_error": {k: round(self.loo_error(k), 4) for k in self.loo_log_residual},
        }


def run_name(run: MeasuredRun) -> str:
    """'<folder>/<file stem>' (e.g. 'fit/vitb32_clip_b256'; a SigLIP 2 phase after '#'): how
    the fragment names a run."""
    path = Path(run.path)
    return f"{path.parent.name}/{path.stem}" + (f"#{run.phase}" if run.phase else "")


def planned_step_s(run: MeasuredRun, gamma: float, device: DeviceSpec | None) -> float:
    """The run's step time planned with γ (``vlscale.calibrate.run_fit.predict``)."""
    from vlscale.calibrate.run_fit import predict

    config = run.config.model_copy(update={"framework_efficiency": gamma})
    return predict(replace(run, config=config), device).step_s


def _named(runs: list[MeasuredRun]) -> dict[str, MeasuredRun]:
    """Runs by name; the same run given twice (same header) counts once."""
    out: dict[str, MeasuredRun] = {}
    seen: set[str] = set()
    for run in runs:
        if run.run_id in seen:
            continue
        seen.add(run.run_id)
        name = run_name(run)
        if name in out:
            raise ConfigError("runs", f"two different runs are named {name}; rename one file")
        out[name] = run
    return out


def measure_stack(
    runs: list[MeasuredRun], stack: str, device: DeviceSpec | None = None
) -> StackMeasurement:
    """γ of ``stack`` on the runs' device kind (module docstring)."""
    from vlscale.plan.published_record import geomean, leave_one_out, solve_factor
    from vlscale.specs.stacks import device_kind, get_stack

    get_stack(stack)  # an unknown name is a ConfigError listing the stacks
    named = _named(runs)
    devices = {device.name if device is not None else r.config.device for r in named.values()}
    kinds = sorted({device_kind(d) for d in devices})
    if len(kinds) != 1:
        raise ConfigError("runs", f"runs on device kinds {kinds}; fit one device kind at a time")
    solved = {
        name: solve_factor(
            lambda g, r=run: planned_step_s(r, g, device),
            run.step_s,
            time_like=True,
            iters=SOLVE_ITERS,
        )
        for name, run in named.items()
    }
    loo_gamma, residual = leave_one_out(
        solved,
        lambda name, g: planned_step_s(named[name], g, device),
        {name: run.step_s for name, run in named.items()},
    )
    return StackMeasurement(
        stack=stack,
        kind=kinds[0],
        device=", ".join(sorted(devices)),
        gamma=round(geomean(list(solved.values())), 6),
        solved=solved,
        loo_gamma=loo_gamma,
        loo_log_residual=residual,
        measured_step_s={name: run.step_s for name, run in named.items()},
    )
