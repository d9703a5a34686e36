"""What a new user hit (issue 11's list): every case is one line ``error: <field>: ...`` on
stderr, exit status 2, and nothing written."""

from __future__ import annotations

import pytest

from tests.test_plan_cli import vlscale


def _fails(*args: str, field: str, cwd_files=()) -> None:
    out = vlscale(*args)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), out.stderr


@pytest.mark.parametrize(
    "args, field",
    [
        (["plan", "--devices", "abc"], "--devices"),
        (["plan", "--global-batch", "1.5"], "--global-batch"),
        (["plan", "--bogus-flag"], "usage"),
        (["params"], "model"),
        (["plan", "--mask-ratio", "nan"], "mask_ratio"),
        (["memory", "ViT-L-14", "--device-memory-gib", "nan"], "device_memory_gib"),
        (["memory", "ViT-L-14", "--device-memory-gib", "inf"], "device_memory_gib"),
        # whole-config checks name their field, not `config:` (issue 11)
        (["plan", "--recipe", "clip", "--loss-impl", "ring"], "loss_impl: 'ring'"),
        (["compare", "--recipe", "eva-clip", "--loss-impl", "ring"], "loss_impl: 'ring'"),
        (["memory", "ViT-B-32", "--recipe", "clip", "--loss-impl", "ring"], "loss_impl: 'ring'"),
        (["plan", "--devices", "3"], "global_batch: 32768 is not divisible by devices=3"),
        (["plan", "--devices", "8", "--global-batch", "64", "--grad-accum", "3"], "grad_accum:"),
    ],
)
def test_usage_and_value_errors_are_one_line(args, field):
    _fails(*args, field=field)


def test_binary_config_file(tmp_path):
    f = tmp_path / "bin.yaml"
    f.write_bytes(bytes(range(128, 256)))
    _fails("plan", "--config", str(f), field="config")


def test_boolean_is_not_a_count(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("samples: true\n")
    _fails("plan", "--config", str(f), field="samples")


def test_trace_to_a_folder_fails_before_planning(tmp_path):
    _fails(
        "plan",
        "--model",
        "tiny-clip",
        "--devices",
        "8",
        "--global-batch",
        "64",
        "--trace",
        str(tmp_path),
        field="trace",
    )
    _fails("plan", "--trace", str(tmp_path / "missing" / "t.json"), field="trace")


def test_sweep_with_nothing_planned_or_nothing_in_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: {model: tiny-clip, global_batch: 64}\ngrid: {devices: [3, 5]}\n")
    out = tmp_path / "o.csv"
    # a grid small enough to be planned before the size note, all invalid: the one error line
    # and nothing written
    res = vlscale("sweep", str(bad), "--out", str(out))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: grid: no configuration")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    _fails("sweep", str(empty), "--out", str(out), field="grid")
    _fails("sweep", str(bad), "--out", str(tmp_path), field="out")  # a folder


def test_no_arguments_still_prints_the_help():
    out = vlscale()
    assert out.returncode == 0 and "plan" in out.stdout


def test_replacing_an_output_file_is_said(tmp_path):
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {model: tiny-clip, global_batch: 64}\ngrid: {devices: [8]}\n")
    out = tmp_path / "o.csv"
    first = vlscale("sweep", str(grid), "--out", str(out), "--quiet", "--workers", "1")
    assert first.returncode == 0 and "replaced" not in first.stderr
    again = vlscale("sweep", str(grid), "--out", str(out), "--quiet", "--workers", "1")
    assert again.returncode == 0 and "exists and will be replaced" in again.stderr


def test_a_hardware_file_cannot_shadow_a_catalog_device(tmp_path):
    hw = tmp_path / "hw.yaml"
    hw.write_text("devices:\n  - base: H100\n    name: H100\n")
    _fails("plan", "--hardware-file", str(hw), "--device", "H100", field="hardware_file")
    hw.write_text("devices:\n  - base: H100\n    name: h100-lab\n")
    ok = vlscale("plan", "--hardware-file", str(hw), "--device", "h100-lab", "--json")
    assert ok.returncode == 0, ok.stderr


def test_hardware_table_takes_a_cpu_profile_and_lists_sources():
    from pathlib import Path

    profile = Path(__file__).resolve().parents[1] / "reports/validation/cpu/profile.yaml"
    table = vlscale("hardware", "--hardware-file", str(profile))
    assert table.returncode == 0, table.stderr
    assert "xeon-2c" in table.stdout
    sources = vlscale("hardware", "--sources")
    assert sources.returncode == 0 and "H100 datasheet" in sources.stdout


def test_compare_takes_a_hardware_file_and_a_price():
    import json
    from pathlib import Path

    profile = Path(__file__).resolve().parents[1] / "reports/validation/cpu/profile.yaml"
    args = (
        "compare",
        "--model",
        "tiny-clip",
        "--devices",
        "2",
        "--global-batch",
        "32",
        "--precision",
        "fp32",
        "--hardware-file",
        str(profile),
        "--device",
        "xeon-2c",
    )
    cheap = vlscale(*args, "--price", "1.0", "--json")
    dear = vlscale(*args, "--price", "2.0", "--json")
    assert cheap.returncode == 0 and dear.returncode == 0, cheap.stderr + dear.stderr
    cheap, dear = json.loads(cheap.stdout), json.loads(dear.stdout)
    assert {r["device"] for r in cheap} == {"xeon-2c"}
    for c, d in zip(cheap, dear, strict=True):
        assert d["cost_usd"] == 2 * c["cost_usd"]
    table = vlscale(*args)
    assert "tiny-clip on 2xxeon-2c" in table.stdout and "(mask 0.5)" in table.stdout
