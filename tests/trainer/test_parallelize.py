"""The wrapping order of trainer.parallelize, pinned on 2 gloo ranks with the real tiny models.

Order under test: meta build -> checkpoint_wrapper per block -> fully_shard per block -> per
tower -> root -> to_empty + init. Checked by module types and nesting, by where parameters live
(DTensor shards on every FSDP unit), and by a forward/backward that must match a single-process
model with the same weights.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from models import build_model, init_weights
from tests.dist_utils import run_distributed
from trainer.parallelize import ParallelPlan, blocks, parallelize, towers
from vlscale.specs import get_model

pytestmark = pytest.mark.dist


def _structure(ctx, preset, sharding, checkpointing):
    torch.manual_seed(0)
    model = build_model(get_model(preset), device="meta")
    plan = ParallelPlan(sharding=sharding, checkpointing=checkpointing)
    parallelize(model, ctx.mesh, plan, torch.device("cpu"), init_weights)
    out = {
        "root_fsdp": isinstance(model, FSDPModule),
        "towers_fsdp": [isinstance(t, FSDPModule) for t in towers(model)],
        "blocks_fsdp": [isinstance(b, FSDPModule) for b in blocks(model)],
        "blocks_ckpt": [isinstance(b, CheckpointWrapper) for b in blocks(model)],
        # the wrapper is inside the FSDP unit: FSDP's class extends the wrapper, and the wrapped
        # block is not an FSDP unit of its own
        "fsdp_outside_ckpt": [
            type(b).__name__ == "FSDPCheckpointWrapper"
            and not isinstance(b._checkpoint_wrapped_module, FSDPModule)
            for b in blocks(model)
        ],
        "logit_shapes": [tuple(model.logit_scale.shape), tuple(model.logit_bias.shape)],
        "all_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "meta_left": any(p.device.type == "meta" for p in model.parameters()),
        "local_numel": sum(p.to_local().numel() for p in model.parameters()),
        "global_numel": sum(p.numel() for p in model.parameters()),
        # the first 2-D weight of the first image block: this rank's initialised shard
        "block_weight_shard": next(
            p.to_local().clone()
            for n, p in model.named_parameters()
            if n.startswith("visual.blocks.0") and p.ndim == 2
        ),
    }
    return out


def test_fsdp_wrapping_order():
    checkpointing = True
    r0, r1 = run_distributed(_structure, 2, "tiny-eva", "fsdp", checkpointing)
    assert r0["root_fsdp"]
    assert all(r0["towers_fsdp"]) and len(r0["towers_fsdp"]) == 2
    assert r0["blocks_fsdp"] and all(r0["blocks_fsdp"])
    assert all(r0["blocks_ckpt"])
    assert all(r0["fsdp_outside_ckpt"])
    assert r0["logit_shapes"] == [(1,), (1,)]
    assert r0["all_dtensor"] and not r0["meta_left"]
    # sharded: each rank holds about half; together exactly the whole model
    assert r0["global_numel"] == r1["global_numel"]
    assert r0["local_numel"] + r1["local_numel"] == r0["global_numel"]
    assert r0["local_numel"] < 0.6 * r0["global_numel"]
    # initialised in place on each rank's shard: the two halves are different draws, not copies
    # (the DTensor RNG on a CPU mesh warns that its support is incomplete)
    a, b = r0["block_weight_shard"], r1["block_weight_shard"]
    n = min(len(a), len(b))
    assert not torch.equal(a[:n], b[:n])
    assert a.std() > 0 and b.std() > 0


def _matches_single_process(ctx, sharding, precision, checkpointing):
    """Same weights, same inputs: distributed embeddings and grads equal one process's."""
    spec = get_model("tiny-clip")
    torch.manual_seed(0)
    ref = build_model(spec, device="cpu")
    model = build_model(spec, device="meta")
    plan = ParallelPlan(sharding=sharding, precision=precision, checkpointing=checkpointing)
    parallelize(model, ctx.mesh, plan, torch.device("cpu"), init_weights)
    # copy the reference weights into the shards (the init itself is not what is tested here)
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            local = p.to_local() if isinstance(p, DTensor) else p
            full = torch.distributed.tensor.distribute_tensor(
                q.detach(), p.device_mesh, p.placements
            )
            local.copy_(full.to_local())
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, 32, 32, generator=g)
    tokens = torch.randint(1, 250, (4, 32), generator=g)
    img, txt = model(images, tokens)
    scale, _ = model.logit_params()
    loss = (img * txt).sum() * scale.float().exp().sum()
    loss.backward()
    ref_img, ref_txt = ref(images, tokens)
    ref_loss = (ref_img * ref_txt).sum() * ref.logit_scale.exp().sum()
    ref_loss.backward()
    grad = {n: p.grad.full_tensor() for n, p in model.named_parameters() if p.grad is not None}
    ref_grad = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    name = "visual.blocks.0.attn.q.weight" if "visual.blocks.0.attn.q.weight" in ref_grad else None
    name = name or next(n for n in ref_grad if n.startswith("visual.blocks.0") and "weight" in n)
    name_d = (
        name.replace("blocks.0.", "blocks.0._checkpoint_wrapped_module.") if checkpointing else name
    )
    return {
        "img_err": (img - ref_img).abs().max().item(),
        "loss": (loss.item(), ref_loss.item()),
        "grad_err": (grad[name_d] - ref_grad[name]).abs().max().item(),
        "grad_scale": (grad["logit_scale"].item(), ref_grad["logit_scale"].item()),
        "grad_ref_max": ref_grad[name].abs().max().item(),
    }


