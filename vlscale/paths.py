"""Where the CLI may write, and how every file is written: one rule for every output file.

An output path must name a file (not a folder) with one of the command's suffixes, in a folder
that exists and is writable: the CLI never creates folders, and it checks all this before any
work, so a mistake costs nothing and leaves nothing half-written. An existing file is replaced
(atomically, at the end), with a note on stderr saying so up front.

Every file vlscale and the trainer write goes through :func:`atomic_path` (or its text / bytes
shorthands): the data goes to a temp file in the same folder, is fsynced, and is renamed onto the
final path with ``os.replace``, so a reader sees the old file or the new one, never half of one.
On any failure the temp file is removed and the old file is untouched; a full disk (or any other
OSError while writing) is one :class:`WriteError` line saying which file and how much room it
needed. The new file gets the
permissions a plain ``open()`` would give it (0666 minus the umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def _new_temp(path: Path, field: str | None) -> Path:
    """An empty, new temp file next to ``path``, created with mode 0666 so that the kernel
    applies the umask exactly as for a plain ``open(path, "w")``."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
        except OSError as exc:
            if field is None:
                raise
            raise ConfigError(
                field, f"cannot write in '{path.parent}': {exc.strerror}; pick another folder"
            ) from None
        os.close(fd)
        return tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename in folder ``path`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class WriteError(ConfigError, OSError):
    """A file could not be written (a full disk, a quota, a read-only folder): one line naming the
    file, what was wrong and, for a full disk, how much space was needed. It is both a
    ConfigError (the CLI prints it and exits 2) and an OSError with the original ``errno`` (so
    callers that handle OSError, such as the trainer's checkpointing, still see one)."""

    def __init__(self, field: str, message: str, errno_: int | None):
        ConfigError.__init__(self, field, message)
        self.errno = errno_


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _size(n: float) -> str:
    for factor, unit in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{int(n)} B"


def write_error(
    path: Path, field: str | None, exc: OSError, needed: int | None, exact: bool = True
) -> WriteError:
    """``exc`` raised while writing ``path`` as one :class:`WriteError` line: "cannot write
    'out.csv': no space left on device (needs 1.2 MiB, 12.0 KiB free in '/mnt'); free some
    space or write elsewhere"."""
    why = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in _NO_SPACE:
        try:
            free = f", {_size(shutil.disk_usage(path.parent).free)} free in '{path.parent}'"
        except OSError:
            free = ""
        need = (
            "needs more room"
            if needed is None
            else f"needs {'' if exact else 'over '}{_size(needed)}"
        )
        detail = f"{why.lower()} ({need}{free}); free some space or write elsewhere"
    else:
        detail = f"{why}; check the folder or write elsewhere"
    return WriteError(field or "out", f"cannot write '{path}': {detail}", exc.errno)


@contextmanager
def atomic_path(
    path: str | Path, field: str | None = None, size: int | None = None
) -> Iterator[Path]:
    """Yields a temp path next to ``path`` to write (by name: pandas, torch.save, a stream);
    when the block ends without an exception, the temp file is fsynced and renamed onto
    ``path``; on any exception it is removed and ``path`` is untouched.

    ``field`` turns a folder where no file can be created into a ConfigError on that field.
    An OSError while writing (a full disk above all) becomes one :class:`WriteError` naming the
    file and, for a full disk, the space needed: ``size`` when the caller knows it, else what
    had been written when the disk filled."""
    path = Path(path)
    tmp = _new_temp(path, field)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except WriteError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:
        try:
            written = tmp.stat().st_size
        except OSError:
            written = None
        tmp.unlink(missing_ok=True)
        # a stream's size is unknown: what it had written when the disk filled, and then some
        needed = size if size is not None else written or None
        raise write_error(path, field, exc, needed, exact=size is not None) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_with(path: str | Path, write: Callable[[Path], object], field: str | None = None):
    """``write(tmp)`` writes the file at the temp path it is given; see :func:`atomic_path`."""
    with atomic_path(path, field) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_text(
    path: str | Path, text: str, field: str | None = None, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    data = text.encode(encoding)
    with atomic_path(path, field, size=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes, field: str | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, field, size=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)
