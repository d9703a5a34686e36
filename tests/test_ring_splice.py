"""A spliced ring (vlscale.sim.program) gives the full walk's step time, critical path and
breakdown, to float rounding, whatever the durations, stragglers, sharding or steps."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlscale.sim import (
    BREAKDOWN_COLUMNS,
    InputPipeline,
    SiglipRingLoss,
    StragglerModel,
    Unit,
    Workload,
    critical_path_time,
    simulate,
)
from vlscale.sim.program import compile_program

SMALL = 8  # full_ring_max for the tests: every ring of more than 33 ranks is spliced
REL = 1e-9

dur = st.floats(min_value=0.0, max_value=1e-3, allow_nan=False, allow_subnormal=False)
big = st.floats(min_value=0.0, max_value=0.5, allow_nan=False, allow_subnormal=False)


@st.composite
def ring_workloads(draw):
    n_units = draw(st.integers(1, 3))
    units = tuple(
        Unit(
            forward_s=draw(big) / 10,
            backward_s=draw(big) / 10,
            all_gather_s=draw(big),  # may outlast the whole ring
            reduce_scatter_s=draw(big) / 10,
            all_reduce_s=draw(big) / 10,
        )
        for _ in range(n_units)
    )
    hop = draw(dur)
    loss = SiglipRingLoss(
        hop_s=hop,
        grad_hop_s=draw(st.sampled_from([hop, 0.0])) if draw(st.booleans()) else draw(dur),
        block_forward_s=draw(dur),
        block_backward_s=draw(dur),
    )
    return Workload(
        world_size=draw(st.integers(34, 700)),
        strategy=draw(st.sampled_from(["ddp", "fsdp"])),
        reshard_after_forward=draw(st.booleans()),
        units=units,
        loss=loss,
        grad_norm_all_reduce_s=draw(big) / 100,
        optimizer_s=draw(big) / 10,
    )


def _close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= REL * max(scale, 1e-300)


def _assert_same(full, fast):
    step = full.step_time_s
    assert _close(fast.step_time_s, step, step)
    for a, b in zip(full.step_ends, fast.step_ends, strict=True):
        assert _close(a, b, full.step_ends[-1])
    for col in BREAKDOWN_COLUMNS:
        assert _close(fast.breakdown[col], full.breakdown[col], step), col


@settings(max_examples=60, deadline=None)
@given(wl=ring_workloads())
def test_spliced_critical_path_equals_the_full_walk(wl):
    full = critical_path_time(wl)
    assert _close(critical_path_time(wl, SMALL), full, full)


@settings(max_examples=40, deadline=None)
@given(
    wl=ring_workloads(),
    sigma=st.sampled_from([0.0, 0.05, 0.5]),
    steps=st.integers(1, 3),
    seed=st.integers(0, 50),
)
def test_spliced_simulation_equals_the_full_walk(wl, sigma, steps, seed):
    stragglers = StragglerModel(sigma=sigma) if sigma else None
    kw = dict(steps=steps, stragglers=stragglers, seed=seed)
    full = simulate(wl, full_ring_max=None, **kw)
    fast = simulate(wl, full_ring_max=SMALL, **kw)
    _assert_same(full, fast)


@pytest.mark.parametrize("world", [34, 100, 1500, 3000])
@pytest.mark.parametrize("sigma", [0.0, 0.2])
@pytest.mark.parametrize("regime", ["compute", "hops", "tie"])
def test_rings_of_several_sizes(world, sigma, regime):
    """Compute-bound blocks, hop-bound blocks, and block = two hops (backward's tie)."""
    block, hop = {"compute": (2e-4, 5e-5), "hops": (5e-5, 2e-4), "tie": (1e-4, 5e-5)}[regime]
    loss = SiglipRingLoss(
        hop_s=hop, grad_hop_s=hop, block_forward_s=block / 2, block_backward_s=block
    )
    units = tuple(Unit(forward_s=0.01, backward_s=0.02, all_gather_s=0.05) for _ in range(3))
    wl = Workload(world_size=world, strategy="fsdp", units=units, loss=loss)
    stragglers = StragglerModel(sigma=sigma) if sigma else None
    full = simulate(wl, steps=2, stragglers=stragglers, full_ring_max=None)
    fast = simulate(wl, steps=2, stragglers=stragglers, full_ring_max=SMALL)
    _assert_same(full, fast)
    assert _close(critical_path_time(wl, SMALL), critical_path_time(wl), full.step_time_s)
    # the splice really leaves the middle out
    assert len(fast.records) < len(full.records) or world < 40


def test_given_slowdowns_per_rank_splice_exactly():
    loss = SiglipRingLoss(hop_s=1e-4, grad_hop_s=1e-4, block_forward_s=1e-4, block_backward_s=2e-4)
    wl = Workload(
        world_size=300, strategy="ddp", units=(Unit(forward_s=0.1, backward_s=0.2),), loss=loss
    )
    s = np.random.default_rng(1).lognormal(0.0, 0.3, size=(300, 3))
    full = simulate(wl, steps=3, slowdowns=s, full_ring_max=None)
    fast = simulate(wl, steps=3, slowdowns=s, full_ring_max=SMALL)
    _assert_same(full, fast)


def test_an_input_pipeline_over_several_steps_walks_every_block():
    loss = SiglipRingLoss(hop_s=1e-4, grad_hop_s=1e-4, block_forward_s=1e-4, block_backward_s=1e-4)
    wl = Workload(
        world_size=300,
        units=(Unit(forward_s=0.1, backward_s=0.2),),
        loss=loss,
        input=InputPipeline(batch_decode_s=0.2),
    )
    full = simulate(wl, steps=3, full_ring_max=None)
    fast = simulate(wl, steps=3, full_ring_max=SMALL)
    assert len(fast.records) == len(full.records)
    assert fast.step_time_s == full.step_time_s


def test_short_rings_are_walked_and_long_ones_spliced():
    loss = SiglipRingLoss(hop_s=1e-4, grad_hop_s=1e-4, block_forward_s=1e-4, block_backward_s=1e-4)
    units = (Unit(forward_s=0.1, backward_s=0.2),)
    short = compile_program(Workload(world_size=1024, units=units, loss=loss), 1024)
    long = compile_program(Workload(world_size=131072, units=units, loss=loss), 1024)
    assert not short.splices
    assert len(long.splices) == 2 and len(long.ops) < 200


@pytest.mark.parametrize("world", [1, 2, 7, 64, 1000])
def test_ring_blocks_priced_once_give_the_written_out_sums(world):
    """The workload builder prices one ring block and repeats it; its sums, table and model
    FLOPs equal those of the op list with all W blocks written out, bit for bit."""
    from vlscale.costs.flops import model_flops_per_sample
    from vlscale.costs.step_ops import ring_loss_ops
    from vlscale.plan.compute_model import resolve_compute
    from vlscale.plan.op_pricer import OpPricer
    from vlscale.plan.workload_builder import _model_flops_per_sample
    from vlscale.specs.catalog import get_device
    from vlscale.specs.presets import resolve_model

    res = resolve_compute(get_device("H100")).resources
    b, e = 16, 768
    written, repeated = OpPricer(res, 0.33), OpPricer(res, 0.33)
    full, one = ring_loss_ops(b, world, e), ring_loss_ops(b, 1, e)
    assert written(full.blocks_forward) == repeated.repeat(one.blocks_forward, world)
    assert written(full.blocks_backward) == repeated.repeat(one.blocks_backward, world)
    assert written(full.outside_forward) == repeated(one.outside_forward)
    for value, keep in ((lambda t: t.op.flops, lambda t: True), (lambda t: t.time_s, None)):
        keep = keep or (lambda t: t.op.flops > 0)
        assert repeated.total(value, keep) == sum(value(t) for t in written.table if keep(t))
    assert [(t.time_s, t.op.flops, t.op.kind) for t in repeated.table] == [
        (t.time_s, t.op.flops, t.op.kind) for t in written.table
    ]

    spec = resolve_model("ViT-L-14")
    kw = dict(mask_ratio=0.0, loss="sigmoid", loss_impl="ring", local_batch=b, world_size=world)
    assert _model_flops_per_sample(spec, **kw) == model_flops_per_sample(spec, **kw)


@pytest.mark.parametrize("world", [1024, 4096])
@pytest.mark.parametrize(
    "flags", [{"sharding": "ddp"}, {"sharding": "fsdp"}, {"straggler_sigma": 0.1, "sim_steps": 3}]
)
def test_a_spliced_plan_equals_the_full_walk(world, flags):
    """`vlscale plan` splices long rings; a kept simulation (traces) walks every block."""
    from vlscale.plan import make_plan_config, plan

    cfg = make_plan_config(
        model="ViT-B-16-SigLIP", recipe="siglip", loss_impl="ring", devices=world,
        global_batch=16 * world, **flags,
    )  # fmt: skip
    fast, full = plan(cfg), plan(cfg, keep_sim=True)
    assert _close(fast.step_time_s, full.step_time_s, full.step_time_s)
    assert _close(fast.critical_path_s, full.critical_path_s, full.step_time_s)
    for col in BREAKDOWN_COLUMNS:
        assert _close(fast.breakdown[col], full.breakdown[col], full.step_time_s), col
    assert fast.sim is None and len(full.sim.events) > 4 * world  # every block and hop
