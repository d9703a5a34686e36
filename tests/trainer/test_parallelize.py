"""The wrapping order of trainer.parallelize, pinned on 2 gloo ranks with the real tiny models
(and on 4 for HSDP's 2 x 2 mesh).

Order under test: meta build -> checkpoint_wrapper per block -> fully_shard per block -> per
tower -> root -> to_empty + init. Checked by module types and nesting, by where parameters live
(DTensor shards on every FSDP unit; under HSDP replicated over the first mesh dim and sharded over
the second), and by a forward/backward that must match a single-process model with the same
weights. The layout (``RunLayout``) says what is wrapped; ``layout.wrapped`` is the one-rank rule.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from models import build_model, init_weights
from tests.dist_utils import run_distributed
from trainer.parallelize import blocks, build_mesh, parallelize, towers
from vlscale.specs import get_model
from vlscale.specs.layout import RunLayout

pytestmark = pytest.mark.dist


def _layout(ctx, **fields) -> RunLayout:
    return RunLayout(devices=ctx.world_size, precision="fp32", **fields).resolved("fp32", 1)


def _structure(ctx, preset, sharding, checkpointing, shard_size=None):
    torch.manual_seed(0)
    model = build_model(get_model(preset), device="meta")
    layout = _layout(ctx, sharding=sharding, checkpointing=checkpointing, shard_size=shard_size)
    mesh = build_mesh(layout, "cpu")
    parallelize(model, mesh, layout, torch.device("cpu"), init_weights)
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
        "placements": {str(p.placements) for p in model.parameters()},
        "mesh_shape": tuple(mesh.shape),
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
    layout = RunLayout(
        devices=ctx.world_size, sharding=sharding, precision=precision, checkpointing=checkpointing
    )
    parallelize(model, ctx.mesh, layout, torch.device("cpu"), init_weights)
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
        layout = _layout(ctx, wrap_one_rank=wrapped)  # one fp32 rank: wrapped only if asked
        assert layout.wrapped is wrapped
        parallelize(model, ctx.mesh, layout, torch.device("cpu"), init_weights)
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
    for sharding in ("fsdp", "ddp", "hsdp"):
        layout = RunLayout(devices=world, sharding=sharding, precision=precision)
        assert layout.resolved(precision, 1).wrapped is wraps


def test_trainer_config_keeps_one_fp32_rank_unwrapped():
    """The trainer's resolved layout (fp32 by default, one rank without torchrun) is unwrapped,
    and ``--wrap-one-rank`` wraps it, as the planner's ``wrapped`` reads it."""
    from trainer.cli_args import load_config

    assert load_config([], world_size=1).layout.wrapped is False
    assert load_config(["--wrap-one-rank"], world_size=1).layout.wrapped is True
    assert load_config(["--precision", "bf16"], world_size=1).layout.wrapped is True
    assert load_config(["--global-batch", "8"], world_size=2).layout.wrapped is True


def test_hsdp_wrapping_order_on_a_2x2_mesh():
    """HSDP is the FSDP wrapping on a 2-D mesh: the same units in the same order; every
    parameter replicated over ``replicate`` and sharded over ``shard``; shard groups {0, 1} and
    {2, 3} hold the same shards, and a shard group together holds the whole model."""
    rs = run_distributed(_structure, 4, "tiny-eva", "hsdp", True, 2, timeout=240)
    r0 = rs[0]
    assert r0["mesh_shape"] == (2, 2)
    assert r0["root_fsdp"] and all(r0["towers_fsdp"]) and all(r0["blocks_fsdp"])
    assert all(r0["blocks_ckpt"]) and all(r0["fsdp_outside_ckpt"])
    assert r0["all_dtensor"] and not r0["meta_left"]
    assert r0["placements"] == {"(Replicate(), Shard(dim=0))"}
    assert rs[0]["local_numel"] + rs[1]["local_numel"] == r0["global_numel"]
    # replicas: rank 2 holds rank 0's shard, rank 3 rank 1's (the same draw on every replica)
    assert rs[0]["local_numel"] == rs[2]["local_numel"]
    assert torch.equal(rs[0]["block_weight_shard"], rs[2]["block_weight_shard"])
    assert torch.equal(rs[1]["block_weight_shard"], rs[3]["block_weight_shard"])
    assert not torch.equal(rs[0]["block_weight_shard"], rs[1]["block_weight_shard"])
