"""SigLIP 2 over gloo ranks: W = 1 and W = 2 agree, the phase switch, the EMA teacher, resume.

- The total loss (and its sigmoid part) of one global batch is the same at W = 1 and as the
  mean over W = 2 ranks of their local losses, for the ring and the gather sigmoid loss; so are
  the parameter gradients (averaged over the ranks, as FSDP does). Draws depend on an example's
  place in the global batch only (``trainer.siglip2``), so both worlds see the same draws.
- The trainer in one process group of 2 ranks (FSDP2): a straight run of 4 steps switching to
  self-distillation at step 3 (checkpoints every step), and runs resumed from its checkpoint
  of step 2 (before the switch) and of step 3 (after it). Records name the phases; the teacher
  of step 4 equals the EMA of the student's checkpoints, computed here from their tensors; the
  resumed runs reproduce the straight run's losses and final parameters (student and teacher)
  bit for bit.
- The SIGKILL variant (torchrun, ``tests/trainer/test_resume.py``'s harness) across the
  switch: slow (about 40 s on 2 cores).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import tests.trainer.test_resume as kill
from models.siglip2 import build_siglip2_model, build_teacher
from tests.dist_utils import run_distributed
from trainer.checkpoint import step_dir
from trainer.checkpoint_files import read_marker
from trainer.losses.siglip2 import siglip2_loss
from trainer.siglip2 import build_inputs, copy_into, draw_generator, draw_inputs, ema_update
from vlscale.specs.presets import resolve_model
from vlscale.specs.siglip2 import Siglip2Spec

pytestmark = [pytest.mark.dist]

SPEC = resolve_model("tiny-siglip")
S2 = Siglip2Spec(
    naflex=None,
    decoder={"passes": 2, "loss_chunk_tokens": 40},
    distill={"local_views": 2, "head_dim": 32, "ema_decay": 0.5},
)
BATCH = 8


def _batch():
    gen = torch.Generator().manual_seed(11)
    images = torch.randn(BATCH, 3, 32, 32, generator=gen)
    shape = (BATCH, SPEC.text.context_length)
    tokens = torch.randint(1, SPEC.text.vocab_size, shape, generator=gen)
    for i in range(BATCH):
        tokens[i, 6 + 3 * i :] = 0  # captions of different lengths, padded
    return images, tokens


def _loss_and_grads(ctx, impl: str):
    world, rank = ctx.world_size, ctx.rank
    torch.manual_seed(0)
    model = build_siglip2_model(SPEC, S2, init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
    teacher = build_teacher(SPEC, S2, device="cpu")
    copy_into(teacher, model)
    with torch.no_grad():  # a teacher that is not the student: move the student a little
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    images, tokens = _batch()
    b = BATCH // world
    rows = slice(rank * b, (rank + 1) * b)
    phase = S2.phases()[-1]
    draws = draw_inputs(S2, phase, SPEC.vision, draw_generator(5, 1, 0), rank, b, world)
    extra = build_inputs(S2, draws, images[rows], tokens[rows], 0, 16)
    t_out = teacher(images[rows], extra.mask_ids)
    out = model(images[rows], tokens[rows], extra=extra)
    total, parts = siglip2_loss(out, t_out, S2, model.logit_scale, model.logit_bias, None, impl)
    total.backward()
    values = torch.stack([total.detach(), parts["sigmoid"], parts["caption"], parts["distill"]])
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    for t in (values, grads):
        dist.all_reduce(t)  # mean over ranks: what FSDP's gradient averaging takes
        t /= world
    return values, grads


def _both_impls(ctx):
    return {impl: _loss_and_grads(ctx, impl) for impl in ("gather", "ring")}


def test_w1_and_w2_total_loss_and_gradients_agree():
    one = run_distributed(_both_impls, 1)[0]
    two = run_distributed(_both_impls, 2)[0]
    for impl in ("gather", "ring"):
        (v1, g1), (v2, g2) = one[impl], two[impl]
        torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(one["ring"][0], one["gather"][0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- trainer

STEPS = 4
COMMON = [
    "--model", "tiny-siglip", "--recipe", "siglip2", "--steps", str(STEPS), "--global-batch",
    "8", "--seed", "3", "--ckpt-every", "1", "--warmup-steps", "1", "--checkpointing", "--siglip2",
    "{distill_start: 0.5, decoder: {passes: 2}, "
    "distill: {head_dim: 32, ema_decay: 0.5, local_views: 2}}",
]  # fmt: skip


def _train_runs(ctx, root):
    from trainer import train as entry
    from trainer.cli_args import load_config

    def go(name, *extra):
        cfg = load_config([*COMMON, "--out", f"{root}/{name}", *extra], world_size=2)
        entry.train(cfg, torch.device("cpu"), ctx.mesh, "gloo")

    go("straight")
    go("before", "--resume", str(step_dir(f"{root}/straight", 2)))
    go("after", "--resume", str(step_dir(f"{root}/straight", 3)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("siglip2")
    run_distributed(_train_runs, 2, str(root), timeout=300)
    return root


def _steps(out: Path) -> dict[int, dict]:
    lines = (out / "run.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r.get("kind") == "step"}


def _state(ckpt: Path, tmp: Path) -> dict[str, torch.Tensor]:
    """A DCP checkpoint's tensors, whole (DCP's own converter)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    path = tmp / f"{ckpt.parent.parent.name}_{ckpt.name}.pt"
    dcp_to_torch_save(ckpt, path)
    return torch.load(path, weights_only=False)


