"""Checkpoint directories on disk: their layout (``RUN/ckpt/step_N``), the ``COMPLETE`` marker,
the per-file SHA-256 checks and the choice of the checkpoint to resume from.

A checkpoint counts when its directory is named ``step_<digits>`` and holds the marker; it is
trusted when every file the marker lists has the listed size and SHA-256 (the checks are split
over the ranks). The save and load that write and read these directories are in
``trainer.checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch.distributed as dist

from vlscale.errors import ConfigError

CKPT_SUBDIR = "ckpt"
MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# --------------------------------------------------------------------------- process group


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank_world() -> tuple[int, int]:
    if _distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _distributed():
        dist.barrier()


# --------------------------------------------------------------------------- paths


def ckpt_root(run_dir: str | os.PathLike) -> Path:
    """``run_dir/ckpt``; a path that already ends in ``ckpt`` is taken as the root itself."""
    p = Path(run_dir)
    return p if p.name == CKPT_SUBDIR else p / CKPT_SUBDIR


def step_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return ckpt_root(run_dir) / f"step_{step:06d}"


def _extra_file(path: Path, rank: int) -> Path:
    return path / f"extra_rank{rank:05d}.pt"


def is_complete(path: str | os.PathLike) -> bool:
    """A checkpoint is complete when its directory has the final name and holds the marker."""
    p = Path(path)
    return bool(_STEP_DIR.match(p.name)) and (p / MARKER).is_file()


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``run_dir``, oldest step first; temp and partial ones skipped."""
    root = ckpt_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def find_latest(run_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None. Scans; trusts no pointer file."""
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def read_marker(path: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(path) / MARKER).read_text())


# --------------------------------------------------------------------------- checksums


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _hash_files(path: Path, rank: int, world: int) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of this rank's share (every W-th name) of the files in ``path``."""
    names = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != MARKER)
    return {
        n: {"bytes": (path / n).stat().st_size, "sha256": _sha256(path / n)}
        for n in names[rank::world]
    }


def _gather_dicts(mine: dict[str, Any]) -> dict[str, Any]:
    """Union of every rank's dict (collective under a process group)."""
    if not _distributed():
        return dict(sorted(mine.items()))
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return dict(sorted(kv for part in parts for kv in part.items()))


def _agreed_problem(mine: str | None) -> str | None:
    """The first problem any rank found (collective under a process group)."""
    if not _distributed():
        return mine
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return next((p for p in parts if p is not None), None)


def checkpoint_problem(path: str | os.PathLike, rank: int = 0, world: int = 1) -> str | None:
    """Why the checkpoint at ``path`` cannot be trusted, or None. Checks the marker, then this
    rank's share (every W-th file) of the files it lists: present, right size, right SHA-256.
    A format-1 marker (no checksums, written before they existed) is taken as it is."""
    p = Path(path)
    try:
        marker = read_marker(p)
    except FileNotFoundError:
        return f"no {MARKER} marker (deleted, or the save did not finish)"
    except (OSError, ValueError) as exc:
        return f"unreadable {MARKER} marker ({exc})"
    if not isinstance(marker, dict) or not {"step", "world_size"} <= marker.keys():
        return f"{MARKER} marker lacks step / world_size"
    files = marker.get("files")
    if files is None:
        return None
    try:
        for name in sorted(files)[rank::world]:
            f, want = p / name, files[name]
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != want["bytes"]:
                return f"{name} has {f.stat().st_size} bytes, the marker says {want['bytes']}"
            if _sha256(f) != want["sha256"]:
                return f"{name} does not match its SHA-256 in the marker"
    except (KeyError, TypeError, AttributeError):
        return f"{MARKER} marker has a malformed file list"
    return None


def choose_checkpoint(path: str | os.PathLike, field: str = "resume") -> tuple[Path, list[str]]:
    """The checkpoint to resume (or export) from, verified; collective: every rank must call it.

    ``path`` is a checkpoint directory ``step_N`` (that one, or an error) or a run / ckpt
    directory (its newest *valid* checkpoint). Returns it with the "step_M: why" of each newer
    checkpoint that was passed over as invalid; ``field`` names the option in errors.
    """
    rank, world = _rank_world()
    p = Path(path)
    explicit = bool(_STEP_DIR.match(p.name))
    # every step_N directory, marker or not: a save renames its directory to step_N only
    # after the marker is in it, so a step_N without one lost it and is reported as invalid
    candidates = [p] if explicit else _step_dirs(p)[::-1]
    if not explicit and not _marked_dirs(p):
        candidates = []
    resuming = field == "resume"
    if not candidates:
        raise ConfigError(
            field,
            f"no complete checkpoint at or under {p} (looked for {ckpt_root(p)}/step_*/{MARKER}); "
            + ("check the path, or start without --resume" if resuming else "check the path"),
        )
    passed_over = []
    for c in candidates:
        problem = _agreed_problem(checkpoint_problem(c, rank, world))
        if problem is None:
            return c, passed_over
        if explicit:
            raise ConfigError(
                field,
                f"{c} is not a valid checkpoint: {problem}; pick another step_N, or give the run "
                "directory to take its newest valid checkpoint",
            )
        passed_over.append(f"{c.name}: {problem}")
    raise ConfigError(
        field,
        f"no valid checkpoint under {ckpt_root(p)} ({'; '.join(passed_over)}); "
        + (
            "start without --resume (with --overwrite) or restore a checkpoint"
            if resuming
            else "restore a checkpoint"
        ),
    )


def _step_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Every ``step_N`` directory, oldest first."""
    root = ckpt_root(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), c) for c in root.iterdir() if (m := _STEP_DIR.match(c.name))]
    return [c for _, c in sorted(found) if c.is_dir()]


def _marked_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """``step_N`` directories holding a marker file (readable or not), oldest first."""
    root = ckpt_root(run_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), c)
        for c in root.iterdir()
        if (m := _STEP_DIR.match(c.name)) and (c / MARKER).is_file()
    ]
    return [c for _, c in sorted(found)]


def resolve_checkpoint(path: str | os.PathLike, field: str = "resume") -> Path:
    """A complete checkpoint directory itself, or the latest one under a run / ckpt directory;
    ``field`` names the option in the error."""
    p = Path(path)
    if is_complete(p):
        return p
    latest = find_latest(p)
    if latest is None:
        raise ConfigError(
            field,
            f"no complete checkpoint at or under {p} (looked for {ckpt_root(p)}/step_*/{MARKER}); "
            f"pass a run directory or one of its checkpoints to --{field.replace('_', '-')}",
        )
    return latest
