"""Run records to plans: a header that carries its ``layout`` is planned with that layout as it
is; an older header's flat fields build the same layout (so old records replay exactly)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlscale.calibrate.runs import layout_of, plan_config_of
from vlscale.records import read_run
from vlscale.specs.layout import RunLayout

REPO = Path(__file__).resolve().parents[1]
CPU = REPO / "reports/validation/cpu"
PROFILE = str(CPU / "profile.yaml")
RUNS = sorted((CPU / "runs").rglob("*.jsonl"))


@pytest.mark.parametrize("path", RUNS[::4], ids=lambda p: p.stem)
def test_a_header_with_its_layout_plans_as_its_flat_fields_did(path, tmp_path):
    run = read_run(path)
    assert run.header.layout is None  # the committed campaign predates the field
    old = plan_config_of(run, "xeon-2c", PROFILE)
    layout = layout_of(run.header)
    assert old.layout == layout
    assert (layout.devices, layout.sharding) == (run.header.world_size, run.header.sharding)
    # the same run written by a trainer that records its layout
    lines = path.read_text().splitlines()
    header = json.loads(lines[0]) | {"layout": layout.model_dump(mode="json")}
    new_path = tmp_path / path.name
    new_path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    assert plan_config_of(read_run(new_path), "xeon-2c", PROFILE) == old


def test_a_recorded_hsdp_layout_reaches_the_plan(tmp_path):
    path = next(p for p in RUNS if "-w2-" in p.name and "fsdp" in p.name)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    layout = RunLayout(
        devices=2, devices_per_node=2, sharding="hsdp", shard_size=1, precision="fp32"
    )
    header |= {"sharding": "hsdp", "layout": layout.model_dump(mode="json")}
    new_path = tmp_path / "hsdp.jsonl"
    new_path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    config = plan_config_of(read_run(new_path), "xeon-2c", PROFILE)
    assert config.layout == layout and config.layout.replicas == 2


def test_a_resnet_run_is_recognised_as_its_preset():
    """A ResNet has no patches to drop: the architecture check of a run must not ask for
    FLIP's masked FLOPs (it did, and every ResNet run failed to validate)."""
    from vlscale.calibrate.runs import _cost_identity
    from vlscale.specs.presets import get_model

    spec = get_model("tiny-rn")
    assert _cost_identity(spec) == _cost_identity(spec.model_copy())
    assert _cost_identity(spec)[2] is None
