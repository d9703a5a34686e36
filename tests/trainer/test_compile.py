"""`--compile` (torch.compile per block) on CPU: slow (inductor builds C++ kernels, ~25 s)."""

import os
import subprocess
import sys

import pytest

from vlscale.records import read_run

pytestmark = pytest.mark.slow


def test_compiled_blocks_train_and_match_eager_first_loss(tmp_path):
    losses = {}
    for mode in ("--no-compile", "--compile"):
        out = tmp_path / mode.strip("-")
        cmd = [sys.executable, "-m", "trainer.train", "--model", "tiny-clip", "--steps", "3",
               "--seed", "0", mode, "--out", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        losses[mode] = [s.loss for s in read_run(out / "run.jsonl").steps]
    # same init, same first batch: the compiled forward computes the same loss
    assert losses["--compile"][0] == pytest.approx(losses["--no-compile"][0], rel=1e-4)
