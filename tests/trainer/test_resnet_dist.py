"""A ResNet image tower (tiny-rn) trains under FSDP2 and DDP on 2 gloo ranks, with the CLIP and
SigLIP losses, exactly as one process that normalises each rank's half of the batch on its own.

Batch norm stays per rank (no SyncBatchNorm, as OpenCLIP): each rank normalises by its local
batch's statistics. The reference therefore runs the image tower once per rank's half, then the
loss over the global batch (mean_r L_r = L for both losses: ``trainer/losses``). Each rank's
running statistics are its own.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from models import build_model, init_weights
from tests.dist_utils import run_distributed
from trainer.losses.clip import clip_loss
from trainer.losses.siglip import siglip_loss
from trainer.parallelize import blocks, full_value, parallelize
from vlscale.specs import get_model
from vlscale.specs.layout import RunLayout

pytestmark = pytest.mark.dist

WORLD, LOCAL_BATCH, STEPS, LR = 2, 4, 3, 1e-3
LOSSES = ("clip", "siglip")


def _layout(ctx, precision: str = "fp32", **fields) -> RunLayout:
    """The resolved layout of this gloo world (one node)."""
    return RunLayout(devices=ctx.world_size, precision=precision, **fields).resolved(precision, 1)


def _batch():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(WORLD * LOCAL_BATCH, 3, 64, 64, generator=g)
    tokens = torch.randint(1, 250, (WORLD * LOCAL_BATCH, 32), generator=g)
    return images, tokens


def _loss(name, img, txt, scale, bias):
    return clip_loss(img, txt, scale) if name == "clip" else siglip_loss(img, txt, scale, bias)


def _grad(g):
    """The whole gradient (None for logit_bias under the CLIP loss)."""
    return None if g is None else full_value(g).clone()


def _reference(loss_name):
    """One process, same init: each rank's half through the image tower on its own."""
    torch.manual_seed(0)
    model = build_model(get_model("tiny-rn"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    images, tokens = _batch()
    losses = []
    for _ in range(STEPS):
        halves = images.split(LOCAL_BATCH)
        img = torch.cat([model.encode_image(h) for h in halves])
        txt = model.encode_text(tokens)
        loss = _loss(loss_name, img, txt, model.logit_scale, model.logit_bias)
        loss.backward()
        if not losses:
            grads = [_grad(p.grad) for p in model.parameters()]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses, grads


def _train(ctx, sharding, checkpointing):
    spec = get_model("tiny-rn")
    out = {}
    for loss_name in LOSSES:
        torch.manual_seed(0)
        ref = build_model(spec)
        model = build_model(spec, device="meta")
        plan = _layout(ctx, sharding=sharding, checkpointing=checkpointing)
        parallelize(model, ctx.mesh, plan, torch.device("cpu"), init_weights)
        with torch.no_grad():  # the reference's init in every shard (init is not under test)
            for p, q in zip(model.parameters(), ref.parameters(), strict=True):
                full = distribute_tensor(q.detach(), p.device_mesh, p.placements)
                p.to_local().copy_(full.to_local())
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        images, tokens = _batch()
        rows = slice(ctx.rank * LOCAL_BATCH, (ctx.rank + 1) * LOCAL_BATCH)
        losses = []
        for _ in range(STEPS):
            img, txt = model(images[rows], tokens[rows])
            scale, bias = model.logit_params()
            loss = _loss(loss_name, img, txt, scale, bias)
            loss.backward()
            if not losses:
                grads = [_grad(p.grad) for p in model.parameters()]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        image_blocks = list(model.visual.blocks)
        out[loss_name] = {
            "losses": losses,
            "grads": grads,
            "running_mean": model.visual.blocks[0].bn1.running_mean.clone(),
            "buffers_plain": not any(isinstance(b, DTensor) for b in model.buffers()),
            "block_units": [isinstance(b, FSDPModule) for b in image_blocks],
            "block_ckpt": [isinstance(b, CheckpointWrapper) for b in image_blocks],
            "n_blocks": len(list(blocks(model))),
        }
    return out


@pytest.mark.parametrize(("sharding", "checkpointing"), [("fsdp", True), ("ddp", False)])
def test_resnet_trains_on_two_ranks_as_one_process(sharding, checkpointing):
    per_rank = run_distributed(_train, WORLD, sharding, checkpointing, timeout=300)
    for loss_name in LOSSES:
        ref_losses, ref_grads = _reference(loss_name)
        assert ref_losses[-1] < ref_losses[0]  # it learns the batch
        for r in per_rank:
            got = r[loss_name]
            # one FSDP unit (replicate unit for ddp) per bottleneck, checkpointed when asked
            assert got["n_blocks"] == 4 + 2 and all(got["block_units"])
            assert all(got["block_ckpt"]) == checkpointing
            assert got["buffers_plain"]
            # the first step's gradients, every parameter (then Adam's steps: the losses below)
            for a, b in zip(got["grads"], ref_grads, strict=True):
                assert (a is None) == (b is None)
                if b is not None:
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())
        # each rank's loss is its rows' L_r, and mean_r L_r = L (trainer/losses)
        mean_losses = [
            sum(r[loss_name]["losses"][i] for r in per_rank) / WORLD for i in range(STEPS)
        ]
        assert mean_losses == pytest.approx(ref_losses, rel=1e-5, abs=1e-6)
        # batch-norm statistics are per rank: each rank saw its own half of the batch
        r0, r1 = (r[loss_name]["running_mean"] for r in per_rank)
        assert not torch.equal(r0, r1)


def _bf16_step(ctx):
    """One CLIP step in bf16 (FSDP2 casts parameters, not the batch-norm statistics)."""
    torch.manual_seed(0)
    ref = build_model(get_model("tiny-rn"))
    model = build_model(get_model("tiny-rn"), device="meta")
    plan = _layout(ctx, sharding="fsdp", precision="bf16", checkpointing=True)
    parallelize(model, ctx.mesh, plan, torch.device("cpu"), init_weights)
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            p.to_local().copy_(
                distribute_tensor(q.detach(), p.device_mesh, p.placements).to_local()
            )
    images, tokens = _batch()
    rows = slice(ctx.rank * LOCAL_BATCH, (ctx.rank + 1) * LOCAL_BATCH)
    img, txt = model(images[rows], tokens[rows])
    scale, bias = model.logit_params()
    loss = _loss("clip", img, txt, scale, bias)
    loss.backward()
    return {
        "loss": loss.item(),
        "grads_finite": all(
            p.grad.isfinite().all() for p in model.parameters() if p.grad is not None
        ),
        "stats_dtype": model.visual.blocks[0].bn1.running_mean.dtype,
    }


def test_resnet_trains_in_bf16_under_fsdp():
    per_rank = run_distributed(_bf16_step, WORLD, timeout=300)
    ref_losses, _ = _reference("clip")
    assert sum(r["loss"] for r in per_rank) / WORLD == pytest.approx(ref_losses[0], rel=5e-2)
    assert all(r["grads_finite"] and r["stats_dtype"] == torch.float32 for r in per_rank)


def _fsdp_model(ctx):
    torch.manual_seed(0)
    ref = build_model(get_model("tiny-rn"))
    model = build_model(get_model("tiny-rn"), device="meta")
    parallelize(model, ctx.mesh, _layout(ctx, sharding="fsdp"), torch.device("cpu"), init_weights)
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            p.to_local().copy_(
                distribute_tensor(q.detach(), p.device_mesh, p.placements).to_local()
            )
    return model, torch.optim.AdamW(model.parameters(), lr=LR)


def _clip_steps(ctx, model, optimizer, first: int, n: int) -> list[float]:
    """Steps ``first`` .. ``first + n - 1``, each on its own noisy copy of this rank's rows."""
    images, tokens = _batch()
    rows = slice(ctx.rank * LOCAL_BATCH, (ctx.rank + 1) * LOCAL_BATCH)
    losses = []
    for step in range(first, first + n):
        noise = torch.randn(images[rows].shape, generator=torch.Generator().manual_seed(step))
        img, txt = model(images[rows] + 0.1 * noise, tokens[rows])
        scale, bias = model.logit_params()
        loss = _loss("clip", img, txt, scale, bias)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def _state(model):
    return [full_value(p).detach().clone() for p in model.parameters()], [
        b.clone() for b in model.buffers()
    ]


def _stop_and_resume(ctx, run_dir):
    from trainer.checkpoint import load_checkpoint, save_checkpoint

    model, optimizer = _fsdp_model(ctx)
    _clip_steps(ctx, model, optimizer, 0, 2)
    save_checkpoint(run_dir, 2, model=model, optimizer=optimizer)
    saved_stats = model.visual.blocks[0].bn1.running_mean.clone()
    straight = _clip_steps(ctx, model, optimizer, 2, 2), _state(model)
    model, optimizer = _fsdp_model(ctx)
    load_checkpoint(run_dir, model=model, optimizer=optimizer)
    resumed = _clip_steps(ctx, model, optimizer, 2, 2), _state(model)
    return {"straight": straight, "resumed": resumed, "saved_stats": saved_stats}


def test_resnet_resumes_bit_identically(tmp_path):
    per_rank = run_distributed(_stop_and_resume, WORLD, str(tmp_path), timeout=300)
    for r in per_rank:
        (losses, (params, buffers)), (losses2, (params2, buffers2)) = r["straight"], r["resumed"]
        assert losses == losses2
        assert all(torch.equal(a, b) for a, b in zip(params, params2, strict=True))
        # batch-norm statistics included: the checkpoint holds their mean over the ranks, and
        # the run that was never stopped continues from that same mean
        assert all(torch.equal(a, b) for a, b in zip(buffers, buffers2, strict=True))
    assert torch.equal(per_rank[0]["saved_stats"], per_rank[1]["saved_stats"])
