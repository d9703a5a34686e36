"""Hostile inputs to the planner (issue 19): every case is exactly one line ``error: ...`` on
stderr, exit status 2, and nothing written (the folder's listing, hidden temp files included,
is the same before and after). The CLI runs in this process (``tests.hostile.run_cli``); a
traceback fails the test.

Each case: the files it writes first (generated here), the command (``{d}`` is the folder), and
what the error line must name (the field, the file, the fix).
"""

from __future__ import annotations

import copy
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.hostile import (
    assert_one_line,
    dump,
    lab_device,
    listing,
    run_cli,
    set_path,
    tiny_model,
    tiny_openclip,
)

SMALL = ["--devices", "8", "--global-batch", "64"]
PLAN_MODEL = ["plan", "--model", "{d}/m.yaml", *SMALL, "--report", "{d}/out.html"]
PLAN_HW = [
    "plan",
    "--model",
    "tiny-clip",
    *SMALL,
    "--device",
    "h100-lab",
    "--hardware-file",
    "{d}/hw.yaml",
    "--report",
    "{d}/out.html",
]
PLAN_CONFIG = ["plan", "--config", "{d}/c.yaml", "--report", "{d}/out.html"]
SWEEP = ["sweep", "{d}/g.yaml", "--out", "{d}/out.csv", "--quiet", "--workers", "1"]
DEEP = 100_000


def _model(path: str, value, suffix: str = ".yaml") -> str:
    return dump(set_path(tiny_model(), path, value), suffix)


def _hw(**over) -> str:
    return dump({"devices": [lab_device(**over)]})


def _profile(**over) -> dict:
    """The H100's catalog compute profile as a hardware file writes it, with ``over``."""
    from vlscale.plan.compute_model import default_profile
    from vlscale.specs.catalog import get_device

    return default_profile(get_device("H100")).model_dump(mode="json", exclude_none=True) | over


def _plan(**keys) -> str:
    return dump({"model": "tiny-clip", "devices": 8, "global_batch": 64, **keys})


def _deep(suffix: str, key: str = "model", depth: int = DEEP) -> str:
    """A mapping whose ``key`` holds ``depth`` nested lists."""
    if suffix == ".toml":
        return f"{key} = " + "[" * depth + "]" * depth + "\n"
    if suffix == ".json":
        return f'{{"{key}": ' + "[" * depth + "]" * depth + "}"
    return f"{key}: " + "[" * depth + "]" * depth + "\n"


def _digits(n: int = 5000) -> str:
    return "1" * n


def _openclip(section: str | None, key: str, value) -> str:
    cfg = tiny_openclip()
    (cfg[section] if section else cfg)[key] = value
    return json.dumps(cfg)


