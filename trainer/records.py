"""Writing run records (schema: ``vlscale.records``), rank 0 only.

The header goes to a temp file that is renamed onto ``OUT/run.jsonl`` (a fresh run never leaves
a file without its header); every later record is one ``write`` of a whole line to the file
opened for append, then a flush, so a crash loses at most the line being written. Other ranks
get a writer that does nothing, so the loop calls it unconditionally.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

from vlscale.paths import atomic_write_text
from vlscale.records import RunHeader

RUN_FILE = "run.jsonl"


class RecordWriter:
    """Append-only JSONL writer for one run; inactive (no file at all) unless ``active``."""

    def __init__(self, out_dir: str | os.PathLike, active: bool):
        self.path = Path(out_dir) / RUN_FILE
        self.active = active
        self.failed: str | None = None  # why an append failed (full disk): the loop stops

    def start(self, header: RunHeader, resume_step: int | None = None) -> None:
        """Write the header of a fresh run (replacing any old file).

        Resuming from the checkpoint of ``resume_step`` keeps the file and its header but drops
        what the interrupted run wrote after that step, including a torn last line, so the file
        reads as one run again.
        """
        if not self.active:
            return
        if resume_step is not None and self.path.is_file():
            lines = self.path.read_text().split("\n")
            kept = [lines[0]] + [ln for ln in lines[1:] if _keep(ln, resume_step)]
            self._replace("".join(ln + "\n" for ln in kept))
            return
        self._replace(_line(header))

    def _replace(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, text)

    def write(self, record: BaseModel) -> None:
        """Append one validated record as one line."""
        if not self.active or self.failed:
            return
        try:
            with open(self.path, "a") as f:
                f.write(_line(record))
                f.flush()
        except OSError as exc:
            # Not raised here: rank 0 alone writes, and the ranks must stop together. The loop
            # asks every rank before the next step (trainer.step.train_loop).
            free = _free_mib(self.path.parent)
            self.failed = (
                f"cannot append to {self.path} ({exc.strerror or exc}; {free:.1f} MiB free "
                "there); free space and continue with --resume from the last checkpoint"
            )


def _free_mib(folder: Path) -> float:
    import shutil

    try:
        return shutil.disk_usage(folder).free / (1 << 20)
    except OSError:
        return float("nan")


def _keep(line: str, resume_step: int) -> bool:
    """A complete record of a step up to ``resume_step`` (torn or later lines are dropped)."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(rec, dict) and rec.get("step", 0) <= resume_step


def _line(record: BaseModel) -> str:
    return json.dumps(record.model_dump(mode="json"), separators=(",", ":")) + "\n"
