"""Checkpoint save, load, find_latest, load_image_tower: single process and FSDP2 on 2 ranks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.dist_utils import DistContext, run_distributed
from trainer import checkpoint as C
from vlscale.errors import ConfigError

# ----------------------------------------------------------------------------- stand-ins


class _TwoTower(nn.Module):
    """Smallest module with the real naming: ``visual.*``, ``text.*``, shape-(1,) logit params."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.visual = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.text = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.logit_scale = nn.Parameter(torch.ones(1))

    def forward(self, x):  # (B, d) -> scalar
        return (self.visual(x) * self.text(x)).sum() * self.logit_scale.sum() / x.numel()


class _Loader:
    """Stand-in data position: a counter with state_dict / load_state_dict."""

    def __init__(self):
        self.pos = 0

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def _build(seed: int, fsdp_mesh=None):
    torch.manual_seed(seed)
    model = _TwoTower()
    if fsdp_mesh is not None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.visual, mesh=fsdp_mesh)
        fully_shard(model.text, mesh=fsdp_mesh)
        fully_shard(model, mesh=fsdp_mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return model, opt, sched, _Loader()


def _train(model, opt, sched, loader, steps: int, rank: int = 0) -> list[float]:
    losses = []
    for _ in range(steps):
        g = torch.Generator().manual_seed(1000 * rank + loader.pos)
        loss = model(torch.randn(4, 8, generator=g))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        loader.pos += 1
        losses.append(loss.item())
    return losses


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach().clone()


def _snapshot(model, opt, sched, loader) -> dict:
    """Everything a resume must reproduce, as plain full tensors."""
    names = {p: n for n, p in model.named_parameters()}
    return {
        "params": {n: _full(p) for n, p in model.named_parameters()},
        "moments": {
            (names[p], k): _full(v)
            for p, s in opt.state.items()
            for k, v in s.items()
            if k in ("exp_avg", "exp_avg_sq", "step")
        },
        "sched": sched.state_dict(),
        "lr": opt.param_groups[0]["lr"],
        "loader": loader.state_dict(),
    }


def _draw_rng() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3)


def _assert_same(a: dict, b: dict) -> None:
    assert a["params"].keys() == b["params"].keys()
    for k in a["params"]:
        assert torch.equal(a["params"][k], b["params"][k]), k
    assert a["moments"].keys() == b["moments"].keys() and a["moments"]
    for k in a["moments"]:
        assert torch.equal(a["moments"][k], b["moments"][k]), k
    assert a["sched"] == b["sched"] and a["lr"] == b["lr"] and a["loader"] == b["loader"]


# ----------------------------------------------------------------------------- single process


def test_round_trip_restores_params_moments_scheduler_data_and_rng(tmp_path):
    model, opt, sched, loader = _build(0)
    _train(model, opt, sched, loader, 3)
    C.save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched,
                      loader=loader, samples_seen=12)  # fmt: skip
    want, draws = _snapshot(model, opt, sched, loader), _draw_rng()
    want_next = _train(model, opt, sched, loader, 2)

    model2, opt2, sched2, loader2 = _build(1)  # different init: load must overwrite it all
    assert not torch.equal(model2.visual[0].weight, want["params"]["visual.0.weight"])
    info = C.load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2,
                             loader=loader2)  # fmt: skip
    assert (info.step, info.samples_seen, info.world_size) == (3, 12, 1)
    _assert_same(want, _snapshot(model2, opt2, sched2, loader2))
    d2 = _draw_rng()
    assert d2[0] == draws[0] and d2[1] == draws[1] and torch.equal(d2[2], draws[2])
    assert _train(model2, opt2, sched2, loader2, 2) == want_next


