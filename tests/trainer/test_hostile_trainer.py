"""Hostile inputs and faults of the trainer (issue 19): each case is one line on stderr, exit
status 2 and ``--out`` exactly as it was; a full disk during a checkpoint leaves no temp
directory and the previous checkpoint resumes bit for bit. In process (``trainer.train.main``,
world 1) unless a case needs its own process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from trainer.checkpoint import find_latest, step_dir
from trainer.train import main

BASE = ["--model", "tiny-clip", "--global-batch", "8", "--peak-flops", "1e12", "--log-every", "100"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = old


def _tree(path: Path) -> dict[str, int] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


def _one_line(capsys, rc: int, field: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), err
    return lines[0]


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(ln) for ln in (out / "run.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "step"}


# ------------------------------------------------------------------ a full disk, checkpointing


@pytest.fixture
def small_disk(tmp_path):
    """A mount point factory: ``small_disk(size)`` mounts a tmpfs of ``size`` (e.g. "5m")."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; run as root to test a full disk")
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


FULL_RUN = ["--steps", "6", "--ckpt-every", "2", "--seed", "4"]


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path, small_disk, capsys):
    disk = small_disk("5m")  # a tiny-clip checkpoint is 3.4 MB: the first fits, the second not
    out = disk / "run"
    line = _one_line(capsys, main([*BASE, *FULL_RUN, "--out", str(out)]), "checkpoint")
    assert f"cannot write checkpoint {step_dir(out, 4)}.tmp" in line
    assert "it needs about 3.3 MiB (as step_000002)" in line and "MiB are free there" in line
    assert not list((out / "ckpt").glob("*.tmp")) and not (out / ".lock").exists()
    assert find_latest(out) == step_dir(out, 2)

    straight = tmp_path / "straight"
    assert main([*BASE, *FULL_RUN, "--out", str(straight)]) == 0
    moved = tmp_path / "moved"  # "free space": continue the run on a disk with room
    shutil.copytree(out, moved)
    assert main([*BASE, *FULL_RUN, "--out", str(moved), "--resume"]) == 0
    want, got = _losses(straight), _losses(moved)
    assert all(got[s] == want[s] for s in range(3, 7)), (got, want)


def test_full_disk_at_the_first_checkpoint(small_disk, capsys):
    out = small_disk("2m") / "run"
    line = _one_line(capsys, main([*BASE, *FULL_RUN, "--out", str(out)]), "checkpoint")
    assert "No space left on device" in line and "no earlier checkpoint" in line, line
    assert not list((out / "ckpt").glob("*.tmp")) and find_latest(out) is None
