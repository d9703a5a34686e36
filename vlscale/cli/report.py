"""``vlscale report`` (the scaling study page) and ``vlscale papers`` (the published record).

Registered on ``vlscale.cli.app.app`` when ``vlscale.cli`` imports this module; plotly and pandas
are imported inside the commands only.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Annotated

import typer

from vlscale.cli.app import emit_json, handles_bad_input, print_table
from vlscale.cli.options import SchedulerOpt, WorkersOpt
from vlscale.errors import ConfigError
from vlscale.specs.fields import MAX_FLOAT, check_mask_ratio


def reproduce_command(
    config: Path | None,
    out: Path,
    *,
    quick: bool,
    devices: list[int] | None,
    global_batch: list[int] | None,
    mask_ratio: list[float] | None,
    loss_local_batch: int | None,
    deadline: list[float] | None,
    validation_dir: Path,
) -> str:
    """The command line that writes the same page (backend options change no number)."""
    args = ["vlscale", "report"]
    if config is not None:
        args.append(str(config))
    args += ["--out", str(out)]
    if quick:
        args.append("--quick")
    for flag, values in (
        ("--devices", devices),
        ("--global-batch", global_batch),
        ("--mask-ratio", mask_ratio),
        ("--deadline", deadline),
    ):
        for v in values or ():
            args += [flag, f"{v:g}" if isinstance(v, float) else str(v)]
    if loss_local_batch is not None:
        args += ["--loss-local-batch", str(loss_local_batch)]
    if validation_dir != Path("reports/validation"):
        args += ["--validation-dir", str(validation_dir)]
    return shlex.join(args)


def _positive(field: str, values: list | None) -> tuple | None:
    if values is None:
        return None
    if not all(0 < v < MAX_FLOAT and math.isfinite(v) for v in values):
        raise ConfigError(field, f"{values} must all be positive finite numbers")
    return tuple(sorted(set(values)))


@handles_bad_input
def report_cmd(
    config: Annotated[
        Path | None,
        typer.Argument(help="YAML/TOML plan file: model, device, samples, ... (default: embedded)"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="the HTML page to write")] = Path(
        "report.html"
    ),
    quick: Annotated[
        bool, typer.Option("--quick", help="small grid: 8, 64, 512 devices; one batch")
    ] = False,
    devices: Annotated[
        list[int] | None, typer.Option("--devices", help="device counts (repeat)")
    ] = None,
    global_batch: Annotated[
        list[int] | None, typer.Option("--global-batch", help="global batches (repeat)")
    ] = None,
    mask_ratio: Annotated[
        list[float] | None, typer.Option("--mask-ratio", help="FLIP mask ratios (repeat)")
    ] = None,
    loss_local_batch: Annotated[
        int | None,
        typer.Option("--loss-local-batch", help="local batch of the softmax-vs-sigmoid part"),
    ] = None,
    deadline: Annotated[
        list[float] | None, typer.Option("--deadline", help="deadlines in hours (repeat)")
    ] = None,
    validation_dir: Annotated[
        Path, typer.Option("--validation-dir", help="folder of <set>/validation.json results")
    ] = Path("reports/validation"),
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
):
    """The scaling study: one offline HTML page over devices, batch, recipe and mask ratio."""
    from vlscale.cli.plan import _base_config
    from vlscale.report.html import check_report_path
    from vlscale.report.study import StudySpec

    check_report_path(out)
    for ratio in mask_ratio or ():
        check_mask_ratio(ratio)
    if loss_local_batch is not None and loss_local_batch <= 0:
        raise ConfigError("loss_local_batch", f"{loss_local_batch} must be positive")
    base = _base_config(config)
    overrides = {
        k: v
        for k, v in dict(
            devices=_positive("devices", devices),
            global_batches=_positive("global_batch", global_batch),
            mask_ratios=tuple(sorted(set(mask_ratio))) if mask_ratio is not None else None,
            loss_local_batch=loss_local_batch,
            deadlines_h=_positive("deadline", deadline),
        ).items()
        if v is not None
    }
    spec = StudySpec.quick(base, **overrides) if quick else StudySpec(base=base, **overrides)
    command = reproduce_command(
        config,
        out,
        quick=quick,
        devices=devices,
        global_batch=global_batch,
        mask_ratio=mask_ratio,
        loss_local_batch=loss_local_batch,
        deadline=deadline,
        validation_dir=validation_dir,
    )
    from vlscale.report.study_page import build_study_report, write_study_report

    text = build_study_report(
        spec,
        command=command,
        validation_dir=validation_dir,
        progress=not quiet,
        workers=workers,
        scheduler=scheduler,
    )
    write_study_report(text, out)
    typer.echo(f"report written to {out}", err=True)


@handles_bad_input
def papers_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    show_coverage: Annotated[
        bool,
        typer.Option("--coverage", help="how often the published value is inside P10-P90 / P5-P95"),
    ] = False,
):
    """Published training runs: predicted vs published, the error, and which calibrated."""
    from vlscale.plan.papers_table import coverage, fidelity, mean_abs_error, paper_rows
    from vlscale.report.record import PAPERS_HEADER, papers_table

    rows = paper_rows()
    if show_coverage:
        cov = coverage(rows)
        if as_json:
            emit_json(cov)
            return
        typer.echo(
            f"P10-P90 holds {cov['inside_p10_p90']} of {cov['runs']} published values "
            f"({cov['p10_p90']:.0%}); P5-P95 holds {cov['inside_p05_p95']} ({cov['p05_p95']:.0%})"
        )
        return
    if as_json:
        emit_json(rows)
        return
    print_table("published runs vs the planner", PAPERS_HEADER, papers_table(rows))
    fid = fidelity(rows)
    mae = mean_abs_error(rows)
    if mae is not None:
        typer.echo(
            f"mean |error| of the {fid['predictions']} predictions: {mae:.1%}; "
            f"median {fid['median_abs_error']:.1%}"
        )
    for key, value in fid["loo_by_stack"].items():
        runs = f"{value['runs']} run" + ("s" if value["runs"] != 1 else "")
        typer.echo(
            f"leave-one-out median |error| {key}: {value['median_abs_loo_error']:.1%} ({runs}); "
            f"worst {value['worst_loo_error']:+.1%} ({value['worst_run']})"
        )
    cov = fid["coverage"]
    if cov["runs"]:
        typer.echo(
            f"P10-P90 holds {cov['inside_p10_p90']} of {cov['runs']} published values "
            f"({cov['p10_p90']:.0%}); P5-P95 {cov['inside_p05_p95']} ({cov['p05_p95']:.0%})"
        )
