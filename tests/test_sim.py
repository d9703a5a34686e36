"""Step simulator: hand-timed schedules, data stalls, stragglers, FSDP/DDP, ring overlap, trace.

Durations are binary fractions, so hand-derived times are exact in floating point.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from vlscale.errors import ConfigError
from vlscale.sim import (
    BREAKDOWN_COLUMNS,
    ClipGatherLoss,
    InputPipeline,
    SiglipGatherLoss,
    SiglipRingLoss,
    StragglerModel,
    Unit,
    Workload,
    critical_path_time,
    simulate,
)


def _timeline(result, rank=0):
    """{op name: (start, end)} of one rank's first step, compute/comm only."""
    ev = result.events
    ev = ev[(ev["rank"] == rank) & (ev["step"] == 0) & (ev["stream"] != "input")]
    return {row.name: (row.start_s, row.end_s) for row in ev.itertuples()}


def test_fsdp_two_units_event_by_event():
    units = [
        Unit(name="a", forward_s=1.0, backward_s=2.0, all_gather_s=0.5, reduce_scatter_s=0.5),
        Unit(name="b", forward_s=1.5, backward_s=3.0, all_gather_s=0.75, reduce_scatter_s=0.25),
    ]
    wl = Workload(world_size=4, units=units, optimizer_s=0.25)
    got = _timeline(simulate(wl))
    # derived by hand from the FSDP2 schedule (program.py docstring), prefetch depth one:
    expected = {
        "ag fwd a": (0.0, 0.5),  # first gather at step start
        "fwd a": (0.5, 1.5),
        "ag fwd b": (0.5, 1.25),  # issued when fwd a starts
        "fwd b": (1.5, 3.0),
        "ag bwd b": (1.5, 2.25),  # no loss: issued when the last forward starts
        "bwd b": (3.0, 6.0),
        "ag bwd a": (3.0, 3.5),  # issued when bwd b starts
        "rs b": (6.0, 6.25),
        "bwd a": (6.0, 8.0),
        "rs a": (8.0, 8.5),
        "optimizer": (8.5, 8.75),  # after the last reduce-scatter
    }
    assert got == expected
    assert critical_path_time(wl) == 8.75


def test_ddp_with_siglip_gather_loss_event_by_event_and_breakdown():
    units = [
        Unit(name="a", forward_s=1.0, backward_s=2.0, all_reduce_s=1.0),
        Unit(name="b", forward_s=1.0, backward_s=2.0, all_reduce_s=1.5),
    ]
    loss = SiglipGatherLoss(all_gather_s=0.5, forward_s=0.25, backward_s=0.5, reduce_scatter_s=0.5)
    wl = Workload(world_size=2, strategy="ddp", units=units, loss=loss, optimizer_s=0.5)
    res = simulate(wl)
    expected = {
        "fwd a": (0.0, 1.0),
        "fwd b": (1.0, 2.0),
        "ag text emb": (2.0, 2.5),
        "loss fwd": (2.5, 2.75),
        "loss bwd": (2.75, 3.25),
        "rs text emb": (3.25, 3.75),
        "bwd b": (3.75, 5.75),
        "ar b": (5.75, 7.25),
        "bwd a": (5.75, 7.75),
        "ar a": (7.75, 8.75),
        "optimizer": (8.75, 9.25),
    }
    assert _timeline(res) == expected
    row = res.steps.iloc[0]
    assert row["step_time_s"] == 9.25
    assert row["compute"] == 1 + 1 + 0.25 + 0.5 + 2 + 2 + 0.5
    assert (row["all_gather"], row["reduce_scatter"], row["all_reduce"]) == (0.5, 0.5, 1.0)
    assert row["idle"] == row["data_stall"] == row["p2p"] == 0.0


def test_clip_gather_has_two_gathers_and_two_reduce_scatters_per_step():
    loss = ClipGatherLoss(all_gather_s=0.5, forward_s=1.0, backward_s=1.0, reduce_scatter_s=0.5)
    wl = Workload(world_size=8, units=[Unit(forward_s=1, backward_s=2)], loss=loss)
    names = set(simulate(wl).events["name"])
    assert {"ag image emb", "ag text emb", "rs image emb", "rs text emb"} <= names
    # loss backward waits for the gathers: both loss gathers end before the loss forward starts
    tl = _timeline(simulate(wl))
    assert tl["loss fwd"][0] == max(tl["ag image emb"][1], tl["ag text emb"][1])


def _tiny(**kw) -> Workload:
    base = dict(world_size=1, strategy="ddp", units=[Unit(forward_s=1.0, backward_s=1.0)])
    return Workload(**(base | kw))


def test_slow_input_pipeline_starves_every_step():
    wl = _tiny(input=InputPipeline(workers=1, batch_decode_s=3.0, queue_depth=2))
    res = simulate(wl, steps=4)
    # batch i is ready at 3(i+1); a step computes for 2 s, so it waits 3 s first, then 1 s
    assert res.steps["data_stall"].tolist() == [3.0, 1.0, 1.0, 1.0]
    assert res.steps["step_time_s"].tolist() == [5.0, 3.0, 3.0, 3.0]
    assert res.steps["compute"].tolist() == [2.0] * 4


