"""``vlscale stacks fit``: a stack's γ measured from the trainer's runs, written as a fragment that
the stacks loader and the planner read (vlscale.calibrate.stack_profile, vlscale.specs.stacks).

The runs are the CPU campaign's (reports/validation/cpu-epyc-b) with the profile they were
validated on; the device kind is the CPU's. A GPU campaign does the same on its catalog device.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tests.test_plan_cli import vlscale
from vlscale.calibrate.runs import load_measured_run
from vlscale.calibrate.stack_profile import measure_stack, planned_step_s
from vlscale.specs.hardware import load_hardware_file
from vlscale.specs.stacks import FRAGMENT_KEYS, MEASURED_ENV

CAMPAIGN = Path(__file__).resolve().parents[1] / "reports" / "validation" / "cpu-epyc-b"
PROFILE = CAMPAIGN / "profile.yaml"
RUNS = [
    CAMPAIGN / "runs" / "fit" / f"{name}.jsonl"
    for name in (
        "small-clip-clip-r0-b32-w1-fp32-fsdp",
        "small-clip-siglip-gather-r0-b32-w1-fp32-fsdp",
        "small-clip-clip-r0-b32-w1-fp32-fsdp-ac",
        "tiny-eva-eva-clip-r0-b32-w1-fp32-fsdp",
    )
]


@pytest.fixture(scope="module")
def device():
    return next(iter(load_hardware_file(str(PROFILE)).devices.values()))


@pytest.fixture(scope="module")
def runs(device):
    return [load_measured_run(p, device.name, str(PROFILE)) for p in RUNS]


def test_a_planted_gamma_comes_back(runs, device):
    """Runs whose 'measured' step is the plan at γ = 0.5: the fit, every leave-one-out γ and
    every held-out prediction come back at 0.5 / zero error."""
    planted = [replace(r, step_s=planned_step_s(r, 0.5, device)) for r in runs]
    fit = measure_stack(planted, "pytorch-fsdp2", device)
    assert fit.kind == "epyc" and fit.stack == "pytorch-fsdp2"
    assert fit.gamma == pytest.approx(0.5, rel=2e-3)
    assert all(g == pytest.approx(0.5, rel=2e-3) for g in fit.loo_gamma.values())
    assert fit.sigma < 5e-3


def test_fit_writes_a_fragment_of_the_runs(tmp_path, runs, device):
    out = tmp_path / "stack.yaml"
    done = vlscale(
        "stacks", "fit", *map(str, RUNS), "--hardware-file", str(PROFILE), "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    fragment = yaml.safe_load(out.read_text())
    assert set(FRAGMENT_KEYS) <= set(fragment)
    assert fragment["stack"] == "pytorch-fsdp2" and fragment["device_kind"] == "epyc"
    assert fragment["fitted_on"] == [f"fit/{p.stem}" for p in RUNS]
    assert fragment["source"].startswith("measured: 4 runs")
    by_name = {f"fit/{Path(r.path).stem}": r for r in runs}
    solved = fragment["solved"]
    for name, gamma in solved.items():  # each run's γ reproduces its measured step
        run = by_name[name]
        if gamma < 1.0:
            assert planned_step_s(run, gamma, device) == pytest.approx(run.step_s, rel=2e-3)
    assert fragment["gamma"] == pytest.approx(statistics.geometric_mean(solved.values()), 1e-3)
    # leave-one-out, recomputed here for each run: γ of the others, its error on this run
    residuals = []
    for name, run in by_name.items():
        others = statistics.geometric_mean(g for n, g in solved.items() if n != name)
        error = planned_step_s(run, round(others, 6), device) / run.step_s - 1
        assert fragment["loo_error"][name] == pytest.approx(error, abs=2e-3)
        residuals.append(math.log1p(error))
    rms = math.sqrt(sum(r * r for r in residuals) / len(residuals))
    assert fragment["sigma"] == pytest.approx(rms, abs=2e-3)
    for name in solved:
        assert name in done.stdout


def _fragment(folder: Path, **values) -> Path:
    data = {
        "stack": "pytorch-fsdp2",
        "device_kind": "H100",
        "gamma": 0.5,
        "sigma": 0.07,
        "fitted_on": ["fit/a", "fit/b"],
        "source": "measured: a test fragment",
    } | values
    folder.mkdir(exist_ok=True)
    path = folder / "h100.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_planner_and_stacks_read_a_measured_fragment(tmp_path):
    before = json.loads(vlscale("stacks", "--json").stdout)
    _fragment(tmp_path / "measured")
    env = {MEASURED_ENV: str(tmp_path / "measured")}
    done = vlscale("stacks", "--json", extra_env=env)
    assert done.returncode == 0, done.stderr
    after = json.loads(done.stdout)
    assert [sorted(s) for s in after] == [sorted(s) for s in before]  # the same keys
    own = after[0]
    assert own["name"] == "pytorch-fsdp2" and own["default"]
    assert own["gamma"]["H100"] == 0.5 and own["sigma"]["H100"] == 0.07
    assert own["fitted_on"]["H100"] == ["fit/a", "fit/b"]
    assert own["gamma_source"].startswith("H100: measured: a test fragment")
    args = ["plan", "--device", "H100", "--model", "tiny-clip", "--devices", "8"]
    args += ["--global-batch", "64", "--json"]
    measured = json.loads(vlscale(*args, extra_env=env).stdout)
    catalog = json.loads(vlscale(*args).stdout)
    assert measured["compute_model"]["framework_efficiency"] == 0.5
    assert "measured on 2 trainer run(s)" in measured["compute_model"]["source"]
    assert catalog["compute_model"]["framework_efficiency"] != 0.5
    assert measured["step_time_s"] < catalog["step_time_s"]  # γ 0.5 > the borrowed 0.33
    # the A100, not measured, keeps its stored γ
    a100 = ["plan", "--device", "A100-80GB", *args[3:]]
    assert vlscale(*a100, extra_env=env).stdout == vlscale(*a100).stdout


@pytest.mark.parametrize(
    "values, problem",
    [
        ({"gamma": 1.5}, "gamma 1.5 must be in (0, 1]"),
        ({"stack": "nope"}, "unknown stack 'nope'"),
        ({"fitted_on": []}, "fitted_on must list the runs"),
        ({"device_kind": None}, "device_kind must name a device kind"),
        ({"sigma": -0.1}, "sigma -0.1 must be >= 0 or null"),
    ],
)
def test_a_bad_fragment_is_one_line(tmp_path, values, problem):
    path = _fragment(tmp_path / "measured", **values)
    done = vlscale("stacks", extra_env={MEASURED_ENV: str(path.parent)})
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: stack_file: {path}: {problem}")
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, field",
    [
        (["--out", "{tmp}/stack.txt"], "out"),
        (["--out", "{tmp}/stack.yaml", "--stack", "nope"], "stack"),
        (["--out", "{tmp}/stack.yaml", "--device", "nope"], "device"),
    ],
)
def test_fit_bad_input_is_one_line_and_writes_nothing(tmp_path, args, field):
    args = [a.format(tmp=tmp_path) for a in args]
    done = vlscale("stacks", "fit", str(RUNS[0]), "--hardware-file", str(PROFILE), *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {field}: ")
    assert len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_fit_of_a_missing_runs_folder_is_one_line(tmp_path):
    done = vlscale("stacks", "fit", str(tmp_path / "none"), "--out", str(tmp_path / "s.yaml"))
    assert done.returncode == 2 and done.stderr.startswith("error: runs: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "text, problem", [("- a list\n", "must hold a mapping"), ("a: [b\n", ""), ("a: 1\n", "lacks [")]
)
def test_a_fragment_that_is_not_one_is_one_line(tmp_path, text, problem):
    (tmp_path / "bad.yaml").write_text(text)
    done = vlscale("stacks", "--json", extra_env={MEASURED_ENV: str(tmp_path)})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: stack_file: ") and "bad.yaml" in done.stderr
    assert problem in done.stderr and len(done.stderr.strip().splitlines()) == 1
