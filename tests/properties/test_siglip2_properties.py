"""Properties of SigLIP 2 plans (hypothesis), over random tiny scenarios: objectives on or off,
phase starts, devices, batch, precision, sharding, checkpointing and loss implementation.

- every objective off gives exactly SigLIP's plan (every key of ``plan --json`` but the recipe's
  name and the SigLIP 2 keys), ring and gather;
- an objective adds cost only in the phases it is on: a phase without it plans to the same
  numbers with or without it in the spec; a phase with the decoder, distillation or masked
  prediction has more model FLOPs than the same span planned without it;
- the run's wall time and cost are the sums of the phases' (each phase's share of the samples
  at its own samples per second);
- ring and gather both plan every spec.
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlscale.plan import make_plan_config, plan

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OBJECTIVES = ("decoder", "distill", "masked", "naflex")
S2_KEYS = {"recipe", "siglip2", "phases", "binding_phase"}
# the phase numbers that must not move when an objective that is off in the phase changes
PHASE_NUMBERS = ("step_time_s", "samples_per_step", "memory_per_device_bytes")


@st.composite
def scenarios(draw) -> dict:
    world = draw(st.sampled_from([1, 2, 4, 8]))
    per_rank = draw(st.sampled_from([8, 16, 32]))
    return {
        "model": draw(st.sampled_from(["tiny-siglip", "tiny-clip"])),
        "device": "H100",
        "devices": world,
        "global_batch": per_rank * world,
        "samples": draw(st.sampled_from([10**6, 3 * 10**6 + 17])),
        "precision": draw(st.sampled_from(["bf16", "fp32"])),
        "sharding": draw(st.sampled_from(["fsdp", "ddp"])),
        "checkpointing": draw(st.booleans()),
        "loss_impl": draw(st.sampled_from(["gather", "ring"])),
    }


def _s2(on: set[str], distill_start: float = 0.8, naflex_start: float = 0.9) -> dict:
    spec = {name: ({} if name in on else None) for name in OBJECTIVES}
    return spec | {"distill_start": distill_start, "naflex_start": naflex_start}


def _plan(scenario: dict, **extra) -> dict:
    return plan(make_plan_config(scenario | extra)).to_json()


@FEW
@given(scenarios())
def test_every_objective_off_is_siglip_exactly(scenario):
    siglip = _plan(scenario, recipe="siglip")
    off = _plan(scenario, recipe="siglip2", siglip2=_s2(set()))
    assert off["recipe"] == "siglip2" and [p["name"] for p in off["phases"]] == ["base"]
    keys = (set(siglip) | set(off)) - S2_KEYS
    assert {k: off.get(k) for k in keys} == {k: siglip.get(k) for k in keys}


@st.composite
def starts(draw) -> tuple[float, float]:
    a = draw(st.sampled_from([0.25, 0.5, 0.8]))
    return a, draw(st.sampled_from([a, (a + 1) / 2, 1.0]))


@FEW
@given(scenarios(), st.sets(st.sampled_from(OBJECTIVES), min_size=1), starts(), st.data())
def test_an_objective_costs_only_in_its_phases(scenario, on, when, data):
    x = data.draw(st.sampled_from(sorted(on)))
    with_x = _plan(scenario, recipe="siglip2", siglip2=_s2(on, *when))
    without = _plan(scenario, recipe="siglip2", siglip2=_s2(on - {x}, *when))
    for phase in with_x["phases"]:
        twin = _covering(without["phases"], phase["start_fraction"])
        if x not in phase["objectives"]:
            assert twin["objectives"] == phase["objectives"]
            assert {k: twin[k] for k in PHASE_NUMBERS} == {k: phase[k] for k in PHASE_NUMBERS}
            assert twin["model_flops_per_step"] == phase["model_flops_per_step"]
        elif x != "naflex":
            assert phase["model_flops_per_step"] > twin["model_flops_per_step"]
            assert phase["step_time_s"] > twin["step_time_s"]


def _covering(phases: list[dict], start: float) -> dict:
    return next(p for p in phases if p["start_fraction"] <= start < p["end_fraction"])


@FEW
@given(scenarios(), st.sets(st.sampled_from(OBJECTIVES)), starts())
def test_run_wall_time_and_cost_are_the_phase_weighted_sums(scenario, on, when):
    r = _plan(scenario, recipe="siglip2", siglip2=_s2(on, *when))
    phases = r["phases"]
    assert math.isclose(r["wall_time_h"], sum(p["wall_time_h"] for p in phases), rel_tol=1e-9)
    assert math.isclose(r["cost_usd"], sum(p["cost_usd"] for p in phases), rel_tol=1e-9)
    # each phase's share of the samples at its own samples per second
    batch = scenario["global_batch"]
    t_eff = sum(
        (p["end_fraction"] - p["start_fraction"]) * p["step_time_s"] * batch / p["samples_per_step"]
        for p in phases
    )
    useful_h = r["steps"] * t_eff / 3600.0
    assert math.isclose(r["wall_time_h"] * r["goodput"], useful_h, rel_tol=1e-9)
    assert r["memory_per_device_bytes"] == max(p["memory_per_device_bytes"] for p in phases)
    assert math.isclose(sum(p["end_fraction"] - p["start_fraction"] for p in phases), 1.0)


@FEW
@given(scenarios(), st.sets(st.sampled_from(OBJECTIVES)))
def test_ring_and_gather_both_plan(scenario, on):
    plans = {
        impl: _plan(scenario | {"loss_impl": impl}, recipe="siglip2", siglip2=_s2(on))
        for impl in ("gather", "ring")
    }
    names = {impl: [p["name"] for p in r["phases"]] for impl, r in plans.items()}
    assert names["gather"] == names["ring"]
    for r in plans.values():
        assert r["loss_impl"] in ("gather", "ring")
        assert all(math.isfinite(p["step_time_s"]) and p["step_time_s"] > 0 for p in r["phases"])
        assert r["cost_usd"] > 0 or r["device_hours"] >= 0
    # the loss's own FLOPs are the same in both (6·b·B·e): the towers' and passes' too
    flops = {impl: [p["model_flops_per_step"] for p in r["phases"]] for impl, r in plans.items()}
    assert all(
        math.isclose(a, b, rel_tol=1e-12)
        for a, b in zip(flops["gather"], flops["ring"], strict=True)
    )