# (id, files {name: text or bytes}, command, what the one line must hold)
CASES = [
    # --- one numeric rule: model files --------------------------------------------------------
    (
        "model-depth-true",
        {"m.yaml": _model("vision.trunk.depth", True)},
        PLAN_MODEL,
        ["model.vision.trunk.depth", "not true", "(in '", "m.yaml')"],
    ),
    (
        "model-depth-true-params",
        {"m.yaml": _model("text.trunk.depth", True)},
        ["params", "{d}/m.yaml"],
        ["text.trunk.depth", "whole number"],
    ),
    ("model-width-fraction", {"m.yaml": _model("vision.trunk.width", 64.5)}, PLAN_MODEL, ["width"]),
    ("model-width-huge", {"m.yaml": _model("vision.trunk.width", 2**70)}, PLAN_MODEL, ["width"]),
    ("model-width-string", {"m.yaml": _model("vision.trunk.width", "wide")}, PLAN_MODEL, ["width"]),
    ("model-heads-negative", {"m.yaml": _model("text.trunk.heads", -4)}, PLAN_MODEL, ["heads"]),
    (
        "model-image-size-1e308",
        {"m.yaml": _model("vision.image_size", 1e308)},
        PLAN_MODEL,
        ["image_size"],
    ),
    (
        "model-eps-inf",
        {"m.yaml": _model("vision.trunk.norm_eps", float("inf"))},
        PLAN_MODEL,
        ["norm_eps", "finite"],
    ),
    (
        "model-eps-nan",
        {"m.yaml": _model("vision.trunk.norm_eps", float("nan"))},
        PLAN_MODEL,
        ["norm_eps", "finite"],
    ),
    (
        "model-embed-5000-digits-yaml",
        {"m.yaml": f"embed_dim: {_digits()}\n"},
        PLAN_MODEL,
        ["m.yaml", "4300 digits"],
    ),
    (
        "model-embed-5000-digits-json",
        {"m.json": f'{{"embed_dim": {_digits()}}}'},
        ["params", "{d}/m.json"],
        ["m.json", "digits"],
    ),
    (
        "model-unknown-key",
        {"m.yaml": _model("vision.trunk.dept", 2)},
        PLAN_MODEL,
        ["vision.trunk.dept", "did you mean 'depth'"],
    ),
    ("model-embed-bool", {"m.yaml": _model("embed_dim", False)}, PLAN_MODEL, ["embed_dim"]),
    # --- one numeric rule: plan configs -------------------------------------------------------
    (
        "plan-global-batch-true",
        {"c.yaml": _plan(global_batch=True)},
        PLAN_CONFIG,
        ["global_batch", "not true"],
    ),
    ("plan-sim-steps-true", {"c.yaml": _plan(sim_steps=True)}, PLAN_CONFIG, ["sim_steps"]),
    ("plan-image-size-true", {"c.yaml": _plan(image_size=True)}, PLAN_CONFIG, ["image_size"]),
    ("plan-num-slices-true", {"c.yaml": _plan(num_slices=True)}, PLAN_CONFIG, ["num_slices"]),
    ("plan-seed-true", {"c.yaml": _plan(seed=True)}, PLAN_CONFIG, ["seed"]),
    ("plan-seed-huge", {"c.yaml": _plan(seed=2**70)}, PLAN_CONFIG, ["seed"]),
    (
        "plan-devices-huge",
        {"c.yaml": _plan(devices=2**63, global_batch=2**63)},
        PLAN_CONFIG,
        ["devices"],
    ),
    (
        "plan-price-inf",
        {"c.yaml": _plan(price_per_device_hour=float("inf"))},
        PLAN_CONFIG,
        ["price_per_device_hour", "finite"],
    ),
    (
        "plan-price-huge",
        {"c.yaml": _plan(price_per_device_hour=1e300)},
        PLAN_CONFIG,
        ["price_per_device_hour"],
    ),
    (
        "plan-decode-1e400",
        {"c.yaml": "decode_samples_per_s_per_device: 1e400\n"},
        PLAN_CONFIG,
        ["decode_samples_per_s_per_device", "finite"],
    ),
    (
        "plan-mtbf-inf",
        {"c.yaml": _plan(failures={"mtbf_device_h": float("inf")})},
        PLAN_CONFIG,
        ["failures.mtbf_device_h"],
    ),
    (
        "plan-utilisation-nan",
        {"c.yaml": _plan(utilisation=float("nan"))},
        PLAN_CONFIG,
        ["utilisation"],
    ),
    (
        "plan-samples-digits",
        {"c.toml": f"samples = {_digits()}\n"},
        ["plan", "--config", "{d}/c.toml"],
        ["c.toml", "digits"],
    ),
    # --- messages: unknown keys name the closest known one ------------------------------------
    (
        "plan-price-minus-1",
        {"c.yaml": _plan(price=-1)},
        PLAN_CONFIG,
        ["price", "did you mean 'price_per_device_hour'"],
    ),
    ("plan-typo", {"c.yaml": _plan(devics=8)}, PLAN_CONFIG, ["devics", "did you mean 'devices'"]),
    (
        "plan-nested-typo",
        {"c.yaml": _plan(failures={"mtbf_device": 5.0})},
        PLAN_CONFIG,
        ["failures.mtbf_device", "did you mean 'mtbf_device_h'"],
    ),
    (
        "grid-top-typo",
        {"g.yaml": "bsae: {model: tiny-clip}\ngrid: {devices: [8]}\n"},
        SWEEP,
        ["bsae", "did you mean 'base'"],
    ),
    (
        "grid-point-typo",
        {"g.yaml": "base: {model: tiny-clip, global_batch: 64}\ngrid: {devics: [8, 16]}\n"},
        SWEEP,
        ["did you mean 'devices'"],
    ),
    # --- hardware files: infinities, absurd values, duplicates, typos -------------------------
    (
        "hw-hbm-inf",
        {"hw.yaml": _hw(memory={"hbm_bytes": float("inf")})},
        PLAN_HW,
        ["hw.yaml", "hbm_bytes", "finite"],
    ),
    (
        "hw-hbm-inf-json",
        {"hw.yaml": _hw(memory={"hbm_bytes": float("inf")})},
        ["hardware", "--hardware-file", "{d}/hw.yaml", "--json"],
        ["hbm_bytes", "finite"],
    ),
    (
        "hw-hbm-1e308",
        {"hw.yaml": _hw(memory={"hbm_bytes": 1e308})},
        PLAN_HW,
        ["hw.yaml", "memory.hbm_bytes", "to 2**60"],
    ),
    (
        "hw-hbm-true",
        {"hw.yaml": _hw(memory={"hbm_bytes": True})},
        PLAN_HW,
        ["memory.hbm_bytes", "not true"],
    ),
    (
        "hw-hbm-bandwidth-inf",
        {"hw.yaml": _hw(memory={"hbm_bandwidth": float("inf")})},
        PLAN_HW,
        ["hbm_bandwidth"],
    ),
    (
        "hw-peak-1e-300",
        {"hw.yaml": _hw(peak_flops={"bf16": 1e-300})},
        PLAN_HW,
        ["hw.yaml", "peak_flops.bf16", "from 1e6"],
    ),
    ("hw-peak-1e308", {"hw.yaml": _hw(peak_flops={"bf16": 1e308})}, PLAN_HW, ["peak_flops.bf16"]),
    (
        "hw-nvlink-inf",
        {"hw.yaml": _hw(nvlink={"bandwidth": float("inf")})},
        PLAN_HW,
        ["nvlink.bandwidth"],
    ),
    (
        "hw-nic-1e308",
        {"hw.yaml": _hw(network={"nic_bandwidth": 1e308})},
        PLAN_HW,
        ["network.nic_bandwidth"],
    ),
    (
        "hw-link-alpha-inf",
        {"hw.yaml": _hw(measured={"source": "m", "links": {"nvlink": {"alpha_s": float("inf")}}})},
        PLAN_HW,
        ["alpha_s"],
    ),
    (
        "hw-efficiency-1e-300",
        {"hw.yaml": _hw(measured={"source": "m", "matmul_efficiency": 1e-300})},
        PLAN_HW,
        ["hw.yaml", "measured.matmul_efficiency", "from 0.0001 to 1"],
    ),
    (
        "hw-compute-fraction-1e-300",
        {"hw.yaml": _hw(compute=_profile(memory_efficiency=1e-300))},
        PLAN_HW,
        ["compute.memory_efficiency"],
    ),
    (
        "hw-price-nan",
        {"hw.yaml": _hw(price={"usd_per_hour": float("nan")})},
        PLAN_HW,
        ["usd_per_hour"],
    ),
    (
        "hw-devices-per-node-true",
        {"hw.yaml": _hw(devices_per_node=True)},
        PLAN_HW,
        ["devices_per_node"],
    ),
    (
        "hw-duplicate-name",
        {"hw.yaml": dump({"devices": [lab_device(), lab_device()]})},
        PLAN_HW,
        ["devices[1].name", "h100-lab"],
    ),
    (
        "hw-duplicate-spelling",
        {"hw.yaml": dump({"devices": [lab_device(name="H100-LAB"), lab_device(name="h100_lab")]})},
        PLAN_HW,
        ["devices[1].name"],
    ),
    (
        "hw-duplicate-cluster",
        {
            "hw.yaml": dump(
                {
                    "clusters": [
                        {"name": "c", "device": "H100", "num_devices": 8},
                        {"name": "c", "device": "H100", "num_devices": 16},
                    ]
                }
            )
        },
        ["hardware", "--hardware-file", "{d}/hw.yaml"],
        ["clusters[1].name"],
    ),
    (
        "hw-unknown-key",
        {"hw.yaml": _hw(memroy={"hbm_bytes": 1e9})},
        PLAN_HW,
        ["memroy", "did you mean 'memory'"],
    ),
    (
        "hw-top-typo",
        {"hw.yaml": dump({"device": [lab_device()]})},
        PLAN_HW,
        ["did you mean 'devices'"],
    ),
    # --- bounded parsers: deep nesting, huge integers, binary files ---------------------------
    (
        "deep-model-json",
        {"m.json": _deep(".json", "embed_dim")},
        ["params", "{d}/m.json"],
        ["m.json", "nests deeper than 64"],
    ),
    ("deep-model-yaml", {"m.yaml": _deep(".yaml", "embed_dim")}, PLAN_MODEL, ["nests deeper"]),
    ("deep-config-yaml", {"c.yaml": _deep(".yaml")}, PLAN_CONFIG, ["c.yaml", "nests deeper"]),
    (
        "deep-config-toml",
        {"c.toml": _deep(".toml")},
        ["plan", "--config", "{d}/c.toml"],
        ["c.toml", "nests deeper"],
    ),
    (
        "deep-config-json",
        {"c.json": _deep(".json")},
        ["plan", "--config", "{d}/c.json"],
        ["nests deeper"],
    ),
    ("deep-grid-yaml", {"g.yaml": _deep(".yaml", "grid")}, SWEEP, ["g.yaml", "nests deeper"]),
    ("deep-hw-yaml", {"hw.yaml": _deep(".yaml", "devices")}, PLAN_HW, ["hw.yaml", "nests"]),
    (
        "deep-hw-toml",
        {"hw.toml": _deep(".toml", "devices")},
        ["hardware", "--hardware-file", "{d}/hw.toml"],
        ["hw.toml", "nests"],
    ),
    ("deep-100-levels", {"c.yaml": _deep(".yaml", depth=100)}, PLAN_CONFIG, ["nests deeper"]),
    ("yaml-recursive-alias", {"c.yaml": "model: &a [*a]\n"}, PLAN_CONFIG, ["nests deeper"]),
    (
        "hw-digits",
        {"hw.yaml": f"devices: [{{base: H100, name: x, devices_per_node: {_digits()}}}]"},
        PLAN_HW,
        ["hw.yaml", "digits"],
    ),
    ("binary-config", {"c.yaml": bytes(range(256))}, PLAN_CONFIG, ["c.yaml", "UTF-8"]),
    ("binary-model", {"m.yaml": b"\x89PNG\r\n\x1a\n\x00\x00"}, PLAN_MODEL, ["m.yaml"]),
    ("binary-hw", {"hw.yaml": b"\xff\xfe\x00d\x00e"}, PLAN_HW, ["hw.yaml"]),
    (
        "validate-binary",
        {"a.jsonl": bytes(range(256))},
        ["validate", "{d}/a.jsonl", "--device", "H100"],
        ["a.jsonl", "UTF-8"],
    ),
    (
        "validate-latin1",
        {"a.jsonl": '{"host": "caf\xe9"}'.encode("latin-1")},
        ["validate", "{d}/a.jsonl", "--device", "H100"],
        ["a.jsonl", "UTF-8"],
    ),
    (
        "validate-schema",
        {"a.jsonl": '{"kind": "header"}\n'},
        ["validate", "{d}/a.jsonl", "--device", "H100"],
        ["a.jsonl:1: start_time", "required"],
    ),
    (
        "validate-schema-line",
        {"a.jsonl": '\n\n{"kind": "header", "host": 3}\n'},
        ["validate", "{d}/a.jsonl", "--device", "H100"],
        ["a.jsonl:3: "],
    ),
    (
        "validate-header-typo",
        {"a.jsonl": '{"kind": "header", "hots": "x"}\n'},
        ["validate", "{d}/a.jsonl", "--device", "H100"],
        ["a.jsonl:1: "],
    ),
    (
        "validate-deep",
        {"a.jsonl": _deep(".json", "kind") + "\n"},
        ["validate", "{d}/a.jsonl", "--device", "H100"],
        ["a.jsonl:1"],
    ),
    # --- strict foreign formats: OpenCLIP configs ---------------------------------------------
    (
        "openclip-typo",
        {"oc.json": _openclip("vision_cfg", "layerz", 2)},
        ["params", "{d}/oc.json"],
        ["vision_cfg.layerz", "did you mean 'layers'"],
    ),
    (
        "openclip-text-typo",
        {"oc.json": _openclip("text_cfg", "context_lenght", 77)},
        ["params", "{d}/oc.json"],
        ["text_cfg.context_lenght", "'context_length'"],
    ),
    (
        "openclip-top-typo",
        {"oc.json": _openclip(None, "quick_gelo", False)},
        ["params", "{d}/oc.json"],
        ["quick_gelo", "'quick_gelu'"],
    ),
    (
        "openclip-layers-true",
        {"oc.json": _openclip("vision_cfg", "layers", True)},
        ["params", "{d}/oc.json"],
        ["vision_cfg.layers", "whole number"],
    ),
    (
        "openclip-width-fraction",
        {"oc.json": _openclip("text_cfg", "width", 64.5)},
        ["params", "{d}/oc.json"],
        ["text_cfg.width"],
    ),
    (
        "openclip-mlp-ratio-huge",
        {"oc.json": _openclip("vision_cfg", "mlp_ratio", 1e308)},
        ["params", "{d}/oc.json"],
        ["mlp_ratio"],
    ),
    (
        "openclip-eps-string",
        {"oc.json": _openclip("vision_cfg", "norm_kwargs", {"eps": "x"})},
        ["params", "{d}/oc.json"],
        ["norm_kwargs.eps"],
    ),
    # --- flags ------------------------------------------------------------------------------
    (
        "collectives-half-byte",
        {},
        ["collectives", "--device", "H100", "--devices", "8", "--bytes", "0.5"],
        ["bytes", "whole"],
    ),
    (
        "collectives-zero",
        {},
        ["collectives", "--device", "H100", "--devices", "8", "--bytes", "0"],
        ["bytes"],
    ),
    (
        "collectives-1e400",
        {},
        ["collectives", "--device", "H100", "--devices", "8", "--bytes", "1e400"],
        ["bytes"],
    ),
    (
        "collectives-1.2.3",
        {},
        ["collectives", "--device", "H100", "--devices", "8", "--bytes", "1.2.3"],
        ["bytes"],
    ),
    (
        "collectives-hw-inf",
        {"hw.yaml": _hw(nvlink={"bandwidth": float("inf")})},
        ["collectives", "--device", "h100-lab", "--devices", "8", "--hardware-file", "{d}/hw.yaml"],
        ["nvlink.bandwidth"],
    ),
    (
        "report-deadline-nan",
        {},
        ["report", "--quick", "--deadline", "nan", "--out", "{d}/r.html"],
        ["deadline"],
    ),
    (
        "report-deadline-inf",
        {},
        ["report", "--quick", "--deadline", "inf", "--out", "{d}/r.html"],
        ["deadline"],
    ),
    (
        "report-deadline-negative",
        {},
        ["report", "--quick", "--deadline", "-3", "--out", "{d}/r.html"],
        ["deadline"],
    ),
    (
        "report-quick-devices-7",
        {},
        ["report", "--quick", "--devices", "7", "--out", "{d}/r.html", "--quiet"],
        ["devices"],
    ),
    (
        "sweep-scheduler-not-an-address",
        {
            "g.yaml": "base: {model: tiny-clip, global_batch: 64}\n"
            "grid: {devices: [8, 16, 32, 64]}\n"
        },
        ["sweep", "{d}/g.yaml", "--out", "{d}/out.csv", "--quiet", "--scheduler", "not-an-address"],
        ["scheduler", "not-an-address"],
    ),
    ("plan-report-empty", {}, ["plan", "--model", "tiny-clip", *SMALL, "--report", ""], ["report"]),
    ("plan-trace-empty", {}, ["plan", "--model", "tiny-clip", *SMALL, "--trace", ""], ["trace"]),
    (
        "sweep-out-empty",
        {"g.yaml": "base: {model: tiny-clip, global_batch: 64}\ngrid: {devices: [8]}\n"},
        ["sweep", "{d}/g.yaml", "--out", "", "--quiet"],
        ["out"],
    ),
    ("report-out-empty", {}, ["report", "--quick", "--out", "", "--quiet"], ["report"]),
    (
        "plan-price-flag-inf",
        {},
        ["plan", "--model", "tiny-clip", *SMALL, "--price", "inf"],
        ["price_per_device_hour"],
    ),
    (
        "plan-decode-rate-nan",
        {},
        ["plan", "--model", "tiny-clip", *SMALL, "--decode-rate", "nan"],
        ["decode_samples_per_s_per_device"],
    ),
    (
        "plan-devices-flag-huge",
        {},
        ["plan", "--model", "tiny-clip", "--devices", str(2**63), "--global-batch", str(2**63)],
        ["devices"],
    ),
]


