"""P10 / P50 / P90 of step time, wall time and cost from the spread of the efficiency parameters.

A plan is deterministic given its efficiencies; what is uncertain is how well they are known.
Two multiplicative factors are drawn per Monte Carlo sample, lognormal around 1, and the same
planner (``plan``) runs with them (``PlanConfig.compute_efficiency_scale`` divides every op's
roofline time, ``comm_efficiency_scale`` every collective's transfer time):

- compute: σ from how the compute model was obtained —
  a calibrated profile (``vlscale calibrate``): its fit's replay MAPE (the residual spread);
  a catalog device (the per-op model with a stack's γ): the published record's own
  leave-one-out residuals (``vlscale.specs.stacks.compute_sigma``): the RMS of log(predicted /
  published) of the (device kind, stack) group's runs each predicted with γ fitted on the others;
  a group of one run: the record's pooled spread; a γ borrowed from another device: the pooled
  spread and the spread of γ across groups, added in quadrature; ``--utilisation``:
  ``ASSUMED_SIGMA`` = 0.25 (documented range: MFU of tuned CLIP-scale runs spans about a factor
  of 1.5 between reports);
- communication: ``COMM_SIGMA`` = 0.15, the tolerance within which the collective model holds
  published nccl-tests and scaling-book figures (tests/published/test_published_collectives.py),
  for a calibrated profile and ``--utilisation``; with the record's spread it is 0: those
  residuals are end to end and already hold the communication error.

The percentiles are empirical over the draws (numpy's linear interpolation); with zero spread
every draw is the deterministic plan, so P10 = P50 = P90 = it (tests/properties).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlscale.plan.config import PlanConfig

CALIBRATED_SIGMA = 0.10
ASSUMED_SIGMA = 0.25
COMM_SIGMA = 0.15
METRICS = ("step_time_s", "wall_time_h", "cost_usd")


@dataclass(frozen=True)
class Spread:
    """Lognormal σ of each factor and where it came from."""

    compute: float
    comm: float
    compute_source: str
    comm_source: str = "collective model's published tolerance (±15 %)"


def default_spread(config: PlanConfig) -> Spread:
    """σ of the compute and communication factors for ``config`` (module docstring)."""
    from vlscale.plan.planner import plan

    base = plan(config)
    model = base.compute
    origins = set((model.get("origins") or {}).values())
    source = str(model.get("source", ""))
    if config.utilisation is not None:
        return Spread(ASSUMED_SIGMA, COMM_SIGMA, "given --utilisation: assumed range")
    if "calibrated" in origins and "calibration_mape" in model:
        mape = float(model["calibration_mape"])
        return Spread(mape, COMM_SIGMA, f"calibrated profile: its replay MAPE {mape:.1%}")
    if "per-op model, catalog defaults" in source:
        from vlscale.specs.stacks import compute_sigma

        sigma, why = compute_sigma(config.stack, config.device)
        return Spread(sigma, 0.0, why, "included in the record's end-to-end residuals")
    gamma_part = source.split("framework efficiency", 1)[-1]
    if "calibrated on" in gamma_part:
        return Spread(CALIBRATED_SIGMA, COMM_SIGMA, "γ solved from a published run: ±10 %")
    return Spread(ASSUMED_SIGMA, COMM_SIGMA, "assumed γ / op-level defaults: ±25 %")


def plan_uncertainty(
    config: PlanConfig, draws: int = 64, seed: int = 0, spread: Spread | None = None
) -> dict:
    """Percentiles of the ``METRICS`` over ``draws`` Monte Carlo plans (module docstring)."""
    from vlscale.plan.planner import plan

    spread = spread or default_spread(config)
    rng = np.random.default_rng(seed)
    compute = np.exp(rng.normal(0.0, spread.compute, draws)) if spread.compute else np.ones(draws)
    comm = np.exp(rng.normal(0.0, spread.comm, draws)) if spread.comm else np.ones(draws)
    values = {m: [] for m in METRICS}
    for c, k in zip(compute, comm, strict=True):
        update = {"compute_efficiency_scale": float(c), "comm_efficiency_scale": float(k)}
        result = plan(config.model_copy(update=update)).to_json()
        for m in METRICS:
            values[m].append(result[m])
    out = {
        m: {f"p{q}": float(np.percentile(v, q)) for q in (10, 50, 90)} for m, v in values.items()
    }
    out["draws"] = draws
    out["spread"] = {
        "compute_sigma": spread.compute,
        "compute_source": spread.compute_source,
        "comm_sigma": spread.comm,
        "comm_source": spread.comm_source,
    }
    return out
