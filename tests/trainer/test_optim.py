"""Parameter groups, LAMB (single process and FSDP2 on 2 gloo ranks), factory and lr schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.dist_utils import run_distributed
from trainer.optim import Adafactor, Lamb, build_optimizer, build_param_groups, build_scheduler
from vlscale.errors import ConfigError

# ---------------------------------------------------------------- parameter groups


def _tiny_model():
    from models import build_model
    from vlscale.specs.presets import get_model

    return build_model(get_model("tiny-clip"), device="meta")


def test_param_groups_partition_towers_and_decay():
    model = _tiny_model()
    groups = build_param_groups(model, lr=1e-3, weight_decay=0.2, image_lr=2e-3, text_lr=5e-4)
    by_id = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in by_id, "a parameter is in two groups"
            by_id[id(p)] = g
    named = dict(model.named_parameters())
    assert set(by_id) == {id(p) for p in named.values()}  # every parameter exactly once
    for name, p in named.items():
        g = by_id[id(p)]
        tower = name.split(".")[0]
        expected_lr = {"visual": 2e-3, "text": 5e-4}.get(tower, 1e-3)
        assert g["lr"] == expected_lr, name
        leaf = name.split(".")[-1]
        no_decay = (
            p.ndim < 2
            or leaf in ("cls_token", "pos_embed", "query", "logit_scale", "logit_bias")
            or "token_embedding" in name
            or "norm" in name
        )
        assert (g["weight_decay"] == 0.0) == no_decay, name
    assert any(g["weight_decay"] == 0.2 for g in groups)


def test_param_groups_bad_input():
    model = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="lr"):
        build_param_groups(model, lr=0.0, weight_decay=0.1)
    with pytest.raises(ConfigError, match="weight_decay"):
        build_param_groups(model, lr=1e-3, weight_decay=-1)
    model.requires_grad_(False)
    with pytest.raises(ConfigError, match="model"):
        build_param_groups(model, lr=1e-3, weight_decay=0.1)


# ---------------------------------------------------------------- LAMB, single process


def _lamb_reference(ws, gs_per_step, lr, betas, eps, wd):
    """Plain-python transcription of You et al. 2020 Algorithm 2 (float64, bias-corrected)."""
    b1, b2 = betas
    ws = [w.clone() for w in ws]
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    for t, gs in enumerate(gs_per_step, start=1):
        for i, (w, g) in enumerate(zip(ws, gs, strict=True)):
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            m_hat = ms[i] / (1 - b1**t)
            v_hat = vs[i] / (1 - b2**t)
            u = m_hat / (torch.sqrt(v_hat) + eps) + wd * w
            wn, un = math.sqrt(float((w * w).sum())), math.sqrt(float((u * u).sum()))
            r = wn / un if wn > 0 and un > 0 else 1.0
            ws[i] = w - lr * r * u
    return ws


def test_lamb_matches_reference_formula():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (2, 2)]
    ws = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    ws[2].zero_()  # ||w|| = 0 -> trust ratio 1
    steps = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(3)]
    lr, betas, eps, wd = 0.01, (0.9, 0.95), 1e-6, 0.1
    params = [nn.Parameter(w.clone()) for w in ws]
    opt = Lamb(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for gs in steps:
        for p, g in zip(params, gs, strict=True):
            p.grad = g.clone()
        opt.step()
    expected = _lamb_reference(ws, steps, lr, betas, eps, wd)
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=1e-12)


def test_lamb_trust_ratio_one_when_update_is_zero():
    w = nn.Parameter(torch.tensor([3.0, 4.0], dtype=torch.float64))
    w.grad = torch.zeros_like(w)
    Lamb([w], lr=0.1, weight_decay=0.0).step()  # u = 0: nothing moves, and no nan
    assert torch.equal(w.detach(), torch.tensor([3.0, 4.0], dtype=torch.float64))


def test_lamb_step_size_is_lr_times_weight_norm():
    # With r = ||w|| / ||u||, the step lr * r * u has norm exactly lr * ||w||, whatever g is.
    w0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    w = nn.Parameter(w0.clone())
    w.grad = torch.tensor([[1e-3, 5.0], [-7.0, 0.2]], dtype=torch.float64)
    Lamb([w], lr=0.05).step()
    step_norm = (w.detach() - w0).norm()
    torch.testing.assert_close(step_norm, 0.05 * w0.norm())


def test_lamb_group_without_trust_ratio_and_trust_clip():
    g = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    w0 = torch.tensor([10.0, 20.0, -5.0], dtype=torch.float64)
    plain, clipped = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    plain.grad, clipped.grad = g.clone(), g.clone()
    Lamb([{"params": [plain], "trust_ratio": False}], lr=0.1, eps=1e-12).step()
    # first bias-corrected Adam step: u = g / |g| = sign(g); no trust ratio -> w - lr * sign(g)
    torch.testing.assert_close(plain.detach(), w0 - 0.1 * g.sign())
    Lamb([clipped], lr=0.1, eps=1e-12, trust_clip=2.0).step()  # ||w|| / ||u|| ~ 13 -> capped
    torch.testing.assert_close(clipped.detach(), w0 - 0.1 * 2.0 * g.sign())


def test_lamb_bad_hyperparameters():
    p = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ConfigError, match="betas"):
        Lamb(p, betas=(0.9, 1.0))
    with pytest.raises(ConfigError, match="lr"):
        Lamb(p, lr=-1.0)


# ---------------------------------------------------------------- LAMB under FSDP2


class _Net(nn.Module):
    """Uneven shards on purpose: dim 0 of 3 and of 1 over 2 ranks."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 3)
        self.logit_scale = nn.Parameter(torch.ones(1))

    def forward(self, x):  # (B, 6) -> scalar
        return (self.fc2(torch.tanh(self.norm(self.fc1(x)))) ** 2).mean() * self.logit_scale[0]


