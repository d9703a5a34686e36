"""Predict trainer runs, fit a profile's few free parameters to some, validate on the rest.

- ``predict(run)``: plan the run's configuration (``vlscale.calibrate.runs``) on the profile's
  device: step time, phases, memory.
- ``calibrate(device, runs)``: fit the free parameters, all physical and non-negative, by
  minimising log(predicted / measured) of each run's step time and, at half weight
  (``PHASE_WEIGHT``), of each timed phase (scipy least squares, trust-region reflective, within
  bounds). Everything the probe measured stays as measured.
- ``validate(runs)``: per-run error = predicted / measured − 1; MAPE and max |error| separately
  for **replay** (runs in the profile's ``calibration.runs``) and **prediction** (all others);
  the same with each measurement divided by the run's speed index (``error_normalised``), and
  the noise floor beside them: repeat dispersion and speed-index spread
  (``vlscale.calibrate.noise``).

Memory is compared like with like (``RunValidation.comparable_memory_bytes``): the planner's
total less what the trainer's metric (``vlscale.records.MemoryMetric``) cannot see
(``UNSEEN_MEMORY``). ``cuda_max_memory_allocated`` counts tensors only (no CUDA context or
allocator slack); ``cpu_max_rss_delta`` is the peak-RSS growth from the start of the training
loop, when parameters and fp32 masters already exist. RSS growth is a lower bound (freed memory
is reused first), so growth under ``MIN_COMPARED_MEMORY_BYTES`` is shown but not scored.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from vlscale.calibrate.noise import fit_reference, noise_summary, speed_index
from vlscale.calibrate.runs import MeasuredRun
from vlscale.errors import ConfigError
from vlscale.specs.compute_profile import Calibration
from vlscale.specs.hardware import DeviceSpec

DEFAULT_PARAMETERS = (
    "op_overhead_s",
    "dtensor_op_overhead_s",
    "unit_overhead_s",
    "step_overhead_s",
    "framework_efficiency",
)
FITTABLE = (
    *DEFAULT_PARAMETERS,
    "collective_overhead_s",
    "comm_overlap",
    "attention_fraction",
    "memory_efficiency",
)
PHASE_WEIGHT = 0.5  # of a phase's log error against the step's, in the fit
# the phases the trainer records and the planner's names for them
PHASE_MAP = {
    "forward_s": "forward",
    "loss_s": "loss",
    "backward_s": "backward",
    "optimizer_s": "optimizer",
    "data_time_s": "data",
}


MIN_COMPARED_MEMORY_BYTES = 32 * 2**20
# planner memory categories that a trainer metric does not see (module docstring)
UNSEEN_MEMORY = {
    "cuda_max_memory_allocated": ("overhead",),
    "cpu_max_rss_delta": ("params", "master_weights", "overhead"),
}


@dataclass(frozen=True)
class Prediction:
    step_s: float
    phases_s: dict[str, float]
    memory_bytes: int
    memory_breakdown: dict[str, int] = field(default_factory=dict)


def predict(run: MeasuredRun, device: DeviceSpec | None = None) -> Prediction:
    """Plan ``run``'s configuration; ``device`` replaces the named one (a profile being fitted)."""
    from vlscale.plan.planner import plan

    phase = None
    if run.phase is not None:  # a SigLIP 2 phase: that phase's step, as the planner plans it
        phases = run.config.recipe_spec().objectives.phases()
        phase = next((p for p in phases if p.name == run.phase), None)
        if phase is None:
            raise ConfigError(
                "runs", f"{run.path}: the planner has no phase '{run.phase}' for this recipe"
            )
    result = plan(run.config, device_override=device, phase=phase)
    return Prediction(
        result.step_time_s,
        dict(result.costs.phases_s),
        result.memory_per_device_bytes,
        dict(result.memory_breakdown),
    )


def _with(device: DeviceSpec, **values: float) -> DeviceSpec:
    return device.model_copy(update={"compute": device.compute.with_parameters(**values)})


# bounds above 0 (none: unbounded) and the units each parameter is fitted in, so that the
# solver's steps are well scaled (overheads in microseconds / milliseconds)
UPPER_BOUNDS = {
    "comm_overlap": 1.0,
    "attention_fraction": 2.0,
    "memory_efficiency": 1.0,
    "framework_efficiency": 1.0,
}
FIT_UNITS = {
    "op_overhead_s": 1e-6,
    "dtensor_op_overhead_s": 1e-6,
    "unit_overhead_s": 1e-4,
    "step_overhead_s": 1e-3,
    "collective_overhead_s": 1e-4,
}


