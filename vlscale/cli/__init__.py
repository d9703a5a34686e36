"""The ``vlscale`` command line: load -> compute -> print a table (or ``--json``) / write a file.

Kept thin and torch-free so that it starts fast; every command turns bad input into one line on
stderr naming the field and the fix, and exit status 2. The typer app and its shared helpers live
in ``vlscale.cli.app``; the command modules define plain functions and register nothing
themselves. :func:`register_commands` below is the one place that names every command, in the
order ``vlscale --help`` lists them.
"""

from __future__ import annotations

import sys

import typer

from vlscale.cli import calibrate, collectives, models, plan, report, stacks, tune
from vlscale.cli.app import EXIT_BAD_INPUT, app

__all__ = ["COMMANDS", "app", "main"]

# (name, function), in --help order. `models` (list / show) and `stacks` (list / fit) are
# groups of their own.
COMMANDS = (
    ("params", models.params_cmd),
    ("flops", models.flops_cmd),
    ("memory", models.memory_cmd),
    ("calibrate", calibrate.calibrate_cmd),
    ("validate", calibrate.validate_cmd),
    ("collectives", collectives.collectives_cmd),
    ("plan", plan.plan_cmd),
    ("compare", plan.compare_cmd),
    ("hardware", plan.hardware_cmd),
    ("sweep", plan.sweep_cmd),
    ("tune", tune.tune_cmd),
    ("report", report.report_cmd),
    ("papers", report.papers_cmd),
)


def register_commands(target: typer.Typer) -> None:
    """Register every command on ``target``, once."""
    if target.registered_commands or target.registered_groups:
        return
    target.add_typer(models.models_app, name="models")
    target.add_typer(stacks.stacks_app, name="stacks")
    for name, function in COMMANDS:
        target.command(name)(function)


register_commands(app)


def main() -> None:
    """Console-script entry point. Usage errors (a flag's value of the wrong type, a missing
    argument, an unknown option) are one line ``error: <option>: <what is wrong>`` and exit
    status 2, like every other bad input, instead of click's boxed usage text."""
    try:  # typer >= 0.20 vendors click; older ones use the click package
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover - older typer
        from click.exceptions import NoArgsIsHelp as NoArgsIsHelpError
        from click.exceptions import UsageError
    try:
        status = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `vlscale` alone prints the help, as before
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except UsageError as exc:
        param = getattr(exc, "param", None)
        opts = getattr(param, "opts", None)
        name = opts[0] if opts else getattr(param, "name", None)
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {name or 'usage'}: {message}; see --help", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        sys.exit(130)
    # without standalone mode a typer.Exit(code) (e.g. handles_bad_input's 2) comes back here
    if isinstance(status, int) and status:
        sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    main()
