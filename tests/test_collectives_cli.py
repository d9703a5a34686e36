"""``vlscale collectives`` (the nccl-tests contract) and the topology flags of plan / compare.

Each subprocess costs ~0.5 s, so they are few and each checks several things.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from vlscale.cli.collectives import parse_size
from vlscale.errors import ConfigError
from vlscale.plan import plan
from vlscale.plan.config import make_plan_config

CONTRACT = {"op", "bytes", "devices", "algorithm", "time_s"}
CONTRACT |= {"algorithm_bandwidth_Bps", "bus_bandwidth_Bps"}


def vlscale(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": "200"}
    code = "from vlscale.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_collectives_json_contract_and_nccl_tests_definitions():
    out = vlscale(
        "collectives", "--device", "H100", "--devices", "16", "--op", "all_gather",
        "--bytes", "1G", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)
    assert set(row) == CONTRACT
    assert (row["op"], row["bytes"], row["devices"]) == ("all_gather", 2**30, 16)
    # nccl-tests: algbw = size / time; all-gather busbw = algbw (n-1)/n
    assert row["algorithm_bandwidth_Bps"] == pytest.approx(2**30 / row["time_s"])
    assert row["bus_bandwidth_Bps"] == pytest.approx(row["algorithm_bandwidth_Bps"] * 15 / 16)
    # a TPU slice shape and several slices; the whole table when --op / --bytes are left out
    out = vlscale(
        "collectives", "--device", "v5e", "--devices", "512", "--num-slices", "2",
        "--slice-shape", "16x16", "--bytes", "64M", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["op"] for r in rows] == ["all_reduce", "all_gather", "reduce_scatter"]
    assert {r["algorithm"] for r in rows} == {"multislice"}
    ar = rows[0]
    assert ar["bus_bandwidth_Bps"] == pytest.approx(ar["algorithm_bandwidth_Bps"] * 2 * 511 / 512)


@pytest.mark.parametrize(
    "args, field",
    [
        (["--device", "H100", "--devices", "8", "--op", "all_to_all"], "op"),
        (["--device", "H100", "--devices", "8", "--bytes", "12Q"], "bytes"),
        (["--device", "v5p", "--devices", "96", "--slice-shape", "4x4x6"], "slice_shape"),
    ],
)
def test_collectives_bad_input_is_one_line_and_exit_2(args, field):
    out = vlscale("collectives", *args, "--json")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert field in out.stderr or "4x4x6" in out.stderr


def test_parse_size_follows_nccl_tests_units():
    assert parse_size("8M") == 8 * 2**20 and parse_size("1GiB") == 2**30
    assert parse_size("1e9") == 1e9 and parse_size("2GB") == 2e9
    with pytest.raises(ConfigError, match="bytes"):
        parse_size("0")


def test_plan_flags_reach_the_cluster():
    out = vlscale(
        "plan", "--model", "tiny-clip", "--device", "TPUv5p", "--devices", "128",
        "--slice-shape", "8x4x4", "--global-batch", "128", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["precision"] == "bf16"
    bad = vlscale(
        "plan", "--model", "tiny-clip", "--device", "TPUv5e", "--devices", "512",
        "--global-batch", "512",
    )  # fmt: skip
    assert bad.returncode == 2 and "--num-slices" in bad.stderr
    fixed = vlscale(
        "compare", "--model", "tiny-clip", "--device", "TPUv5e", "--devices", "512",
        "--num-slices", "2", "--global-batch", "512", "--recipe", "clip", "--json",
    )  # fmt: skip
    assert fixed.returncode == 0, fixed.stderr


def test_precision_follows_the_device_and_topology_changes_the_plan():
    base = dict(model="tiny-clip", global_batch=64, devices=16)
    v100 = plan(make_plan_config(device="V100", **base))
    assert v100.config.layout.precision == "fp16"  # Volta has no bf16 path
    assert plan(make_plan_config(device="H100", **base)).config.layout.precision == "bf16"
    # Two 8-GPU nodes vs four 4-GPU nodes: more traffic crosses the slower NICs.
    two = plan(make_plan_config(device="H100", devices_per_node=8, **base))
    four = plan(make_plan_config(device="H100", devices_per_node=4, **base))
    assert four.breakdown["all_gather"] > two.breakdown["all_gather"]


def test_sweep_topology_flags_set_every_point(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: {model: tiny-clip, device: TPUv5p, devices: 128, global_batch: 128}\n"
        "grid: {recipe: [clip, siglip]}\n"
    )
    out_csv = tmp_path / "out.csv"
    out = vlscale("sweep", str(grid), "--out", str(out_csv), "--quiet", "--slice-shape", "8x4x4")
    assert out.returncode == 0, out.stderr
    assert "2 planned, 0 invalid" in out.stdout
    assert out_csv.read_text().count("8x4x4") == 2  # the in.slice_shape column of each point
    out = vlscale("sweep", str(grid), "--out", str(out_csv), "--quiet", "--slice-shape", "4x4x4")
    # 64 chips for 128 devices, in every point: nothing planned is an error, not a table
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: grid: no configuration")
