"""One exception type for every user-facing input error.

Each message names the offending field and says how to fix it; the CLI prints it and exits 2.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """Bad user input: ``field`` is what was wrong, the message says what to do instead."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def closest_key(name: str, known: Iterable[str]) -> str | None:
    """The known key ``name`` most likely meant: one that starts with it (``price`` ->
    ``price_per_device_hour``), else the closest spelling (difflib), else None."""
    known = sorted(str(k) for k in known)
    name = str(name)
    longer = [k for k in known if k.lower().startswith(name.lower()) and len(name) >= 3]
    if longer:
        return min(longer, key=len)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _is_container(annotation: Any) -> bool:
    """Whether ``annotation`` (through ``X | None`` and ``Annotated``) is a list / dict / tuple,
    whose ``loc`` part is an index or key rather than a field name."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, dict, set, frozenset):
        return True
    return any(_is_container(arg) for arg in typing.get_args(annotation) if not _is_model(arg))


def _model_at(model: Any, loc: tuple) -> Any:
    """The pydantic model class found at ``loc`` below ``model`` (None when not one).

    A container takes one ``loc`` part (its index or key); a union or an optional takes none,
    so ``vision.trunk`` walks through the tagged union of image towers to the trunk."""
    current: Any = model
    for part in loc:
        if not _is_model(current):
            container = _is_container(current)
            current = _inner(current, part)
            if current is None:
                return None
            if container:
                continue
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
    current = _inner(current, None) if not _is_model(current) else current
    return current if _is_model(current) else None


def _inner(annotation: Any, part: Any) -> Any:
    """The model inside a container / optional annotation (dict values, list items, X | None)."""
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
        found = _inner(arg, part)
        if found is not None:
            return found
    return None


def _unknown_key_hint(model: Any, loc: tuple) -> str:
    """ "unknown key 'price'; did you mean 'price_per_device_hour'?" (or the known keys)."""
    owner = _model_at(model, loc[:-1]) if model is not None else None
    name = str(loc[-1]) if loc else "?"
    if owner is None:
        return f"unknown key '{name}'; check its spelling"
    # a model may also accept keys that are not its fields (PlanConfig: the flat layout keys)
    known = [*owner.model_fields, *getattr(owner, "FLAT_KEYS", ())]
    best = closest_key(name, known)
    if best is not None:
        return f"unknown key '{name}'; did you mean '{best}'?"
    return f"unknown key '{name}'; known keys: {', '.join(known)}"


def from_validation_error(exc: Exception, prefix: str = "", model: Any = None) -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a single-line :class:`ConfigError`.

    Only the first error is reported: one clear message beats a wall of them. With ``model``
    (the class validated), an unknown key names the closest known one.
    """
    errors = exc.errors() if hasattr(exc, "errors") else []
    if not errors:
        return ConfigError(prefix or "config", str(exc))
    first = errors[0]
    inner = (first.get("ctx") or {}).get("error")
    if isinstance(inner, ConfigError):  # a validator that knows its field (e.g. whole-model checks)
        field = ".".join(p for p in (prefix, inner.field) if p)
        return ConfigError(field, str(inner).removeprefix(f"{inner.field}: "))
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    field = ".".join(p for p in (prefix, loc) if p) or "config"
    msg = str(first.get("msg", exc))
    msg = msg.removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = _unknown_key_hint(model, tuple(first.get("loc", ())))
    return ConfigError(field, msg)


def validate_as(model: type[M], data: dict | M, prefix: str) -> M:
    """``data`` as a ``model`` instance (returned as is when it already is one); a validation
    failure becomes one :class:`ConfigError` whose field starts with ``prefix``."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix, model) from None
