"""Graceful stop (``trainer.signals``): the first SIGTERM / SIGINT finishes the step, checkpoints
it, releases the lock, prints one line and exits 128 + N; ``--resume`` then continues bit for bit
(every step's loss and the final weights equal an uninterrupted run's). At W = 2 the signal goes
to rank 1 only: the ranks agree on the step through the per-step all-reduce of the stop flag."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.dist_utils import run_distributed
from tests.trainer.test_resume import _children, _losses, _rank_of
from trainer import signals
from trainer.checkpoint import find_latest, step_dir
from trainer.run_lock import LOCK_FILE

REPO = Path(__file__).resolve().parents[2]
STEPS = 60  # ~10 ms a step at W = 1: the signal lands early in the run
STOPPED = re.compile(r"^stopped by (SIG\w+) at step (\d+); resume with --resume$", re.M)


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")


def _command(out: Path, world: int, *extra: str) -> list[str]:
    launch = (
        [sys.executable, "-m", "trainer.train"]
        if world == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone",
              f"--nproc-per-node={world}", "-m", "trainer.train"]
    )  # fmt: skip
    return [*launch, "--model", "tiny-clip", "--steps", str(STEPS), "--global-batch", "8",
            "--seed", "3", "--peak-flops", "1e12", "--ckpt-every", str(STEPS), "--out", str(out),
            *extra]  # fmt: skip


def _run(out: Path, world: int, *extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        _command(out, world, *extra), cwd=REPO, env=_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _wait_delivered(pid: int, sig: int, timeout_s: float = 2.0) -> None:
    """Until ``sig`` is no longer pending for ``pid`` (/proc/PID/status ShdPnd and SigPnd):
    the kernel has run its handler, so a signal sent next is handled after it. Two signals
    pending at once are delivered in the kernel's order, not the order they were sent."""
    status = Path(f"/proc/{pid}/status")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return  # the process is gone
        pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
        if not pending & (1 << (sig - 1)):
            return
        time.sleep(0.001)


def _signal_after_step(
    out: Path, world: int, sig: int, *more: int, extra: tuple[str, ...] = ()
) -> tuple[int, str]:
    """Start a run, send ``sig`` (then ``more`` signals) once step 3 is logged (at W = 2 to
    rank 1 only); returns (exit status, all output)."""
    proc = subprocess.Popen(
        _command(out, world, *extra), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("step 3/"):
                break
        assert proc.poll() is None, "run ended before step 3: " + "".join(seen)[-3000:]
        target = proc.pid
        if world > 1:
            ranks = [p for p in _children(proc.pid) if _rank_of(p) == 1]
            assert ranks, "could not find rank 1's process"
            target = ranks[0]
        for s in (sig, *more):
            os.kill(target, s)
            _wait_delivered(target, s)
        rest = proc.stdout.read()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen) + rest


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    from models.two_tower import TwoTower
    from trainer.checkpoint import load_model_weights
    from vlscale.specs.presets import resolve_model

    with torch.device("meta"):
        model = TwoTower(resolve_model("tiny-clip"))
    model.to_empty(device="cpu")
    load_model_weights(model, step_dir(out, STEPS))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _stop_then_resume(tmp_path: Path, world: int, sig: int) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(straight, world)
    rc, text = _signal_after_step(stopped, world, sig)
    found = STOPPED.findall(text)
    assert len(found) == 1, text[-3000:]  # one line, from rank 0 only
    name, step = found[0][0], int(found[0][1])
    assert name == signal.Signals(sig).name
    assert 3 <= step < STEPS, text[-3000:]
    if world == 1:
        assert rc == signals.exit_status(sig), text[-3000:]
    else:  # torchrun exits 1 when a worker fails; both workers ended with 128 + N
        assert rc != 0 and text.count(f"exitcode  : {signals.exit_status(sig)}") == world, text
    assert find_latest(stopped) == step_dir(stopped, step)  # checkpoint of the stop step
    assert not (stopped / LOCK_FILE).exists()
    assert "Traceback" not in text.split("stopped by")[0]
    _run(stopped, world, "--resume")
    want, got = _losses(straight), _losses(stopped)
    assert sorted(got) == list(range(1, STEPS + 1))  # no step lost
    assert got == want
    a, b = _final_weights(straight), _final_weights(stopped)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigterm_one_rank_checkpoints_and_resumes_bit_identically(tmp_path):
    _stop_then_resume(tmp_path, 1, signal.SIGTERM)


