"""Reading a YAML / TOML (or JSON) file that must hold a mapping: one reader for every file.

Plan files, sweep grids, model files and trainer configs all come through
:func:`read_mapping`; every way such a file can be wrong is one :class:`ConfigError` on the
caller's field that names the file and the fix: it does not exist, is a folder, cannot be read,
is not UTF-8 text (a binary file), does not parse, or holds something other than a mapping.
An empty file is an empty mapping.

The parsers are bounded, so that no file can make a reader crash instead of answering:

- nesting deeper than :data:`MAX_DEPTH` levels is refused (JSON, YAML and TOML parsers recurse,
  and 100,000 opening brackets would otherwise end in a ``RecursionError``; the depth is also
  checked after parsing, YAML aliases included, so that no later reader recurses either);
- an integer of more than 4,300 digits (Python's ``sys.get_int_max_str_digits``) is refused,
  naming the file;
- a NaN or an infinity (YAML ``.inf``, TOML ``inf``, JSON ``Infinity``) is refused naming the key:
  no count, size, rate or price in any vlscale file can be infinite.
"""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path
from typing import Any

import yaml

from vlscale.errors import ConfigError


def _one_line(exc: Exception) -> str:
    """A parser's message (several lines with a caret drawing) as one line."""
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def read_mapping(
    path: str | Path, field: str = "config", what: str = "a YAML or TOML file"
) -> dict[str, Any]:
    """The mapping in ``path``: TOML for ``.toml``, JSON for ``.json``, YAML otherwise.

    ``field`` is the ConfigError's field (``config``, ``model``, ...); ``what`` says what the
    file should be, in the fixes (e.g. ``"a YAML or TOML plan file"``).
    """
    p = Path(path)
    if p.is_dir():
        raise ConfigError(field, f"'{p}' is a folder; pass {what}")
    if not p.is_file():
        raise ConfigError(field, f"no such file: '{p}'; pass {what}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(field, f"'{p}' is not a UTF-8 text file; pass {what}") from None
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(field, f"cannot read '{p}' ({why}); check its permissions") from None
    if "\x00" in text:
        raise ConfigError(field, f"'{p}' is a binary file (it holds NUL bytes); pass {what}")
    data = _parse(text, p, field)
    _check_shape(data, p, field)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            field, f"'{p}' must hold a mapping of keys to values, not a {type(data).__name__}"
        )
    return data


MAX_DEPTH = 64
"""The deepest nesting of mappings and lists a file may have (vlscale's own files need 5)."""


def _parse(text: str, p: Path, field: str) -> Any:
    """The parsed document; every parser failure is one ConfigError naming the file."""
    suffix = p.suffix.lower()
    kind = {".toml": "TOML", ".json": "JSON"}.get(suffix, "YAML")
    errors: tuple[type[Exception], ...] = {
        "TOML": (tomllib.TOMLDecodeError,),
        "JSON": (json.JSONDecodeError,),
        "YAML": (yaml.YAMLError,),
    }[kind]
    try:
        if kind == "TOML":
            return tomllib.loads(text)
        if kind == "JSON":
            return json.loads(text)
        return yaml.safe_load(text)
    except errors as exc:
        raise ConfigError(field, f"'{p}' is not valid {kind}: {_one_line(exc)}") from None
    except RecursionError:
        raise ConfigError(
            field, f"'{p}' nests deeper than {MAX_DEPTH} levels; flatten it"
        ) from None
    except ValueError as exc:  # int('1' * 5000): "Exceeds the limit (4300 digits) ..."
        if "digits" in str(exc):
            raise ConfigError(
                field,
                f"'{p}' holds a number of more than {_max_digits()} digits; "
                "no vlscale value needs one",
            ) from None
        raise ConfigError(field, f"'{p}' is not valid {kind}: {_one_line(exc)}") from None


def _max_digits() -> int:
    import sys

    return sys.get_int_max_str_digits() or 4300


def _check_shape(data: Any, p: Path, field: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH and non-finite numbers, naming the key.

    Level by level, each container once per level (YAML aliases share them), so a file of
    anchors that would expand exponentially costs no more than its size times the depth, and a
    cycle is refused as too deep."""
    level: list[tuple[str, Any]] = [("", data)]
    for depth in range(MAX_DEPTH + 2):
        if not level:
            return
        if depth > MAX_DEPTH:
            raise ConfigError(field, f"'{p}' nests deeper than {MAX_DEPTH} levels; flatten it")
        nxt: list[tuple[str, Any]] = []
        seen: set[int] = set()  # per level: a cycle (YAML `&a [*a]`) comes back every level
        for where, node in level:
            items = (
                node.items()
                if isinstance(node, dict)
                else enumerate(node)
                if isinstance(node, list | tuple)
                else ()
            )
            for key, value in items:
                here = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip(".")
                if isinstance(value, float) and not math.isfinite(value):
                    raise ConfigError(field, f"'{p}': {here} must be a finite number, got {value}")
                if isinstance(value, dict | list | tuple) and id(value) not in seen:
                    seen.add(id(value))
                    nxt.append((here, value))
        level = nxt
