"""Fail-safe behaviour on 2 gloo ranks: a corrupt newest checkpoint (five ways) makes --resume fall
back to the previous one with bit-identical losses; errors under torchrun are printed once; two
trainers on one --out cannot both run; another world size cannot resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dist_utils import run_distributed
from trainer.checkpoint import step_dir
from trainer.run_lock import LOCK_FILE

REPO = Path(__file__).resolve().parents[2]
ARGV = ["--model", "tiny-clip", "--steps", "4", "--global-batch", "8", "--seed", "5",
        "--ckpt-every", "2", "--peak-flops", "1e12", "--log-every", "100"]  # fmt: skip

pytestmark = pytest.mark.dist


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for k in range(3):  # three bytes in the tensor payload, the size unchanged
        data[len(data) // 2 + 97 * k] ^= 0x01
    path.write_bytes(bytes(data))


def _corrupt(ckpt: Path, how: str) -> None:
    if how == "truncated_distcp":
        _truncate(next(ckpt.glob("__1_*.distcp")))
    elif how == "random_metadata":
        meta = ckpt / ".metadata"
        meta.write_bytes(os.urandom(meta.stat().st_size))
    elif how == "missing_rank_file":
        (ckpt / "extra_rank00001.pt").unlink()
    elif how == "truncated_marker":
        _truncate(ckpt / "COMPLETE")
    elif how == "flipped_bytes":
        _flip(next(ckpt.glob("__0_*.distcp")))


FAULTS = ["truncated_distcp", "random_metadata", "missing_rank_file", "truncated_marker",
          "flipped_bytes"]  # fmt: skip


def _losses(out: Path) -> dict[int, float]:
    lines = [json.loads(ln) for ln in (out / "run.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["kind"] == "step"}


def _fault_runs(ctx, root: str):
    import torch
    import torch.distributed as dist

    import trainer.train as entry
    from trainer.cli_args import load_config

    base = Path(root) / "base"
    entry.train(load_config([*ARGV, "--out", str(base)], 2), torch.device("cpu"), ctx.mesh, "gloo")
    for how in FAULTS:
        out = Path(root) / how
        if ctx.rank == 0:
            shutil.copytree(base, out)
            _corrupt(step_dir(out, 4), how)
        dist.barrier()
        cfg = load_config([*ARGV, "--out", str(out), "--resume"], 2)
        entry.train(cfg, torch.device("cpu"), ctx.mesh, "gloo")
        dist.barrier()
    return ctx.rank


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    assert run_distributed(_fault_runs, 2, str(root), timeout=600) == [0, 1]
    return root


@pytest.mark.parametrize("how", FAULTS)
def test_corrupt_newest_checkpoint_falls_back_bit_identically(fault_root, how):
    want = _losses(fault_root / "base")
    got = _losses(fault_root / how)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):  # retrained from step 2's checkpoint
        assert got[step] == want[step], (how, step, got[step], want[step])
    lines = [json.loads(ln) for ln in (fault_root / how / "run.jsonl").read_text().splitlines()]
    (resume,) = [r for r in lines if r["kind"] == "resume"]
    assert resume["path"] == str(step_dir(fault_root / how, 2))
    assert len(resume["passed_over"]) == 1 and resume["passed_over"][0].startswith("step_000004")


def test_other_world_size_cannot_resume(fault_root, tmp_path, capsys):
    from trainer.train import main

    run = tmp_path / "run"
    shutil.copytree(fault_root / "base", run)
    rc = main([*ARGV, "--out", str(run), "--resume"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: world_size:") and "2 -> 1" in err, err
    assert "\n" not in err


# --------------------------------------------------------------------- processes


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")


def _torchrun(*argv: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "trainer.train", *argv]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=180)


def test_torchrun_prints_each_error_once_without_trainer_traceback(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("filepath,title\ngone0.png,x\n")
    # before launch (config) and after launch (every image missing: used to hang)
    for argv, field in ((["--lr", "inf"], "lr"), (["--data", str(csv)], "data")):
        proc = _torchrun(*argv, "--steps", "3", "--global-batch", "8", "--out", str(tmp_path / "o"))
        text = proc.stdout + proc.stderr
        errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
        assert proc.returncode != 0
        assert len(errors) == 1 and errors[0].startswith(f"error: {field}: "), text[-3000:]
        assert f'File "{REPO / "trainer"}' not in text  # no traceback frame of the trainer
        assert not (tmp_path / "o").exists()


def test_second_trainer_on_same_out_refuses_first_finishes(tmp_path):
    out = tmp_path / "shared"
    # long enough (~10 s at ~25 ms per step) to still run when the second one has started
    cmd = [sys.executable, "-m", "trainer.train", "--steps", "400", "--global-batch", "8",
           "--out", str(out), "--peak-flops", "1e12", "--ckpt-every", "200"]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "run.jsonl").is_file():  # first holds the lock and has started
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run([*cmd, "--resume"], cwd=REPO, env=_env(), capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        still_running = first.poll() is None
        _, first_err = first.communicate(timeout=240)
    finally:
        if first.poll() is None:
            first.kill()
    assert still_running, "the first run ended before the second started; the test proves nothing"
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith("error: out: ") and f"pid {first.pid}" in lines[0]
    assert first.returncode == 0, first_err[-2000:]
    assert sorted(_losses(out)) == list(range(1, 401))
    assert not (out / LOCK_FILE).exists()
