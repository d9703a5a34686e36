"""Locked towers in the trainer (``trainer.locks``), on 2 gloo ranks under FSDP2 with tiny-clip:
locked parameters stay bit-identical over AdamW steps, get no gradient and no optimizer state;
what a lock saves is measured (optimizer state and gradients: the bytes of the local shards;
activations: the storages autograd saves, as ``tests/test_activation_memory_torch.py``) and
compared with the planner's prediction of the same drop (``vlscale.costs.memory``)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import DTensor

from models import build_model, init_weights
from tests.dist_utils import run_distributed
from trainer.optim import build_optimizer, build_param_groups
from trainer.parallelize import parallelize
from vlscale.costs.memory import estimate_memory
from vlscale.specs import get_model
from vlscale.specs.layout import RunLayout
from vlscale.specs.recipes import default_recipe

pytestmark = pytest.mark.dist
BATCH, STEPS = 4, 3


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _saved_bytes(model, images, tokens) -> int:
    """Unique storages autograd saves in one forward, less parameters and buffers: the local
    shards, and the gathered parameters, whose storage FSDP2 frees (resizes to 0) after each
    unit's forward, so they are sized once the forward is over."""
    own = {_local(t).untyped_storage().data_ptr() for t in model.parameters()}
    own |= {t.untyped_storage().data_ptr() for t in model.buffers()}
    seen: dict[int, torch.UntypedStorage] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in own:
            seen[s.data_ptr()] = s
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        img, txt = model(images, tokens)
    return sum(s.nbytes() for s in seen.values()), img, txt


def _train(ctx, locks: dict) -> dict:
    spec = get_model("tiny-clip")
    torch.manual_seed(0)
    model = build_model(spec, device="meta")
    layout = RunLayout(devices=ctx.world_size, precision="fp32", **locks)
    parallelize(model, ctx.mesh, layout, torch.device("cpu"), init_weights)
    start = {n: p.full_tensor().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer("adamw", build_param_groups(model, 1e-2, 0.1))
    g = torch.Generator().manual_seed(1 + ctx.rank)
    saved = 0
    for _ in range(STEPS):
        images = torch.randn(BATCH, 3, 32, 32, generator=g)
        tokens = torch.randint(1, 250, (BATCH, 32), generator=g)
        saved, img, txt = _saved_bytes(model, images, tokens)
        scale, _ = model.logit_params()
        loss = -(img * txt.roll(1, 0)).sum() * scale.exp().sum()
        loss.backward()
        grads = sum(_local(p.grad).nbytes for p in model.parameters() if p.grad is not None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    state = sum(
        _local(t).nbytes
        for s in optimizer.state.values()
        for t in s.values()
        if torch.is_tensor(t) and t.ndim > 0
    )
    end = {n: p.full_tensor() for n, p in model.named_parameters()}
    stateful = {n for n, p in model.named_parameters() if p in optimizer.state}
    return {
        "unchanged": sorted(n for n in start if torch.equal(start[n], end[n])),
        "stateful": sorted(stateful),
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "names": sorted(start),
        "saved": saved,
        "grads": grads,
        "state": state,
    }


def _both(ctx) -> dict:
    return {
        "free": _train(ctx, {}),
        "image": _train(ctx, {"lock_image": True}),
        "partial": _train(ctx, {"lock_image": True, "lock_image_unlocked_groups": 2}),
        "checkpointed": _train(ctx, {"lock_image": True, "checkpointing": True}),
    }


@pytest.fixture(scope="module")
def runs():
    return run_distributed(_both, 2)[0]


def test_locked_parameters_are_bit_identical_and_stateless(runs):
    image = runs["image"]
    visual = [n for n in image["names"] if n.startswith("visual.")]
    assert set(visual) <= set(image["unchanged"])
    assert not any(n.startswith("text.") for n in image["unchanged"])
    assert not any(n.startswith("visual.") for n in image["stateful"])
    # the softmax loss leaves logit_bias without a gradient, hence without state
    assert set(image["stateful"]) == set(image["trainable"]) - {"logit_bias"}


def test_partially_unlocked_groups_are_openclips(runs):
    partial = runs["partial"]
    last = max(int(n.split(".")[2]) for n in partial["names"] if n.startswith("visual.blocks."))
    trained = {n for n in partial["trainable"] if n.startswith("visual.")}
    # the last 2 groups: [last block, final norm], [proj]
    assert trained == {
        n
        for n in partial["names"]
        if n.startswith((f"visual.blocks.{last}.", "visual.norm.", "visual.proj."))
    }
    assert trained.isdisjoint(partial["unchanged"])


def test_measured_drop_matches_the_planner(runs):
    spec, recipe = get_model("tiny-clip"), default_recipe("clip")

    def predicted(**locks):
        layout = RunLayout(devices=2, precision="fp32", **locks).resolved("fp32", 2)
        return estimate_memory(spec, layout, recipe, local_batch=BATCH)

    free = predicted()
    for name, locks in (
        ("image", {"lock_image": True}),
        ("partial", {"lock_image": True, "lock_image_unlocked_groups": 2}),
    ):
        locked = predicted(**locks)
        measured = {k: runs["free"][k] - runs[name][k] for k in ("saved", "grads", "state")}
        want = {
            "saved": free.activations - locked.activations,
            "grads": free.grads - locked.grads,
            "state": free.optimizer_state - locked.optimizer_state,
        }
        print(name, "measured drop", measured, "predicted drop", want)
        for key in ("grads", "state"):
            assert measured[key] == pytest.approx(want[key], rel=0.02)
        assert measured["saved"] > 0
        assert measured["saved"] == pytest.approx(want["saved"], rel=0.10)


def test_checkpointing_leaves_locked_blocks_alone(runs):
    run = runs["checkpointed"]
    visual = [n for n in run["names"] if n.startswith("visual.")]
    assert visual and set(visual) <= set(run["unchanged"])
    assert not any("_checkpoint_wrapped_module" in n for n in visual)
    assert any("_checkpoint_wrapped_module" in n for n in run["names"] if n.startswith("text."))


def test_a_partially_locked_run_resumes_bit_identically(tmp_path):
    """Checkpoint at step 2 of 4 (W = 2, FSDP, last two image groups trainable), resume from
    it: steps 3-4 log the same losses as the uninterrupted run (DCP with frozen parameters,
    which have no optimizer state)."""
    import json
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "-m", "trainer.train", "--model", "tiny-clip", "--steps", "4", "--global-batch", "8",
        "--lock-image", "--lock-image-unlocked-groups", "2", "--ckpt-every", "2",
        "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(repo), CUDA_VISIBLE_DEVICES="")

    def run(*extra):
        proc = subprocess.run([*cmd, *extra], cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]

    def losses():
        lines = (out / "run.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        return {r["step"]: r["loss"] for r in recs if r.get("kind") == "step"}

    run()
    first = losses()
    shutil.rmtree(out / "ckpt" / "step_000004")
    run("--resume")
    assert losses()[3] == first[3] and losses()[4] == first[4]