def test_find_latest_skips_temp_and_unmarked_dirs(tmp_path):
    assert C.find_latest(tmp_path) is None
    model, opt, *_ = _build(0)
    C.save_checkpoint(tmp_path, 2, model=model, optimizer=opt)
    C.save_checkpoint(tmp_path, 5, model=model, optimizer=opt)
    root = tmp_path / "ckpt"
    (root / "step_000009.tmp").mkdir()  # a save in progress / crashed
    (root / "step_000007").mkdir()  # final name but no marker (e.g. copied by hand, half done)
    (root / "step_000008").mkdir()
    (root / "step_000008" / "COMPLETE.part123").write_text("{}")  # marker never replaced in
    assert C.find_latest(tmp_path) == root / "step_000005"
    assert C.find_latest(root) == root / "step_000005"  # the ckpt dir itself works too
    assert [p.name for p in C.list_checkpoints(tmp_path)] == ["step_000002", "step_000005"]


def test_crash_between_shards_and_marker_keeps_previous_latest(tmp_path, monkeypatch):
    model, opt, sched, loader = _build(0)
    _train(model, opt, sched, loader, 1)
    C.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, loader=loader)
    want = _snapshot(model, opt, sched, loader)
    _train(model, opt, sched, loader, 1)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed before the marker")

    monkeypatch.setattr(C, "_write_marker", crash)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched, loader=loader)
    tmp = tmp_path / "ckpt" / "step_000002.tmp"
    assert (tmp / ".metadata").exists()  # the shards really were written
    assert C.find_latest(tmp_path).name == "step_000001"

    model2, opt2, sched2, loader2 = _build(1)
    assert C.load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2,
                             loader=loader2).step == 1  # fmt: skip
    _assert_same(want, _snapshot(model2, opt2, sched2, loader2))

    monkeypatch.undo()  # the next save of the same step clears the stale temp dir
    C.save_checkpoint(tmp_path, 2, model=model, optimizer=opt)
    assert C.find_latest(tmp_path).name == "step_000002" and not tmp.exists()


def test_keep_last_and_resave(tmp_path):
    model, opt, *_ = _build(0)
    for step in (1, 2, 3, 4):
        C.save_checkpoint(tmp_path, step, model=model, optimizer=opt, keep_last=2)
    assert [p.name for p in C.list_checkpoints(tmp_path)] == ["step_000003", "step_000004"]
    with torch.no_grad():
        model.text[0].weight.add_(1.0)
    C.save_checkpoint(tmp_path, 4, model=model, optimizer=opt)  # same step again: replaced
    model2, opt2, *_ = _build(1)
    C.load_checkpoint(tmp_path, model=model2, optimizer=opt2)
    assert torch.equal(model2.text[0].weight, model.text[0].weight)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000003", "step_000004"]


def test_load_image_tower_loads_only_visual(tmp_path):
    src, *_ = _build(0)
    C.save_checkpoint(tmp_path, 7, model=src)
    dst, *_ = _build(1)
    before = {n: p.detach().clone() for n, p in dst.named_parameters()}
    loaded = C.load_image_tower(dst, tmp_path)
    assert loaded and all(k.startswith("visual.") for k in loaded)
    for n, p in dst.named_parameters():
        if n.startswith("visual."):
            assert torch.equal(p, dict(src.named_parameters())[n]), n
        else:
            assert torch.equal(p, before[n]), n  # text tower and logit scale untouched
    assert not torch.equal(dst.text[0].weight, src.text[0].weight)


def test_bad_inputs_raise_config_error(tmp_path):
    model, opt, *_ = _build(0)
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        C.load_checkpoint(tmp_path, model=model, optimizer=opt)
    path = C.save_checkpoint(tmp_path, 1, model=model)
    with pytest.raises(ConfigError, match="no optimizer state"):
        C.load_checkpoint(tmp_path, model=model, optimizer=opt)
    with pytest.raises(ConfigError, match="prefix"):
        C.load_image_tower(model, tmp_path, prefix="vision_tower.")
    marker = json.loads((path / "COMPLETE").read_text())
    (path / "COMPLETE").write_text(json.dumps(marker | {"world_size": 4}))
    with pytest.raises(ConfigError, match="4 ranks"):
        C.load_checkpoint(tmp_path, model=model)
    with pytest.raises(ConfigError, match="keep_last"):
        C.save_checkpoint(tmp_path, 2, model=model, keep_last=0)


# ----------------------------------------------------------------------------- FSDP2, 2 ranks


