"""End to end: every recipe trains on 2 gloo ranks with a tiny preset; the loss goes down and the
run file validates against ``vlscale.records``. Plus the plain ``python -m trainer.train`` path
(world 1, real shapes loader) with phase timing, evaluation and a profiler trace.

All four recipes run inside ONE spawn of two ranks (process start-up dominates on CPU); each
recipe is then checked by its own test. Each rank repeats its first shapes batch: the tiny
presets start with nearly identical embeddings for all inputs (cosine ~0.99 at init), so on fresh
batches a few dozen CPU steps stay at chance level, while a fixed batch is learnt within them.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dist_utils import run_distributed
from vlscale.records import read_run

REPO = Path(__file__).resolve().parents[2]
STEPS = 24
COMMON = ["--steps", str(STEPS), "--global-batch", "16", "--lr", "1e-4", "--warmup-steps", "2",
          "--log-every", "1000", "--seed", "3"]  # fmt: skip
RECIPES = {
    "clip": ["--model", "tiny-clip", "--recipe", "clip", "--lr", "3e-4", "--phase-timing"],
    "siglip-gather": ["--model", "tiny-siglip", "--recipe", "siglip", "--loss-impl", "gather"],
    "siglip-ring": ["--model", "tiny-siglip", "--recipe", "siglip", "--loss-impl", "ring"],
    "eva-clip": ["--model", "tiny-eva", "--recipe", "eva-clip", "--mask-ratio", "0.5", "--lr",
                 "1e-2", "--checkpointing", "--grad-accum", "2", "--unmasked-final-steps", "2"],
}  # fmt: skip


class _RepeatFirst:
    """The real loader's first batch, forever (keeps the loader's state_dict interface)."""

    def __init__(self, loader):
        self.loader, self.first = loader, None

    def __iter__(self):
        return self

    def __next__(self):
        if self.first is None:
            self.first = next(self.loader)
        return self.first

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)

    def close(self):
        self.loader.close()


def _train_all(ctx, out_root):
    import torch

    import trainer.train as entry
    from trainer.cli_args import load_config

    real = entry.build_train_loader
    entry.build_train_loader = lambda *a, **k: _RepeatFirst(real(*a, **k))
    for name, argv in RECIPES.items():
        cfg = load_config([*COMMON, *argv, "--out", f"{out_root}/{name}"], world_size=2)
        entry.train(cfg, torch.device("cpu"), ctx.mesh, "gloo")
    return ctx.rank


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out_root = tmp_path_factory.mktemp("e2e")
    assert run_distributed(_train_all, 2, str(out_root), timeout=300) == [0, 1]
    return {name: read_run(out_root / name / "run.jsonl") for name in RECIPES}


pytestmark = pytest.mark.dist


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipe_trains_and_records_validate(runs, name):
    run = runs[name]
    h = run.header
    assert h.world_size == 2 and h.backend == "gloo" and h.global_batch == 16
    assert h.recipe.name == name.split("-")[0] if name != "eva-clip" else h.recipe.name == name
    assert [s.step for s in run.steps] == list(range(1, STEPS + 1))
    assert [s.samples_seen for s in run.steps] == [16 * i for i in range(1, STEPS + 1)]
    assert all(math.isfinite(s.loss) for s in run.steps)
    first = run.steps[0].loss
    last = sum(s.loss for s in run.steps[-3:]) / 3
    assert last < 0.9 * first, [round(s.loss, 3) for s in run.steps]
    assert all(s.mfu is not None and s.mfu > 0 for s in run.steps)
    assert run.steps[0].warmup and not run.steps[-1].warmup


def test_softmax_recipes_beat_chance_and_clamp(runs):
    # chance level of the local-rows InfoNCE is ln(global batch); learning must go below it
    for name in ("clip", "eva-clip"):
        run = runs[name]
        local_rows = run.header.global_batch // run.header.grad_accum
        assert run.steps[-1].loss < math.log(local_rows) - 0.1
        assert all(s.logit_scale <= run.header.recipe.max_logit_scale + 1e-6 for s in run.steps)


def test_eva_clip_masks_then_unmasks(runs):
    run = runs["eva-clip"]
    assert run.header.recipe.optimizer == "lamb" and run.header.activation_checkpointing
    assert [s.mask_ratio for s in run.steps] == [0.5] * (STEPS - 2) + [0.0] * 2
    # FLOPs per sample follow the mask ratio (from vlscale.costs, never a second formula)
    assert run.steps[-1].flops_per_sample > run.steps[0].flops_per_sample


def test_phase_times_only_when_asked(runs):
    clip, siglip = runs["clip"].steps[-1], runs["siglip-ring"].steps[-1]
    phases = (clip.forward_s, clip.loss_s, clip.backward_s, clip.optimizer_s)
    assert all(p is not None and p > 0 for p in phases)
    assert sum(phases) <= clip.step_time_s
    assert siglip.forward_s is None and siglip.backward_s is None


def test_siglip_ring_and_gather_agree_at_start(runs):
    # same seed, same data, same init: the first loss is the same number by either route
    a, b = runs["siglip-gather"].steps[0].loss, runs["siglip-ring"].steps[0].loss
    assert a == pytest.approx(b, rel=1e-4)


def _counted_train_flops_per_sample(model_name: str, batch: int) -> float:
    """Forward + backward FLOPs of one training step of ``model_name`` with the CLIP loss at
    W = 1, counted by torch's FlopCounterMode on the meta device (no compute), per sample: a
    source independent of ``vlscale.costs.flops``, which the trainer's record uses."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models import build_model
    from trainer.losses import clip_loss
    from vlscale.specs import get_model

    spec = get_model(model_name)
    model = build_model(spec, device="meta")
    size = spec.vision.image_size
    images = torch.empty(batch, 3, size, size, device="meta")
    tokens = torch.zeros(batch, spec.text.context_length, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        image, text = model(images, tokens)
        clip_loss(image, text, model.logit_scale).backward()
    return counter.get_total_flops() / batch


def test_plain_python_entry_with_profile(tmp_path):
    out = tmp_path / "solo"
    batch, peak = 8, 1e12
    cmd = [sys.executable, "-m", "trainer.train", "--model", "tiny-clip", "--steps", "3",
           "--global-batch", str(batch), "--out", str(out), "--profile-steps", "2:3",
           "--phase-timing", "--eval-every", "3", "--peak-flops", str(peak)]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read_run(out / "run.jsonl")
    assert run.header.world_size == 1 and run.header.peak_flops_source == "option"
    # one fp32 rank runs the plain module, and the record says so (the planner reads it)
    assert run.header.wrapped is (run.header.dtype != "fp32")
    # ... and its layout as it ran: the one-rank rule read from the layout gives the same answer
    layout = run.header.layout
    assert (layout.devices, layout.sharding, layout.precision) == (1, "fsdp", run.header.dtype)
    assert layout.wrapped is run.header.wrapped
    assert run.header.recipe.name == "clip" and run.header.model.name == "tiny-clip"
    assert len(run.steps) == 3 and len(run.evals) == 1
    # the recorded FLOPs per sample are what the counter counts on the real model and loss
    # (float sums of integer counts: 1e-12 relative)
    counted = _counted_train_flops_per_sample("tiny-clip", batch)
    for s in run.steps:
        assert s.flops_per_sample == pytest.approx(counted, rel=1e-12)
        assert 0 < s.step_time_s < wall  # a step is timed inside the process the test timed
        # MFU = counted FLOPs of the step / (step time · the peak given on the command line)
        assert s.mfu == pytest.approx(counted * batch / (s.step_time_s * peak), rel=1e-12)
    assert (out / "trace_rank0.json").stat().st_size > 1000
    assert "step 3/3" in proc.stdout
