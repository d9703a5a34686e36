"""Where the CLI may write: one rule for every output file (reports, traces, sweeps, profiles).

An output path must name a file (not a folder) with one of the command's suffixes, in a folder
that exists and is writable: the CLI never creates folders, and it checks all this before any
work, so a mistake costs nothing and leaves nothing half-written. An existing file is replaced
(atomically, at the end), with a note on stderr saying so up front.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from vlscale.errors import ConfigError


def check_output_file(path: str | Path, field: str, suffixes: tuple[str, ...]) -> Path:
    """``path`` if a file with one of ``suffixes`` can be written there; else ConfigError."""
    path = Path(path)
    example = f"e.g. out{suffixes[0]}"
    if path.is_dir():
        raise ConfigError(field, f"'{path}' is a folder; give a file name, {example}")
    if path.suffix.lower() not in suffixes:
        raise ConfigError(field, f"'{path}' must end in {' or '.join(suffixes)}, {example}")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(field, f"folder '{parent}' does not exist; create it or pick another")
    if not os.access(parent, os.W_OK):
        raise ConfigError(field, f"folder '{parent}' is not writable; pick another")
    if path.exists():  # replaced atomically once the work is done; say so now
        print(f"note: {field}: '{path}' exists and will be replaced", file=sys.stderr)
    return path
