"""The run directory (``--out``) around one run: taken under an exclusive lock, checked and
cleared (``--overwrite``) before the run starts, and left as it was found when the run fails
before its first step.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainer.config import TrainConfig


def discard_unstarted_run(out: Path, created_root: Path | None) -> None:
    """A fresh run that failed before its first step leaves nothing behind: its header-only
    ``run.jsonl`` goes, and ``--out`` with the folders above it that this run created
    (``created_root``: the topmost of them; None when ``--out`` existed)."""
    from trainer.records import RUN_FILE

    run_file = out / RUN_FILE
    try:
        lines = run_file.read_text().splitlines()
    except FileNotFoundError:
        lines = []  # failed before the header (e.g. --init-from): --out may hold only the lock
    except OSError:
        return
    from trainer.preflight import restore_overwritten

    if len(lines) > 1 or _has_checkpoint(out):
        return
    if lines:
        run_file.unlink()
    ckpt = out / "ckpt"
    if ckpt.is_dir() and not any(ckpt.iterdir()):  # a first save that failed (full disk)
        ckpt.rmdir()
    restore_overwritten(out)  # --overwrite: the previous run's files come back
    if created_root is not None and not any(p.name != ".lock" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        remove_created_parents(out, created_root)


def remove_created_parents(out: Path, created_root: Path) -> None:
    """Remove the now empty folders from ``out``'s parent up to ``created_root``."""
    for parent in out.parents:
        if created_root not in (parent, *parent.parents):
            return
        try:
            parent.rmdir()  # only if empty
        except OSError:
            return


def _has_checkpoint(out: Path) -> bool:
    ckpt = out / "ckpt"
    return ckpt.is_dir() and any(ckpt.iterdir())


def take_out(cfg: TrainConfig, notes: list[str]):
    """Lock ``--out`` (exclusive, pid + host), then check it under the lock (a fresh run into a
    non-empty directory needs --overwrite; --resume needs a checkpoint) and clear it on
    --overwrite. Returns the held lock; a refusal leaves the directory as it was."""
    from trainer.preflight import check_out, clear_out
    from trainer.run_lock import RunLock

    out = Path(cfg.out)
    created = not out.exists()
    lock = RunLock(out)
    lock.created_dir = created
    # the topmost folder the lock's mkdir -p creates: removed again if the run never starts
    lock.created_root = (
        next(p for p in (*reversed(out.parents), out) if not p.exists()) if created else None
    )
    try:
        lock.acquire()
        notes.extend(lock.notes)
        check_out(cfg)
        if cfg.overwrite:
            removed = clear_out(out)
            if removed:
                notes.append(f"--overwrite: removed {', '.join(removed)} from {out}")
    except BaseException:
        lock.release()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # nothing half-written
            remove_created_parents(out, lock.created_root)
        raise
    return lock