@pytest.mark.parametrize(
    ("sharding", "precision", "checkpointing", "tol"),
    [("fsdp", "fp32", True, 1e-5), ("ddp", "fp32", False, 1e-5), ("fsdp", "bf16", False, 5e-2)],
)
def test_forward_backward_match_single_process(sharding, precision, checkpointing, tol):
    for r in run_distributed(_matches_single_process, 2, sharding, precision, checkpointing):
        assert r["img_err"] < tol
        assert r["loss"][0] == pytest.approx(r["loss"][1], rel=tol, abs=tol)
        # both ranks ran the same inputs, so the averaged gradient equals one process's
        assert r["grad_err"] < tol * max(1.0, r["grad_ref_max"]) * 10
        assert r["grad_scale"][0] == pytest.approx(r["grad_scale"][1], rel=tol * 10, abs=tol)


def _train_one_rank(ctx):
    """Three clipped AdamW steps of tiny-clip on one rank, plain (the default for one fp32 rank)
    and wrapped in FSDP anyway; same seed, same batch."""
    import trainer.parallelize as par
    from trainer.losses import clip_loss

    out = {}
    for wrapped in (False, True):
        torch.manual_seed(0)
        model = build_model(get_model("tiny-clip"), device="meta")
        default = par.needs_wrapping
        par.needs_wrapping = (lambda mesh, plan: True) if wrapped else default
        try:
            parallelize(model, ctx.mesh, ParallelPlan(), torch.device("cpu"), init_weights)
        finally:
            par.needs_wrapping = default
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(1)
        images = torch.randn(4, 3, 32, 32, generator=g)
        tokens = torch.randint(1, 250, (4, 32), generator=g)
        losses = []
        for _ in range(3):
            img, txt = model(images, tokens)
            scale, _ = model.logit_params()
            loss = clip_loss(img, txt, scale, None)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        out[wrapped] = {
            "fsdp": isinstance(model, FSDPModule),
            "dtensor": [isinstance(p, DTensor) for p in model.parameters()],
            "losses": losses,
            "weights": [par.full_value(p).detach().clone() for p in model.parameters()],
        }
    return out


def test_one_fp32_rank_trains_unwrapped_and_exactly_as_fsdp():
    (r,) = run_distributed(_train_one_rank, 1)
    plain, wrapped = r[False], r[True]
    assert not plain["fsdp"] and not any(plain["dtensor"])
    assert wrapped["fsdp"] and all(wrapped["dtensor"])
    # nothing to shard or reduce on one rank: the same init, losses and weights, bit for bit
    assert plain["losses"] == wrapped["losses"]
    assert all(torch.equal(a, b) for a, b in zip(plain["weights"], wrapped["weights"], strict=True))


@pytest.mark.parametrize(
    ("world", "precision", "wraps"),
    [(1, "fp32", False), (1, "bf16", True), (1, "fp16", True), (2, "fp32", True)],
)
def test_wrapping_needed_for_several_ranks_or_mixed_precision(world, precision, wraps):
    from types import SimpleNamespace

    from trainer.parallelize import needs_wrapping

    mesh = SimpleNamespace(size=lambda: world)
    for sharding in ("fsdp", "ddp"):
        assert needs_wrapping(mesh, ParallelPlan(sharding=sharding, precision=precision)) is wraps
