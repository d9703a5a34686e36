"""Measurements that know their noise: the speed index, repeat dispersion and speed-index
spread, the campaign's order of repeats, and records written before any of it."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import statistics
import sys
from pathlib import Path

import pytest

from tests.test_plan_cli import vlscale
from vlscale.calibrate.noise import (
    dispersion,
    interleaved_order,
    noise_summary,
    speed_index,
    spread,
)
from vlscale.calibrate.run_fit import validate
from vlscale.calibrate.runs import load_measured_run
from vlscale.records import ReferenceRecord, read_run
from vlscale.specs.hardware import load_hardware_file
from vlscale.specs.machine import ReferenceTime

REPO = Path(__file__).resolve().parents[1]
EPYC = REPO / "reports/validation/cpu-epyc-b"
PROFILE = EPYC / "profile.yaml"
RUN = EPYC / "runs/heldout/medium-clip-clip-r0-b32-w1-fp32-fsdp.jsonl"
KERNEL = "test kernel"


def ref(seconds: float, kernel: str = KERNEL, threads: int = 2) -> ReferenceTime:
    return ReferenceTime(seconds=seconds, threads=threads, kernel=kernel)


def slowed_copy(src: Path, dst: Path, factor: float, reference_s: float) -> Path:
    """``src`` with every step ``factor`` times slower and the reference kernel timed at
    ``reference_s`` before and after: a machine slowed by ``factor`` throughout the run."""
    lines = src.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        rec = json.loads(line)
        if rec["kind"] == "step":
            for key in ("step_time_s", "data_time_s", "forward_s", "loss_s", "backward_s"):
                if rec.get(key) is not None:
                    rec[key] *= factor
            rec["samples_per_s"] /= factor
        out.append(json.dumps(rec))
    for when in ("before", "after"):
        out.append(ReferenceRecord(when=when, time=ref(reference_s)).model_dump_json())
    dst.write_text("\n".join(out) + "\n")
    return dst


def profile_with_reference(seconds: float):
    (device,) = load_hardware_file(PROFILE).devices.values()
    compute = device.compute.model_copy(update={"reference": ref(seconds)})
    return device.model_copy(update={"compute": compute})


def test_speed_index_cancels_a_simulated_machine_slowdown(tmp_path):
    base_ref, factor = 0.08, 1.7
    device = profile_with_reference(base_ref)
    quiet = slowed_copy(RUN, tmp_path / "quiet.jsonl", 1.0, base_ref)
    slow = slowed_copy(RUN, tmp_path / "slow.jsonl", factor, base_ref * factor)
    runs = [load_measured_run(p, device.name, str(PROFILE)) for p in (quiet, slow)]
    a, b = validate(runs, device).rows
    assert a.speed_index == pytest.approx(1.0) and b.speed_index == pytest.approx(factor)
    # the raw error moves with the slowdown; the normalised one is the quiet run's error
    assert b.error == pytest.approx((1 + a.error) / factor - 1)
    assert abs(b.error - a.error) > 0.3
    assert b.error_normalised == pytest.approx(a.error)
    assert a.error_normalised == pytest.approx(a.error)


def test_validate_reports_dispersion_spread_and_normalised_mape(tmp_path):
    """Two runs of one configuration at step times 1 and 1.7 (and speed indices 1 and 1.7):
    dispersion = spread = 0.7 / 1.35 by hand."""
    device = profile_with_reference(0.08)
    paths = [
        slowed_copy(RUN, tmp_path / "a.jsonl", 1.0, 0.08),
        slowed_copy(RUN, tmp_path / "b.jsonl", 1.7, 0.08 * 1.7),
    ]
    result = validate([load_measured_run(p, device.name, str(PROFILE)) for p in paths], device)
    out = result.to_json()
    assert out["noise"]["repeat_dispersion"] == pytest.approx(0.7 / 1.35)
    assert out["noise"]["speed_index_spread"] == pytest.approx(0.7 / 1.35)
    assert out["noise"]["repeated_configs"] == 1
    errs = [abs(r["error_normalised"]) for r in out["runs"]]
    assert out["mape_normalised"]["prediction"] == pytest.approx(statistics.fmean(errs))
    summary = result.summary()
    assert summary["bias"] == pytest.approx(statistics.fmean(r["error"] for r in out["runs"]))
    # the HTML report states the noise floor beside the errors
    from vlscale.report.validation import validation_report

    page = validation_report(out, "t")
    assert f"noise floor: repeat dispersion {0.7 / 1.35:.1%}" in page
    assert f"speed-index spread {0.7 / 1.35:.1%}" in page and "speed-normalised MAPE" in page


def test_dispersion_and_spread_by_hand():
    groups = {"a": [1.0, 1.2], "b": [2.0, 2.0], "c": [3.0], "d": [1.0, 2.0, 1.5]}
    got = noise_summary(groups, [0.9, 1.0, 1.3])
    # a: 0.2 / 1.1; b: 0; d: (2 - 1) / 1.5; c ran once and is no repeat
    per = sorted([0.2 / 1.1, 0.0, 1.0 / 1.5])
    assert got["repeat_dispersion"] == pytest.approx(per[1])
    assert got["repeat_dispersion_max"] == pytest.approx(per[2])
    assert got["repeated_configs"] == 3
    assert got["speed_index_spread"] == pytest.approx((1.3 - 0.9) / 1.0)
    assert spread([1.0]) is None and noise_summary({"x": [1.0]}, [])["repeat_dispersion"] is None
    with pytest.raises(ValueError):
        dispersion([1.0])


def test_speed_index_divides_only_comparable_references():
    profile = ref(0.1)
    # the smaller of before / after: a spike in one timing is the timing's own noise
    assert speed_index([ref(0.12), ref(0.14)], profile) == pytest.approx(1.2)
    assert speed_index([ref(0.30), ref(0.12)], profile) == pytest.approx(1.2)
    assert speed_index([ref(0.05, kernel="older kernel"), ref(0.13)], profile) == pytest.approx(1.3)
    assert speed_index([ref(0.12, kernel="older kernel")], profile) is None
    assert speed_index([ref(0.12, threads=1)], profile) is None
    assert speed_index([ref(0.12)], None) is None and speed_index([], profile) is None


@pytest.mark.parametrize("n", range(1, 13))
@pytest.mark.parametrize("repeats", [1, 2, 3, 4])
def test_campaign_order_never_puts_repeats_back_to_back(n, repeats):
    order = interleaved_order(n, repeats)
    assert sorted(order) == sorted((i, p) for i in range(n) for p in range(repeats))
    for p in range(repeats):  # each pass runs every configuration once
        assert sorted(i for i, q in order[p * n : (p + 1) * n] if q == p) == list(range(n))
    if n >= 2:
        assert all(x[0] != y[0] for x, y in itertools.pairwise(order))


def test_old_records_validate_without_speed_index_and_say_so_once():
    out = vlscale("validate", str(EPYC / "runs"), "--hardware-file", str(PROFILE), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert all(r["error_normalised"] is None and r["speed_index"] is None for r in result["runs"])
    assert result["noise"]["repeat_dispersion"] is None  # no configuration ran twice
    assert result["noise"]["speed_index_spread"] is None
    assert result["mape_normalised"] == {"replay": None, "prediction": None}
    assert result["probe_only"] is None
    text = vlscale("validate", str(EPYC / "runs"), "--hardware-file", str(PROFILE))
    assert text.stdout.count("have no speed index") == 1
    assert "noise floor: repeat dispersion" in text.stdout


def test_probe_only_error_is_reported_beside_the_calibrated_one():
    out = vlscale(
        "validate",
        str(EPYC / "runs"),
        "--hardware-file",
        str(PROFILE),
        "--probe-profile",
        str(EPYC / "probe.yaml"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    held = [r for r in result["runs"] if r["split"] == "prediction"]
    probe = result["probe_only"]
    assert probe["runs"] == len(held)
    # the probe profile has no fitted parameters: another prediction of the same runs
    assert probe["mape"] != pytest.approx(result["mape"]["prediction"])
    assert abs(probe["bias"]) <= probe["mape"]


def _campaign_module():
    spec = importlib.util.spec_from_file_location(
        "calibration_campaign", REPO / "benchmarks/calibration_campaign.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_campaign_noise_set_keeps_the_split_rules_and_old_campaigns_merge(tmp_path):
    camp = _campaign_module()
    chosen = camp.noise_set()
    fit = [c for c in chosen if c.split == "fit"]
    assert len(fit) >= 5 and len(chosen) - len(fit) >= 5
    assert all(c.world == 1 and c.precision == "fp32" for c in fit)
    assert camp.run_path(chosen[0], 0).endswith(f"{chosen[0].id}.jsonl")
    assert camp.run_path(chosen[0], 1).endswith(f"{chosen[0].id}-r2.jsonl")
    # a partial campaign added to one written before repeats (rows without 'repeat')
    old = json.loads((EPYC / "campaign.json").read_text())
    shutil.copytree(EPYC / "runs", tmp_path / "runs")
    (tmp_path / "campaign.json").write_text(json.dumps(old))
    first = old["runs"][0]
    again = dict(first, repeat=2, path=first["path"].replace(".jsonl", "-r2.jsonl"))
    slowed_copy(tmp_path / first["path"], tmp_path / again["path"], 1.5, 0.08)
    doc = {"repeats": {}, "reference_s": [0.08, 0.08]}
    merged = camp.merge_partial(tmp_path, doc, [again], "now", first["id"])
    assert len(merged["runs"]) == len(old["runs"]) + 1  # the old row counts as repeat 1
    assert merged["repeats"]["per_config"] == {first["id"]: pytest.approx(0.5 / 1.25, abs=1e-4)}
    assert merged["reference_s"] == [0.08, 0.08]
    # the dispersion a campaign records, from its run files
    runs_dir = tmp_path / "runs/repeats"
    runs_dir.mkdir(parents=True)
    rows = []
    for k, factor in enumerate((1.0, 1.25)):
        path = runs_dir / f"x{k}.jsonl"
        slowed_copy(RUN, path, factor, 0.08)
        rows.append({"id": "x", "path": str(path.relative_to(tmp_path))})
    assert camp.repeat_dispersion(tmp_path, rows)["median"] == pytest.approx(0.25 / 1.125, 1e-3)
    # the records the campaign appends read back
    assert len(read_run(runs_dir / "x0.jsonl").references) == 2


def test_a_missing_probe_profile_is_one_line_and_nothing_written(tmp_path):
    out = tmp_path / "v.json"
    done = vlscale(
        "validate",
        str(EPYC / "runs/fit"),
        "--hardware-file",
        str(PROFILE),
        "--probe-profile",
        str(tmp_path / "nope.yaml"),
        "--out",
        str(out),
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: hardware_file nope.yaml")
    assert not out.exists()


def test_a_calibrated_profile_describes_the_machine_of_its_fit_runs(tmp_path):
    """``vlscale calibrate`` sets the profile's reference to the median reference time of its
    fit runs (the conditions its parameters were fitted under): held-out runs on a machine as
    fast as during fitting then have speed index 1, whatever the probe's quiet moment said."""
    from vlscale.calibrate.noise import fit_reference
    from vlscale.calibrate.run_fit import calibrate

    device = profile_with_reference(0.05)  # probed while the machine was quiet
    paths = [
        slowed_copy(RUN, tmp_path / f"{i}.jsonl", 1.0, seconds)
        for i, seconds in enumerate((0.06, 0.07, 0.09))
    ]
    runs = [load_measured_run(p, device.name, str(PROFILE)) for p in paths]
    assert fit_reference(device.compute.reference, runs).seconds == pytest.approx(0.07)
    fitted = calibrate(device, runs, parameters=("step_overhead_s",))
    assert fitted.compute.reference.seconds == pytest.approx(0.07)
    assert fitted.compute.reference.kernel == KERNEL
    # references of another kernel do not compare: the probed time stays
    other = profile_with_reference(0.05).compute.reference.model_copy(update={"kernel": "v2"})
    assert fit_reference(other, runs) is None
    assert fit_reference(None, runs) is None
