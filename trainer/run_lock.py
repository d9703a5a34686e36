"""One trainer per output directory: an exclusive lock file ``OUT/.lock``.

The lock is created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFSv3+), so of
two trainers started on the same ``--out`` exactly one gets it. It holds the owner's pid, host
and start time as JSON. A lock is *stale* when its host is this host and no process with its pid
is alive (a trainer killed with SIGKILL never removes its lock); a stale lock is replaced with a
line saying so. A lock from another host cannot be checked from here: the message names its
owner and says to delete the file if that run is gone.

Torch-free; only rank 0 takes the lock (ranks share the filesystem).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from vlscale.errors import ConfigError

LOCK_FILE = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(out: str | os.PathLike) -> dict | None:
    """The owner recorded in ``OUT/.lock``; None when there is none (or it is unreadable)."""
    try:
        owner = json.loads((Path(out) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def is_stale(owner: dict | None) -> bool:
    """Torn / unreadable, or this host's and its process is gone."""
    if owner is None:
        return True
    return owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", -1)))


class RunLock:
    """``acquire()`` / ``release()`` of ``OUT/.lock``; ``notes`` collects lines to print."""

    def __init__(self, out: str | os.PathLike):
        self.path = Path(out) / LOCK_FILE
        self.held = False
        self.created_dir = False  # set by the caller: --out did not exist before the lock
        self.created_root: Path | None = None  # and the topmost folder its mkdir -p created
        self.notes: list[str] = []

    def acquire(self) -> None:
        """Take the lock or raise ConfigError("out", ...) naming the owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        for _ in range(2):  # a second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = read_lock(self.path.parent)
                if not is_stale(owner):
                    raise ConfigError(
                        "out",
                        f"{self.path.parent} is in use by pid {owner['pid']} on {owner['host']} "
                        f"(lock {self.path}); wait for that run, pick another --out, or delete the "
                        "lock if that run is gone",
                    ) from None
                self.notes.append(f"removed a stale lock of a run that is gone: {owner}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return
        raise ConfigError("out", f"could not take the lock {self.path}; try again")

    def release(self) -> None:
        """Remove the lock if it is still ours."""
        if self.held:
            owner = read_lock(self.path.parent)
            if owner is not None and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False
