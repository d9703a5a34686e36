"""Published training runs against the planner (cases in ``vlscale.plan.published_runs``).

Calibration, stated plainly: the planner prices compute op by op (``vlscale.costs.compute``,
catalog defaults from public GEMM and bandwidth measurements), and
``vlscale.plan.compute_model.CALIBRATED`` holds ONE remaining constant per device kind — the
framework efficiency γ (the achieved fraction of the op roofline in a real training run) — each
solved from one published run —

- V100 from CLIP ViT-L/14 (Radford et al. 2021, sec. 2.5: "the largest Vision Transformer took
  12 days on 256 V100 GPUs"; 32 epochs of 400M pairs = 12.8B samples, batch 32,768);
- A100 from OpenCLIP ViT-B/32 (OpenCLIP docs/PRETRAINED.md: LAION-400M, 32 epochs ~ 13B
  samples, batch 32,768, 128 A100-40GB, ~36 h).

So those two cases are PINS, not predictions: the stored constant must still reproduce its own
case within 3 %, and re-solving must land within 3 % of the stored constant (this fails when a
cost-model change leaves the calibration stale; re-run ``benchmarks/calibrate_published.py``).

Absolute predictions (not used in any fit): OpenCLIP ViT-B/16 (176 A100, ~61 h) and ViT-L/14
(400 A100, ~127 h), with the A100 constant, within ±15 %.

Predictions:

- FLIP (Li et al. 2023, "Scaling Language-Image Pre-training via Masking", Table 1a): ViT-L/16
  on 256 TPU-v3 cores (128 chips), mask 0 / 50 / 75 % at batch 16k / 32k / 64k, same epochs.
  Relative FLOPs 1.00 / 0.52 / 0.28 from ``vlscale.costs.flops`` (training FLOPs per sample,
  text tower included) within ±0.005 absolute: the paper prints two decimals, so its true
  ratio lies within half a unit of the last digit, and the model has no other slack (it equals
  FlopCounterMode). Predicted 0.517 and 0.281. Negative controls must miss that tolerance: the
  same computation without the text tower (0.496 / 0.249: both rows miss), and with attention
  made linear in tokens (0.5245 / 0.287: the r = 0.5 row is within rounding, as the S² term is
  only ~3 % of a ViT-L/16 block at 197 tokens; the r = 0.75 row misses, so the table rejects
  it); 77-token captions give 0.545 / 0.322 and miss both rows. Relative wall time 1.00 /
  0.50 / 0.33 from the planner: the planner predicts 0.518 / 0.292, a miss by more than the
  printed rounding (±0.005) on both rows (by 0.018 and 0.038); that check is an expected
  failure (strict) at the rounding tolerance rather than a tolerance widened until it passes;
  only the ordering is asserted to hold. FLIP pads / cuts captions to 32 tokens (its
  implementation details), so both checks use the ViT-L-16 preset with a 32-token text tower
  (``flip_config`` sets ``context_length=32``).
- Cross-device: the A100 constant applied to the V100 CLIP run (and the other way round) —
  reported, with a factor-1.6 bound (the two γ differ by 30 %). Run with ``-s`` to see them.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from vlscale.costs.flops import (
    LayerFlops,
    text_layer_flops,
    train_flops_per_sample,
    vision_layer_flops,
)
from vlscale.plan import plan
from vlscale.plan.compute_model import CALIBRATED
from vlscale.plan.published_runs import (
    FLIP_SOURCE,
    FLIP_TABLE_1A,
    FLIP_TEXT_TOKENS,
    PREDICTED_RUNS,
    PUBLISHED_RUNS,
    flip_config,
    solve_framework_efficiency,
)
from vlscale.specs.presets import get_model

CALIBRATION_TOLERANCE = 0.03  # relative
PREDICTION_TOLERANCE = 0.15  # relative, on wall time
# absolute, on the relative columns of FLIP Table 1a: half a unit of the printed 2nd decimal
FLIP_FLOPS_TOLERANCE = 0.005
FLIP_WALL_TOLERANCE = 0.005


@pytest.mark.parametrize("name", sorted(PUBLISHED_RUNS))
def test_calibrated_constant_reproduces_its_own_case(name):
    run = PUBLISHED_RUNS[name]
    stored, source = CALIBRATED[run.config.device]
    assert "calibrated" in source
    result = plan(run.config)  # no --utilisation: the planner picks the stored constant
    assert result.compute["framework_efficiency"] == stored
    print(f"\n{name}: planned {result.wall_time_h:.1f} h, published {run.wall_time_h:.1f} h")
    assert result.wall_time_h == pytest.approx(run.wall_time_h, rel=CALIBRATION_TOLERANCE)
    solved = solve_framework_efficiency(run)
    print(f"{name}: solved gamma = {solved:.4f}, stored {stored:.4f} ({run.source})")
    assert solved == pytest.approx(stored, rel=CALIBRATION_TOLERANCE)


# Predictions outside PREDICTION_TOLERANCE, stated as misses: (their error band, why)
STATED_MISSES = {
    "clip-rn50x64-v100": (
        (0.15, 0.20),
        "+16%, cause not verified: the V100 constant was solved on a ViT, whose planned step is "
        "14% memory-bound elementwise work; RN50x64's is 36% (batch norm, ReLU, pooling, adds)",
    ),
}


@pytest.mark.parametrize("name", sorted(PREDICTED_RUNS))
def test_absolute_prediction_of_a_run_never_fitted(name):
    run = PREDICTED_RUNS[name]
    result = plan(run.config)
    error = result.wall_time_h / run.wall_time_h - 1
    print(
        f"\n{name}: predicted {result.wall_time_h:.1f} h, published {run.wall_time_h:.1f} h "
        f"({error:+.1%}; {run.source})"
    )
    assert abs(error) < PREDICTION_TOLERANCE


@pytest.mark.parametrize("name", sorted(STATED_MISSES))
def test_stated_misses_stay_what_they_are(name):
    # a miss stays in `vlscale papers` (the published record) with its real error; this fails
    # when the error moves out of its band (better: move the run under PREDICTION_TOLERANCE;
    # worse: find out why)
    from vlscale.plan.published_record import load_record, predict, relative_error

    run = next(r for r in load_record() if r.id == name)
    assert run.split == "prediction"
    (low, high), why = STATED_MISSES[name]
    error = relative_error(run, predict(run))
    print(f"\n{name}: predicted error {error:+.1%} ({why}; {run.quote})")
    assert low <= abs(error) < high


def test_the_a100_constant_covers_both_a100_variants():
    assert CALIBRATED["A100-80GB"][0] == CALIBRATED["A100-40GB"][0]


@pytest.mark.parametrize(
    "case, other_device",
    [("clip-vit-l14-v100", "A100-40GB"), ("openclip-vit-b32-a100", "V100")],
)
def test_cross_device_prediction_is_reported(case, other_device):
    run = PUBLISHED_RUNS[case]
    gamma = CALIBRATED[other_device][0]
    result = plan(run.config.model_copy(update={"framework_efficiency": gamma}))
    ratio = result.wall_time_h / run.wall_time_h
    print(
        f"\n{case} with the {other_device} constant gamma={gamma}: {result.wall_time_h:.1f} h "
        f"vs published {run.wall_time_h:.1f} h (x{ratio:.2f})"
    )
    assert 1 / 1.6 < ratio < 1.6


def _flip_spec():
    return get_model("ViT-L-16").with_context_length(FLIP_TEXT_TOKENS)


@pytest.mark.parametrize("row", FLIP_TABLE_1A, ids=lambda r: f"mask{r.mask_ratio}")
def test_flip_relative_flops(row):
    spec = _flip_spec()
    rel = train_flops_per_sample(spec, row.mask_ratio) / train_flops_per_sample(spec, 0.0)
    preset = get_model("ViT-L-16")
    rel77 = train_flops_per_sample(preset, row.mask_ratio) / train_flops_per_sample(preset)
    print(
        f"\nFLIP mask {row.mask_ratio}: relative FLOPs {rel:.4f} (77-token text: {rel77:.4f}), "
        f"published {row.relative_flops} ({FLIP_SOURCE})"
    )
    assert rel == pytest.approx(row.relative_flops, abs=FLIP_FLOPS_TOLERANCE)


def _train_from_layers(vision: list[LayerFlops], text: list[LayerFlops]) -> float:
    """Training FLOPs per sample from per-layer forward FLOPs, as ``train_flops_per_sample``
    defines them: forward F plus backward 2F, except the patch stem's F (pixels need no
    gradient). Anchored below: on the unmodified layers it equals ``train_flops_per_sample``."""
    return sum(x.total + (x.total if x.kind == "stem" else 2 * x.total) for x in vision + text)


def _linear_attention(spec, mask_ratio: float) -> list[LayerFlops]:
    """The image tower's layers at ``mask_ratio`` with the attention core scaled like the
    token-linear terms, S_r / S_0, instead of (S_r / S_0)²: a model that forgot the S² terms."""
    full = vision_layer_flops(spec.vision, spec.embed_dim, 0.0)
    masked = vision_layer_flops(spec.vision, spec.embed_dim, mask_ratio)
    tokens = spec.vision.seq_len(mask_ratio) / spec.vision.seq_len(0.0)
    return [
        replace(m, attn_core=f.attn_core * tokens) if m.kind == "block" else m
        for m, f in zip(masked, full, strict=True)
    ]


def test_flip_flops_tolerance_rejects_wrong_models():
    """Negative controls: two wrong FLOP models, each computed by the same layer sum as the
    real one, must miss FLIP Table 1a at FLIP_FLOPS_TOLERANCE. Dropping the text tower misses
    every masked row; linear attention misses at r = 0.75 (at r = 0.5 it is within the
    paper's rounding: the S² term is too small there to show in two decimals). Captions of 77
    tokens instead of FLIP's 32 (a larger unmasked text share) miss every masked row too."""
    spec = _flip_spec()
    text = text_layer_flops(spec.text, spec.embed_dim)
    full = vision_layer_flops(spec.vision, spec.embed_dim, 0.0)
    assert _train_from_layers(full, text) == train_flops_per_sample(spec, 0.0)  # the anchor
    preset = get_model("ViT-L-16")  # 77-token captions instead of FLIP's 32
    misses = {"no text tower": [], "linear attention": [], "77-token text": []}
    for row in FLIP_TABLE_1A[1:]:
        r = row.mask_ratio
        masked = vision_layer_flops(spec.vision, spec.embed_dim, r)
        assert _train_from_layers(masked, text) == train_flops_per_sample(spec, r)
        controls = {
            "no text tower": _train_from_layers(masked, []) / _train_from_layers(full, []),
            "linear attention": (
                _train_from_layers(_linear_attention(spec, r), text)
                / _train_from_layers(full, text)
            ),
            "77-token text": train_flops_per_sample(preset, r) / train_flops_per_sample(preset),
        }
        for name, rel in controls.items():
            miss = abs(rel - row.relative_flops)
            print(f"\nFLIP mask {r} {name}: {rel:.4f} vs {row.relative_flops} (off {miss:.4f})")
            if miss > FLIP_FLOPS_TOLERANCE:
                misses[name].append(r)
    assert misses["no text tower"] == [0.5, 0.75]
    assert misses["linear attention"] == [0.75]
    assert misses["77-token text"] == [0.5, 0.75]


def test_flip_wall_time_falls_with_the_mask():
    """What the planner and the paper agree on: a higher mask ratio (with the batch FLIP used)
    trains the same epochs in less time."""
    walls = [plan(flip_config(row)).wall_time_h for row in FLIP_TABLE_1A]
    assert walls[0] > walls[1] > walls[2]


@pytest.mark.xfail(
    strict=True,
    reason="known miss: the planner predicts relative wall 0.518 / 0.292 for mask 0.5 / 0.75, "
    "FLIP Table 1a prints 0.50 / 0.33 (more than the printed rounding, ±0.005)",
)
def test_flip_relative_wall_time():
    base = plan(flip_config(FLIP_TABLE_1A[0]))
    for row in FLIP_TABLE_1A:
        config = flip_config(row)
        assert (config.device, config.devices, config.model) == ("TPUv3", 128, "ViT-L-16")
        rel = plan(config).wall_time_h / base.wall_time_h
        print(
            f"FLIP mask {row.mask_ratio}: relative wall {rel:.3f}, published "
            f"{row.relative_wall_time}"
        )
        assert rel == pytest.approx(row.relative_wall_time, abs=FLIP_WALL_TOLERANCE)
