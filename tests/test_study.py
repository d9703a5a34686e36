"""The study behind ``vlscale report``: which points it plans, the tidy frames, the figures.

Frames are checked on small hand-made row tables whose answers are known by hand (which point is
on the frontier, which deadline picks which configuration, where a variant stops fitting); the
figure builders are checked to draw exactly the frame's numbers, with their trace counts and
axis titles; one small real study checks that its rows are the planner's own numbers.
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pandas as pd
import pytest
from hypothesis import given, settings

from vlscale.plan.config import make_plan_config
from vlscale.plan.planner import plan
from vlscale.report.study import (
    LOSS_VARIANTS,
    SCALING_METRICS,
    VARIANTS,
    StudySpec,
    cheapest_per_deadline,
    first_unfit,
    flip_frame,
    frontier_frame,
    loss_scaling_frame,
    run_study,
    scaling_frame,
    study_points,
)
from vlscale.report.study_figures import (
    flip_figure,
    frontier_figure,
    loss_scaling_figure,
    scaling_figure,
)
from vlscale.report.tables import GIB, MIB

TINY = make_plan_config({}, model="tiny-clip", devices=8, global_batch=64)


def _row(part, variant, devices, batch, fits=True, **values):
    """One flat sweep row as run_study returns it (only the keys the frames read)."""
    base = dict(
        part=part,
        variant=variant,
        error=None,
        devices=devices,
        global_batch=batch,
        fits=fits,
        step_time_s=1.0,
        samples_per_s_per_device=1.0,
        mfu=0.5,
        wall_time_h=1.0,
        cost_usd=1.0,
        loss_memory_bytes=0,
        memory_per_device_bytes=0,
        device_memory_bytes=80 * GIB,
        mask_ratio=0.0,
        model_flops_per_step=0.0,
    )
    return base | values


# ----------------------------------------------------------------------------- which points


def test_study_points_cover_the_grid_and_skip_batches_the_devices_do_not_divide():
    spec = StudySpec(
        base=TINY,
        devices=(8, 64, 128),
        global_batches=(64, 1024),
        mask_ratios=(0.0, 0.5),
        loss_local_batch=16,
    )
    points = study_points(spec)
    scaling = [p for p in points if p["part"] == "scaling"]
    # batch 64 pairs with 8 and 64 devices only (64 < 128); batch 1024 with all three
    assert len(scaling) == len(VARIANTS) * (2 + 3)
    assert all(p["global_batch"] % p["devices"] == 0 for p in scaling)
    loss = [p for p in points if p["part"] == "loss"]
    assert len(loss) == len(LOSS_VARIANTS) * 3
    assert all(p["global_batch"] == 16 * p["devices"] and p["checkpointing"] for p in loss)
    flip = [p for p in points if p["part"] == "flip"]
    assert [p["mask_ratio"] for p in flip] == [0.0, 0.5]
    assert all(p["model"] == "tiny-clip" for p in points)


def test_the_default_study_spans_8_to_4096_devices_for_every_variant():
    points = study_points(StudySpec(base=make_plan_config({})))
    for part, variants in (("scaling", VARIANTS), ("loss", LOSS_VARIANTS)):
        for recipe, impl in variants:
            devices = {
                p["devices"]
                for p in points
                if p["part"] == part and (p["recipe"], p["loss_impl"]) == (recipe, impl)
            }
            assert min(devices) == 8 and max(devices) == 4096 and len(devices) == 10
    batches = {p["global_batch"] for p in points if p["part"] == "scaling"}
    assert len(batches) >= 2


def test_a_small_study_holds_the_planners_own_numbers():
    spec = StudySpec(
        base=TINY, devices=(8, 16), global_batches=(64,), mask_ratios=(0.0, 0.5), loss_local_batch=8
    )
    rows = run_study(spec, workers=1)
    assert rows["error"].isna().all()
    assert len(rows) == len(study_points(spec))
    scaling = scaling_frame(rows)
    got = scaling[
        (scaling["variant"] == "siglip/ring")
        & (scaling["devices"] == 16)
        & (scaling["metric"] == "step_time_s")
    ]["value"]
    expected = plan(
        make_plan_config(TINY, recipe="siglip", loss_impl="ring", devices=16, global_batch=64)
    ).step_time_s
    assert got.tolist() == [expected]
    flip = flip_frame(rows)
    masked = plan(make_plan_config(TINY, mask_ratio=0.5))
    assert flip["mask_ratio"].tolist() == [0.0, 0.5]
    assert flip["flops_per_sample"].iloc[1] == masked.costs.model_flops_per_step / 64
    assert flip["flops_per_sample"].iloc[1] < flip["flops_per_sample"].iloc[0]


# ----------------------------------------------------------------------------- frames


def test_frontier_keeps_only_fitting_points_no_other_point_beats():
    rows = pd.DataFrame(
        [
            _row("scaling", "clip/gather", 8, 64, wall_time_h=10.0, cost_usd=100.0),  # A
            _row("scaling", "clip/gather", 16, 64, wall_time_h=20.0, cost_usd=50.0),  # B
            _row("scaling", "siglip/ring", 8, 64, wall_time_h=15.0, cost_usd=120.0),  # C: A beats
            _row("scaling", "siglip/ring", 16, 64, False, wall_time_h=5.0, cost_usd=10.0),  # D
            _row("scaling", "eva-clip/gather", 8, 64, wall_time_h=30.0, cost_usd=60.0),  # E: B
            _row("loss", "clip/gather", 8, 64, wall_time_h=1.0, cost_usd=1.0),  # other part
        ]
    )
    frontier = frontier_frame(rows)
    assert len(frontier) == 5
    on = frontier[frontier["on_frontier"]]
    assert on[["wall_time_h", "cost_usd"]].values.tolist() == [[10.0, 100.0], [20.0, 50.0]]
    cheapest = cheapest_per_deadline(frontier, (4.0, 12.0, 25.0, 100.0))
    assert cheapest["cost_usd"].tolist()[1:] == [100.0, 50.0, 50.0]
    assert cheapest["label"].iloc[0] is None  # only D (does not fit) finishes in 4 h
    assert math.isnan(cheapest["cost_usd"].iloc[0])
    assert cheapest["label"].iloc[2] == "clip/gather, 16 devices, batch 64"


def test_first_unfit_is_the_smallest_world_size_that_does_not_fit():
    rows = pd.DataFrame(
        [
            _row("loss", "clip/gather", 8, 64),
            _row("loss", "clip/gather", 16, 128, False),
            _row("loss", "clip/gather", 32, 256, False),
            _row("loss", "siglip/ring", 8, 64),
            _row("loss", "siglip/ring", 32, 256),
        ]
    )
    assert first_unfit(loss_scaling_frame(rows)) == {"clip/gather": 16, "siglip/ring": None}


def test_rows_with_errors_are_left_out_of_every_frame():
    rows = pd.DataFrame(
        [
            _row("scaling", "clip/gather", 8, 64),
            _row("scaling", "clip/gather", 16, 64) | {"error": "global_batch: not divisible"},
        ]
    )
    assert scaling_frame(rows)["devices"].unique().tolist() == [8]
    assert frontier_frame(rows)["devices"].tolist() == [8]


# ----------------------------------------------------------------------------- figures


def test_scaling_figure_draws_each_metric_per_variant_and_batch():
    rows = pd.DataFrame(
        [
            _row("scaling", v, d, b, fits=d > 8, mfu=0.1 * d / 8, step_time_s=1.0 / d)
            for v in ("clip/gather", "siglip/ring")
            for b in (64, 128)
            for d in (8, 16, 32)
        ]
    )
    frame = scaling_frame(rows)
    fig = scaling_figure(frame)
    assert len(fig.data) == len(SCALING_METRICS) * 2 * 2
    layout = fig.to_dict()["layout"]
    titles = [layout[f"yaxis{i if i > 1 else ''}"]["title"]["text"] for i in range(1, 6)]
    assert titles == [label for _, label in SCALING_METRICS]
    assert layout["xaxis5"]["title"]["text"] == "devices"
    mfu = [t for t in fig.data if t.name == "siglip/ring, batch 128" and t.yaxis == "y3"]
    assert len(mfu) == 1
    assert list(mfu[0].x) == [8, 16, 32]
    assert list(mfu[0].y) == pytest.approx([0.1, 0.2, 0.4])
    assert list(mfu[0].marker.symbol) == ["x", "circle", "circle"]  # 8 devices: no fit
    assert sum(t.showlegend for t in fig.data) == 4  # one legend entry per line


def test_loss_scaling_figure_marks_where_gathers_stop_fitting():
    rows = pd.DataFrame(
        [
            _row(
                "loss",
                v,
                d,
                512 * d,
                fits=not (v == "clip/gather" and d >= 32),
                loss_memory_bytes=(2 if v == "clip/gather" else 1) * d * MIB,
                memory_per_device_bytes=d * GIB,
                **{"loss_comm_bytes_per_device.forward": 3 * d * MIB},
                **{"loss_comm_bytes_per_device.backward": d * MIB},
            )
            for v in ("clip/gather", "siglip/ring")
            for d in (8, 16, 32, 64)
        ]
    )
    frame = loss_scaling_frame(rows)
    fig = loss_scaling_figure(frame)
    assert len(fig.data) == 3 * 2 + 1
    buffers = next(t for t in fig.data if t.name == "clip/gather" and t.xaxis == "x")
    assert list(buffers.y) == [16.0, 32.0, 64.0, 128.0]  # MiB
    traffic = next(t for t in fig.data if t.name == "siglip/ring" and t.xaxis == "x2")
    assert list(traffic.y) == [32.0, 64.0, 128.0, 256.0]  # forward + backward, MiB
    capacity = next(t for t in fig.data if t.name == "device memory")
    assert set(capacity.y) == {80.0}
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(lines) == 3 and {s.x0 for s in lines} == {32}
    assert "clip/gather stops fitting at W=32" in fig.layout.title.text
    assert "local batch 512" in fig.layout.title.text


def test_flip_figure_plots_flops_and_time_against_the_ratio():
    rows = pd.DataFrame(
        [
            _row(
                "flip",
                "clip/gather",
                8,
                64,
                mask_ratio=r,
                model_flops_per_step=64e9 * (1 - r),
                step_time_s=2.0 * (1 - r),
            )
            for r in (0.0, 0.5, 0.75)
        ]
    )
    fig = flip_figure(flip_frame(rows))
    assert [t.name for t in fig.data] == ["model FLOPs per sample", "step time"]
    assert list(fig.data[0].y) == [1.0, 0.5, 0.25]  # GFLOP per sample
    assert list(fig.data[1].y) == [2.0, 1.0, 0.5]
    assert fig.layout.xaxis.title.text == "mask ratio r"
    assert fig.layout.yaxis2.title.text == "seconds per step"


def test_frontier_figure_shows_points_frontier_unfit_and_deadlines():
    rows = pd.DataFrame(
        [
            _row("scaling", "clip/gather", 8, 64, wall_time_h=10.0, cost_usd=100.0),
            _row("scaling", "clip/gather", 16, 64, wall_time_h=20.0, cost_usd=50.0),
            _row("scaling", "siglip/ring", 16, 64, False, wall_time_h=5.0, cost_usd=10.0),
        ]
    )
    frontier = frontier_frame(rows)
    cheapest = cheapest_per_deadline(frontier, (12.0, 25.0))
    fig = frontier_figure(frontier, cheapest)
    names = [t.name for t in fig.data]
    assert names == ["clip/gather", "does not fit", "frontier", "cheapest per deadline"]
    assert list(fig.data[2].x) == [10.0, 20.0]
    assert list(fig.data[3].y) == [100.0, 50.0]
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis.title.text == "wall time (h)"
    assert [s.x0 for s in fig.layout.shapes] == [12.0, 25.0]
    # annotations on a log axis sit at log10 of the deadline
    assert [a.x for a in fig.layout.annotations] == pytest.approx([math.log10(12), math.log10(25)])


# ----------------------------------------------------------------------------- frontier property

point = st.tuples(
    st.floats(0.1, 1e4, allow_nan=False),  # wall time (h)
    st.floats(1.0, 1e7, allow_nan=False),  # cost (USD)
    st.booleans(),  # fits
)


@settings(max_examples=60, deadline=None)
@given(st.lists(point, min_size=1, max_size=25))
def test_frontier_is_exactly_the_undominated_fitting_points(points):
    rows = pd.DataFrame(
        [
            _row("scaling", "clip/gather", 8 * (i + 1), 64, fits, wall_time_h=w, cost_usd=c)
            for i, (w, c, fits) in enumerate(points)
        ]
    )
    frame = frontier_frame(rows)
    fitting = frame[frame["fits"]]
    for _, p in frame.iterrows():
        # dominated: another fitting point is no slower and no dearer, and better in one of them
        # (of two identical points, the first in wall-time order is kept)
        dominated = (
            (fitting["wall_time_h"] <= p["wall_time_h"])
            & (fitting["cost_usd"] <= p["cost_usd"])
            & ((fitting["wall_time_h"] < p["wall_time_h"]) | (fitting["cost_usd"] < p["cost_usd"]))
        ).any()
        twin_before = (
            (fitting["wall_time_h"] == p["wall_time_h"])
            & (fitting["cost_usd"] == p["cost_usd"])
            & (fitting.index < p.name)
        ).any()
        assert p["on_frontier"] == (bool(p["fits"]) and not dominated and not twin_before)
    deadlines = sorted({w for w, _, _ in points})
    cheapest = cheapest_per_deadline(frame, deadlines)
    costs = cheapest["cost_usd"].dropna().tolist()
    assert costs == sorted(costs, reverse=True)  # a later deadline never costs more
    chosen = cheapest.dropna(subset=["wall_time_h"])
    on = frame[frame["on_frontier"]]
    for w, c in zip(chosen["wall_time_h"], chosen["cost_usd"], strict=True):
        assert ((on["wall_time_h"] == w) & (on["cost_usd"] == c)).any()  # picks lie on it


def test_the_cheapest_layout_per_device_count_is_tunes_best():
    """The study's layout table is `vlscale tune`'s answer: the same candidates (accumulation
    up to the study's cap), planned and ranked by the same code, give the same best layout."""
    from vlscale.plan.sweep import iter_rows
    from vlscale.plan.tune import TuneRequest, rank_rows
    from vlscale.report.study import STUDY_MAX_GRAD_ACCUM, StudySpec, cheapest_layouts, run_study

    base = make_plan_config(model="ViT-B-32", global_batch=4096, samples=10**9)
    spec = StudySpec(base=base, devices=(8, 64), global_batches=(4096,), mask_ratios=(0.0,))
    table = cheapest_layouts(run_study(spec, workers=1), spec)
    assert list(table["devices"]) == [8, 64]
    for row in table.to_dict("records"):
        request = TuneRequest("ViT-B-32", "clip", "H100", (row["devices"],), 10**9, 4096, top=1)
        points = [p for p in request.points() if p["grad_accum"] <= STUDY_MAX_GRAD_ACCUM]
        rows = [r for chunk in iter_rows(points, progress=False, workers=1) for r in chunk]
        best = rank_rows(rows, request).best[0]
        assert row["layout"] == best["layout"]
        assert row["cost_usd"] == pytest.approx(best["cost_usd"], rel=1e-12)