def test_fast_input_pipeline_stalls_only_the_first_batch():
    wl = _tiny(input=InputPipeline(workers=2, batch_decode_s=0.5, queue_depth=2))
    res = simulate(wl, steps=5, warmup_steps=1)
    assert res.steps["data_stall"].tolist() == [0.5, 0, 0, 0, 0]
    assert res.p50_s == res.p95_s == 2.0  # warm-up step excluded from the statistics


def test_bounded_queue_blocks_the_worker():
    wl = _tiny(input=InputPipeline(workers=1, batch_decode_s=0.5, queue_depth=1))
    ev = simulate(wl, steps=4).events
    starts = ev[ev["kind"] == "decode"].set_index("step")["start_s"]
    # batch 0 taken at 0.5, batch 1 fills the only slot at 1.0, batch 2 waits to be put until
    # step 1 takes batch 1 (at 2.5), so the worker starts batch 3 only then
    assert starts.tolist() == [0.0, 0.5, 1.0, 2.5]


def _one_unit_fsdp(world: int) -> Workload:
    u = Unit(forward_s=1.0, backward_s=2.0, all_gather_s=0.5, reduce_scatter_s=0.5)
    return Workload(world_size=world, units=[u], reshard_after_forward=False)


@pytest.mark.parametrize("slow_rank", [1, 5, 7])
def test_slowest_member_decides_the_collective(slow_rank):
    wl = _one_unit_fsdp(8)
    s = np.ones((8, 1))
    s[slow_rank] = 2.0
    for explicit in (False, True):
        res = simulate(wl, slowdowns=s, explicit_ranks=explicit)
        tl = _timeline(res)
        # the slow rank finishes backward at 0.5 + 2·(1 + 2) = 6.5; rank 0 waits for it
        assert tl["rs unit0"] == (6.5, 7.0)
        assert tl["bwd unit0"] == (1.5, 3.5)
        row = res.steps.iloc[0]
        assert row["step_time_s"] == 7.0
        assert row["idle"] == 3.0  # rank 0 idle at the barrier


def test_stragglers_slow_a_big_job_within_the_order_statistic_bound():
    wl = _one_unit_fsdp(4096)
    nominal = critical_path_time(wl)
    sigma = 0.1
    res = simulate(wl, steps=20, stragglers=StragglerModel(sigma=sigma), seed=3)
    # the max of 4095 standard normals is almost surely in (2, 5): compute (3 s) scales by it
    assert nominal + 3 * (np.exp(2 * sigma) - 1) < res.p50_s <= res.p95_s
    assert res.p95_s < nominal + 3 * (np.exp(5 * sigma) - 1)
    assert set(res.events["rank"]) == {0, 1}


def test_order_statistic_max_matches_brute_force_max():
    model = StragglerModel(sigma=0.3)
    k = 50
    fast = model.draw_max(np.random.default_rng(1), k, 4000)
    brute = model.draw(np.random.default_rng(2), (4000, k)).max(axis=1)
    assert stats.ks_2samp(fast, brute).pvalue > 1e-3
    # and clearly not the distribution of a single draw
    single = model.draw(np.random.default_rng(3), (4000,))
    assert stats.ks_2samp(fast, single).pvalue < 1e-6


def _units(n=3):
    return [
        Unit(
            forward_s=1.0, backward_s=2.0, all_gather_s=0.75, reduce_scatter_s=0.5, all_reduce_s=1.0
        )
        for _ in range(n)
    ]


def test_reshard_after_forward_off_removes_backward_all_gathers():
    on = simulate(Workload(world_size=8, units=_units(), reshard_after_forward=True)).events
    off = simulate(Workload(world_size=8, units=_units(), reshard_after_forward=False)).events
    assert len(on[on["name"].str.startswith("ag bwd")]) == 3
    assert len(off[off["name"].str.startswith("ag bwd")]) == 0
    assert len(off[off["kind"] == "all_gather"]) == 3
    assert off["end_s"].max() <= on["end_s"].max()


def test_ddp_has_no_gathers_and_fsdp_no_all_reduce():
    fsdp = simulate(Workload(world_size=8, units=_units(), strategy="fsdp")).events
    ddp = simulate(Workload(world_size=8, units=_units(), strategy="ddp")).events
    assert set(fsdp["kind"]) & {"all_reduce"} == set()
    assert set(ddp["kind"]) & {"all_gather", "reduce_scatter"} == set()
    assert (ddp["kind"] == "all_reduce").sum() == 3
    # DDP: forward has no communication, so compute runs back to back until the optimizer,
    # and only the last bucket's all-reduce (1.0) is exposed: 3·1 + 3·2 + 1
    assert ddp["end_s"].max() == 10.0


def _ring(world, c_fwd, c_bwd, hop, grad_hop):
    loss = SiglipRingLoss(
        hop_s=hop, grad_hop_s=grad_hop, block_forward_s=c_fwd, block_backward_s=c_bwd
    )
    return Workload(
        world_size=world, strategy="ddp", units=[Unit(forward_s=1, backward_s=1)], loss=loss
    )


