"""Reading a YAML / TOML (or JSON) file that must hold a mapping: one reader for every file.

Plan files, sweep grids, model files and trainer configs all come through
:func:`read_mapping`; every way such a file can be wrong is one :class:`ConfigError` on the
caller's field that names the file and the fix: it does not exist, is a folder, cannot be read,
is not UTF-8 text (a binary file), does not parse, or holds something other than a mapping.
An empty file is an empty mapping.
"""

from __future__ import annotations

import json
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
    if p.suffix.lower() == ".toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(field, f"'{p}' is not valid TOML: {_one_line(exc)}") from None
    elif p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(field, f"'{p}' is not valid JSON: {_one_line(exc)}") from None
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(field, f"'{p}' is not valid YAML: {_one_line(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            field, f"'{p}' must hold a mapping of keys to values, not a {type(data).__name__}"
        )
    return data
