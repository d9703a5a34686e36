"""``vlscale stacks`` (the software-stack profiles) and ``vlscale stacks fit`` (measure one).

    vlscale stacks [--json]
    vlscale stacks fit RUNS... [--hardware-file P [--device NAME]] [--stack NAME] --out F.yaml

``fit`` solves the stack's γ for the runs' device kind from this project's trainer runs
(``vlscale.calibrate.stack_profile``) and writes a measured fragment; put it in
``vlscale/specs/data/measured_stacks/`` (or the folder ``$VLSCALE_MEASURED_STACKS`` names) and
the planner uses it (``vlscale.specs.stacks``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer
import yaml

from vlscale.cli.app import emit_json, handles_bad_input, print_table
from vlscale.cli.calibrate import DevOpt, RunsArg, measured_runs, profile_device
from vlscale.paths import atomic_write_text, check_output_file

stacks_app = typer.Typer(
    help="Software stacks (--stack NAME): list them, or measure one's γ from trainer runs.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


@stacks_app.callback(invoke_without_command=True)
@handles_bad_input
def stacks_cmd(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
):
    """Software stacks (--stack NAME): attention kernel, fused ops, loss default, γ per device."""
    if ctx.invoked_subcommand is not None:
        return
    from vlscale.specs.stacks import all_stacks, default_stack_name

    stacks = [
        s.to_json() | {"default": s.name == default_stack_name()} for s in all_stacks().values()
    ]
    if as_json:
        emit_json(stacks)
        return
    header = ["stack", "attention", "fused", "loss", "gamma per device (LOO sigma)", "source"]
    table = [
        [
            s["name"] + (" (default)" if s["default"] else ""),
            s["attention"],
            ", ".join(s["fused"]) or "-",
            s["loss"],
            ", ".join(
                f"{k} {g:.3f}" + (f" (±{s['sigma'][k]:.2f})" if k in s["sigma"] else "")
                for k, g in s["gamma"].items()
            )
            or "the catalog's (assumed)",
            s["gamma_source"],
        ]
        for s in stacks
    ]
    print_table("software stacks", header, table)


@stacks_app.command("fit")
@handles_bad_input
def stacks_fit_cmd(
    runs: RunsArg,
    out: Annotated[Path, typer.Option("--out", help="the measured stack fragment to write")],
    hardware_file: Annotated[
        str | None,
        typer.Option("--hardware-file", help="hardware file (default: the runs' catalog device)"),
    ] = None,
    device: DevOpt = None,
    stack: Annotated[
        str | None, typer.Option("--stack", help="the stack the runs ran (default: this trainer)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the fragment as JSON")] = False,
):
    """Measure a stack's γ on the runs' device kind from trainer runs; write a stack fragment."""
    from vlscale.calibrate.stack_profile import measure_stack
    from vlscale.specs.stacks import default_stack_name, get_stack

    check_output_file(out, "out", (".yaml", ".yml"))
    stack = get_stack(stack).name if stack else default_stack_name()
    dev = profile_device(hardware_file, device)
    fit = measure_stack(measured_runs(runs, dev, hardware_file), stack, dev)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    on = f"{dev.name} of {hardware_file}" if dev is not None else "their catalog device"
    source = (
        f"measured: {len(fit.runs)} runs of this project's trainer on {fit.device}, planned on "
        f"{on} (vlscale stacks fit, {when})"
    )
    fragment = fit.fragment(source)
    head = f"# vlscale stacks fit: γ of {stack} on {fit.kind}; see vlscale/specs/stacks.py\n"
    atomic_write_text(out, head + yaml.safe_dump(fragment, sort_keys=False, width=100), "out")
    if as_json:
        emit_json(fragment)
        return
    rows = [
        [name, f"{fit.measured_step_s[name] * 1e3:.1f}", f"{g:.4f}", _pct(fit.loo_error(name))]
        for name, g in fit.solved.items()
    ]
    title = f"{stack} on {fit.kind}: γ {fit.gamma:.4f} from {len(rows)} runs -> {out}"
    print_table(title, ["run", "measured ms", "γ solved", "LOO error"], rows)
    if fit.sigma is not None:
        typer.echo(f"leave-one-out sigma (RMS log residual): {fit.sigma:.4f}")
    bound = [name for name, g in fit.solved.items() if g >= 1.0]
    if bound:
        typer.echo(
            f"γ at its bound 1 (the plan is slower than measured even at γ = 1): {', '.join(bound)}"
        )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"
