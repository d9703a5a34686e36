"""Run planning: samples -> steps -> wall time, device-hours, cost; failures and goodput."""

from __future__ import annotations

import math

import pytest

from vlscale.costs.run import (
    FailureModel,
    cluster_mtbf_s,
    goodput,
    plan_run,
    steps_for_samples,
    young_interval_s,
)
from vlscale.errors import ConfigError


@pytest.mark.parametrize(
    ("samples", "batch", "steps"), [(0, 4, 0), (1, 4, 1), (8, 4, 2), (9, 4, 3), (12_800, 128, 100)]
)
def test_steps_round_up_the_last_partial_batch(samples, batch, steps):
    assert steps_for_samples(samples, batch) == steps


def test_plan_without_failures_is_plain_arithmetic():
    plan = plan_run(
        samples=1000, global_batch=100, step_time_s=1.5, n_devices=8, price_per_device_hour=2.0
    )
    assert plan.steps == 10
    assert plan.useful_time_s == plan.wall_time_s == 15.0
    assert plan.goodput == 1.0
    assert plan.device_hours == pytest.approx(8 * 15.0 / 3600)
    assert plan.cost == pytest.approx(plan.device_hours * 2.0)


def test_cluster_mtbf_divides_by_devices():
    assert cluster_mtbf_s(50_000, 1) == 50_000 * 3600
    assert cluster_mtbf_s(50_000, 1000) == pytest.approx(50 * 3600)


def test_young_interval_worked_example():
    # δ = 5 min, M = 24 h: τ* = sqrt(2 · 300 · 86400) = 7200 s exactly
    assert young_interval_s(300.0, 86_400.0) == 7200.0


def test_young_interval_is_the_first_order_optimum():
    d, r, m = 60.0, 300.0, 20_000.0
    best = young_interval_s(d, m)
    g = goodput(best, d, r, m)
    for f in (0.5, 0.9, 0.99, 1.01, 1.1, 2.0):
        assert goodput(best * f, d, r, m) < g


def exponential_goodput(tau: float, d: float, r: float, m: float) -> float:
    """Daly (2006), the exact expectation for exponential failures: τ / (M e^(R/M) (e^((τ+δ)/M)
    − 1)); an independent reference for the first-order ``goodput`` the planner uses."""
    return tau / (m * math.exp(r / m) * math.expm1((tau + d) / m))


def test_first_order_goodput_approaches_the_exact_exponential_model():
    # τ, δ, R ≪ M: the two agree to second order in (τ+δ+R)/M
    d, r, m = 10.0, 30.0, 1e7
    tau = young_interval_s(d, m)
    assert goodput(tau, d, r, m) == pytest.approx(exponential_goodput(tau, d, r, m), rel=1e-5)
    # τ comparable to M: the first-order model is optimistic
    assert goodput(5000, 500, 500, 5000) > exponential_goodput(5000, 500, 500, 5000)


def test_failures_lengthen_the_run_by_one_over_goodput():
    fm = FailureModel(mtbf_device_h=50_000, checkpoint_write_s=60, restart_s=600)
    plan = plan_run(
        samples=10**9,
        global_batch=32_768,
        step_time_s=0.8,
        n_devices=1024,
        price_per_device_hour=2.5,
        failures=fm,
    )
    m = 50_000 * 3600 / 1024
    assert plan.cluster_mtbf_s == pytest.approx(m)
    assert plan.checkpoint_interval_s == pytest.approx(math.sqrt(2 * 60 * m))
    assert 0 < plan.goodput < 1
    assert plan.wall_time_s == pytest.approx(plan.useful_time_s / plan.goodput)
    assert plan.device_hours == pytest.approx(1024 * plan.wall_time_s / 3600)
    assert plan.warnings == ()


def test_explicit_interval_is_used_and_a_stretched_model_warns():
    fm = FailureModel(
        mtbf_device_h=1000, checkpoint_write_s=600, restart_s=1800, checkpoint_interval_s=7200
    )
    plan = plan_run(samples=10**6, global_batch=1000, step_time_s=1.0, n_devices=4096, failures=fm)
    assert plan.checkpoint_interval_s == 7200
    assert plan.warnings and "MTBF" in plan.warnings[0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"global_batch": 0}, "global_batch"),
        ({"samples": -1}, "samples"),
        ({"step_time_s": 0.0}, "step_time_s"),
        ({"step_time_s": float("nan")}, "step_time_s"),
        ({"n_devices": 0}, "n_devices"),
        ({"price_per_device_hour": -1.0}, "price_per_device_hour"),
    ],
)
def test_bad_plan_inputs_name_the_field(kwargs, field):
    args = dict(samples=100, global_batch=10, step_time_s=1.0, n_devices=2) | kwargs
    with pytest.raises(ConfigError) as err:
        plan_run(**args)
    assert err.value.field == field
