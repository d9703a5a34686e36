"""The ``vlscale`` typer app and what every command module shares: one error line, JSON, tables.

The command modules (``cli_models``, ``cli_calibrate``, ``cli_collectives``, ``cli_plan``,
``cli_report``) import ``app`` from here and register their commands on it; ``vlscale.cli``
imports them, in the order ``vlscale --help`` lists them, and holds the entry point. Nothing
here imports a command module, so there is no import cycle. Kept torch-free and light (rich is
imported only when a table is printed) so that the CLI starts fast.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError

from vlscale.errors import ConfigError, from_validation_error

app = typer.Typer(
    help="Plan, simulate and validate CLIP / SigLIP / EVA-CLIP training runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
MODEL_HELP = (
    "preset name, e.g. ViT-L-14 (see `vlscale models`), or a model file: a vlscale model spec "
    "(YAML/JSON, see `vlscale models show NAME --yaml`) or an OpenCLIP model-config JSON"
)


def fail(message: str) -> None:
    """Print one clear error line and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def handles_bad_input(fn: Callable) -> Callable:
    """Decorator: ConfigError / pydantic ValidationError -> one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc))
        except ValidationError as exc:
            fail(str(from_validation_error(exc)))

    return wrapper


def emit_json(obj: Any) -> None:
    """Print ``obj`` as JSON, the one JSON emitter of the CLI. Strict JSON only: a NaN or an
    infinity (which ``json.dumps`` would print as ``NaN`` / ``Infinity``, not JSON) is refused
    before anything is printed, as one error line naming the key that holds it."""
    where = non_finite_path(obj)
    if where is not None:
        fail(
            f"{where}: the answer is not a finite number; an input is out of range "
            "(check the hardware file and the flags)"
        )
    typer.echo(json.dumps(obj, indent=2, allow_nan=False))


def non_finite_path(obj: Any, where: str = "output") -> str | None:
    """The key path of the first NaN or infinity in ``obj`` (dicts, lists), or None."""
    stack = [(where, obj)]
    while stack:
        here, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return here
        if isinstance(node, dict):
            stack.extend((f"{here}.{k}", v) for k, v in reversed(node.items()))
        elif isinstance(node, list | tuple):
            stack.extend((f"{here}[{i}]", v) for i, v in reversed(list(enumerate(node))))
    return None


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Rich table for people; rich is imported here so --json paths never pay for it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    # piped output has no terminal width; rich would assume 80 columns and elide names
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes, 3 significant digits)."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{prefix}{unit}"
    return f"{n:.3g}{unit}"


def human_bytes(n: float) -> str:
    for factor, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}"
    return f"{int(n)} B"


def check_positive(field: str, value: int | float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(field, f"must be a positive finite number, got {value}")
