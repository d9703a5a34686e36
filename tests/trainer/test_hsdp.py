"""HSDP in the trainer: ``--sharding hsdp --shard-size 2`` on 4 gloo ranks (a 2 x 2 mesh).

One spawn of 4 ranks trains the tiny OpenCLIP fixture four ways with the same seed, data and
initial weights (process start-up dominates on CPU, so the runs share it):

- ``fsdp``: the reference, sharded over all 4 ranks;
- ``hsdp``: shard groups {0, 1} and {2, 3}, replicated across them, a checkpoint every 2 steps;
- ``hsdp-keep``: the same with ``--no-reshard-after-forward``, and an evaluation at the end
  (``encode_image`` / ``encode_text`` as FSDP forward methods on the 2-D mesh);
- ``hsdp-resumed``: a new launch resumed from ``hsdp``'s checkpoint of step 2 (DCP under HSDP);
- ``siglip-gather`` / ``siglip-ring``: tiny-siglip under HSDP with either sigmoid loss: the ring's
  W - 1 hops go around all 4 ranks, so it computes what the world gather computes.

HSDP reduces gradients in two stages (reduce-scatter in the shard group, all-reduce across the
replicas) where FSDP reduce-scatters once over the world, so the sums are ordered differently:
the losses agree to float rounding, not bit for bit. The CLIP loss gathers the embeddings of
every rank (the world group), not of the shard group: with the shard group's 4 rows instead of
the world's 8 the losses would differ at the first step. A resume reproduces the straight run
bit for bit; the SIGKILL variant is ``tests/trainer/test_resume.py``.

The weights come from a file (``--init-from``) because a seeded initialisation is drawn shard by
shard on a CPU mesh (DTensor's RNG has no CPU support), so it depends on the shard layout: FSDP's
4 shards and HSDP's 2 start from different weights. Checkpoints, not seeds, carry exact weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.dist_utils import run_distributed
from trainer.checkpoint import step_dir
from vlscale.records import read_run

pytest.importorskip("safetensors.torch")

TINY = Path(__file__).parents[1] / "fixtures" / "openclip" / "tiny_clip"
STEPS = 4
COMMON = ["--model", str(TINY / "open_clip_config.json"), "--init-from",
          str(TINY / "weights.safetensors"), "--steps", str(STEPS), "--global-batch", "8",
          "--lr", "1e-3", "--warmup-steps", "1", "--log-every", "1000", "--seed", "5",
          "--peak-flops", "1e11"]  # fmt: skip
HSDP = ["--sharding", "hsdp", "--shard-size", "2"]
RUNS = {
    "fsdp": ["--sharding", "fsdp"],
    "hsdp": [*HSDP, "--ckpt-every", "2"],
    "hsdp-keep": [*HSDP, "--no-reshard-after-forward", "--eval-every", str(STEPS)],
}
SIGLIP = ["--model", "tiny-siglip", "--recipe", "siglip", "--steps", "2", "--global-batch", "8",
          "--warmup-steps", "1", "--log-every", "1000", "--seed", "5", "--peak-flops", "1e11",
          *HSDP]  # fmt: skip

pytestmark = pytest.mark.dist


def _train_all(ctx, out_root):
    import trainer.train as entry
    from trainer.cli_args import load_config

    for name, argv in RUNS.items():
        cfg = load_config([*COMMON, *argv, "--out", f"{out_root}/{name}"], world_size=4)
        entry.train(cfg, torch.device("cpu"), ctx.mesh, "gloo")
    resume = str(step_dir(f"{out_root}/hsdp", 2))
    argv = [*COMMON, *HSDP, "--out", f"{out_root}/hsdp-resumed", "--resume", resume]
    entry.train(load_config(argv, world_size=4), torch.device("cpu"), ctx.mesh, "gloo")
    for impl in ("gather", "ring"):
        argv = [*SIGLIP, "--loss-impl", impl, "--out", f"{out_root}/siglip-{impl}"]
        entry.train(load_config(argv, world_size=4), torch.device("cpu"), ctx.mesh, "gloo")
    return ctx.rank


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out_root = tmp_path_factory.mktemp("hsdp")
    assert run_distributed(_train_all, 4, str(out_root), timeout=600) == [0, 1, 2, 3]
    names = [*RUNS, "hsdp-resumed", "siglip-gather", "siglip-ring"]
    return {name: read_run(out_root / name / "run.jsonl") for name in names}


def _losses(run) -> dict[int, float]:
    return {s.step: s.loss for s in run.steps}


def test_hsdp_losses_match_fsdp(runs):
    fsdp, hsdp = _losses(runs["fsdp"]), _losses(runs["hsdp"])
    assert sorted(fsdp) == sorted(hsdp) == list(range(1, STEPS + 1))
    assert fsdp[1] == hsdp[1]  # same init, same batch, nothing reduced yet
    torch.testing.assert_close(
        torch.tensor(list(hsdp.values())), torch.tensor(list(fsdp.values())), rtol=1e-5, atol=1e-6
    )
    # resharding after forward or not changes memory, never the numbers
    assert _losses(runs["hsdp-keep"]) == hsdp
    assert [e.step for e in runs["hsdp-keep"].evals] == [STEPS]


def test_hsdp_resumes_bit_identically(runs):
    straight, resumed = _losses(runs["hsdp"]), _losses(runs["hsdp-resumed"])
    assert sorted(resumed) == list(range(3, STEPS + 1))
    assert all(resumed[s] == straight[s] for s in resumed), (resumed, straight)


def test_header_carries_the_layout_as_it_ran(runs):
    h = runs["hsdp"].header
    assert h.sharding == "hsdp" and h.wrapped is True and h.world_size == 4
    layout = h.layout
    assert (layout.devices, layout.sharding, layout.shard_size) == (4, "hsdp", 2)
    assert (layout.shard_group, layout.replicas, layout.precision) == (2, 2, "fp32")
    assert layout.reshard_after_forward
    assert not runs["hsdp-keep"].header.layout.reshard_after_forward
    assert runs["fsdp"].header.layout.sharding == "fsdp"
    # the flat config keeps the layout's fields where readers of older records look
    assert h.config["sharding"] == "hsdp" and h.config["shard_size"] == 2
    assert "layout" not in h.config


def test_siglip_ring_spans_the_world_under_hsdp(runs):
    gather, ring = _losses(runs["siglip-gather"]), _losses(runs["siglip-ring"])
    assert sorted(gather) == sorted(ring) == [1, 2]
    for step in (1, 2):
        assert ring[step] == pytest.approx(gather[step], rel=1e-5)