def test_phase_switch_at_the_configured_step(runs):
    records = _steps(runs / "straight")
    assert [records[s]["phase"] for s in range(1, STEPS + 1)] == [
        "base", "base", "self-distillation", "self-distillation"
    ]  # fmt: skip
    assert not read_marker(step_dir(runs / "straight", 2)).get("teacher")
    assert read_marker(step_dir(runs / "straight", 3))["teacher"]


def test_teacher_is_the_ema_of_the_student(runs, tmp_path):
    states = {s: _state(step_dir(runs / "straight", s), tmp_path) for s in (2, 3, 4)}
    m = S2.distill.ema_decay
    teacher_keys = list(states[4]["teacher"])
    assert teacher_keys and all(k.split(".")[0] in ("visual", "distill_head", "masked_head")
                                for k in teacher_keys)  # fmt: skip
    for key in teacher_keys:
        student = [states[s]["model"][key].double() for s in (2, 3, 4)]
        want = student[0]  # the copy when step 3 began, then one EMA step per optimizer step
        for s in student[1:]:
            want = m * want + (1 - m) * s
        got = states[4]["teacher"][key].double()
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    # the EMA moved the teacher off the student (else the check above proves little)
    assert any(
        not torch.equal(states[4]["teacher"][k], states[4]["model"][k]) for k in teacher_keys
    )


@pytest.mark.parametrize("name", ["before", "after"])
def test_resume_across_the_switch_is_bit_identical(runs, tmp_path, name):
    straight, resumed = _steps(runs / "straight"), _steps(runs / name)
    assert sorted(resumed) == list(range(2 if name == "before" else 3, STEPS + 1))[1:]
    for s in resumed:
        assert resumed[s]["loss"] == straight[s]["loss"]
        assert resumed[s]["phase"] == straight[s]["phase"]
    a = _state(step_dir(runs / "straight", STEPS), tmp_path)
    b = _state(step_dir(runs / name, STEPS), tmp_path)
    for part in ("model", "teacher"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_ema_update_is_lerp_on_plain_modules():
    torch.manual_seed(0)
    student = build_siglip2_model(SPEC, S2)
    teacher = build_teacher(SPEC, S2, device="cpu")
    copy_into(teacher, student)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    ema_update(teacher, student, 0.25)
    params = dict(student.named_parameters())
    for k, v in teacher.named_parameters():
        torch.testing.assert_close(v, 0.25 * before[k] + 0.75 * params[k])


@pytest.mark.slow
def test_sigkill_then_resume_across_the_switch(tmp_path):
    """torchrun, 2 ranks, 8 steps switching at step 6; rank 1 killed after checkpoint 4."""
    extra = [*COMMON[:10], "--siglip2", "{distill_start: 0.625, decoder: {passes: 2}, "
             "distill: {head_dim: 32, ema_decay: 0.5, local_views: 2}}"]  # fmt: skip
    extra = [a for a in extra if a not in ("--steps", str(STEPS))]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    kill._run(straight, *extra)
    kill._run_and_kill(killed, *extra)
    kill._run(killed, *extra, "--resume")
    want, got = kill._losses(straight), kill._losses(killed)
    assert [_steps(straight)[s]["phase"] for s in (5, 6)] == ["base", "self-distillation"]
    assert all(got[s] == want[s] for s in range(kill.K + 1, 2 * kill.K + 1)), (got, want)


def _fsdp_against_plain(ctx):
    """One micro-step of the student under FSDP2 (image tower run three times: global, local
    and masked views; decoder units; a sharded teacher) against the plain module, same weights."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from models.init import init_weights
    from trainer.parallelize import parallelize, shard_teacher
    from vlscale.specs.layout import RunLayout

    torch.manual_seed(0)
    plain = build_siglip2_model(SPEC, S2, init_logit_scale=math.log(10.0), init_logit_bias=-10.0)
    layout = RunLayout(devices=2, sharding="fsdp").resolved("fp32", 2)
    sharded = build_siglip2_model(SPEC, S2, device="meta")
    parallelize(sharded, ctx.mesh, layout, torch.device("cpu"), init_weights)
    set_model_state_dict(
        sharded, plain.state_dict(), options=StateDictOptions(full_state_dict=True)
    )
    teachers = [build_teacher(SPEC, S2, device="cpu"), build_teacher(SPEC, S2, device="meta")]
    shard_teacher(teachers[1], ctx.mesh, layout, torch.device("cpu"))
    for teacher, student in zip(teachers, (plain, sharded), strict=True):
        copy_into(teacher, student)
    images, tokens = _batch()
    b, rank = BATCH // 2, ctx.rank
    rows = slice(rank * b, (rank + 1) * b)
    draws = draw_inputs(S2, S2.phases()[-1], SPEC.vision, draw_generator(1, 1, 0), rank, b, 2)
    extra = build_inputs(S2, draws, images[rows], tokens[rows], 0, 16)
    results = []
    for model, teacher in zip((plain, sharded), teachers, strict=True):
        t_out = teacher(images[rows], extra.mask_ids)
        out = model(images[rows], tokens[rows], extra=extra)
        scale, bias = (
            (model.logit_scale, model.logit_bias) if model is plain else model.logit_params()
        )
        total, _ = siglip2_loss(out, t_out, S2, scale, bias, None, "ring")
        total.backward()
        grads = {}
        for name, p in model.named_parameters():
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            if model is plain:
                dist.all_reduce(g)
                g = g / 2
            grads[name] = g
        results.append((total.detach(), grads))
    return results


def test_fsdp_student_and_teacher_match_the_plain_modules():
    (loss_p, grads_p), (loss_s, grads_s) = run_distributed(_fsdp_against_plain, 2)[0]
    torch.testing.assert_close(loss_s, loss_p)
    assert grads_p.keys() == grads_s.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_s[name], grads_p[name], rtol=1e-4, atol=1e-6, msg=name)