def calibrate(
    device: DeviceSpec,
    runs: list[MeasuredRun],
    parameters: tuple[str, ...] = DEFAULT_PARAMETERS,
) -> DeviceSpec:
    """``device`` with its free parameters fitted to ``runs`` and the fit recorded.

    By default ``op_overhead_s`` (host cost per kernel launch), ``dtensor_op_overhead_s`` (the
    same for ops on DTensor parameters: the optimizer step and gradient clipping under FSDP2),
    ``unit_overhead_s`` (per FSDP unit and step), ``step_overhead_s`` (per step) and
    ``framework_efficiency`` (achieved fraction of the op roofline), plus
    ``collective_overhead_s`` (per collective) when a run has more than one rank;
    ``data_s_per_sample`` is set from the runs' measured data time. A parameter the runs do not
    exercise keeps its value and origin, and the calibration's ``source`` names it.
    """
    params = _parameters_to_fit(device, runs, parameters)
    device, data_fitted = _with_data_time(device, runs)
    x0, lo, hi, scale = _starting_point(device, params)
    residuals = _residuals(device, runs, params, scale)
    seen = _exercised(residuals, x0, lo, hi)
    free = [i for i, ok in enumerate(seen) if ok]
    x = x0.copy()
    if free:
        x[free] = _solve(residuals, x0, lo, hi, free)
    fitted = {
        p: float(v * s)
        for p, v, s, ok in zip(params, x, scale, seen, strict=True)
        if ok  # the unconstrained ones stay as they were
    }
    unconstrained = [p for p, ok in zip(params, seen, strict=True) if not ok]
    return _record_fit(device, runs, fitted, unconstrained, data_fitted)


def _parameters_to_fit(
    device: DeviceSpec, runs: list[MeasuredRun], parameters: tuple[str, ...]
) -> list[str]:
    """The parameters asked for, plus ``collective_overhead_s`` when a run has 2+ ranks."""
    if device.compute is None:
        raise ConfigError(
            "hardware_file",
            f"{device.name} has no compute profile to calibrate; measure one with "
            "`python -m trainer.probe --out profile.yaml`",
        )
    unknown = sorted(set(parameters) - set(FITTABLE))
    if unknown:
        raise ConfigError("params", f"cannot fit {unknown}; choose from {list(FITTABLE)}")
    if not runs:
        raise ConfigError("runs", "give at least one run to fit")
    params = list(parameters)
    if "collective_overhead_s" not in params and any(r.config.devices > 1 for r in runs):
        params.append("collective_overhead_s")
    return params


def _with_data_time(device: DeviceSpec, runs: list[MeasuredRun]) -> tuple[DeviceSpec, bool]:
    """``data_s_per_sample`` = the median over runs of data time / micro-batch (when timed)."""
    data = [
        r.phases_s["data_time_s"] / r.config.micro_batch
        for r in runs
        if "data_time_s" in r.phases_s
    ]
    if not data:
        return device, False
    return _with(device, data_s_per_sample=statistics.median(data)), True


def _starting_point(device: DeviceSpec, params: list[str]):
    """(x0, lower, upper, units): the profile's values in fit units, inside the bounds."""
    prof = device.compute
    lo = np.array([0.05 if p == "framework_efficiency" else 0.0 for p in params])
    hi = np.array([UPPER_BOUNDS.get(p, np.inf) for p in params])
    scale = np.array([FIT_UNITS.get(p, 1.0) for p in params])
    start = {"dtensor_op_overhead_s": prof.dtensor_op_overhead_s or prof.op_overhead_s}
    x0 = np.array([start.get(p, getattr(prof, p)) for p in params]) / scale
    x0 = np.clip(x0, lo, hi)
    x0 = np.where(np.isfinite(hi), np.minimum(x0, hi * 0.999), x0)
    return x0, lo, hi, scale


