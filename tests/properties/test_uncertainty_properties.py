"""``vlscale plan --uncertainty``: percentiles are ordered, and with zero spread all three equal
the deterministic plan (vlscale.plan.uncertainty)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_plan_cli import vlscale
from vlscale.plan.config import make_plan_config
from vlscale.plan.planner import plan
from vlscale.plan.uncertainty import METRICS, Spread, default_spread, plan_uncertainty

configs = st.builds(
    lambda model, device, devices, per_device, recipe: make_plan_config(
        model=model,
        device=device,
        devices=devices,
        global_batch=devices * per_device,
        recipe=recipe,
        samples=10**7,
    ),
    model=st.sampled_from(["tiny-clip", "tiny-siglip", "small-clip"]),
    device=st.sampled_from(["A100-40GB", "H100", "V100", "TPUv5e"]),
    devices=st.sampled_from([1, 2, 8, 16]),
    per_device=st.sampled_from([8, 32]),
    recipe=st.sampled_from(["clip", "siglip", "eva-clip"]),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs, sigma=st.floats(0.01, 0.5), seed=st.integers(0, 100))
def test_percentiles_are_ordered(config, sigma, seed):
    out = plan_uncertainty(config, draws=9, seed=seed, spread=Spread(sigma, sigma, "test"))
    for m in METRICS:
        assert out[m]["p10"] <= out[m]["p50"] <= out[m]["p90"]
    assert out["step_time_s"]["p10"] < out["step_time_s"]["p90"]  # a spread spreads


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs)
def test_zero_spread_is_the_deterministic_plan(config):
    base = plan(config).to_json()
    out = plan_uncertainty(config, draws=3, spread=Spread(0.0, 0.0, "none"))
    for m in METRICS:
        assert out[m]["p10"] == out[m]["p50"] == out[m]["p90"] == pytest.approx(base[m], rel=1e-12)


def test_spread_follows_where_the_compute_model_came_from():
    v100 = make_plan_config(model="tiny-clip", device="V100", devices=8, global_batch=64)
    h100 = make_plan_config(model="tiny-clip", device="H100", devices=8, global_batch=64)
    assert default_spread(v100).compute < default_spread(h100).compute  # calibrated < assumed


def test_cli_uncertainty_json():
    out = vlscale(
        "plan",
        "--model",
        "tiny-clip",
        "--devices",
        "8",
        "--global-batch",
        "64",
        "--uncertainty",
        "--draws",
        "8",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    u = json.loads(out.stdout)["uncertainty"]
    assert u["draws"] == 8 and set(u["step_time_s"]) == {"p10", "p50", "p90"}
    bad = vlscale("plan", "--uncertainty", "--draws", "1")
    assert bad.returncode == 2
