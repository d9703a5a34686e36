"""One exception type for every user-facing input error.

Each message names the offending field and says how to fix it; the CLI prints it and exits 2.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """Bad user input: ``field`` is what was wrong, the message says what to do instead."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def from_validation_error(exc: Exception, prefix: str = "") -> ConfigError:
    """Turn a pydantic ``ValidationError`` into a single-line :class:`ConfigError`.

    Only the first error is reported: one clear message beats a wall of them.
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
    return ConfigError(field, msg)


def validate_as(model: type[M], data: dict | M, prefix: str) -> M:
    """``data`` as a ``model`` instance (returned as is when it already is one); a validation
    failure becomes one :class:`ConfigError` whose field starts with ``prefix``."""
    if isinstance(data, model):
        return data
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, prefix) from None
