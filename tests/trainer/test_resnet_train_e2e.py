"""CLIP's ResNet (tiny-rn) through the trainer's own entry, as a user runs it: the preflight
memory check and the recorded FLOPs and MFU come from vlscale.costs, and those FLOPs are what
torch's FlopCounterMode counts on the real model and loss (``test_train_e2e`` does the same for
a ViT). Two gloo ranks under FSDP2 with per-block checkpointing record the same per-sample
tower FLOPs plus their share of the W = 2 loss."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.dist_utils import run_distributed
from tests.trainer.test_train_e2e import REPO, _counted_train_flops_per_sample
from vlscale.costs.flops import model_flops_per_sample, train_flops_per_sample
from vlscale.records import read_run
from vlscale.specs import get_model


def test_tiny_rn_trains_with_costs_flops_and_mfu(tmp_path):
    out = tmp_path / "rn"
    batch, peak = 8, 1e12
    cmd = [sys.executable, "-m", "trainer.train", "--model", "tiny-rn", "--steps", "3",
           "--global-batch", str(batch), "--out", str(out), "--peak-flops", str(peak)]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read_run(out / "run.jsonl")
    assert run.header.model.name == "tiny-rn" and run.header.model.vision.kind == "resnet"
    counted = _counted_train_flops_per_sample("tiny-rn", batch)
    assert len(run.steps) == 3
    for s in run.steps:
        assert s.flops_per_sample == pytest.approx(counted, rel=1e-12)
        assert 0 < s.step_time_s < wall
        assert s.mfu == pytest.approx(counted * batch / (s.step_time_s * peak), rel=1e-12)


def test_preflight_estimates_a_resnet_and_refuses_what_cannot_fit():
    from trainer.cli_args import load_config
    from trainer.preflight import check_memory, estimate_rank_memory
    from vlscale.errors import ConfigError

    cfg = load_config(["--model", "tiny-rn", "--global-batch", "8"], world_size=1)
    assert estimate_rank_memory(cfg, "cpu") > 0
    huge = load_config(["--model", "RN50x64", "--global-batch", "65536"], world_size=1)
    with pytest.raises(ConfigError, match=r"^memory: RN50x64 needs an estimated"):
        check_memory(huge, 1, "cpu")


def _train_two_ranks(ctx, out):
    import torch

    import trainer.train as entry
    from trainer.cli_args import load_config

    argv = ["--model", "tiny-rn", "--steps", "2", "--global-batch", "8", "--checkpointing",
            "--log-every", "1000", "--out", out]  # fmt: skip
    entry.train(load_config(argv, world_size=2), torch.device("cpu"), ctx.mesh, "gloo")
    return ctx.rank


@pytest.mark.dist
def test_tiny_rn_trains_on_two_ranks(tmp_path):
    assert run_distributed(_train_two_ranks, 2, str(tmp_path), timeout=180) == [0, 1]
    run = read_run(tmp_path / "run.jsonl")
    spec = get_model("tiny-rn")
    assert run.header.world_size == 2 and run.header.activation_checkpointing
    expected = model_flops_per_sample(
        spec, mask_ratio=0.0, loss="softmax", loss_impl="gather", local_batch=4, world_size=2
    )
    towers = train_flops_per_sample(spec)  # no recompute: model FLOPs, as the MFU convention
    clip_loss_w1 = 12 * 4 * spec.embed_dim  # 12·b·B·e / b at W = 1, B = b = 4
    assert towers == pytest.approx(_counted_train_flops_per_sample("tiny-rn", 4) - clip_loss_w1)
    for s in run.steps:
        assert s.flops_per_sample == pytest.approx(expected, rel=1e-12) and s.mfu > 0