def _fsdp_worker(ctx: DistContext, root: str) -> None:
    rank, world, mesh = ctx.rank, ctx.world_size, ctx.mesh
    random.seed(rank)
    np.random.seed(rank)
    torch.manual_seed(rank)  # per-rank RNG must come back per rank
    model, opt, sched, loader = _build(0, mesh)
    _train(model, opt, sched, loader, 3, rank)
    C.save_checkpoint(root, 3, model=model, optimizer=opt, scheduler=sched, loader=loader,
                      samples_seen=24)  # fmt: skip
    want, draws = _snapshot(model, opt, sched, loader), _draw_rng()
    want_next = _train(model, opt, sched, loader, 2, rank)

    # A crash after the shards are on disk but before the marker: all ranks die there.
    real = C._write_extra
    C._write_extra = lambda *a: (_ for _ in ()).throw(RuntimeError("killed"))
    with pytest.raises(RuntimeError, match="killed"):
        C.save_checkpoint(root, 5, model=model, optimizer=opt, scheduler=sched, loader=loader)
    C._write_extra = real
    dist.barrier()
    assert C.find_latest(root).name == "step_000003"
    assert (Path(root) / "ckpt" / "step_000005.tmp").is_dir()

    model2, opt2, sched2, loader2 = _build(1, mesh)
    info = C.load_checkpoint(root, model=model2, optimizer=opt2, scheduler=sched2,
                             loader=loader2)  # fmt: skip
    assert (info.step, info.samples_seen, info.world_size) == (3, 24, world)
    _assert_same(want, _snapshot(model2, opt2, sched2, loader2))
    d2 = _draw_rng()
    assert d2[0] == draws[0] and d2[1] == draws[1] and torch.equal(d2[2], draws[2])
    assert _train(model2, opt2, sched2, loader2, 2, rank) == want_next

    # Image tower only, into a sharded model.
    model3, *_ = _build(2, mesh)
    text_before = _full(model3.text[0].weight)
    loaded = C.load_image_tower(model3, root)
    assert loaded and all(k.startswith("visual.") for k in loaded)
    assert torch.equal(_full(model3.visual[0].weight), want["params"]["visual.0.weight"])
    assert torch.equal(_full(model3.text[0].weight), text_before)


@pytest.mark.dist
def test_fsdp2_two_ranks_round_trip_crash_and_image_tower(tmp_path):
    run_distributed(_fsdp_worker, 2, str(tmp_path))


def test_real_model_lamb_and_warmup_cosine_round_trip(tmp_path):
    """The project's own pieces: tiny-eva TwoTower, LAMB, warmup+cosine LambdaLR. The loss below
    ignores logit_scale/bias, so (as logit_bias under the softmax loss) they have no optimizer
    state; the restored optimizer must not invent any."""
    from models import build_model
    from trainer.optim import build_optimizer, build_scheduler
    from vlscale.specs.presets import get_model

    def make(seed):
        torch.manual_seed(seed)
        model = build_model(get_model("tiny-eva"))
        opt = build_optimizer("lamb", [{"params": list(model.parameters()), "lr": 1e-3}])
        return model, opt, build_scheduler(opt, warmup_steps=1, total_steps=10)

    def step(model, opt, sched, seed):
        g = torch.Generator().manual_seed(seed)
        img, txt = model(torch.randn(2, 3, 32, 32, generator=g), torch.randint(1, 259, (2, 32)))
        loss = -(img * txt).sum()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        return loss.item()

    model, opt, sched = make(0)
    step(model, opt, sched, 1)
    C.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched)
    with_state = sorted(n for n, p in model.named_parameters() if p in opt.state)
    assert "logit_scale" not in with_state
    want = [step(model, opt, sched, s) for s in (2, 3)]
    model2, opt2, sched2 = make(1)
    C.load_checkpoint(tmp_path, model=model2, optimizer=opt2, scheduler=sched2)
    assert sorted(n for n, p in model2.named_parameters() if p in opt2.state) == with_state
    assert [step(model2, opt2, sched2, s) for s in (2, 3)] == want