def test_sigint_one_rank_exits_130_and_checkpoints_without_ckpt_every(tmp_path):
    out = tmp_path / "run"
    rc, text = _signal_after_step(out, 1, signal.SIGINT, extra=("--ckpt-every", "0"))
    assert rc == 130, text[-3000:]
    step = int(STOPPED.search(text).group(2))
    assert find_latest(out) == step_dir(out, step)
    assert "KeyboardInterrupt" not in text


def test_second_signal_stops_at_once(tmp_path):
    out = tmp_path / "run"
    rc, text = _signal_after_step(out, 1, signal.SIGTERM, signal.SIGINT)
    assert rc == 130, text[-3000:]  # 128 + SIGINT, at once
    assert "stopped at once by a second signal (SIGINT); no checkpoint" in text
    assert not STOPPED.search(text)


@pytest.mark.dist
def test_sigterm_to_one_of_two_ranks_stops_both_at_one_step(tmp_path):
    _stop_then_resume(tmp_path, 2, signal.SIGTERM)


# ------------------------------------------------------------------ the agreement, in process


def _agree(ctx, signalled_rank):
    signals.REQUEST.signum = signal.SIGTERM if ctx.rank == signalled_rank else None
    try:
        agreed = signals.agreed_stop(None, None, ctx.world_size)[0]
        t = time.perf_counter()
        for _ in range(200):
            signals.agreed_stop(None, None, ctx.world_size)
        per_call = (time.perf_counter() - t) / 200
        dist.barrier()
        return agreed, per_call
    finally:
        signals.REQUEST.signum = None


@pytest.mark.dist
def test_ranks_agree_on_a_signal_only_one_got_and_it_costs_little():
    results = run_distributed(_agree, 2, 1)
    assert [r[0] for r in results] == [signal.SIGTERM, signal.SIGTERM]
    # the flag's all-reduce: 0.66 ms on 2 gloo CPU ranks of the busy 2-core machine
    assert max(r[1] for r in results) < 0.02, results


def test_handler_flags_first_signal_and_ignores_its_duplicate():
    assert signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher's copy of the same stop
        deadline = time.monotonic() + 5
        while signals.requested() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # the watcher thread records it
        assert signals.requested() == signal.SIGTERM
        assert signals.agreed_stop() == (signal.SIGTERM, False)
    finally:
        signals.uninstall()
    assert signals.requested() is None
    assert signal.getsignal(signal.SIGTERM) is not signals._handle


@pytest.fixture
def signal_at_start(monkeypatch):
    """main() installs the handlers and a SIGTERM is already there: deterministic 'a signal
    during set-up'."""
    real = signals.install

    def install_then_signal() -> bool:
        ok = real()
        signals.REQUEST.signum = signal.SIGTERM
        return ok

    monkeypatch.setattr(signals, "install", install_then_signal)


def test_stop_during_setup_of_a_fresh_run_leaves_nothing(tmp_path, capsys, signal_at_start):
    from trainer.train import main

    out = tmp_path / "runs" / "latest"
    argv = ["--model", "tiny-clip", "--steps", "2", "--global-batch", "8", "--peak-flops", "1e12"]
    assert main([*argv, "--out", str(out)]) == 143
    assert capsys.readouterr().err.strip() == (
        "stopped by SIGTERM before the first step; nothing to resume"
    )
    assert not (tmp_path / "runs").exists()
