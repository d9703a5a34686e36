"""What ``--help`` says: the planner's effective defaults (they match PlanConfig), the sweep's
grid hint intact, and one memory unit rule (GiB printed; catalog GB converted like ``plan``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from vlscale.plan.config import PlanConfig


def _run(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": "400", "TERM": "dumb"}  # no wrapping: one option per line
    code = "from vlscale.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _shown_defaults(help_text: str) -> dict[str, str]:
    out = {}
    for line in help_text.splitlines():
        flag = re.search(r"(--[a-z-]+)", line)
        default = re.search(r"\[default: \(?(.*?)\)?\]", line)
        if flag and default:
            out[flag.group(1)] = default.group(1)
    return out


def test_plan_help_shows_every_default_and_they_match_plan_config():
    out = _run("plan", "--help")
    assert out.returncode == 0, out.stderr
    shown = _shown_defaults(out.stdout)
    cfg = PlanConfig()
    layout = cfg.layout  # its flags: tests/test_layout_options.py
    for flag, field in {
        "--model": "model",
        "--recipe": "recipe",
        "--loss-impl": "loss_impl",
        "--device": "device",
        "--devices": "devices",
        "--global-batch": "global_batch",
        "--sharding": "sharding",
        "--num-slices": "num_slices",
        "--sim-steps": "sim_steps",
        "--grad-accum": "grad_accum",
    }.items():
        owner = layout if field in type(layout).model_fields else cfg
        assert shown[flag] == str(getattr(owner, field)), (flag, shown.get(flag))
    assert float(shown["--samples"]) == cfg.samples
    assert float(shown["--stragglers"]) == cfg.straggler_sigma
    # computed defaults say where they come from
    for flag, words in {
        "--mask-ratio": "recipe",
        "--optimizer": "recipe",
        "--utilisation": "calibrated",
        "--price": "catalog",
        "--image-size": "model",
        "--checkpointing": "no-checkpointing",
    }.items():
        assert words in shown[flag], (flag, shown.get(flag))


def test_sweep_help_keeps_the_grid_hint():
    out = _run("sweep", "--help")
    assert out.returncode == 0, out.stderr
    assert "grid: {key: [values]}" in out.stdout


def test_collectives_device_has_no_planner_default():
    out = _run("collectives", "--help")
    assert out.returncode == 0, out.stderr
    shown = _shown_defaults(out.stdout)
    assert "--device" not in shown and "--devices" not in shown


def test_memory_fits_in_the_same_capacity_as_plan():
    from vlscale.specs.hardware import get_device

    h100 = int(get_device("H100").memory.hbm_bytes)
    mem = _run("memory", "ViT-L-14", "--device", "H100", "--json")
    assert mem.returncode == 0, mem.stderr
    assert json.loads(mem.stdout)["device_memory_bytes"] == h100
    plan = _run("plan", "--model", "tiny-clip", "--devices", "8", "--global-batch", "64", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["device_memory_bytes"] == h100
    gib = _run("memory", "ViT-L-14", "--device", "H100", "--device-memory-gib", "74.5", "--json")
    assert json.loads(gib.stdout)["device_memory_bytes"] == int(74.5 * 2**30)  # GiB, and it wins
    table = _run("memory", "ViT-L-14", "--device", "H100")
    assert "74.51 GiB" in table.stdout


@pytest.mark.parametrize("flag", ["--device-memory-gib", "--device"])
def test_memory_help_names_the_unit(flag):
    out = _run("memory", "--help")
    line = next(ln for ln in out.stdout.splitlines() if f"{flag} " in ln)
    assert "GiB" in line
