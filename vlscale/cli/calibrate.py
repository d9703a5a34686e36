"""``vlscale calibrate`` and ``vlscale validate``: the planner against the trainer's own runs.

    vlscale calibrate RUNS... --hardware-file P --device NAME --out P2
    vlscale validate  RUNS... [--hardware-file P2] [--device NAME] [--probe-profile P]
                      [--json] [--report F] [--out F]

RUNS are run files (a trainer's ``OUT/run.jsonl``) or folders of them. Without a hardware file,
runs are predicted on the catalog device the trainer recorded (CUDA runs carry its catalog key)
or the one named by --device. See ``vlscale.calibrate.run_fit`` for what is fitted and how the
splits are defined, and ``vlscale.calibrate.noise`` for the speed index and the noise floor
reported beside the errors. A profile probed on another CPU (or GPU SKU) than the runs' is
warned about in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vlscale.cli.app import emit_json, handles_bad_input, non_finite_path, print_table
from vlscale.errors import ConfigError
from vlscale.paths import atomic_write_text, check_output_file

RunsArg = Annotated[list[str], typer.Argument(help="run files (OUT/run.jsonl) or folders")]
HwOpt = Annotated[str, typer.Option("--hardware-file", help="hardware file with the device")]
DevOpt = Annotated[
    str | None, typer.Option("--device", help="device in the file (default: its only one)")
]


def profile_device(hardware_file: str | None, name: str | None):
    """The device to predict on: one of a hardware file's, or (no file) a catalog device; None
    when neither is given (each run's recorded catalog key is used)."""
    from vlscale.specs.hardware import get_device, load_hardware_file

    if hardware_file is None:
        return get_device(name) if name else None

    devices = load_hardware_file(hardware_file).devices
    if name is None:
        if len(devices) != 1:
            raise ConfigError(
                "device", f"{hardware_file} has {len(devices)} devices; pick one with --device"
            )
        return next(iter(devices.values()))
    if name not in devices:
        raise ConfigError("device", f"no device '{name}' in {hardware_file}; have {list(devices)}")
    return devices[name]


def _probe_device(path: str, name: str | None):
    """The probe profile's device: its only one, else the one named like the calibrated."""
    from vlscale.specs.hardware import load_hardware_file

    only = len(load_hardware_file(path).devices) == 1
    return profile_device(path, None if only else name)


def measured_runs(paths: list[str], device, hardware_file: str | None):
    from vlscale.calibrate.runs import expand_run_paths, load_measured_runs

    name = device.name if device is not None else None
    # a SigLIP 2 run is one measured run per phase
    return [r for p in expand_run_paths(paths) for r in load_measured_runs(p, name, hardware_file)]


@handles_bad_input
def calibrate_cmd(
    runs: RunsArg,
    hardware_file: HwOpt,
    out: Annotated[Path, typer.Option("--out", help="the fitted hardware file to write")],
    device: DevOpt = None,
    params: Annotated[
        str | None,
        typer.Option("--params", help="comma-separated parameters to fit (default: overheads)"),
    ] = None,
):
    """Fit the profile's free parameters (overheads, overlap) to trainer runs."""
    from vlscale.calibrate.run_fit import DEFAULT_PARAMETERS, calibrate
    from vlscale.specs.hardware import dump_hardware_file

    check_output_file(out, "out", (".yaml", ".yml"))
    dev = profile_device(hardware_file, device)
    chosen = tuple(p.strip() for p in params.split(",")) if params else DEFAULT_PARAMETERS
    measured = measured_runs(runs, dev, hardware_file)
    _warn_identity(hardware_file, dev, measured)
    fitted = calibrate(dev, measured, chosen)
    dump_hardware_file(out, devices=[fitted])
    cal = fitted.compute.calibration
    rows = [[k, f"{v:.4g}"] for k, v in cal.parameters.items()]
    rows += [["replay MAPE", f"{cal.mape:.1%}"], ["replay max |error|", f"{cal.max_error:.1%}"]]
    print_table(f"{dev.name}: fitted to {len(measured)} runs -> {out}", ["", ""], rows)
    if "not constrained" in cal.source:
        typer.echo(cal.source.split("; ", 1)[1])


@handles_bad_input
def validate_cmd(
    runs: RunsArg,
    hardware_file: Annotated[
        str | None,
        typer.Option("--hardware-file", help="hardware file (default: the catalog device)"),
    ] = None,
    device: DevOpt = None,
    probe_profile: Annotated[
        str | None,
        typer.Option(
            "--probe-profile",
            help="also predict the held-out runs with this uncalibrated probe profile (probe_only)",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the JSON contract")] = False,
    report: Annotated[Path | None, typer.Option("--report", help="HTML figure")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="also write the JSON here")] = None,
):
    """Predict each run and compare with its measured median step time and phases."""
    if report is not None:
        from vlscale.report.html import check_report_path

        check_report_path(report)
    if out is not None:
        check_output_file(out, "out", (".json",))
    dev = profile_device(hardware_file, device)
    probe_dev = _probe_device(probe_profile, device) if probe_profile else None
    measured = measured_runs(runs, dev, hardware_file)
    _warn_identity(hardware_file, dev, measured)
    result = _validation(measured, dev, probe_dev)
    title = dev.name if dev is not None else "catalog devices"
    if out is not None:
        where = non_finite_path(result)
        if where is not None:  # JSON has no NaN / Infinity: refuse rather than write one
            raise ConfigError(where, "the answer is not a finite number; check the runs")
        atomic_write_text(out, json.dumps(result, indent=1, allow_nan=False) + "\n", field="out")
    if report is not None:
        from vlscale.report.html import write_report_atomic
        from vlscale.report.validation import validation_report

        write_report_atomic(validation_report(result, f"{title}: predicted vs measured"), report)
    if as_json:
        emit_json(result)
    else:
        _print_validation(result, title)


def _validation(measured, dev, probe_dev) -> dict:
    """``validate --json``: the calibrated profile's validation, and with a probe profile its
    errors on the same held-out runs (``probe_only``; null without one)."""
    from vlscale.calibrate.run_fit import validate

    main = validate(measured, dev)
    result = main.to_json()
    result["probe_only"] = None
    if probe_dev is not None:
        held = {r.run.run_id for r in main.rows if r.split == "prediction"}
        scored = [r for r in measured if r.run_id in held] or measured
        result["probe_only"] = validate(scored, probe_dev).summary() | {"device": probe_dev.name}
    return result


def _warn_identity(hardware_file: str | None, dev, measured) -> None:
    """One line on stderr when the profile was probed on another machine than the runs'."""
    from vlscale.calibrate.noise import identity_warning

    if hardware_file is None or dev is None or dev.compute is None:
        return
    line = identity_warning(
        Path(hardware_file).name, dev.compute.measured_on, (r.machine for r in measured)
    )
    if line:
        typer.echo(line, err=True)


def _print_validation(result: dict, title: str) -> None:
    rows = [
        [
            r["label"],
            r["split"],
            f"{r['measured_step_s'] * 1e3:.1f}",
            f"{r['predicted_step_s'] * 1e3:.1f}",
            f"{r['error']:+.1%}",
            "–" if r["error_normalised"] is None else f"{r['error_normalised']:+.1%}",
            _mib(r["measured_peak_memory_bytes"]),
            _mib(r["predicted_comparable_memory_bytes"]),
        ]
        for r in result["runs"]
    ]
    print_table(
        f"{title}: step time, predicted vs measured (median over timed steps)",
        ["run", "split", "measured ms", "predicted ms", "error", "normalised", "peak MiB",
         "predicted MiB"],
        rows,
    )  # fmt: skip
    from vlscale.report.validation import summary_lines

    for line in summary_lines(result):
        typer.echo(line)


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f}"