def _residuals(device: DeviceSpec, runs: list[MeasuredRun], params: list[str], scale):
    def residuals(x: np.ndarray) -> np.ndarray:
        """log(pred / measured) of each run's step time and, at half weight, of each phase the
        run timed: the phases tell per-launch from per-unit overhead and compute."""
        dev = _with(device, **{p: float(v * s) for p, v, s in zip(params, x, scale, strict=True)})
        out = []
        for r in runs:
            pred = predict(r, dev)
            out.append(np.log(pred.step_s / r.step_s))
            for recorded in ("forward_s", "loss_s", "backward_s", "optimizer_s"):
                m, p = r.phases_s.get(recorded), pred.phases_s.get(PHASE_MAP[recorded], 0.0)
                if m and m > 0 and p > 0:
                    out.append(PHASE_WEIGHT * np.log(p / m))
        return np.array(out)

    return residuals


def _exercised(residuals, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> list[bool]:
    """Whether perturbing each parameter changes a residual. One the fitting runs never exercise
    (e.g. the per-unit and DTensor overheads when every run is one unwrapped fp32 rank) has a
    zero Jacobian column: the solver could move it anywhere at no cost, so it is left out of the
    fit and keeps its value and origin."""
    base = residuals(x0)
    seen = []
    for i in range(len(x0)):
        moved = x0.copy()
        up = x0[i] * 2 + 1.0
        moved[i] = up if up < hi[i] else max(x0[i] / 2, lo[i])  # at a bound: look the other way
        seen.append(not np.allclose(residuals(moved), base, rtol=0, atol=1e-12))
    return seen


def _solve(residuals, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray, free: list[int]):
    """Least squares (trust-region reflective, within bounds) over the ``free`` parameters."""

    def free_residuals(y: np.ndarray) -> np.ndarray:
        full = x0.copy()
        full[free] = y
        return residuals(full)

    sol = least_squares(
        free_residuals,
        x0[free],
        bounds=(lo[free], hi[free]),
        method="trf",
        x_scale=1.0,
        diff_step=1e-3,
    )
    return sol.x


def _record_fit(
    device: DeviceSpec,
    runs: list[MeasuredRun],
    fitted: dict[str, float],
    unconstrained: list[str],
    data_fitted: bool,
) -> DeviceSpec:
    """``device`` with the fitted values, their origins and the ``Calibration`` record."""
    prof = device.compute
    errors = np.array([predict(r, _with(device, **fitted)).step_s / r.step_s - 1 for r in runs])
    origins = dict(prof.origins) | dict.fromkeys(fitted, "calibrated")
    if data_fitted:
        origins["data_s_per_sample"] = "calibrated"
    kept = f"; not constrained by these runs, kept as they were: {', '.join(unconstrained)}"
    cal = Calibration(
        parameters=fitted | ({"data_s_per_sample": prof.data_s_per_sample} if data_fitted else {}),
        runs=[r.run_id for r in runs],
        run_paths=[r.path for r in runs],
        residuals={r.run_id: float(e) for r, e in zip(runs, errors, strict=True)},
        mape=float(np.mean(np.abs(errors))),
        max_error=float(np.max(np.abs(errors))),
        source=f"vlscale calibrate: least squares on log step time over {len(runs)} runs"
        + (kept if unconstrained else ""),
    )
    new = prof.with_parameters(**fitted, origins=origins, calibration=cal)
    reference = fit_reference(prof.reference, runs)
    if reference is not None:
        new = new.model_copy(update={"reference": reference})
    return device.model_copy(update={"compute": new})


@dataclass(frozen=True)
class RunValidation:
    run: MeasuredRun
    split: str  # "replay" | "prediction"
    predicted: Prediction
    speed_index: float | None = None  # the run's reference time / the profile's

    @property
    def error(self) -> float:
        return self.predicted.step_s / self.run.step_s - 1.0

    @property
    def error_normalised(self) -> float | None:
        """predicted / (measured / speed index) − 1 (``vlscale.calibrate.noise``)."""
        if self.speed_index is None:
            return None
        return self.predicted.step_s * self.speed_index / self.run.step_s - 1.0

    @property
    def comparable_memory_bytes(self) -> int | None:
        """The planner's memory less what the run's metric cannot see; None: not measured."""
        unseen = UNSEEN_MEMORY.get(self.run.memory_metric)
        if unseen is None or self.run.peak_memory_bytes is None:
            return None
        breakdown = self.predicted.memory_breakdown
        return sum(v for k, v in breakdown.items() if k not in unseen)

    @property
    def memory_error(self) -> float | None:
        """comparable predicted / measured − 1, for runs measured above the noise floor."""
        predicted, measured = self.comparable_memory_bytes, self.run.peak_memory_bytes
        if predicted is None or measured is None or measured < MIN_COMPARED_MEMORY_BYTES:
            return None
        return predicted / measured - 1.0

    def phase_errors(self) -> dict[str, float]:
        out = {}
        for recorded, planned in PHASE_MAP.items():
            m = self.run.phases_s.get(recorded)
            if m and m > 0:
                out[planned] = self.predicted.phases_s.get(planned, 0.0) / m - 1.0
        return out


@dataclass
class Validation:
    rows: list[RunValidation] = field(default_factory=list)

    def _errors(self, split: str) -> list[float]:
        return [abs(r.error) for r in self.rows if r.split == split]

    def mape_normalised(self, split: str) -> float | None:
        """Mean |error_normalised| over the split's runs that have a speed index."""
        e = [abs(r.error_normalised) for r in self.rows if r.split == split and r.speed_index]
        return float(np.mean(e)) if e else None

    def noise(self) -> dict:
        """Repeat dispersion over configurations run more than once, speed-index spread."""
        groups: dict[str, list[float]] = {}
        for r in self.rows:
            groups.setdefault(r.run.repeat_key, []).append(r.run.step_s)
        indices = [r.speed_index for r in self.rows if r.speed_index is not None]
        return noise_summary(groups, indices)

    def summary(self, splits=("prediction",)) -> dict:
        """MAPE, mean signed error (bias) and normalised MAPE over the runs of ``splits``
        (all runs when none is in them): what ``probe_only`` reports."""
        rows = [r for r in self.rows if r.split in splits] or self.rows
        normalised = [abs(r.error_normalised) for r in rows if r.speed_index is not None]
        return {
            "runs": len(rows),
            "mape": float(np.mean([abs(r.error) for r in rows])),
            "bias": float(np.mean([r.error for r in rows])),
            "mape_normalised": float(np.mean(normalised)) if normalised else None,
        }

    def memory_mape(self) -> float | None:
        """Mean |memory error| over the runs measured above the noise floor (all splits: no
        memory parameter is fitted)."""
        e = [abs(r.memory_error) for r in self.rows if r.memory_error is not None]
        return float(np.mean(e)) if e else None

    def mape(self, split: str) -> float | None:
        e = self._errors(split)
        return float(np.mean(e)) if e else None

    def max_error(self, split: str) -> float | None:
        e = self._errors(split)
        return float(np.max(e)) if e else None

    def to_json(self) -> dict:
        """The ``vlscale validate --json`` contract (README)."""
        return {
            "runs": [
                {
                    "path": r.run.path,
                    "run_id": r.run.run_id,
                    "label": r.run.label,
                    "split": r.split,
                    "measured_step_s": r.run.step_s,
                    "predicted_step_s": r.predicted.step_s,
                    "error": r.error,
                    "speed_index": r.speed_index,
                    "error_normalised": r.error_normalised,
                    "phases_measured_s": {
                        PHASE_MAP[k]: v for k, v in r.run.phases_s.items() if k in PHASE_MAP
                    },
                    "phases_predicted_s": r.predicted.phases_s,
                    "phase_errors": r.phase_errors(),
                    "measured_peak_memory_bytes": r.run.peak_memory_bytes,
                    "memory_metric": r.run.memory_metric,
                    "predicted_memory_bytes": r.predicted.memory_bytes,
                    "predicted_comparable_memory_bytes": r.comparable_memory_bytes,
                    "memory_error": r.memory_error,
                }
                for r in self.rows
            ],
            "memory": {
                "mape": self.memory_mape(),
                "runs_scored": sum(r.memory_error is not None for r in self.rows),
                "min_measured_bytes": MIN_COMPARED_MEMORY_BYTES,
            },
            "mape": {s: self.mape(s) for s in ("replay", "prediction")},
            "max_error": {s: self.max_error(s) for s in ("replay", "prediction")},
            "mape_normalised": {s: self.mape_normalised(s) for s in ("replay", "prediction")},
            "noise": self.noise(),
        }


def validate(runs: list[MeasuredRun], device: DeviceSpec | None = None) -> Validation:
    """Predict every run; split by the profile's calibration record."""
    fitted: set[str] = set()
    if device is not None and device.compute and device.compute.calibration:
        fitted = set(device.compute.calibration.runs)
    reference = device.compute.reference if device is not None and device.compute else None
    out = Validation()
    for r in runs:
        split = "replay" if r.run_id in fitted else "prediction"
        index = speed_index(r.references, reference)
        out.rows.append(RunValidation(r, split, predict(r, device), index))
    return out