@pytest.mark.parametrize("world", [2, 5, 16])
def test_ring_hops_hide_behind_block_compute_except_the_last_grad_hop(world):
    res = simulate(_ring(world, c_fwd=0.5, c_bwd=1.0, hop=0.5, grad_hop=0.25))
    row = res.steps.iloc[0]
    assert row["p2p"] == pytest.approx(0.25, abs=1e-12)
    assert row["step_time_s"] == pytest.approx(1 + world * 0.5 + world * 1.0 + 0.25 + 1)
    assert (res.events["kind"] == "p2p").sum() == 2 * (world - 1) + world


def test_ring_hops_slower_than_blocks_are_exposed():
    world, c, h = 6, 0.25, 1.0
    ev = simulate(_ring(world, c_fwd=c, c_bwd=1.0, hop=h, grad_hop=0.0)).events
    fwd = ev[ev["name"].str.startswith("ring fwd block")]
    # each block waits for its hop: the forward pass spans (W-1)·h + c
    assert fwd["end_s"].max() - fwd["start_s"].min() == (world - 1) * h + c


def test_ring_single_rank_has_no_hops():
    res = simulate(_ring(1, 0.5, 1.0, 0.5, 0.5))
    assert (res.events["kind"] == "p2p").sum() == 0


def test_breakdown_columns_sum_to_step_time():
    loss = ClipGatherLoss(all_gather_s=0.3, forward_s=0.2, backward_s=0.4, reduce_scatter_s=0.3)
    wl = Workload(
        world_size=64,
        units=_units(4),
        loss=loss,
        optimizer_s=0.1,
        input=InputPipeline(workers=1, batch_decode_s=30.0),
    )
    res = simulate(wl, steps=4, stragglers=StragglerModel(sigma=0.2), seed=0)
    total = res.steps[BREAKDOWN_COLUMNS].sum(axis=1)
    np.testing.assert_allclose(total, res.steps["step_time_s"], rtol=1e-12)
    assert (res.steps["data_stall"] > 0).all()


def test_events_table_has_the_tidy_columns():
    ev = simulate(Workload(world_size=2, units=_units(1))).events
    assert {"rank", "stream", "kind", "name", "start_s", "end_s"} <= set(ev.columns)
    assert (ev["end_s"] >= ev["start_s"]).all()


def test_chrome_trace_round_trip(tmp_path):
    res = simulate(Workload(world_size=2, units=_units(2)), steps=2)
    path = res.to_chrome_trace(tmp_path / "sub" / "step.json")
    doc = json.loads(path.read_text())
    xs = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(xs) == len(res.events)
    first = res.events.iloc[0]
    match = next(e for e in xs if e["name"] == first["name"] and e["args"]["step"] == 0)
    assert match["ts"] == pytest.approx(first["start_s"] * 1e6)
    assert match["dur"] == pytest.approx((first["end_s"] - first["start_s"]) * 1e6)
    assert all(isinstance(e["pid"], int) and isinstance(e["tid"], int) for e in xs)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["name"] == "thread_name"}
    assert {"compute", "collective", "p2p"} <= names
    assert [p.name for p in path.parent.iterdir()] == ["step.json"]  # no temp file left


def test_chrome_trace_failure_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    res = simulate(Workload(world_size=2, units=_units(1)))
    path = tmp_path / "trace.json"
    path.write_text("old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("vlscale.sim.trace.json.dump", boom)
    with pytest.raises(RuntimeError):
        res.to_chrome_trace(path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["trace.json"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"world_size": 0, "units": [{"forward_s": 1, "backward_s": 1}]}, "workload.world_size"),
        ({"world_size": 2, "units": []}, "workload.units"),
        ({"world_size": 2, "units": [{"forward_s": -1, "backward_s": 1}]}, "workload.units"),
        ({"world_size": 2, "units": [{"forward_s": 1}]}, "workload.units"),
        (
            {"world_size": 2, "units": [{"forward_s": 1, "backward_s": 1}], "loss": {"kind": "x"}},
            "workload.loss",
        ),
    ],
)
def test_bad_workload_names_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        simulate(data)
    assert err.value.field.startswith(field)


def test_bad_simulation_arguments_name_the_field():
    wl = Workload(world_size=1024, units=_units(1))
    with pytest.raises(ConfigError, match="steps"):
        simulate(wl, steps=0)
    with pytest.raises(ConfigError, match="warmup_steps"):
        simulate(wl, steps=2, warmup_steps=2)
    with pytest.raises(ConfigError, match="explicit_ranks"):
        simulate(wl, explicit_ranks=True)
    with pytest.raises(ConfigError, match="slowdowns"):
        simulate(wl, slowdowns=np.ones((3, 1)))
    with pytest.raises(ConfigError, match="workload"):
        simulate(42)


def test_a_single_device_still_varies_step_to_step():
    wl = Workload(world_size=1, units=_units(1))
    res = simulate(wl, steps=8, stragglers=StragglerModel(sigma=0.2), seed=1)
    assert res.steps["step_time_s"].nunique() == 8
    assert res.p95_s > res.p50_s
