"""CLI contract of ``vlscale plan``, ``compare``, ``sweep`` and ``hardware``.

Each test runs the real command in a fresh process (about 0.3-0.5 s each, so they are few and
each checks several things). The process runs what the ``vlscale`` console script runs,
``vlscale.cli:main``; ``python -m vlscale.cli`` is covered by the one test at the end.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest

from vlscale.specs.hardware import list_devices

SMALL = ["--model", "tiny-clip", "--devices", "8", "--global-batch", "64"]
PLAN_KEYS = {
    "step_time_s": float,
    "samples_per_s": float,
    "samples_per_s_per_device": float,
    "wall_time_h": float,
    "device_hours": float,
    "cost_usd": float,
    "memory_per_device_bytes": int,
    "memory_breakdown": dict,
    "loss_memory_bytes": int,
    "fits": bool,
    "mfu": float,
}


def vlscale(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    code = "from vlscale.cli import main; main()"
    # rich sizes tables to the terminal; without one it assumes 80 columns and elides names
    env = os.environ | {"COLUMNS": "200"} | (extra_env or {})
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def ok_json(*args: str):
    out = vlscale(*args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plan_without_arguments_plans_the_default_scenario():
    out = vlscale("plan")
    assert out.returncode == 0, out.stderr
    assert "ViT-L-14" in out.stdout and "256xH100" in out.stdout
    assert "step time" in out.stdout and "wall time" in out.stdout and "cost" in out.stdout


def test_plan_json_contract():
    data = ok_json("plan")
    for key, kind in PLAN_KEYS.items():
        assert isinstance(data[key], kind), (key, data[key])
    assert all(isinstance(v, int) for v in data["memory_breakdown"].values())
    assert sum(data["memory_breakdown"].values()) == data["memory_per_device_bytes"]
    assert data["model"] == "ViT-L-14" and data["samples"] == 12_800_000_000


@pytest.mark.parametrize(
    "flags, expect",
    [
        (
            "--recipe siglip --loss-impl ring --device H100 --devices 16 --global-batch 256 "
            "--samples 12.8e9 --mask-ratio 0.5 --precision bf16 --sharding fsdp "
            "--checkpointing --optimizer adafactor",
            {
                "recipe": "siglip",
                "loss_impl": "ring",
                "devices": 16,
                "local_batch": 16,
                "samples": 12_800_000_000,
                "mask_ratio": 0.5,
                "sharding": "fsdp",
                "checkpointing": True,
                "optimizer": "adafactor",
            },
        ),
        (
            "--recipe eva-clip --loss-impl gather --device V100 --devices 8 --global-batch 64 "
            "--samples 1_000_000 --precision fp32 --sharding ddp --no-checkpointing "
            "--optimizer lamb",
            {
                "recipe": "eva-clip",
                "mask_ratio": 0.5,  # the recipe's default
                "device": "V100",
                "precision": "fp32",
                "sharding": "ddp",
                "checkpointing": False,
                "optimizer": "lamb",
                "samples": 1_000_000,
            },
        ),
        (
            "--recipe clip --device TPUv4 --devices 4 --global-batch 32 --precision bf16",
            {"recipe": "clip", "device": "TPUv4", "optimizer": "adamw", "mask_ratio": 0.0},
        ),
        (
            "--recipe clip --device A100-40GB --devices 8 --global-batch 64 --precision fp16",
            {"precision": "fp16", "device": "A100-40GB"},
        ),
    ],
)
def test_every_stable_flag_is_accepted(flags, expect):
    data = ok_json("plan", "--model", "tiny-clip", *flags.split())
    assert {k: data[k] for k in expect} == expect


def test_config_files_yaml_and_toml_with_flags_overriding(tmp_path):
    (tmp_path / "plan.yaml").write_text(
        "model: tiny-siglip\nrecipe: siglip\nloss_impl: ring\ndevices: 8\nglobal_batch: 64\n"
        "samples: 12.8e9\ndevice: H100\n"
    )
    (tmp_path / "plan.toml").write_text(
        'model = "tiny-siglip"\nrecipe = "siglip"\nloss_impl = "ring"\ndevices = 8\n'
        'global_batch = 64\nsamples = 12.8e9\ndevice = "H100"\n'
    )
    yaml_plan = ok_json("plan", "--config", str(tmp_path / "plan.yaml"), "--devices", "16")
    toml_plan = ok_json("plan", "--config", str(tmp_path / "plan.toml"), "--devices", "16")
    for data in (yaml_plan, toml_plan):
        assert (data["model"], data["loss_impl"], data["samples"]) == (
            "tiny-siglip",
            "ring",
            12_800_000_000,
        )
        assert (data["devices"], data["local_batch"]) == (16, 4)  # the flag won
    assert yaml_plan["step_time_s"] == toml_plan["step_time_s"]


def test_trace_is_chrome_trace_json(tmp_path):
    trace = tmp_path / "step.json"
    out = vlscale("plan", *SMALL, "--trace", str(trace))
    assert out.returncode == 0, out.stderr
    doc = json.loads(trace.read_text())
    events = doc["traceEvents"]
    complete = [e for e in events if e["ph"] == "X"]
    assert complete and all(e["dur"] >= 0 and e["ts"] >= 0 for e in complete)
    assert {"forward", "backward"} <= {e["cat"] for e in complete}
    assert all({"name", "pid"} <= set(e) for e in events)
    assert all("tid" in e for e in complete)
    assert [p.name for p in tmp_path.iterdir()] == ["step.json"]  # no temp files left


@pytest.mark.parametrize(
    "args, field",
    [
        (("--device", "Z999"), "device"),
        (("--devices", "3"), "global_batch"),  # 32,768 is not divisible by 3
        (("--devices", "8", "--global-batch", "64", "--grad-accum", "3"), "grad_accum"),
        (("--samples", "abc"), "samples"),
        (("--recipe", "clip", "--loss-impl", "ring"), "loss_impl"),
        (("--mask-ratio", "1.0"), "mask_ratio"),
        (("--config", "no/such/file.yaml"), "config"),
        (("--config", "BAD_YAML"), "config"),
        (("--device", "V100", "--precision", "bf16"), "precision"),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_field(tmp_path, args, field):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    args = tuple(str(bad) if a == "BAD_YAML" else a for a in args)
    trace = tmp_path / "t.json"
    out = vlscale("plan", *args, "--trace", str(trace))
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), out.stderr
    assert not trace.exists()


def test_compare_default_variants_and_json():
    out = vlscale("compare", *SMALL)
    assert out.returncode == 0, out.stderr
    for header in ("clip/gather", "siglip/gather", "siglip/ring", "eva-clip/gather"):
        assert header in out.stdout
    assert "loss buffers" in out.stdout
    data = ok_json("compare", *SMALL, "--recipe", "siglip", "--loss-impl", "gather",
                   "--loss-impl", "ring")  # fmt: skip
    assert [(d["recipe"], d["loss_impl"]) for d in data] == [
        ("siglip", "gather"),
        ("siglip", "ring"),
    ]
    for d in data:
        assert set(PLAN_KEYS) <= set(d)
    gather, ring = (d["loss_comm_bytes_per_device"]["forward"] for d in data)
    assert gather == ring  # one all-gather of the texts == W-1 ring hops


def test_sweep_writes_one_row_per_point_with_an_error_column(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: {model: tiny-clip, device: H100, global_batch: 64, samples: 1.0e8}\n"
        "grid:\n  devices: [8, 16, 3]\n  recipe: [clip, siglip]\n"
    )
    out_csv = tmp_path / "out" / "x.csv"
    (tmp_path / "out").mkdir()  # the CLI never creates folders (vlscale.paths)
    out = vlscale("sweep", str(grid), "--out", str(out_csv), "--quiet")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6
    errors = [r["error"] for r in rows]
    assert [bool(e) for e in errors] == [False, False, False, False, True, True]
    assert "divisible" in errors[-1]
    assert {r["in.recipe"] for r in rows} == {"clip", "siglip"}
    assert all(float(r["step_time_s"]) > 0 for r in rows if not r["error"])
    assert "6 configurations (4 planned, 2 invalid)" in out.stdout


def test_sweep_failures_leave_nothing_behind(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("grid: {devices: 8}\n")  # not a list
    target = tmp_path / "x.csv"
    out = vlscale("sweep", str(grid), "--out", str(target), "--quiet")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: grid.devices")
    bad_suffix = vlscale("sweep", str(grid), "--out", str(tmp_path / "x.xlsx"))
    assert bad_suffix.returncode == 2 and bad_suffix.stderr.startswith("error: out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


def test_parquet_without_pyarrow_is_a_clean_exit_2(tmp_path):
    # a pyarrow that fails to import, first on the path: as if it were not installed
    shadow = tmp_path / "shadow" / "pyarrow"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('pyarrow hidden by the test')\n")
    grid = tmp_path / "grid.yaml"
    grid.write_text("base: {model: tiny-clip, global_batch: 64}\ngrid: {devices: [8]}\n")
    out = vlscale(
        "sweep", str(grid), "--out", str(tmp_path / "x.parquet"), "--quiet",
        extra_env={"PYTHONPATH": str(shadow.parent)},
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: out: writing .parquet needs pyarrow (pip install pyarrow); or use .csv"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml", "shadow"]  # no temp file


def test_sweep_to_parquet_has_the_csv_rows(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: {model: tiny-clip, global_batch: 64}\n"
        "grid: {devices: [8, 16], loss_impl: [gather, ring], recipe: [siglip]}\n"
    )
    for suffix in ("csv", "parquet"):
        out = vlscale("sweep", str(grid), "--out", str(tmp_path / f"x.{suffix}"), "--quiet")
        assert out.returncode == 0, out.stderr
    csv = pd.read_csv(tmp_path / "x.csv")
    parquet = pd.read_parquet(tmp_path / "x.parquet")
    assert len(parquet) == len(csv) == 4
    assert list(parquet.columns) == list(csv.columns)
    assert parquet["step_time_s"].tolist() == pytest.approx(csv["step_time_s"].tolist())


def test_hardware_table_and_json():
    out = vlscale("hardware")
    assert out.returncode == 0, out.stderr
    for name in list_devices():
        assert name in out.stdout
    data = ok_json("hardware")
    assert [d["name"] for d in data] == list_devices()
    for d in data:
        assert d["peak_flops"]["source"] and d["memory"]["source"] and d["price"]["source"]


def test_python_dash_m_has_the_planner_commands():
    out = subprocess.run(
        [sys.executable, "-m", "vlscale.cli", "plan", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
