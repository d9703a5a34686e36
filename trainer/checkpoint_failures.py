"""Failed checkpoint saves (a full disk, or any failed write): the cause in one line, the
partial ``step_N.tmp`` removed, and one ``ConfigError`` raised alike on every rank saying how
much space the checkpoint needs and how much is free.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint_files import _barrier, ckpt_root, find_latest, read_marker
from vlscale.errors import ConfigError

# what torch.save's zip writer raises when the disk fills: "[enforce fail at
# inline_container.cc:672] . unexpected pos 704 vs 598" or "PytorchStreamWriter failed writing"
_WRITE_ERRORS = ("inline_container", "PytorchStreamWriter", "No space left", "Errno")


def _is_write_error(exc: RuntimeError) -> bool:
    return any(s in str(exc) for s in _WRITE_ERRORS)


def _write_failure(exc: BaseException) -> str:
    """The first line of a failed write: an OSError's strerror and file, DCP's wrapped error
    (its per-rank tracebacks end in the cause), torch.save's "[enforce fail at ...]"."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^\w+(Error|Exception): ", ln)]
    return (causes[-1] if causes else lines[-1] if lines else type(exc).__name__)[:200]


def _check_written(
    problem: str | None, run_dir, tmp: Path, rank: int, estimate: int | None = None
) -> None:
    """After a failed write (on any rank; ``problem`` is already agreed): rank 0 removes the
    partial ``step_N.tmp``, and every rank raises the same one-line ConfigError saying how much
    space the checkpoint needs and how much is free. The previous checkpoint stays the newest
    valid one; the run stops there (resume with --resume once there is space)."""
    if problem is None:
        return
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()  # the partial directory is gone before any rank reports
    err = ConfigError("checkpoint", save_failure_message(problem, run_dir, tmp, estimate))
    err.all_ranks = True  # every rank raises it: rank 0's line is enough (trainer.train)
    raise err


def save_failure_message(problem: str, run_dir, tmp: Path, estimate: int | None = None) -> str:
    """``cannot write checkpoint DIR (cause): it needs about X MiB, Y MiB are free there; ...``
    The need is the newest checkpoint's size, else ``estimate`` (the state's tensor bytes)."""
    latest = find_latest(run_dir)
    need = _checkpoint_bytes(latest) if latest is not None else None
    source = f"as {latest.name}" if latest is not None else "its tensors"
    if need is None:
        need = estimate
    try:
        free = shutil.disk_usage(ckpt_root(run_dir)).free
    except OSError:
        free = None
    mib = 1 << 20
    sizes = []
    if need is not None:
        sizes.append(f"it needs about {need / mib:.1f} MiB ({source})")
    if free is not None:
        sizes.append(f"{free / mib:.1f} MiB are free there")
    if latest is not None:
        after = (
            f"; {latest} stays the newest valid checkpoint. Free space (delete older step_* "
            "directories, or train with a lower --keep-last) and continue with --resume"
        )
    else:
        after = "; there is no earlier checkpoint. Free space and start again with --overwrite"
    return (
        f"cannot write checkpoint {tmp} ({problem})"
        + (f": {', '.join(sizes)}" if sizes else "")
        + after
    )


def _state_bytes(state: Any) -> int:
    """Bytes of this rank's tensors (local shards) in a nested state dict."""
    if isinstance(state, dict):
        return sum(_state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_state_bytes(v) for v in state)
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    return 0


def _checkpoint_bytes(path: Path) -> int | None:
    """Total size of a checkpoint's files, from its marker (else from the directory)."""
    try:
        files = read_marker(path).get("files")
        if isinstance(files, dict):
            return sum(int(f["bytes"]) for f in files.values())
        return sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    except (OSError, ValueError, KeyError, TypeError):
        return None
