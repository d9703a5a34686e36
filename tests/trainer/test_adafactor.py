"""Adafactor: equal to torch.optim.Adafactor on one process; under FSDP2 on 2 gloo ranks, equal to
the single-process run with global factored statistics, two all-reduces per step; DCP
checkpoint round-trip; and the trainer end to end with ``--recipe eva-clip --optimizer adafactor``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.dist_utils import run_distributed
from trainer.optim import build_optimizer, build_param_groups
from trainer.optim.adafactor import Adafactor
from vlscale.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------ a model with every case


class _Net(nn.Module):
    """1-D, 2-D and 4-D parameters; dim 0 sizes 3, 5, 1 and 1 do not divide 2 ranks.

    ``head`` (1, 5) leaves rank 1 with zero rows of a row-sharded matrix; ``stem`` (3, 2, 2, 2)
    is a conv weight, factored over its last two dims, sharded over its leading dim.
    """

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 3, kernel_size=2, stride=2)  # weight (3, 2, 2, 2), bias (3,)
        self.fc1 = nn.Linear(12, 5)  # (5, 12), split 3 + 2
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 3, bias=False)  # (3, 5), split 2 + 1
        self.head = nn.Linear(5, 1, bias=False)  # (1, 5), split 1 + 0
        self.logit_scale = nn.Parameter(torch.ones(1))

    def forward(self, x):  # x (B, 2, 4, 4) -> scalar
        h = self.stem(x).flatten(1)  # (B, 3, 2, 2) -> (B, 12)
        h = torch.tanh(self.norm(self.fc1(h)))  # (B, 5)
        out = self.head(h) * self.fc2(h).sum(-1, keepdim=True)  # (B, 1)
        return (out**2).mean() * self.logit_scale[0]


def _net() -> _Net:
    torch.manual_seed(0)
    return _Net().double()


def _batches(steps: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    # scale changes between steps, so that the beta2 schedule and update clipping both matter
    return [torch.randn(8, 2, 4, 4, generator=gen, dtype=torch.float64) * (1 + 3 * (s % 2))
            for s in range(steps)]  # fmt: skip


KW = dict(lr=0.05, weight_decay=0.1)
STEPS = 4


def _reference(steps: int, kw=KW) -> nn.Module:
    """The single-process run with trainer's Adafactor (itself checked against torch's)."""
    model = _net()
    opt = Adafactor(build_param_groups(model, kw["lr"], kw["weight_decay"]), **kw)
    for x in _batches(steps):
        model(x).backward()
        opt.step()
        opt.zero_grad()
    return model


# ------------------------------------------------------------------ single process


@pytest.mark.parametrize(
    "kw",
    [{}, KW, dict(lr=0.3, d=1.5, eps=(1e-20, 1e-2), maximize=True)],
    ids=["defaults", "decay", "clip-eps-maximize"],
)
def test_equals_torch_adafactor_float64(kw):
    a, b = _net(), _net()
    opt_a = Adafactor(a.parameters(), **kw)
    opt_b = torch.optim.Adafactor(b.parameters(), **kw)
    for x in _batches(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(x).backward()
            opt.step()
            opt.zero_grad()
    moved = 0.0
    for (name, p), q, p0 in zip(
        a.named_parameters(), b.parameters(), _net().parameters(), strict=True
    ):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12, msg=name)
        moved = max(moved, (p - p0).abs().max().item())
    assert moved > 1e-3  # the comparison is not between two untouched models
    # same state names and shapes as torch (so that state dicts are interchangeable)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert {n: tuple(v.shape) for n, v in sa[k].items()} == {
            n: tuple(v.shape) for n, v in sb[k].items()
        }
        for n in sa[k]:
            torch.testing.assert_close(sa[k][n], sb[k][n], rtol=1e-12, atol=1e-12)


def test_update_clipping_bounds_the_step():
    # One step from zero state: |u| is elementwise ~1, so RMS(u) ~ 1 and, with d = 1, the step
    # is at most alpha = max(eps2, RMS(w)) * min(lr, 1) in RMS, whatever the gradient scale.
    w0 = torch.full((4, 6), 2.0, dtype=torch.float64)
    for scale in (1e-6, 1.0, 1e6):
        w = nn.Parameter(w0.clone())
        w.grad = scale * torch.randn(4, 6, generator=torch.Generator().manual_seed(3)).double()
        Adafactor([w], lr=0.1).step()
        rms_step = (w.detach() - w0).square().mean().sqrt().item()
        assert rms_step <= 0.1 * 2.0 * (1 + 1e-12)
        assert rms_step > 0.01  # but it moved


def test_bad_hyperparameters_name_the_field():
    p = [nn.Parameter(torch.ones(2, 2))]
    for kwargs, field in [
        (dict(lr=-1.0), "lr"),
        (dict(beta2_decay=0.5), "beta2_decay"),
        (dict(eps=(None, -1.0)), "eps"),
        (dict(d=0.5), "d"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ]:
        with pytest.raises(ConfigError, match=field):
            Adafactor(p, **kwargs)


def test_factory_builds_it_and_ignores_adam_betas():
    model = nn.Linear(3, 2)
    opt = build_optimizer("adafactor", build_param_groups(model, 1e-3, 0.1), betas=(0.9, 0.95))
    assert isinstance(opt, Adafactor)
    assert opt.param_groups[0]["eps"] == (None, 1e-3) and "betas" not in opt.param_groups[0]


# ------------------------------------------------------------------ FSDP2, 2 gloo ranks


def _shard(model: nn.Module, mesh) -> None:
    from torch.distributed.fsdp import fully_shard

    for m in (model.stem, model.fc1, model.fc2, model.head):
        fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)


def _counting_step(opt) -> int:
    """Run ``opt.step()`` and return how many ``dist.all_reduce`` calls it made."""
    calls = []
    original = dist.all_reduce

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counting
    try:
        opt.step()
    finally:
        dist.all_reduce = original
    return len(calls)


def _train_sharded(model, opt, batches, rank, world) -> list[int]:
    per_rank = 8 // world
    counts = []
    for x in batches:
        model(x[rank * per_rank : (rank + 1) * per_rank]).backward()  # mean-reduced grads
        counts.append(_counting_step(opt))
        opt.zero_grad()
    return counts


def _fsdp_body(ctx, steps):
    from torch.distributed.tensor import DTensor

    model = _net()
    _shard(model, ctx.mesh)
    opt = build_optimizer(
        "adafactor", build_param_groups(model, KW["lr"], KW["weight_decay"]), **KW
    )
    counts = _train_sharded(model, opt, _batches(steps), ctx.rank, ctx.world_size)
    full = {n: p.full_tensor() for n, p in model.named_parameters()}
    rows = {n: tuple(p.to_local().shape) for n, p in model.named_parameters()}
    placements = {}
    for n, p in model.named_parameters():
        st = opt.state[p]
        placements[n] = {k: str(v.placements) for k, v in st.items() if isinstance(v, DTensor)}
    return full, counts, rows, placements


@pytest.mark.dist
def test_fsdp2_equals_single_process_with_two_all_reduces_per_step():
    ref = _reference(STEPS)
    results = run_distributed(_fsdp_body, 2, STEPS)
    (_, _, rows1, _), (_, _, rows2, _) = results
    assert rows2["head.weight"] == (0, 5)  # the zero-row case is really exercised
    assert rows1["fc1.weight"] == (3, 12) and rows2["stem.weight"] == (1, 2, 2, 2)
    for full, counts, _, placements in results:
        # round 1: norms + column sums; round 2: update norms of row-sharded matrices
        assert counts == [2] * STEPS
        for name, p in ref.named_parameters():
            torch.testing.assert_close(full[name], p.detach(), rtol=0, atol=1e-10, msg=name)
        assert placements["fc1.weight"] == {"row_var": "(Shard(dim=0),)",
                                            "col_var": "(Replicate(),)"}  # fmt: skip
        assert placements["stem.weight"] == {"row_var": "(Shard(dim=0),)",
                                             "col_var": "(Shard(dim=0),)"}  # fmt: skip
        assert placements["fc1.bias"] == {"variance": "(Shard(dim=0),)"}


def _vectors_only_body(ctx):
    model = _net()
    _shard(model, ctx.mesh)
    for p in model.parameters():  # leave only vectors and the 4-D weight trainable
        p.requires_grad_(p.ndim != 2)
    opt = Adafactor([p for p in model.parameters() if p.requires_grad], lr=0.05)
    counts = _train_sharded(model, opt, _batches(2), ctx.rank, ctx.world_size)
    # tensor-parallel style placements (a column split) are refused, not silently mis-factored
    from torch.distributed.tensor import Shard, distribute_tensor

    col_split = nn.Parameter(distribute_tensor(torch.zeros(4, 4), ctx.mesh, [Shard(1)]))
    try:
        Adafactor([col_split])
        refused = ""
    except ConfigError as exc:
        refused = str(exc)
    return counts, refused


@pytest.mark.dist
def test_fsdp2_without_row_sharded_matrices_needs_one_all_reduce_and_tp_is_refused():
    # vectors and leading-dim-sharded 4-D weights finish locally: the second round is skipped
    for counts, refused in run_distributed(_vectors_only_body, 2):
        assert counts == [1, 1]
        assert "dim 0" in refused


def test_per_shard_factoring_would_differ():
    # Guard that the test above can fail: factoring each row block on its own (what torch's
    # Adafactor would do per shard) gives a different step than factoring the whole matrix.
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    g = (
        torch.randn(5, 4, generator=gen, dtype=torch.float64)
        * torch.tensor([[1.0], [1], [1], [9], [9]]).double()
    )
    whole = nn.Parameter(w0.clone())
    whole.grad = g.clone()
    Adafactor([whole], lr=0.1).step()
    parts = [nn.Parameter(w0[:3].clone()), nn.Parameter(w0[3:].clone())]
    parts[0].grad, parts[1].grad = g[:3].clone(), g[3:].clone()
    Adafactor(parts, lr=0.1).step()
    per_shard = torch.cat([p.detach() for p in parts])
    assert (per_shard - whole.detach()).abs().max() > 1e-3


def _ckpt_body(ctx, root):
    from trainer import checkpoint as C

    def build():
        model = _net()
        _shard(model, ctx.mesh)
        opt = build_optimizer(
            "adafactor", build_param_groups(model, KW["lr"], KW["weight_decay"]), **KW
        )
        return model, opt

    def state_of(model, opt):
        named = dict(model.named_parameters())
        out = {f"param.{n}": p.full_tensor() for n, p in named.items()}
        for n, p in named.items():
            for k, v in opt.state[p].items():
                out[f"state.{n}.{k}"] = v.full_tensor() if hasattr(v, "full_tensor") else v.clone()
        return out

    batches = _batches(4)
    model, opt = build()
    _train_sharded(model, opt, batches[:2], ctx.rank, ctx.world_size)
    C.save_checkpoint(root, 2, model=model, optimizer=opt)
    saved = state_of(model, opt)
    _train_sharded(model, opt, batches[2:3], ctx.rank, ctx.world_size)
    after = {n: p.full_tensor() for n, p in model.named_parameters()}

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    model2, opt2 = build()
    with torch.no_grad():
        for p in model2.parameters():
            p.add_(1.0)
    C.load_checkpoint(root, model=model2, optimizer=opt2)
    loaded = state_of(model2, opt2)
    _train_sharded(model2, opt2, batches[2:3], ctx.rank, ctx.world_size)
    after2 = {n: p.full_tensor() for n, p in model2.named_parameters()}
    return saved, loaded, after, after2


@pytest.mark.dist
def test_fsdp2_checkpoint_round_trip(tmp_path):
    for saved, loaded, after, after2 in run_distributed(_ckpt_body, 2, str(tmp_path)):
        assert saved.keys() == loaded.keys()
        assert any(k.endswith(".col_var") for k in saved)
        for k in saved:
            torch.testing.assert_close(loaded[k], saved[k], rtol=0, atol=0, msg=k)
        for k in after:  # and the next step is the same step
            torch.testing.assert_close(after2[k], after[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------ the trainer end to end


@pytest.mark.dist
def test_trainer_eva_clip_with_adafactor_on_two_ranks(tmp_path):
    from vlscale.records import read_run

    out = tmp_path / "run"
    steps = 6
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node", "2", "-m", "trainer.train", "--model", "tiny-eva", "--recipe",
           "eva-clip", "--optimizer", "adafactor", "--steps", str(steps), "--global-batch", "8",
           "--lr", "1e-2", "--warmup-steps", "1", "--log-every", "1000",
           "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = read_run(out / "run.jsonl")
    assert run.header.recipe.optimizer == "adafactor" and run.header.world_size == 2
    assert [s.step for s in run.steps] == list(range(1, steps + 1))
    assert all(math.isfinite(s.loss) for s in run.steps)
    # the optimizer really stepped: the learnable temperature moved away from its init
    assert abs(run.steps[-1].logit_scale - run.steps[0].logit_scale) > 1e-3
