"""The peak FLOP/s behind MFU (trainer.profiling): a CPU measurement that one busy moment cannot
spoil, a sanity bound with a clear warning, and the peak of a device profile (--peak-from).

No timings are asserted: the matmul clock is a fake that advances a fixed step per reading.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer import profiling
from trainer.cli_args import load_config
from vlscale.errors import ConfigError

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]
CPU_PROFILE = REPO / "reports" / "validation" / "cpu" / "profile.yaml"


class StepClock:
    """A clock that advances ``dt`` per reading: every timed matmul takes exactly ``dt``."""

    def __init__(self):
        self.t, self.dt = 0.0, 1e-4

    def __call__(self) -> float:
        self.t += self.dt
        return self.t


def test_one_pathological_trial_does_not_decide_the_peak(monkeypatch):
    clock, real = StepClock(), profiling.trial_flops
    steps = iter([1e-4, 1e-2, 1e-4])  # the second trial is 100x slow (a starved thread pool)

    def trial(*args):
        clock.dt = next(steps)
        return real(*args)

    monkeypatch.setattr(profiling, "trial_flops", trial)
    rates = profiling.matmul_flops_trials(CPU, sizes=(64,), seconds=1e-3, clock=clock)
    good = 2 * 64**3 / 1e-4
    assert rates == pytest.approx([good, good / 100, good])
    peak, note = profiling.check_cpu_peak(rates, "fp32", threads=1)
    assert peak == pytest.approx(good) and note == ""


def test_the_recorded_bad_runs_give_the_good_peak():
    # the three measurements of issue 11 on one machine, as three trials of one measurement
    peak, note = profiling.check_cpu_peak([1.87e11, 1.68e9, 1.69e11], "fp32", threads=2)
    assert peak == 1.87e11 and note == ""


def test_trials_that_disagree_keep_the_best_and_say_so():
    peak, note = profiling.check_cpu_peak([1.8e11, 2e10, 1e10], "fp32", threads=2)
    assert peak == 1.8e11
    assert "disagree" in note and "--peak-from" in note


@pytest.mark.parametrize(("rate", "side"), [(1.68e9, "below"), (5e12, "above")])
def test_a_peak_no_cpu_can_have_is_rejected_with_a_warning(rate, side):
    peak, note = profiling.check_cpu_peak([rate] * 3, "fp32", threads=2)
    assert peak is None
    assert note.startswith("warning:") and side in note
    assert "MFU is not recorded" in note and "--peak-flops" in note


def test_half_precision_may_be_slow_on_a_cpu():
    # no bf16 kernels: slow for real, not a measuring accident
    assert profiling.check_cpu_peak([5e8], "bf16", threads=2) == (5e8, "")


def test_rejected_measurement_leaves_mfu_unrecorded(monkeypatch):
    monkeypatch.setattr(profiling, "matmul_flops_trials", lambda device, precision: [1e8] * 3)
    peak, source, note = profiling.resolve_peak_flops(CPU, "cpu", "fp32", None)
    assert (peak, source) == (None, "none") and note.startswith("warning:")


def test_option_wins_and_measures_nothing(monkeypatch):
    monkeypatch.setattr(profiling, "matmul_flops_trials", pytest.fail)
    assert profiling.resolve_peak_flops(CPU, "cpu", "fp32", 3e11) == (3e11, "option", "")


@pytest.mark.parametrize("ranks", [1, 2])
def test_peak_from_a_cpu_profile_is_shared_by_the_ranks_of_the_host(monkeypatch, ranks):
    from vlscale.specs.hardware import load_hardware_file

    monkeypatch.setattr(profiling, "matmul_flops_trials", pytest.fail)
    (device,) = load_hardware_file(CPU_PROFILE).devices.values()
    peak, source, note = profiling.resolve_peak_flops(
        CPU, "cpu", "fp32", None, profile=str(CPU_PROFILE), ranks_per_host=ranks
    )
    assert peak == pytest.approx(device.peak_flops.fp32 / ranks)
    assert (source, note) == ("option", "")


def test_peak_from_a_file_without_a_cpu_device_is_a_config_error(tmp_path):
    gpu_only = tmp_path / "gpus.yaml"
    gpu_only.write_text("devices:\n  - {base: H100, name: h100-mine}\n")
    with pytest.raises(
        ConfigError, match=r"exactly one cpu device to take the peak from \(it has: none\)"
    ):
        profiling.profile_peak_flops(str(gpu_only), CPU, "fp32")


def test_peak_from_a_missing_file_is_refused_before_launch(tmp_path):
    with pytest.raises(ConfigError, match="peak_from"):
        load_config(["--peak-from", str(tmp_path / "nope.yaml")], world_size=1)
    cfg = load_config(["--peak-from", str(CPU_PROFILE)], world_size=1)
    assert cfg.peak_from == str(CPU_PROFILE)


def _profile_probed_on(tmp_path: Path, cpuinfo: str) -> Path:
    """The committed CPU profile, stamped as probed on the CPU that ``cpuinfo`` describes."""
    import yaml

    from vlscale.specs.machine import parse_cpuinfo

    doc = yaml.safe_load(CPU_PROFILE.read_text())
    cpu = parse_cpuinfo(cpuinfo).model_copy(update={"l2_bytes": 2**21})
    doc["devices"][0]["compute"]["measured_on"] = {"cpu": cpu.model_dump(mode="json")}
    path = tmp_path / "probed.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _cpuinfo(stepping: int) -> str:
    return (
        "vendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\n"
        f"model name\t: Intel Xeon\nstepping\t: {stepping}\nflags\t\t: fpu avx512f amx_tile\n"
    )


@pytest.mark.parametrize("stepping, warns", [(8, False), (6, True)])
def test_peak_from_a_profile_of_another_cpu_warns_in_one_line(
    monkeypatch, tmp_path, stepping, warns
):
    from vlscale.specs import machine

    profile = _profile_probed_on(tmp_path, _cpuinfo(8))
    here = machine.parse_cpuinfo(_cpuinfo(stepping)).model_copy(update={"l2_bytes": 2**21})
    monkeypatch.setattr(machine, "this_cpu", lambda: here)
    monkeypatch.setattr(profiling, "matmul_flops_trials", pytest.fail)
    peak, source, note = profiling.resolve_peak_flops(
        CPU, "cpu", "fp32", None, profile=str(profile)
    )
    assert peak > 0 and source == "option"
    if warns:
        assert note.startswith("warning: probed.yaml was measured on Intel Xeon")
        assert "differs in: stepping" in note and "\n" not in note
    else:
        assert note == ""