@pytest.mark.parametrize(
    ("files", "args", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_input_is_one_line_exit_2_and_nothing_written(tmp_path, files, args, expect):
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    before = listing(tmp_path)
    result = run_cli(*(a.replace("{d}", str(tmp_path)) for a in args))
    assert_one_line(result, *expect)
    assert listing(tmp_path) == before


def test_the_table_names_every_case_once():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


def test_valid_files_still_plan(tmp_path):
    """The controls: the unmutated files of the table plan (exit 0, finite JSON)."""
    (tmp_path / "m.yaml").write_text(dump(tiny_model()))
    (tmp_path / "hw.yaml").write_text(_hw())
    (tmp_path / "oc.json").write_text(json.dumps(tiny_openclip()))
    for args in (
        ["plan", "--model", str(tmp_path / "m.yaml"), *SMALL, "--json"],
        [
            "plan",
            "--model",
            "tiny-clip",
            *SMALL,
            "--device",
            "h100-lab",
            "--hardware-file",
            str(tmp_path / "hw.yaml"),
            "--json",
        ],
        ["params", str(tmp_path / "oc.json"), "--json"],
        ["hardware", "--hardware-file", str(tmp_path / "hw.yaml"), "--json"],
        ["collectives", "--device", "H100", "--devices", "8", "--bytes", "1", "--json"],
    ):
        result = run_cli(*args)
        assert result.rc == 0, (args, result.err)
        json.loads(result.out, parse_constant=pytest.fail)


def test_hardware_json_is_strict_json():
    result = run_cli("hardware", "--json")
    assert result.rc == 0, result.err
    assert "Infinity" not in result.out and "NaN" not in result.out
    json.loads(result.out, parse_constant=lambda c: pytest.fail(c))


def test_json_output_with_a_non_finite_value_is_one_line(capsys):
    """The one JSON emitter refuses NaN / Infinity rather than print what is not JSON."""
    import typer

    from vlscale.cli.app import emit_json

    with pytest.raises(typer.Exit) as exit_:
        emit_json({"plan": {"days": float("inf")}, "ok": 1})
    assert exit_.value.exit_code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "error: output.plan.days: the answer is not a finite number; an input is out of range "
        "(check the hardware file and the flags)"
    )


# --- full disks ---------------------------------------------------------------------------------


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "--model", "tiny-clip", *SMALL, "--report", "{d}/out.html"],
        ["plan", "--model", "tiny-clip", *SMALL, "--trace", "{d}/out.json"],
        ["sweep", "{d}/g.yaml", "--out", "{d}/out.csv", "--quiet", "--workers", "1"],
    ],
    ids=["plan-report", "plan-trace", "sweep-out"],
)
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, monkeypatch, args):
    """ENOSPC when the file is synced: one line naming the file and the room it needed."""
    (tmp_path / "g.yaml").write_text(
        "base: {model: tiny-clip, global_batch: 64}\ngrid: {devices: [8, 16]}\n"
    )
    before = listing(tmp_path)
    monkeypatch.setattr(os, "fsync", _no_space)
    result = run_cli(*(a.replace("{d}", str(tmp_path)) for a in args))
    line = assert_one_line(result, "out.", "no space left on device", "needs")
    assert "free in" in line
    assert listing(tmp_path) == before


