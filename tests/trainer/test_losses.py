"""Distributed contrastive losses equal the single-process loss over the global batch.

The reference is written here from the papers' formulas over the full B × B logit matrix
(Radford 2021 symmetric InfoNCE; Zhai 2023 pairwise sigmoid normalised by the number of
images), independent of trainer.losses. Convention under test (trainer.losses docstrings):
rank r's loss is the mean over its b rows, so mean_r L_r = L; its embedding gradients are
W · dL/d(x_r, y_r) (gather backward = reduce-scatter SUM of all ranks' losses); its logit_scale /
logit_bias gradients average over ranks to dL/d(t', β). Everything in float64, tolerance 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh

from tests.dist_utils import run_distributed
from trainer.losses import clip_loss, create_ring_groups, ring_group_for, siglip_loss
from vlscale.errors import ConfigError

B_LOCAL, DIM = 3, 8
SCALE, BIAS = 1.3, -1.7  # moderate t', β: logits near 0 where every gradient term is visible
TOL = 1e-6
VARIANTS = ("clip", "siglip-gather", "siglip-ring")


def _global_batch(world: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = world * B_LOCAL
    x = F.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=-1)
    y = F.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=-1)
    return x, y


def _reference(variant: str, x, y, world: int) -> dict:
    """Global loss, its gradients, and each rank's share of the loss (rows r·b .. r·b+b-1)."""
    x = x.clone().requires_grad_()
    y = y.clone().requires_grad_()
    s = torch.tensor([SCALE], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([BIAS], dtype=torch.float64, requires_grad=True)
    n = x.shape[0]
    if variant == "clip":
        z = s.exp() * x @ y.T  # (B, B)
        rows = F.cross_entropy(z, torch.arange(n), reduction="none")  # image i vs all texts
        cols = F.cross_entropy(z.T, torch.arange(n), reduction="none")  # text j vs all images
        per_pair = 0.5 * (rows + cols)
    else:
        z = s.exp() * x @ y.T + beta  # (B, B)
        labels = 2 * torch.eye(n, dtype=torch.float64) - 1
        per_pair = -F.logsigmoid(labels * z).sum(dim=1)  # image i against every text
    loss = per_pair.mean()
    loss.backward()
    out = {"loss": loss.detach(), "x": x.grad, "y": y.grad, "scale": s.grad}
    if variant != "clip":
        out["bias"] = beta.grad
    out["rank_losses"] = per_pair.detach().reshape(world, B_LOCAL).mean(dim=1)
    return out


def _local(variant: str, x, y, group) -> dict:
    """One rank's loss and gradients for its slice (x, y are this rank's (b, d) rows)."""
    x = x.clone().requires_grad_()
    y = y.clone().requires_grad_()
    s = torch.tensor([SCALE], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([BIAS], dtype=torch.float64, requires_grad=True)
    if variant == "clip":
        loss = clip_loss(x, y, s, group=group)
    else:
        loss = siglip_loss(x, y, s, beta, group=group, impl=variant.removeprefix("siglip-"))
    loss.backward()
    out = {"loss": loss.detach(), "x": x.grad, "y": y.grad, "scale": s.grad}
    if variant != "clip":
        out["bias"] = beta.grad
    return out


def _rank_body(ctx, x_all, y_all):
    group = ctx.mesh.get_group("dp")
    rows = slice(ctx.rank * B_LOCAL, (ctx.rank + 1) * B_LOCAL)
    out = {v: _local(v, x_all[rows], y_all[rows], group) for v in VARIANTS}
    ring = ring_group_for(group)
    out["ring_group"] = {
        "separate": ring is not group,
        "ranks": dist.get_process_group_ranks(ring),
        "cached": ring_group_for(group) is ring,
    }
    out["ring_p2p"] = _ring_p2p_calls(ctx, group, x_all[rows], y_all[rows])
    # a second step on fresh data must still agree (cached ring group, reused tags)
    out["ring_again"] = _local("siglip-ring", y_all[rows], x_all[rows], group)
    out["gather_again"] = _local("siglip-gather", y_all[rows], x_all[rows], group)
    if ctx.world_size == 4:
        # data-parallel SUBgroups: the "dp" rows {0, 1} and {2, 3} of a 2 × 2 mesh, each pair
        # on the first 2·b rows of the batch; their ring twins come from create_ring_groups
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replica", "dp"))
        create_ring_groups(mesh, "dp")
        sub = slice((ctx.rank % 2) * B_LOCAL, (ctx.rank % 2 + 1) * B_LOCAL)
        dp = mesh.get_group("dp")
        out["subgroup"] = {v: _local(v, x_all[sub], y_all[sub], dp) for v in VARIANTS}
    return out


def _ring_p2p_calls(ctx, group, x, y) -> dict:
    """Which groups the ring's batch_isend_irecv calls used, counted in forward and backward."""
    seen: list[str] = []
    original = dist.batch_isend_irecv

    def spy(ops):
        seen.extend(op.group.group_name for op in ops)
        return original(ops)

    dist.batch_isend_irecv = spy  # this spawned process only
    try:
        x = x.clone().requires_grad_()
        loss = siglip_loss(x, y, torch.zeros(1), torch.zeros(1), group=group, impl="ring")
        forward = len(seen) // 2  # two ops (isend + irecv) per hop
        loss.backward()
    finally:
        dist.batch_isend_irecv = original
    return {
        "groups": set(seen),
        "ring": ring_group_for(group).group_name,
        "main": group.group_name,
        "forward_hops": forward,
        "backward_hops": len(seen) // 2 - forward,
    }


def _assert_matches(per_rank: list[dict], ref: dict, world: int) -> None:
    losses = torch.stack([r["loss"] for r in per_rank])
    torch.testing.assert_close(losses, ref["rank_losses"], atol=TOL, rtol=0)
    torch.testing.assert_close(losses.mean(), ref["loss"], atol=TOL, rtol=0)
    for key in ("x", "y"):
        got = torch.cat([r[key] for r in per_rank]) / world  # undo the sum over ranks' losses
        torch.testing.assert_close(got, ref[key], atol=TOL, rtol=0, msg=f"d/d{key}")
    for key in ("scale", "bias"):
        if key in ref:
            got = torch.stack([r[key] for r in per_rank]).mean(dim=0)  # DDP average
            torch.testing.assert_close(got, ref[key], atol=TOL, rtol=0, msg=f"d/d{key}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_single_process_matches_reference(variant):
    x, y = _global_batch(1, seed=1)
    ref = _reference(variant, x, y, 1)
    _assert_matches([_local(variant, x, y, None)], ref, 1)


@pytest.mark.dist
@pytest.mark.parametrize("world", [2, 4])
def test_distributed_matches_global_reference(world):
    x, y = _global_batch(world, seed=world)
    per_rank = run_distributed(_rank_body, world, x, y)
    for variant in VARIANTS:
        _assert_matches([r[variant] for r in per_rank], _reference(variant, x, y, world), world)
    # second step: texts and images swapped, both SigLIP implementations
    ref_again = _reference("siglip-ring", y, x, world)
    _assert_matches([r["ring_again"] for r in per_rank], ref_again, world)
    _assert_matches([r["gather_again"] for r in per_rank], ref_again, world)
    for r in per_rank:
        assert r["ring_group"] == {"separate": True, "ranks": list(range(world)), "cached": True}
    for r in per_rank:
        p2p = r["ring_p2p"]
        assert p2p["groups"] == {p2p["ring"]} and p2p["ring"] != p2p["main"]
        # forward: W - 1 block hops; backward: W - 1 block hops + W accumulator hops
        assert (p2p["forward_hops"], p2p["backward_hops"]) == (world - 1, 2 * world - 1)
    if world == 4:
        for variant in VARIANTS:
            ref = _reference(variant, x[: 2 * B_LOCAL], y[: 2 * B_LOCAL], 2)
            for pair in (per_rank[:2], per_rank[2:]):
                _assert_matches([r["subgroup"][variant] for r in pair], ref, 2)


def test_ring_matches_gather_in_fp32_from_bf16():
    """Low-precision embeddings are cast up: fp32 loss, both implementations agree."""
    x, y = _global_batch(1, seed=3)
    s, beta = torch.tensor([2.3]), torch.tensor([-10.0])
    ring = siglip_loss(x.bfloat16(), y.bfloat16(), s, beta, impl="ring")
    gather = siglip_loss(x.bfloat16(), y.bfloat16(), s, beta, impl="gather")
    assert ring.dtype == gather.dtype == torch.float32
    torch.testing.assert_close(ring, gather)


def test_ring_gradcheck_single_rank():
    """The analytic block gradients agree with finite differences (t' and β included)."""
    x, y = _global_batch(1, seed=4)
    args = (
        x.requires_grad_(),
        y.requires_grad_(),
        torch.tensor([SCALE], dtype=torch.float64, requires_grad=True),
        torch.tensor([BIAS], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(lambda *a: siglip_loss(*a, impl="ring"), args)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda x, s: siglip_loss(x, x, s, s, impl="chunked"), "loss_impl"),
        (lambda x, s: clip_loss(x, x[:2], s), "embeddings"),
        (lambda x, s: clip_loss(x[0], x[0], s), "embeddings"),
        (lambda x, s: clip_loss(x, x, torch.zeros(2)), "logit_scale"),
        (lambda x, s: siglip_loss(x, x, s, None), "logit_bias"),
    ],
)
def test_bad_input_names_the_field(call, field):
    x = torch.randn(3, 4)
    with pytest.raises(ConfigError) as err:
        call(x, torch.zeros(1))
    assert err.value.field == field
