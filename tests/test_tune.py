"""`vlscale tune` (vlscale.plan.tune): its best layout is the brute-force optimum of a sweep over
the same grid, it never returns a layout that does not fit, and its CLI keeps its contract."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_plan_cli import vlscale
from vlscale.errors import ConfigError
from vlscale.plan.sweep import Grid, run_sweep
from vlscale.plan.tune import (
    BINDINGS,
    TuneRequest,
    binding,
    grad_accum_choices,
    layout_candidates,
    tune,
)
from vlscale.specs.layout import hsdp_shard_sizes

CONTRACT = {
    "layout",
    "step_time_s",
    "wall_time_h",
    "cost_usd",
    "memory_per_device_bytes",
    "fits",
    "binding",
}


def _brute_force(request: TuneRequest) -> list[dict]:
    """Every layout of the space through ``run_sweep`` on cartesian grids (invalid points, e.g.
    a ring with softmax or an accumulation that does not divide, are error rows), filtered."""
    base = {
        "model": request.model,
        "recipe": request.recipe,
        "device": request.device,
        "samples": request.samples,
        "global_batch": request.global_batch,
    }
    largest = request.global_batch // min(request.devices)
    common = {
        "devices": list(request.devices),
        "reshard_after_forward": [True, False],
        "checkpointing": [False, True],
        "grad_accum": [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= largest],
        "loss_impl": ["gather", "ring"],
    }
    grids = [{"sharding": ["ddp", "fsdp"]} | common]
    # HSDP at every shard size; those the planner refuses (splitting a node) come back as errors
    sizes = sorted({s for n in request.devices for s in hsdp_shard_sizes(n)})
    if sizes:
        grids.append({"sharding": ["hsdp"], "shard_size": sizes} | common)
    rows = []
    for grid in grids:
        g = Grid(base, tuple(grid), tuple(tuple(v) for v in grid.values()))
        frame = run_sweep(g, progress=False, workers=1)
        rows += frame[frame["error"].isna()].to_dict("records")
    # the two ends of hsdp (1 and W) are ddp and fsdp
    return [
        r
        for r in rows
        if r["in.sharding"] != "hsdp" or r["in.shard_size"] in hsdp_shard_sizes(r["in.devices"])
    ]


SCENARIOS = st.sampled_from([("ViT-B-32", "H100"), ("ViT-H-14", "V100")])


@settings(max_examples=4, deadline=None)
@given(
    scenario=SCENARIOS,
    recipe=st.sampled_from(["clip", "siglip"]),
    devices=st.sampled_from([(1,), (2,), (1, 4), (2, 4)]),
    batch=st.sampled_from([8, 32]),
    data=st.data(),
)
def test_best_is_the_brute_force_minimum_and_everything_fits(
    scenario, recipe, devices, batch, data
):
    model, device = scenario
    request = TuneRequest(
        model=model,
        recipe=recipe,
        device=device,
        devices=devices,
        samples=10**7,
        global_batch=batch,
        top=1000,
    )
    brute = _brute_force(request)
    fitting = [r for r in brute if r["fits"]]
    walls = sorted(r["wall_time_h"] for r in fitting)
    costs = sorted(r["cost_usd"] for r in fitting)
    deadline = data.draw(st.sampled_from([None, walls[len(walls) // 2], walls[0]]))
    budget = data.draw(st.sampled_from([None, costs[len(costs) // 3]]))
    request = TuneRequest(**{**request.__dict__, "deadline_h": deadline, "budget_usd": budget})
    result = tune(request, workers=1)

    feasible = [
        r
        for r in fitting
        if (deadline is None or r["wall_time_h"] <= deadline)
        and (budget is None or r["cost_usd"] <= budget)
    ]
    assert all(item["fits"] for item in result.best)
    assert all(
        item["memory_per_device_bytes"] <= item["device_memory_bytes"] for item in result.best
    )
    if not feasible:
        assert result.best == []
        return
    best = min((r["cost_usd"], r["wall_time_h"]) for r in feasible)
    first = result.best[0]
    assert (first["cost_usd"], first["wall_time_h"]) == best
    keys = [(i["cost_usd"], i["wall_time_h"]) for i in result.best]
    assert keys == sorted(keys)
    assert result.summary.feasible == len(result.best)  # top=1000 lists them all
    # the same layouts, counted once (ddp's reshard flag is moot, so the sweep has it twice)
    assert result.summary.layouts - result.summary.invalid == len(
        {tuple(sorted((k, v) for k, v in r.items() if k.startswith("in."))) for r in brute}
        - {
            tuple(sorted((k, v) for k, v in r.items() if k.startswith("in.")))
            for r in brute
            if r["in.sharding"] == "ddp" and not r["in.reshard_after_forward"]
        }
    )


def test_candidates_cover_the_space_once():
    cands = layout_candidates(8, 64, "siglip")
    # ddp 1 + fsdp 2 + hsdp (2, 4) x 2 reshard = 7 shardings; 2 ckpt; accum 1..8; 2 losses
    assert len(cands) == 7 * 2 * 4 * 2
    assert len({json.dumps(c, sort_keys=True) for c in cands}) == len(cands)
    assert {c.get("shard_size") for c in cands} == {None, 2, 4}
    assert len(layout_candidates(8, 64, "clip", hsdp=False)) == 3 * 2 * 4
    assert grad_accum_choices(12) == [1, 2, 4]
    with pytest.raises(ConfigError, match="global_batch"):
        layout_candidates(3, 64, "clip")


def test_hsdp_is_searched_at_the_shard_sizes_the_nodes_allow():
    shardings = {c["sharding"] for c in layout_candidates(8, 64, "clip")}
    assert shardings == {"ddp", "fsdp", "hsdp"}
    # 24 ranks in nodes of 8: 2, 4 divide a node; 8 is one node; 3, 6, 12 split nodes
    sizes = {c.get("shard_size") for c in layout_candidates(24, 96, "clip", devices_per_node=8)}
    assert sizes == {None, 2, 4, 8}
    request = TuneRequest("ViT-B-32", "clip", "H100", (16,), 10**9, global_batch=1024)
    assert {p.get("shard_size") for p in request.points()} == {None, 2, 4, 8}


def test_binding_rule():
    row = {
        "memory_per_device_bytes": 50,
        "device_memory_bytes": 100,
        "in.checkpointing": False,
        "in.grad_accum": 1,
        "breakdown_s.compute": 1.0,
        "breakdown_s.all_gather": 0.3,
        "breakdown_s.p2p": 0.3,
    }
    assert binding(row, plain_fits=True) == "compute"
    assert binding(row | {"breakdown_s.all_reduce": 0.5}, plain_fits=True) == "communication"
    assert binding(row | {"memory_per_device_bytes": 95}, plain_fits=True) == "memory"
    assert binding(row | {"in.checkpointing": True}, plain_fits=False) == "memory"
    assert binding(row | {"in.checkpointing": True}, plain_fits=True) == "compute"


def test_cli_json_contract():
    out = vlscale(
        "tune", "--model", "ViT-B-32", "--recipe", "siglip", "--device", "H100",
        "--devices", "8", "--devices", "16", "--global-batch", "256", "--samples", "1e8",
        "--top", "5", "--workers", "1", "--quiet", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    items = json.loads(out.stdout)
    assert isinstance(items, list) and len(items) == 5
    for item in items:
        assert set(item) >= CONTRACT
        assert item["fits"] is True and item["binding"] in BINDINGS
        assert item["layout"]["devices"] in (8, 16)
        assert {"sharding", "checkpointing", "grad_accum"} <= set(item["layout"])
    costs = [i["cost_usd"] for i in items]
    assert costs == sorted(costs)
    assert out.stderr.startswith("tune: ") and "do not fit" in out.stderr


def test_cli_table_names_the_best_and_what_binds_it():
    out = vlscale(
        "tune", "--model", "ViT-B-32", "--devices", "8", "--global-batch", "64",
        "--samples", "1e7", "--top", "3", "--workers", "1", "--quiet",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "best: 8 devices" in out.stdout and "bound by" in out.stdout


@pytest.mark.parametrize(
    "args, field",
    [
        (["--top", "0"], "top"),
        (["--devices", "0"], "devices"),
        (["--deadline-h", "0"], "deadline_h"),
        (["--deadline-h", "-3"], "deadline_h"),
        (["--budget-usd", "0"], "budget_usd"),
        (["--samples", "abc"], "samples"),
        (["--devices", "3", "--global-batch", "64"], "global_batch"),
        (["--model", "no-such-model"], "model"),
        (["--device", "no-such-gpu"], "device"),
        (["--device", "TPUv5e", "--slice-shape", "4x"], "slice_shape"),
        (["--device", "TPUv5e", "--devices", "24", "--slice-shape", "4x4"], "devices"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, field):
    out = vlscale("tune", "--devices", "8", "--global-batch", "64", "--workers", "1", *args)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), out.stderr


def test_tpu_device_counts_become_slices_of_the_shape_given():
    """--slice-shape 16x16 on TPUv5e: 512 and 1,024 chips are 2 and 4 slices; every listed
    layout is planned there (plan --json of the same cluster gives the same step), and a count
    beyond one pod without a shape is refused by the planner with the fix."""
    args = ["tune", "--model", "tiny-siglip", "--recipe", "siglip", "--device", "TPUv5e"]
    args += ["--devices", "512", "--devices", "1024", "--slice-shape", "16x16"]
    out = vlscale(*args, "--samples", "1e9", "--workers", "1", "--quiet", "--top", "1000", "--json")
    assert out.returncode == 0, out.stderr
    best = json.loads(out.stdout)
    assert {r["layout"]["devices"] for r in best} == {512, 1024}
    first = best[0]
    layout = first["layout"]
    plan = vlscale("plan", "--model", "tiny-siglip", "--recipe", "siglip", "--device", "TPUv5e",
                   "--devices", str(layout["devices"]), "--slice-shape", "16x16", "--num-slices",
                   str(layout["devices"] // 256), "--sharding", layout["sharding"],
                   *(["--shard-size", str(layout["shard_size"])] if layout["shard_size"] else []),
                   "--global-batch", str(first["global_batch"]), "--samples", "1e9",
                   "--loss-impl", first["loss_impl"], "--grad-accum", str(layout["grad_accum"]),
                   "--checkpointing" if layout["checkpointing"] else "--no-checkpointing",
                   "--reshard-after-forward" if layout["reshard_after_forward"]
                   else "--no-reshard-after-forward", "--json")  # fmt: skip
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["step_time_s"] == pytest.approx(first["step_time_s"])
    refused = vlscale("tune", "--model", "tiny-siglip", "--device", "TPUv5e", "--devices", "512")
    assert refused.returncode == 2 and "--slice-shape" in refused.stderr
