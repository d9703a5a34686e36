"""The ``vlscale`` command line: load -> compute -> print a table (or ``--json``) / write a file.

Kept thin and torch-free so that it starts fast; every command turns bad input into one line on
stderr naming the field and the fix, and exit status 2. The app lives in ``vlscale.cli_app``; the
command modules imported here register their commands on it (this order is ``--help``'s).
"""

from __future__ import annotations

import sys

import typer

from vlscale.cli_app import EXIT_BAD_INPUT, app

# Each import registers that module's commands on `app`, in this order (that of `--help`).
# isort: split
from vlscale import cli_models  # noqa: F401

# isort: split
from vlscale import cli_calibrate, cli_collectives, cli_plan, cli_report  # noqa: F401

__all__ = ["app", "main"]


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
