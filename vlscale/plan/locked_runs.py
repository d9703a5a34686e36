"""Published locked-tower runs (LiT, SigLiT) as predictions of the planner, with their real
error (``tests/published/test_locked_runs.py``; ``vlscale papers`` may list them). Nothing is
fitted to them: the TPUv4's framework efficiency is whatever ``vlscale.plan.compute_model``
assumes for it.

Models that are not presets are model files in ``vlscale/specs/data/published_models/``.

- SigLiT (Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", section 4.4): a
  frozen image tower whose embeddings are computed once (``image_embeddings="precomputed"``:
  the step is the text tower and the loss; the one-off embedding pass is reported apart and is
  not part of the published time), 4 TPUv4 chips; B/8 image + 12-layer Large text, batch 32k,
  65k steps, "less than one day"; g/14 image + Large text, batch 20k, 107k steps, "two days".
  Both times are upper bounds.
- LiT B16B / L16L (the LiT model card, google-research/vision_transformer model_cards/lit.md):
  64 TPUv4 chips, 0.125 / 1 day, 1.5e19 / 9e19 FLOPs. The card gives neither samples nor
  batch: the samples are the card's FLOPs over the planner's model FLOPs per sample (a locked
  image tower counts its forward only), the batch 16,384 is assumed (LiT's usual), and the
  image tower runs in every step (``lock_image``), as big_vision's LiT configs do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlscale.plan.config import PlanConfig, make_plan_config

MODELS = Path(__file__).resolve().parents[1] / "specs" / "data" / "published_models"


@dataclass(frozen=True)
class LockedRun:
    name: str
    config: PlanConfig
    wall_time_h: float
    upper_bound: bool  # the paper says "less than"
    published_flops: float | None
    source: str


def _siglit(model: str, batch: int, steps: int) -> PlanConfig:
    return make_plan_config(
        model=str(MODELS / f"{model}.yaml"),
        recipe="siglip",
        device="TPUv4",
        devices=4,
        global_batch=batch,
        samples=batch * steps,
        precision="bf16",
        sharding="fsdp",
        image_embeddings="precomputed",
    )


LIT_BATCH = 16_384  # assumed: the model card does not give it


def lit_config(model: str, samples: int) -> PlanConfig:
    return make_plan_config(
        model=str(MODELS / f"{model}.yaml"),
        recipe="clip",
        device="TPUv4",
        devices=64,
        global_batch=LIT_BATCH,
        samples=samples,
        precision="bf16",
        sharding="fsdp",
        lock_image=True,
    )


def lit_samples(model: str, published_flops: float) -> int:
    """Samples that make the planner's model FLOPs equal the card's total."""
    from vlscale.plan.planner import plan

    probe = plan(lit_config(model, LIT_BATCH))
    return round(published_flops / (probe.costs.model_flops_per_step / LIT_BATCH))


SIGLIT_SOURCE = "Zhai et al. 2023 (SigLIP), section 4.4"
LIT_SOURCE = "LiT model card, google-research/vision_transformer model_cards/lit.md"


def locked_runs() -> dict[str, LockedRun]:
    """The cases (LiT's samples are solved from the card's FLOPs, hence a function)."""
    runs = [
        LockedRun(
            "siglit-b8-l12-tpuv4",
            _siglit("SigLiT-B-8-L12", 32_768, 65_000),
            24.0,
            True,
            None,
            f"{SIGLIT_SOURCE}: frozen B/8, 12-layer Large text, 4 TPUv4, batch 32k, 65k steps, "
            "under one day",
        ),
        LockedRun(
            "siglit-g14-l-tpuv4",
            _siglit("SigLiT-g-14-L", 20_480, 107_000),
            48.0,
            True,
            None,
            f"{SIGLIT_SOURCE}: frozen g/14, 4 TPUv4, batch 20k, 107k steps, two days",
        ),
    ]
    for model, days, flops in (("LiT-B16B", 0.125, 1.5e19), ("LiT-L16L", 1.0, 9e19)):
        config = lit_config(model, lit_samples(model, flops))
        runs.append(
            LockedRun(
                model.lower() + "-tpuv4", config, 24.0 * days, False, flops,
                f"{LIT_SOURCE}: {model}, 64 TPUv4 chips, {days} days, {flops:.2g} FLOPs",
            )
        )  # fmt: skip
    return {run.name: run for run in runs}
