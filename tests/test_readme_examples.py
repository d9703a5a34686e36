"""The sweep-grid and hardware-file examples of docs/planner.md run as written (they cannot rot)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from tests.test_plan_cli import vlscale

README = (Path(__file__).resolve().parents[1] / "docs" / "planner.md").read_text()


def _example(first_line: str) -> str:
    """The fenced yaml block whose first line is ``first_line``."""
    for block in re.findall(r"```yaml\n(.*?)```", README, re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"no README example starting with {first_line!r}")


def test_grid_example(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(_example("# grid.yaml"))
    out = tmp_path / "sweep.csv"
    done = vlscale("sweep", str(grid), "--out", str(out), "--quiet", "--workers", "1")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and {r["in.recipe"] for r in rows} == {"clip", "siglip"}


def test_hardware_file_example(tmp_path):
    hw = tmp_path / "my-gpus.yaml"
    hw.write_text(_example("# my-gpus.yaml"))
    lab = vlscale(
        "plan", "--hardware-file", str(hw), "--device", "h100-lab", "--devices", "64", "--json"
    )
    catalog = vlscale("plan", "--device", "H100", "--devices", "64", "--json")
    assert lab.returncode == 0 and catalog.returncode == 0, lab.stderr + catalog.stderr
    lab, catalog = json.loads(lab.stdout), json.loads(catalog.stdout)
    assert lab["cost_usd"] < catalog["cost_usd"]  # the contract price, not the list price
    assert lab["step_time_s"] >= catalog["step_time_s"]  # a slower network, never faster
