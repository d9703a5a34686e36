"""`--compile` (torch.compile per block).

The wiring is tested quickly with backends that capture graphs but run eager kernels: which
modules are compiled and that compiled blocks compute what eager ones do under FSDP on two ranks
(``aot_eager``: graph capture and AOT autograd through FSDP's hooks), and that ``--compile``
trains through the CLI (``--compile-backend eager``, the cheapest: about 1.5 s over an eager
run). The inductor backend itself (C++ kernels built on CPU, ~25 s) is the slow test.
"""

import os
import subprocess
import sys

import pytest
import torch

from models import build_model, init_weights
from tests.dist_utils import run_distributed
from trainer.parallelize import blocks, parallelize, towers
from vlscale.records import read_run
from vlscale.specs import get_model
from vlscale.specs.layout import RunLayout


def _train_losses(tmp_path, *options):
    losses = {}
    for mode in ("--no-compile", "--compile"):
        out = tmp_path / mode.strip("-")
        cmd = [sys.executable, "-m", "trainer.train", "--model", "tiny-clip", "--steps", "3",
               "--seed", "0", "--global-batch", "8", "--peak-flops", "1e12", mode, *options,
               "--out", str(out)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        run = read_run(out / "run.jsonl")
        assert run.header.config["compile"] == (mode == "--compile")
        losses[mode] = [s.loss for s in run.steps]
    return losses


def _compiled_fsdp(ctx):
    """Compiled and eager tiny-clip under FSDP on this rank: what is compiled, and the loss and
    one gradient of a forward/backward of each (same seed: same weights)."""
    out = {}
    for compile in (False, True):
        torch.manual_seed(0)
        model = build_model(get_model("tiny-clip"), device="meta")
        layout = RunLayout(devices=ctx.world_size, precision="fp32")
        backend = "aot_eager" if compile else None
        parallelize(model, ctx.mesh, layout, torch.device("cpu"), init_weights, backend)
        g = torch.Generator().manual_seed(1)
        images = torch.randn(4, 3, 32, 32, generator=g)
        tokens = torch.randint(1, 250, (4, 32), generator=g)
        img, txt = model(images, tokens)
        loss = (img @ txt.T).diagonal().sum()
        loss.backward()
        out[compile] = {
            "blocks": [b._compiled_call_impl is not None for b in blocks(model)],
            "others": [m._compiled_call_impl is not None for m in (*towers(model), model)],
            "loss": loss.item(),
            "grad": model.visual.blocks[0].mlp.fc1.weight.grad.full_tensor(),
        }
    return out


def test_compiled_blocks_under_fsdp_match_eager():
    for r in run_distributed(_compiled_fsdp, 2, timeout=300):
        eager, compiled = r[False], r[True]
        assert compiled["blocks"] and all(compiled["blocks"])  # every block, image and text
        assert not any(compiled["others"])  # towers and root stay eager (FSDP units only)
        assert not any(eager["blocks"])
        assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-6)
        torch.testing.assert_close(compiled["grad"], eager["grad"], rtol=1e-5, atol=1e-6)


def test_compile_option_trains_and_matches_eager_first_loss(tmp_path):
    losses = _train_losses(tmp_path, "--compile-backend", "eager")
    # same init, same first batch: the compiled forward computes the same loss
    assert losses["--compile"][0] == pytest.approx(losses["--no-compile"][0], rel=1e-6)
    assert losses["--compile"] == pytest.approx(losses["--no-compile"], rel=1e-4)


@pytest.mark.slow
def test_inductor_compiled_blocks_train_and_match_eager_first_loss(tmp_path):
    losses = _train_losses(tmp_path)  # inductor, the default backend
    assert losses["--compile"][0] == pytest.approx(losses["--no-compile"][0], rel=1e-4)
