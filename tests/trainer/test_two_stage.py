"""EVA-CLIP's two-stage recipe through the real entry point: stage 2 starts its image tower from
stage 1's checkpoint (`--init-image-from`) and its text tower from a fresh init."""

import os
import subprocess
import sys

import torch

from models import build_model
from trainer.checkpoint import find_latest, load_model_weights
from vlscale.specs import get_model


def _train(out, *extra):
    cmd = [sys.executable, "-m", "trainer.train", "--model", "tiny-eva", "--recipe", "eva-clip",
           "--global-batch", "8", "--out", str(out), *extra]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return find_latest(out)


def _weights(ckpt):
    model = build_model(get_model("tiny-eva"))
    load_model_weights(model, ckpt)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage_two_starts_from_stage_one_image_tower(tmp_path):
    stage1 = _train(tmp_path / "s1", "--steps", "2", "--ckpt-every", "2", "--seed", "1")
    # a vanishing lr keeps stage 2's single step from moving the weights measurably
    stage2 = _train(
        tmp_path / "s2", "--steps", "1", "--ckpt-every", "1", "--seed", "2", "--lr", "1e-12",
        "--warmup-steps", "0", "--init-image-from", str(stage1),
    )  # fmt: skip
    w1, w2 = _weights(stage1), _weights(stage2)
    visual = [k for k in w1 if k.startswith("visual.")]
    text = [k for k in w1 if k.startswith("text.") and w1[k].numel() > 1]
    assert visual and text
    for k in visual:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.allclose(w2[k], w1[k]) for k in text)  # text: fresh init, seed 2