def test_write_error_is_an_oserror_and_a_config_error(tmp_path, monkeypatch):
    from vlscale.errors import ConfigError
    from vlscale.paths import atomic_write_text

    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(OSError) as err:
        atomic_write_text(tmp_path / "a.txt", "x" * 3000, field="out")
    assert err.value.errno == errno.ENOSPC and isinstance(err.value, ConfigError)
    assert "needs 2.9 KiB" in str(err.value)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs mounted on a folder (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_really_full_disk(small_disk, tmp_path):
    """plan --report and sweep --out on a 64 KiB tmpfs: one line, no temp file left."""
    grid = tmp_path / "g.yaml"
    grid.write_text("base: {model: tiny-clip, global_batch: 64}\ngrid: {devices: [8, 16]}\n")
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill it to the last block
        while os.write(fd, b"\0" * 1024):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    before = listing(small_disk)
    report = run_cli("plan", "--model", "tiny-clip", *SMALL, "--report", str(small_disk / "r.html"))
    assert_one_line(report, "r.html", "no space left on device", "needs")
    sweep = run_cli(
        "sweep", str(grid), "--out", str(small_disk / "o.csv"), "--quiet", "--workers", "1"
    )
    assert_one_line(sweep, "o.csv", "no space left on device")
    assert listing(small_disk) == before


# --- SIGTERM during a sweep ----------------------------------------------------------------------


def test_sigterm_during_a_sweep_leaves_no_temp_file(tmp_path):
    grid = tmp_path / "g.yaml"
    # many points on one process: the sweep is still running when the signal comes
    grid.write_text(
        "base: {model: tiny-clip, global_batch: 64}\n"
        "grid: {devices: [8, 16, 32, 64], seed: [" + ", ".join(map(str, range(500))) + "]}\n"
    )
    out = tmp_path / "o.csv"
    code = "from vlscale.cli import main; main()"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            "sweep",
            str(grid),
            "--out",
            str(out),
            "--quiet",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.yaml"]
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("sweep: 2,000")]
    assert lines == [f"sweep: stopped by SIGTERM; '{out}' not written"], err


def test_deep_copy_of_cases_is_not_shared():
    """The builders make fresh mappings (a case never mutates another's)."""
    a, b = tiny_model(), tiny_model()
    set_path(a, "embed_dim", 1)
    assert b["embed_dim"] != 1 and copy.deepcopy(b) == b
