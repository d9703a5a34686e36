"""The run layout's CLI options, generated from ``RunLayout``'s fields: one home for their names,
help and defaults.

Every field of :class:`~vlscale.specs.layout.RunLayout` becomes one option: ``shard_size`` ->
``--shard-size``, a bool ``reshard_after_forward`` -> ``--reshard-after-forward /
--no-reshard-after-forward``. The help is the field's ``description``; the default shown is
the command's default layout's value (the planner's embedded scenario, ``DEFAULT_LAYOUT``, or
``RunLayout()``). Each option's value is ``None`` until given, so that a ``--config`` file's
value stands unless a flag overrides it; the given ones reach the command as one mapping,
``layout_flags``, which ``RunLayout`` (through ``PlanConfig``) validates.

Torchtitan derives its flags from its config the same way (``torchtitan/config``): adding a
field to the layout adds the flag to ``plan``, ``compare``, ``memory`` and ``sweep`` at once.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import typer
from pydantic.fields import FieldInfo

from vlscale.specs.layout import RunLayout

LAYOUT_FLAGS = "layout_flags"  # the parameter of a command that receives the given options


def option_name(field: str) -> str:
    """``shard_size`` -> ``--shard-size``."""
    return "--" + field.replace("_", "-")


def shown_default(field: str, value: Any) -> str | bool:
    """What ``--help`` shows as the default: a bool as the flag that is on
    (``reshard-after-forward`` / ``no-checkpointing``), None as nothing (the help says what
    None means), anything else as itself."""
    if isinstance(value, bool):
        return option_name(field)[2:] if value else "no-" + option_name(field)[2:]
    if value is None:
        return False
    return str(value)


def layout_parameters(defaults: RunLayout, skip: tuple[str, ...] = ()) -> list[inspect.Parameter]:
    """One keyword parameter per RunLayout field (but ``skip``), as typer reads them."""
    params = []
    for name, field in RunLayout.model_fields.items():
        if name in skip:
            continue
        kind = _cli_type(field)
        decl = option_name(name)
        if kind is bool:
            decl = f"{decl}/--no-{decl[2:]}"
        option = typer.Option(
            decl,
            help=field.description,
            show_default=shown_default(name, getattr(defaults, name)),
        )
        params.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[kind | None, option],
            )
        )
    return params


def with_layout_options(defaults: RunLayout, skip: tuple[str, ...] = ()):
    """Decorate a command that takes ``layout_flags: dict``: its CLI signature gains the layout
    options (:func:`layout_parameters`), and the ones given arrive as ``layout_flags``."""
    params = layout_parameters(defaults, skip)
    names = [p.name for p in params]

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        kept = [p for p in sig.parameters.values() if p.name != LAYOUT_FLAGS]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            given = {n: kwargs.pop(n, None) for n in names}
            flags = {n: v for n, v in given.items() if v is not None}
            return fn(*args, **kwargs, **{LAYOUT_FLAGS: flags})

        command.__signature__ = sig.replace(parameters=[*kept, *params])
        command.__annotations__ = {p.name: p.annotation for p in [*kept, *params]}
        return command

    return decorate


def _cli_type(field: FieldInfo) -> type:
    """The plain type a flag parses: optional and constrained types unwrapped, a choice
    (``Literal``) read as text (RunLayout names the choices when one is wrong)."""
    kind = field.annotation
    while True:
        origin = get_origin(kind)
        if origin in (Union, types.UnionType):
            kind = next(a for a in get_args(kind) if a is not type(None))
        elif origin is Annotated:
            kind = get_args(kind)[0]
        elif origin is Literal:
            return str
        else:
            return kind
