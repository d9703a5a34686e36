"""Published locked-tower runs (LiT, SigLiT) of the published record
(``vlscale/plan/data/published_runs.yaml``) against the planner: predictions, nothing fitted.
Measured on this commit (TPUv4 with the planner's assumed framework efficiency; checkpointing
as the record's rule: on only where a run does not fit without it, which SigLiT does not):

    run                  published        predicted   error
    SigLiT B/8 + L12     < 24 h           50.5 h      +110 %  (a miss: slower than the bound)
    SigLiT g/14 + L      < 48 h           101.4 h     +111 %  (a miss)
    LiT B16B             3 h              1.32 h      −56 %   (a miss: the card's 1153 TFLOP/s
                                                              on 64 chips is 6.5 % of peak)
    LiT L16L             24 h             7.17 h      −70 %   (a miss)

So the locked runs are within a factor of 4 and no closer; the misses are stated, not tuned
away (the TPUv4 has no calibrated efficiency). What is checked exactly: the model files match
the card's parameter counts, a frozen tower's precomputed embeddings leave it out of the step,
the embedding pass is reported on its own line, and LiT's samples reproduce the card's FLOPs.
Run with ``-s`` to see the table."""

from __future__ import annotations

import pytest

from vlscale.costs.params import count_params
from vlscale.plan import plan
from vlscale.plan.published_record import MODELS, load_record, predict, relative_error
from vlscale.specs.presets import resolve_model

RUNS = {r.id: r for r in load_record() if "lit" in r.id.split("-")[0]}
CARD_FLOPS = {"lit-b16b-tpuv4": 1.5e19, "lit-l16l-tpuv4": 9e19}


def test_the_record_holds_the_four_locked_runs():
    assert sorted(RUNS) == sorted(
        ["lit-b16b-tpuv4", "lit-l16l-tpuv4", "siglit-b8-l12-tpuv4", "siglit-g14-l-tpuv4"]
    )


@pytest.mark.parametrize(("name", "params"), [("LiT-B16B", 196e6), ("LiT-L16L", 638e6)])
def test_lit_model_files_match_the_cards_weights(name, params):
    spec = resolve_model(str(MODELS / f"{name}.yaml"))
    assert count_params(spec).total == pytest.approx(params, rel=0.01)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_locked_run_predictions_with_their_error(name):
    run = RUNS[name]
    assert run.split == "prediction"
    predicted = predict(run)
    error = relative_error(run, predicted)
    print(f"\n{name}: published {run.published:.3g} h, predicted {predicted:.3g} h "
          f"({error:+.0%}); {run.quote}")  # fmt: skip
    assert 0.25 < predicted / run.published < 4.0
    result = plan(run.config(checkpointing=not plan(run.config()).fits))
    assert result.to_json()["locked"]["image"] == "all"
    if run.config().layout.precomputed_image:
        assert result.embedding_pass["flops"] > 0
    if name in CARD_FLOPS:
        flops = result.costs.model_flops_per_step * result.steps
        assert flops == pytest.approx(CARD_FLOPS[name], rel=0.01)