def _data(steps):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(8, 6, generator=gen, dtype=torch.float64) for _ in range(steps)]


def _net():
    torch.manual_seed(0)
    return _Net().double()


LAMB_KW = dict(lr=0.02, betas=(0.9, 0.95), eps=1e-6)


def _fsdp_lamb_body(ctx, steps):
    from torch.distributed.fsdp import fully_shard

    model = _net()
    fully_shard(model.fc1, mesh=ctx.mesh)
    fully_shard(model.fc2, mesh=ctx.mesh)
    fully_shard(model, mesh=ctx.mesh)
    opt = Lamb(build_param_groups(model, LAMB_KW["lr"], 0.05), **LAMB_KW)
    half = 8 // ctx.world_size
    counts = []
    original = dist.all_reduce
    for x in _data(steps):
        model(x[ctx.rank * half : (ctx.rank + 1) * half]).backward()  # mean-reduced grads
        calls = []

        def counting(*args, _calls=calls, **kwargs):
            _calls.append(1)
            return original(*args, **kwargs)

        dist.all_reduce = counting
        try:
            opt.step()
        finally:
            dist.all_reduce = original
        opt.zero_grad()
        counts.append(len(calls))
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    return full, counts


@pytest.mark.dist
def test_lamb_fsdp2_matches_single_process_with_one_all_reduce():
    steps = 3
    ref = _net()
    opt = Lamb(build_param_groups(ref, LAMB_KW["lr"], 0.05), **LAMB_KW)
    for x in _data(steps):
        ref(x).backward()
        opt.step()
        opt.zero_grad()
    results = run_distributed(_fsdp_lamb_body, 2, steps)
    for full, counts in results:
        assert counts == [1] * steps  # one all-reduce per step for all norms
        for name, p in ref.named_parameters():
            torch.testing.assert_close(full[name], p.detach(), rtol=0, atol=1e-10, msg=name)


# ---------------------------------------------------------------- factory and schedule


def test_build_optimizer_kinds():
    model = nn.Linear(3, 2)
    groups = build_param_groups(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(build_optimizer("adamw", groups), torch.optim.AdamW)
    lamb = build_optimizer("lamb", groups, betas=(0.9, 0.95))
    assert isinstance(lamb, Lamb) and lamb.param_groups[0]["betas"] == (0.9, 0.95)
    assert isinstance(build_optimizer("adafactor", groups), Adafactor)
    with pytest.raises(ConfigError, match="optimizer"):
        build_optimizer("sgd-of-the-future", groups)


def _lrs(warmup, total, min_ratio, peak=1.0, n=None):
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak)
    sched = build_scheduler(opt, warmup, total, min_ratio)
    out = []
    for _ in range(n or total + 3):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_shape():
    warmup, total, m = 5, 25, 0.1
    lrs = _lrs(warmup, total, m, peak=2.0)
    assert all(a < b for a, b in itertools.pairwise(lrs[:warmup]))  # warm up
    assert lrs[warmup - 1] == pytest.approx(2.0)  # peak reached at the end of warmup
    decay = lrs[warmup - 1 : total + 1]
    assert all(a >= b for a, b in itertools.pairwise(decay))  # then never rises
    mid = warmup + (total - warmup) // 2  # cosine half-way: halfway between peak and floor
    assert lrs[mid] == pytest.approx(2.0 * (1 + m) / 2)
    assert lrs[total:] == pytest.approx([2.0 * m] * 3)  # floor after the end


def test_schedule_resumes_from_state_dict():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, 3, 20, 0.0)
    for _ in range(7):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = build_scheduler(opt2, 3, 20, 0.0)
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]  # the optimizer's lr is in its own state
    for _ in range(4):
        opt.step()
        sched.step()
        opt2.step()
        sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


@pytest.mark.parametrize(
    "args, field",
    [((0, 0, 0.0), "total_steps"), ((11, 10, 0.0), "warmup_steps"), ((1, 10, 1.5), "min_lr")],
)
def test_schedule_bad_input(args, field):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match=field):
        build_scheduler(opt, *args)
