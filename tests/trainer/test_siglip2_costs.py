"""SigLIP 2's costs, planner against trainer (issue 21, "costs exact where they can be").

FlopCounterMode on the trainer's own modules (``models.siglip2``, ``models.decoder``) equals the
planner's torch-free functions (``vlscale.costs.siglip2``): one decoder pass, the EMA teacher's
forward, and each phase's whole forward step (both towers, the sigmoid logits, every decoder
pass, the local views, the masked view, the heads). Parameter counts of the student's added
modules and of the teacher equal the planner's layer sums. Two towers are checked: SigLIP's
(no class token, MAP head) and OpenAI's (class token: the masked view's prefix, S_v = N + 1).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from models.flop_counting import count_flops  # noqa: E402
from models.siglip2 import build_siglip2_model, build_teacher  # noqa: E402
from trainer.losses.siglip2 import siglip2_loss  # noqa: E402
from trainer.siglip2 import build_inputs, draw_generator, draw_inputs  # noqa: E402
from vlscale.costs.params import count_params  # noqa: E402
from vlscale.costs.siglip2 import (  # noqa: E402
    decoder_pass_flops,
    phase_forward_flops,
    student_extra_params,
    teacher_forward_flops,
    teacher_unit_params,
)
from vlscale.specs.presets import get_model  # noqa: E402
from vlscale.specs.recipes import default_recipe  # noqa: E402
from vlscale.specs.siglip2 import Siglip2Spec, local_image_size  # noqa: E402

B = 3  # an odd batch: no accidental factor of 2
S2 = Siglip2Spec(naflex=None, distill_start=0.5)
PRESETS = ["tiny-siglip", "tiny-clip"]


def _setup(name: str):
    spec = get_model(name)
    recipe = default_recipe("siglip2", siglip2=S2)
    torch.manual_seed(0)
    model = build_siglip2_model(spec, S2, device="cpu")
    teacher = build_teacher(spec, S2, device="cpu")
    teacher.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k in teacher.state_dict()}, strict=True
    )
    v = spec.vision
    images = torch.randn(B, 3, v.image_size, v.image_size)
    tokens = torch.randint(1, spec.text.vocab_size, (B, spec.text.context_length))
    return spec, recipe, model, teacher, images, tokens


def _step_forward(spec, model, teacher, images, tokens, phase):
    """What ``trainer.siglip2.Siglip2Run.loss`` runs in forward on one rank (W = 1)."""
    draws = draw_inputs(S2, phase, spec.vision, draw_generator(0, 1, 0), 0, B, 1)
    size = local_image_size(S2, spec.vision)
    extra = build_inputs(S2, draws, images, tokens, 0, size)
    teacher_out = teacher(images, extra.mask_ids) if (phase.distill or phase.masked) else None
    out = model(images, tokens, extra=extra)
    total, _ = siglip2_loss(
        out, teacher_out, S2, model.logit_scale, model.logit_bias, None, "gather"
    )
    return total


@pytest.mark.parametrize("name", PRESETS)
def test_each_phase_forward_equals_the_planner(name):
    spec, recipe, model, teacher, images, tokens = _setup(name)
    phases = S2.phases()
    assert [p.name for p in phases] == ["base", "self-distillation"]
    for phase in phases:
        counted, _ = count_flops(_step_forward, spec, model, teacher, images, tokens, phase)
        assert counted == phase_forward_flops(spec, recipe, phase, B), phase.name


@pytest.mark.parametrize("name", PRESETS)
def test_decoder_pass_and_teacher_forward_equal_the_planner(name):
    spec, recipe, model, teacher, images, tokens = _setup(name)
    base, distill = S2.phases()
    memory = model.visual(images, tokens="only")  # (B, S_v, v): what the decoder attends to
    assert memory.shape[1] == spec.vision.seq_len()
    draws = draw_inputs(S2, base, spec.vision, draw_generator(0, 1, 0), 0, B, 1)
    extra = build_inputs(S2, draws, images, tokens, 0, None)
    p = len(extra.passes)  # the trainer runs every pass in one call of P·b rows
    rows, mem, par = tokens.repeat(p, 1), memory.repeat(p, 1, 1), torch.cat(extra.passes)
    counted, _ = count_flops(model.decoder, rows, mem, par, extra.caption_loss)
    assert counted == p * decoder_pass_flops(spec, recipe, base, B)
    # one pass without the loss returns the (B, L, V) logits: the same head matmul
    one, _ = count_flops(model.decoder, tokens, memory, extra.passes[0])
    assert one == decoder_pass_flops(spec, recipe, base, B)
    mask_ids = draw_inputs(S2, distill, spec.vision, draw_generator(0, 9, 0), 0, B, 1).mask_ids
    counted, _ = count_flops(teacher, images, mask_ids)
    assert counted == teacher_forward_flops(spec, recipe, distill, B)
    assert teacher_forward_flops(spec, recipe, base, B) == 0


@pytest.mark.parametrize("name", PRESETS)
def test_added_parameters_equal_the_planner(name):
    spec, _, model, teacher, _, _ = _setup(name)
    _, distill = S2.phases()
    added = sum(p.numel() for p in model.parameters()) - count_params(spec).total
    assert added == sum(student_extra_params(spec, S2, distill).values())
    assert sum(p.numel() for p in teacher.parameters()) == sum(
        teacher_unit_params(spec, S2, distill).values()
    )


@pytest.fixture(scope="module")
def siglip2_run(tmp_path_factory):
    """A W = 1 SigLIP 2 run of 8 steps, distillation from step 5 (phase timing on)."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("s2run")
    cmd = [sys.executable, "-m", "trainer.train", "--model", "tiny-siglip", "--recipe",
           "siglip2", "--siglip2", "{distill_start: 0.5}", "--steps", "8", "--global-batch",
           "8", "--timing-warmup", "1", "--phase-timing", "--peak-flops", "1e12",
           "--log-every", "100", "--out", str(out)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return out / "run.jsonl"


def test_the_trainers_mfu_numerator_is_the_planners_per_phase(siglip2_run):
    """Each step's model FLOPs per sample (the MFU numerator) equal the planner's phase
    ``model_flops_per_step`` over the global batch, for the run's own configuration."""
    from vlscale.calibrate.runs import plan_config_of
    from vlscale.plan.planner import plan
    from vlscale.records import read_run

    run = read_run(siglip2_run)
    config = plan_config_of(run, "H100", None)
    assert config.recipe_spec().objectives.naflex is None  # replayed as it ran
    planned = {p["name"]: p["model_flops_per_step"] / 8 for p in plan(config).to_json()["phases"]}
    seen = {s.phase: s.flops_per_sample for s in run.steps}
    assert set(seen) == {"base", "self-distillation"} == set(planned)
    for name, flops in seen.items():
        assert flops == pytest.approx(planned[name], rel=1e-12), name
    assert seen["self-distillation"] > seen["base"]


def test_validate_compares_each_phase_with_the_planners(siglip2_run):
    """``vlscale validate`` reads a SigLIP 2 run as one row per phase, each predicted by the
    planner's step of that phase (the switch's own step left out of the median)."""
    import statistics

    from vlscale.calibrate.run_fit import predict
    from vlscale.calibrate.runs import load_measured_runs
    from vlscale.plan.planner import plan
    from vlscale.records import read_run

    rows = load_measured_runs(siglip2_run, "H100", None)
    assert [r.phase for r in rows] == ["base", "self-distillation"]
    steps = read_run(siglip2_run).steps
    distill = [s.step_time_s for s in steps if s.phase == "self-distillation"][1:]
    assert rows[1].step_s == statistics.median(distill) and rows[1].timed_steps == 3
    assert rows[0].run_id != rows[1].run_id and rows[0].repeat_key != rows[1].repeat_key
    phases = {p["name"]: p for p in plan(rows[0].config).to_json()["phases"]}
    for row in rows:
        predicted = predict(row)
        assert predicted.step_s == pytest.approx(phases[row.phase]["step_time_s"], rel=1e-12)
        assert predicted.memory_bytes == phases[row.phase]["memory_per_device_bytes"]
