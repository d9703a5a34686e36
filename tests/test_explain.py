"""``vlscale plan --explain``: every named function exists, every number of the plan table is
explained, and the collectives' raw times are the ones the simulated workload was built from."""

from __future__ import annotations

import importlib
import json

import pytest

from tests.test_plan_cli import vlscale
from vlscale.plan.config import make_plan_config
from vlscale.plan.explain import QUANTITIES, collective_rows, explain_json
from vlscale.plan.planner import plan, summary_rows
from vlscale.sim.result import BREAKDOWN_COLUMNS

SMALL = dict(model="ViT-B-32", devices=16, global_batch=1024, failures={"enabled": False})


def resolve(dotted: str):
    """``module.qualname`` -> the object: the longest importable prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("entry", QUANTITIES, ids=lambda e: e.quantity)
def test_every_named_function_exists(entry):
    assert callable(resolve(entry.function)), entry.function
    assert entry.formula and "\n" not in entry.formula


def test_every_table_row_and_breakdown_column_is_explained():
    names = [q.quantity for q in QUANTITIES]
    result = plan(make_plan_config(**SMALL))
    for label, _ in summary_rows(result):
        assert any(label.startswith(n) for n in names), f"no explanation for {label!r}"
    for column in BREAKDOWN_COLUMNS:
        assert f"breakdown: {column}" in names


def raw(rows, kind, purpose):
    (row,) = [r for r in rows if r["collective"] == kind and r["for"].startswith(purpose)]
    return row


@pytest.mark.parametrize(
    "layout",
    [
        dict(sharding="fsdp"),
        dict(sharding="fsdp", reshard_after_forward=False, grad_accum=2),
        dict(sharding="hsdp", shard_size=8),
        dict(sharding="ddp"),
        dict(sharding="fsdp", lock_image=True),
        dict(sharding="hsdp", shard_size=8, lock_image=True, lock_image_unlocked_groups=2),
        dict(sharding="ddp", lock_text=True),
        dict(sharding="fsdp", image_embeddings="precomputed"),
    ],
    ids=[
        "fsdp",
        "fsdp-noreshard-accum",
        "hsdp",
        "ddp",
        "fsdp-locked-image",
        "hsdp-partly-locked",
        "ddp-locked-text",
        "fsdp-precomputed",
    ],
)
def test_raw_collective_times_are_the_workloads(layout):
    """Summed per kind, the rows give back the per-unit times the simulator ran, so the
    explanation cannot drift from the model it explains."""
    result = plan(make_plan_config(**SMALL, **layout), keep_sim=True)
    wl, cfg = result.sim.workload, result.config.layout
    rows = collective_rows(result)
    k = cfg.grad_accum
    if cfg.sharding == "ddp":
        ar = raw(rows, "all_reduce", "gradients")
        assert ar["raw_time_per_step_s"] == pytest.approx(sum(u.all_reduce_s for u in wl.units))
        synced = [u for u in wl.units if not u.frozen]  # a locked unit syncs no gradient
        assert ar["calls_per_step"] == len(synced) and ar["group_size"] == 16
    else:
        # a unit that trains is gathered again in backward when it reshards; a locked one is not
        gathers = [2 if cfg.reshard_after_forward and not u.frozen else 1 for u in wl.units]
        ag, rs = raw(rows, "all_gather", "parameters"), raw(rows, "reduce_scatter", "gradients")
        unit_ag = sum(n * u.all_gather_s for n, u in zip(gathers, wl.units, strict=True))
        assert ag["raw_time_per_step_s"] == pytest.approx(k * unit_ag)
        assert ag["calls_per_step"] == k * sum(gathers)
        sync = rs["raw_time_per_step_s"]
        if cfg.sharding == "hsdp":  # the replica all-reduce rides in the unit's gradient sync
            replicas = raw(rows, "all_reduce", "gradient shards")
            sync += replicas["raw_time_per_step_s"]
            assert (rs["group_size"], replicas["group_size"]) == (8, 2)
            assert replicas["group"] == "2 = 1 per node x 2 nodes"
        assert sync == pytest.approx(sum(u.reduce_scatter_s for u in wl.units))
    loss = raw(rows, "all_gather", "loss")
    assert loss["raw_time_per_step_s"] == pytest.approx(2 * k * wl.loss.all_gather_s)
    norm = raw(rows, "all_reduce", "gradient norm")
    assert norm["raw_time_per_step_s"] == pytest.approx(wl.grad_norm_all_reduce_s)
    assert norm["bytes_per_call"] == 4 and norm["group"] == "16 = 8 per node x 2 nodes"


def test_ring_hops_and_one_device():
    result = plan(make_plan_config(**SMALL, recipe="siglip", loss_impl="ring"), keep_sim=True)
    hops = raw(collective_rows(result), "p2p", "loss ring")
    # W − 1 text-block hops forward, W − 1 again and W accumulator hops backward
    assert hops["calls_per_step"] == 3 * 16 - 2
    assert hops["time_per_call_s"] == pytest.approx(result.sim.workload.loss.hop_s)
    one = plan(make_plan_config(**(SMALL | dict(devices=1, global_batch=64))))
    assert collective_rows(one) == []


def test_measured_profiles_name_their_measured_tier():
    profile = "reports/validation/cpu-epyc/profile.yaml"
    cfg = make_plan_config(
        model="small-clip", device="epyc-2c", hardware_file=profile, devices=2, global_batch=32
    )
    rows = collective_rows(plan(cfg))
    ag = raw(rows, "all_gather", "parameters")
    assert ag["algorithm"] == "measured α–β"
    assert ag["tiers"][0].startswith("measured:all_gather ")


def test_explain_flag_adds_one_json_key_and_the_tables():
    args = ["plan", "--model", "ViT-B-32", "--devices", "16", "--sharding", "hsdp"]
    plain = json.loads(vlscale(*args, "--json").stdout)
    explained = json.loads(vlscale(*args, "--json", "--explain").stdout)
    expected = explain_json(plan(make_plan_config(model="ViT-B-32", devices=16, sharding="hsdp")))
    assert explained.pop("explain") == json.loads(json.dumps(expected))
    assert explained == plain
    out = vlscale(*args, "--explain")
    assert out.returncode == 0, out.stderr
    assert "exposed time on rank 0" in out.stdout
    assert "vlscale.costs.topology.Tier.phase_time" in out.stdout
    assert "raw s/step" in out.stdout and "8 = 8 per node x 1 node" in out.stdout
