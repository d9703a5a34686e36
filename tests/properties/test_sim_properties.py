"""Properties of the step simulator and the run planner (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from vlscale.costs.run import goodput, plan_run, young_interval_s
from vlscale.sim import (
    BREAKDOWN_COLUMNS,
    ClipGatherLoss,
    SiglipGatherLoss,
    SiglipRingLoss,
    Unit,
    Workload,
    critical_path_time,
    simulate,
)

SETTINGS = settings(max_examples=40, deadline=None)
dur = st.floats(min_value=0.0, max_value=4.0, allow_nan=False, allow_subnormal=False)


@st.composite
def units(draw):
    return Unit(
        forward_s=draw(dur),
        backward_s=draw(dur),
        all_gather_s=draw(dur),
        reduce_scatter_s=draw(dur),
        all_reduce_s=draw(dur),
    )


@st.composite
def losses(draw):
    kind = draw(st.sampled_from(["none", "clip", "siglip", "ring"]))
    if kind == "none":
        return None
    if kind == "ring":
        return SiglipRingLoss(
            hop_s=draw(dur),
            grad_hop_s=draw(dur),
            block_forward_s=draw(dur),
            block_backward_s=draw(dur),
        )
    cls = ClipGatherLoss if kind == "clip" else SiglipGatherLoss
    return cls(
        all_gather_s=draw(dur),
        forward_s=draw(dur),
        backward_s=draw(dur),
        reduce_scatter_s=draw(dur),
    )


@st.composite
def workloads(draw, max_world=6):
    return Workload(
        world_size=draw(st.integers(1, max_world)),
        strategy=draw(st.sampled_from(["fsdp", "ddp"])),
        reshard_after_forward=draw(st.booleans()),
        units=draw(st.lists(units(), min_size=1, max_size=4)),
        loss=draw(losses()),
        grad_norm_all_reduce_s=draw(st.sampled_from([0.0, 0.25])),
        optimizer_s=draw(dur),
    )


@SETTINGS
@given(workloads())
def test_simulated_step_equals_the_analytic_critical_path(wl):
    assert simulate(wl).steps["step_time_s"].iloc[0] == critical_path_time(wl)


def _grow(wl: Workload, where: int, field_pick: int, delta: float) -> Workload:
    """``wl`` with one duration (chosen by the two indices) longer by ``delta``."""
    data = wl.model_dump()
    slots: list[tuple[dict, str]] = [(data, "optimizer_s"), (data, "grad_norm_all_reduce_s")]
    for u in data["units"]:
        slots += [(u, k) for k in u if k.endswith("_s")]
    if data["loss"] is not None:
        slots += [(data["loss"], k) for k in data["loss"] if k.endswith("_s")]
    holder, key = slots[(where * 7 + field_pick) % len(slots)]
    holder[key] += delta
    return Workload.model_validate(data)


@SETTINGS
@given(workloads(), st.integers(0, 50), st.integers(0, 6), st.floats(0.0, 3.0))
def test_step_time_never_decreases_when_a_duration_grows(wl, where, pick, delta):
    longer = _grow(wl, where, pick, delta)
    assert critical_path_time(longer) >= critical_path_time(wl)
    assert simulate(longer).step_time_s >= simulate(wl).step_time_s


@SETTINGS
@given(workloads(), st.floats(1.0, 3.0))
def test_slower_compute_never_shortens_the_step(wl, slow):
    base = simulate(wl).step_time_s
    s = np.full((wl.world_size, 1), slow)
    assert simulate(wl, slowdowns=s).step_time_s >= base


def _rank0(res, cols=("step", "name", "start_s", "end_s")):
    ev = res.events[res.events["rank"] == 0][list(cols)]
    return ev.sort_values(list(cols)).reset_index(drop=True)


@SETTINGS
@given(workloads(max_world=5), st.integers(1, 3), st.data())
def test_two_rank_reduction_against_the_full_simulation(wl, steps, data):
    """Exact for one step, and for every step of FSDP (each step opens with a collective, the
    unit-0 all-gather, which re-synchronises the ranks). For DDP over several steps the reduction
    is an upper bound: its virtual rank is the slowest in every step at once."""
    row = st.lists(st.floats(0.5, 2.0), min_size=steps, max_size=steps)
    s = np.array(data.draw(st.lists(row, min_size=wl.world_size, max_size=wl.world_size)))
    full = simulate(wl, steps=steps, slowdowns=s, explicit_ranks=True)
    reduced = simulate(wl, steps=steps, slowdowns=s)
    if steps == 1 or wl.strategy == "fsdp":
        assert _rank0(full).equals(_rank0(reduced))
    else:
        assert (reduced.steps["end_s"] >= full.steps["end_s"]).all()


def test_reduction_is_an_upper_bound_for_ddp_when_the_straggler_moves():
    # rank 2 slow in step 0 (its optimizer ends late), rank 1 slow in step 1: no single rank is
    # the slowest in both steps, so the virtual "slowest of the rest" over-estimates
    units = [Unit(forward_s=0.0, backward_s=1.0)]
    wl = Workload(world_size=3, strategy="ddp", units=units, optimizer_s=1.0)
    s = np.array([[1.0, 1.0], [1.0, 2.0], [2.0, 1.0]])
    full = simulate(wl, steps=2, slowdowns=s, explicit_ranks=True).steps["end_s"].tolist()
    reduced = simulate(wl, steps=2, slowdowns=s).steps["end_s"].tolist()
    # step 0: the all-reduce waits for rank 2's backward (2 s); rank 0's optimizer ends at 3.
    # step 1 (full): rank 1 starts at 3 and needs 2 s, rank 2 starts at 4 and needs 1 s: the
    # all-reduce is at 5, rank 0 ends at 6. The virtual rank starts at 4 AND needs 2 s: 7.
    assert full == [3.0, 6.0]
    assert reduced == [3.0, 7.0]


@SETTINGS
@given(workloads(), st.floats(0.0, 0.5), st.integers(0, 2**16))
def test_breakdown_partitions_every_step(wl, sigma, seed):
    from vlscale.sim import StragglerModel

    res = simulate(wl, steps=3, stragglers=StragglerModel(sigma=sigma), seed=seed)
    parts = res.steps[BREAKDOWN_COLUMNS]
    assert (parts.to_numpy() >= 0).all()
    np.testing.assert_allclose(parts.sum(axis=1), res.steps["step_time_s"], rtol=1e-9, atol=1e-12)


@SETTINGS
@given(
    st.integers(0, 10**10),
    st.integers(0, 10**9),
    st.integers(1, 65_536),
    st.floats(1e-3, 10.0),
    st.integers(1, 8192),
    st.floats(0.0, 10.0),
)
def test_more_samples_never_cost_less(samples, extra, batch, step_s, n, price):
    a = plan_run(samples, batch, step_s, n, price)
    b = plan_run(samples + extra, batch, step_s, n, price)
    assert b.steps >= a.steps
    assert b.wall_time_s >= a.wall_time_s
    assert b.cost >= a.cost


pos = st.floats(1e-3, 1e6, allow_nan=False)


@SETTINGS
@given(pos, pos, st.floats(0.0, 1e6), pos)
def test_goodput_is_a_fraction(tau, delta, restart, mtbf):
    assert 0.0 < goodput(tau, delta, restart, mtbf) <= 1.0


@SETTINGS
@given(pos, st.floats(0.0, 1e5), pos, st.floats(1.001, 10.0))
def test_youngs_interval_beats_its_neighbours(delta, restart, mtbf, f):
    best = young_interval_s(delta, mtbf)
    g = goodput(best, delta, restart, mtbf)
    assert goodput(best * f, delta, restart, mtbf) <= g
    assert goodput(best / f, delta, restart, mtbf) <= g


def test_growth_helper_really_changes_a_duration():
    wl = Workload(world_size=2, units=[Unit(forward_s=1.0, backward_s=1.0)])
    assert _grow(wl, 0, 0, 1.0) != wl
    # slot 2 is the first unit's forward_s: the step grows by exactly the delta
    assert critical_path_time(_grow(wl, 0, 2, 1.0)) == critical_path_time(wl) + 1.0
