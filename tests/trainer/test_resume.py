"""Kill-and-resume end to end: the resumed run reproduces the uninterrupted one bit for bit.

Three ``torchrun`` launches of ``trainer.train`` on 2 gloo CPU ranks, tiny preset:

1. straight: 2k steps;
2. interrupted: same config with ``--ckpt-every k``; as soon as checkpoint k is complete, rank 1
   is SIGKILLed (it is then inside step k+1 or later), which makes torchrun tear the job down;
3. resumed: same command plus ``--resume``, runs to step 2k.

Per-step losses of steps k+1..2k must be equal as floats (CPU, gloo, deterministic kernels):
model, optimizer moments, LR schedule, data position and RNG all came back exactly.

The same under HSDP on 4 ranks (``--sharding hsdp --shard-size 2``: a 2 x 2 mesh, DCP shards of
2-D DTensors): marked slow (about 2-3 min on 2 cores); ``tests/trainer/test_hsdp.py`` resumes
under HSDP in one process group, fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.checkpoint import find_latest, step_dir

REPO = Path(__file__).resolve().parents[2]
K = 4  # checkpoint interval; the run is 2K steps
WORLD = 2

# ~40 s on 2 cores: kept in the default suite because resume equivalence is a core guarantee.
pytestmark = [pytest.mark.dist]


def _command(out: Path, *extra: str, world: int = WORLD) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={world}", "-m", "trainer.train",
        "--model", "tiny-clip", "--steps", str(2 * K), "--global-batch", "8",
        "--seed", "7", "--out", str(out), "--ckpt-every", str(K), *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env | {"CUDA_VISIBLE_DEVICES": ""}


def _run(out: Path, *extra: str, world: int = WORLD) -> None:
    proc = subprocess.run(
        _command(out, *extra, world=world),
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _losses(out: Path) -> dict[int, float]:
    """step -> loss from OUT/run.jsonl; a step logged twice (before the kill and after the
    resume) keeps its last value, and a torn last line from the kill is skipped."""
    losses = {}
    for line in (out / "run.jsonl").read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("kind") == "step":
            losses[rec["step"]] = rec["loss"]
    return losses


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Field 4 (ppid) follows the ")" that closes the command name.
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _run_and_kill(out: Path, *extra: str, world: int = WORLD) -> None:
    proc = subprocess.Popen(
        _command(out, *extra, world=world),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 240
        while find_latest(out) != step_dir(out, K):  # checkpoint K complete (scan, not a pointer)
            assert proc.poll() is None, (
                "run ended before checkpoint K: " + proc.stdout.read()[-3000:].decode()
            )
            assert time.monotonic() < deadline, "no checkpoint K within 240 s"
            time.sleep(0.005)
        victims = [p for p in _children(proc.pid) if _rank_of(p) == 1]
        assert victims, "could not find rank 1's process"
        os.kill(victims[0], signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0, "the interrupted run finished anyway; the kill came too late"
    assert 2 * K not in _losses(out), "the interrupted run reached the last step"


LAYOUTS = [
    pytest.param(WORLD, (), id="fsdp"),
    pytest.param(
        4, ("--sharding", "hsdp", "--shard-size", "2"), id="hsdp-2x2", marks=pytest.mark.slow
    ),
]


@pytest.mark.parametrize(("world", "layout"), LAYOUTS)
def test_kill_one_rank_then_resume_matches_uninterrupted_run(tmp_path, world, layout):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    _run(straight, *layout, world=world)
    _run_and_kill(broken, *layout, world=world)
    assert find_latest(broken) == step_dir(broken, K)  # what a resume will pick up
    _run(broken, *layout, "--resume", world=world)
    header = json.loads((broken / "run.jsonl").read_text().splitlines()[0])
    assert header["world_size"] == world and header["layout"]["devices"] == world

    want, got = _losses(straight), _losses(broken)
    assert sorted(want) == list(range(1, 2 * K + 1))
    for step in range(K + 1, 2 * K + 1):
        assert got[step] == want[step], f"step {step}: resumed {got[step]!r} != {want[step]!r}"
