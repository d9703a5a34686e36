"""Run-level planning: samples seen -> steps -> wall time, device-hours, cost, with failures.

    steps         = ceil(samples / global_batch)
    useful_time   = steps · step_time
    M             = MTBF_device / N                       cluster MTBF, N devices failing
                                                          independently (exponential)
    overhead w(τ) = δ/τ + (τ/2 + R)/M                     extra wall time per second of useful
                                                          work: checkpoint writes every τ of work
                                                          (δ each), and per failure, on average
                                                          half an interval of lost work plus the
                                                          restart R
    goodput       = 1 / (1 + w(τ))          in (0, 1]
    wall_time     = useful_time / goodput  = useful_time · (1 + w)
    device_hours  = N · wall_time / 3600;  cost = device_hours · price per device-hour

w(τ) is the first-order model of Young (1974), "A first order approximation to the optimum
checkpoint interval", CACM 17(9), restated with the restart term by Daly (2006), "A higher order
estimate of the optimum checkpoint interval for restart dumps", FGCS 22(3). Minimising δ/τ + τ/(2M)
gives Young's interval τ* = sqrt(2 δ M). It is accurate while τ + δ + R ≪ M: there it agrees with
Daly's exact expectation for exponential failures, T_wall = M·e^(R/M)·(e^((τ+δ)/M) − 1)·T_s/τ, to
second order (``tests/test_run.py`` checks both). When the first-order model is stretched
(τ + δ + R > M / 10) :class:`RunPlan` says so in ``warnings``.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from vlscale.errors import ConfigError

HOUR_S = 3600.0


class FailureModel(BaseModel):
    """Failures and checkpointing: per-device MTBF (hours), checkpoint write δ and restart R (s).

    ``checkpoint_interval_s`` is τ, seconds of useful work between checkpoints; None picks
    Young's τ* = sqrt(2 δ M).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mtbf_device_h: float = Field(gt=0, allow_inf_nan=False)
    checkpoint_write_s: float = Field(gt=0, allow_inf_nan=False)
    restart_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    checkpoint_interval_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class RunPlan(BaseModel):
    """A whole run: how many steps, how long, how many device-hours, how much money."""

    model_config = ConfigDict(frozen=True)

    samples: int
    global_batch: int
    steps: int
    step_time_s: float
    n_devices: int
    useful_time_s: float
    goodput: float
    wall_time_s: float
    device_hours: float
    cost: float
    cluster_mtbf_s: float | None = None
    checkpoint_interval_s: float | None = None
    warnings: tuple[str, ...] = ()

    @property
    def wall_time_days(self) -> float:
        return self.wall_time_s / (24 * HOUR_S)

    def plan_fields(self) -> dict[str, float | int | None]:
        """What a plan reports of its run (``vlscale.plan.planner.PlanResult``'s fields)."""
        return {
            "steps": self.steps,
            "wall_time_h": self.wall_time_s / HOUR_S,
            "device_hours": self.device_hours,
            "cost_usd": self.cost,
            "goodput": self.goodput,
            "checkpoint_interval_s": self.checkpoint_interval_s,
        }


def steps_for_samples(samples: int, global_batch: int) -> int:
    """ceil(samples / global_batch): the last, partial batch is still a step."""
    _require(samples >= 0, "samples", f"got {samples}; samples seen must be >= 0")
    _require(global_batch >= 1, "global_batch", f"got {global_batch}; use a batch of >= 1")
    return -(-int(samples) // int(global_batch))


def cluster_mtbf_s(mtbf_device_h: float, n_devices: int) -> float:
    """M = MTBF_device / N, in seconds (independent exponential failures: rates add)."""
    _require(mtbf_device_h > 0, "mtbf_device_h", "per-device MTBF must be > 0 hours")
    _require(n_devices >= 1, "n_devices", f"got {n_devices}; use at least 1 device")
    return mtbf_device_h * HOUR_S / n_devices


def young_interval_s(checkpoint_write_s: float, mtbf_s: float) -> float:
    """Young (1974): τ* = sqrt(2 δ M), the minimiser of δ/τ + τ/(2M)."""
    return math.sqrt(2.0 * checkpoint_write_s * mtbf_s)


def overhead(interval_s: float, checkpoint_write_s: float, restart_s: float, mtbf_s: float):
    """First-order extra wall time per second of useful work: δ/τ + (τ/2 + R)/M."""
    return checkpoint_write_s / interval_s + (interval_s / 2 + restart_s) / mtbf_s


def goodput(interval_s: float, checkpoint_write_s: float, restart_s: float, mtbf_s: float):
    """Fraction of wall time doing useful work, 1 / (1 + w(τ)), in (0, 1]."""
    _require(interval_s > 0, "checkpoint_interval_s", "the checkpoint interval must be > 0 s")
    return 1.0 / (1.0 + overhead(interval_s, checkpoint_write_s, restart_s, mtbf_s))


def plan_run(
    samples: int,
    global_batch: int,
    step_time_s: float,
    n_devices: int,
    price_per_device_hour: float = 0.0,
    failures: FailureModel | None = None,
) -> RunPlan:
    """Steps, wall time, device-hours and cost of a run (module docstring has the formulas)."""
    steps = steps_for_samples(samples, global_batch)
    _require(
        math.isfinite(step_time_s) and step_time_s > 0,
        "step_time_s",
        f"got {step_time_s}; give the simulated or measured seconds per step (> 0)",
    )
    _require(n_devices >= 1, "n_devices", f"got {n_devices}; use at least 1 device")
    _require(
        math.isfinite(price_per_device_hour) and price_per_device_hour >= 0,
        "price_per_device_hour",
        f"got {price_per_device_hour}; give a price >= 0 (0 for none)",
    )
    useful = steps * step_time_s
    good, mtbf, tau, warnings = 1.0, None, None, []
    if failures is not None:
        mtbf = cluster_mtbf_s(failures.mtbf_device_h, n_devices)
        tau = failures.checkpoint_interval_s or young_interval_s(failures.checkpoint_write_s, mtbf)
        good = goodput(tau, failures.checkpoint_write_s, failures.restart_s, mtbf)
        lost = tau + failures.checkpoint_write_s + failures.restart_s
        if lost > mtbf / 10:
            warnings.append(
                f"checkpoint interval + write + restart ({lost:.0f} s) "
                f"is not small against the cluster MTBF ({mtbf:.0f} s): the first-order goodput "
                "is optimistic; write checkpoints faster or restart faster"
            )
    wall = useful / good
    device_hours = n_devices * wall / HOUR_S
    return RunPlan(
        samples=samples,
        global_batch=global_batch,
        steps=steps,
        step_time_s=step_time_s,
        n_devices=n_devices,
        useful_time_s=useful,
        goodput=good,
        wall_time_s=wall,
        device_hours=device_hours,
        cost=device_hours * price_per_device_hour,
        cluster_mtbf_s=mtbf,
        checkpoint_interval_s=tau,
        warnings=tuple(warnings),
    )


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(field, message)
