"""Published locked-tower runs (``vlscale.plan.locked_runs``) against the planner: predictions,
nothing fitted. Measured on this commit (TPUv4 with the planner's assumed framework efficiency):

    run                  published        predicted   ratio
    SigLiT B/8 + L12     < 24 h           40.9 h      1.70  (a miss: slower than the bound)
    SigLiT g/14 + L      < 48 h           81.8 h      1.70  (a miss)
    LiT B16B             3 h              1.32 h      0.44  (a miss: the card's 1153 TFLOP/s
                                                            on 64 chips is 6.5 % of peak)
    LiT L16L             24 h             7.17 h      0.30  (a miss)

So the locked runs are within a factor of 4 and no closer; the misses are stated, not tuned
away (the TPUv4 has no calibrated efficiency). What is checked exactly: the model files match
the card's parameter counts, a frozen tower's precomputed embeddings leave it out of the step,
and the embedding pass is reported on its own line. Run with ``-s`` to see the table."""

from __future__ import annotations

import pytest

from vlscale.costs.params import count_params
from vlscale.plan import plan
from vlscale.plan.locked_runs import locked_runs
from vlscale.specs.presets import resolve_model

RUNS = locked_runs()


@pytest.mark.parametrize(("name", "params"), [("LiT-B16B", 196e6), ("LiT-L16L", 638e6)])
def test_lit_model_files_match_the_cards_weights(name, params):
    from vlscale.plan.locked_runs import MODELS

    spec = resolve_model(str(MODELS / f"{name}.yaml"))
    assert count_params(spec).total == pytest.approx(params, rel=0.01)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_locked_run_predictions_with_their_error(name):
    run = RUNS[name]
    result = plan(run.config)
    ratio = result.wall_time_h / run.wall_time_h
    bound = "< " if run.upper_bound else ""
    print(f"\n{name}: published {bound}{run.wall_time_h:.3g} h, predicted "
          f"{result.wall_time_h:.3g} h (x{ratio:.2f}); {run.source}")  # fmt: skip
    assert result.to_json()["locked"]["image"] == "all"
    assert 0.25 < ratio < 4.0
    if run.config.layout.precomputed_image:
        assert result.embedding_pass["flops"] > 0
    if run.published_flops:
        assert result.costs.model_flops_per_step * result.steps == pytest.approx(
            run.published_flops, rel=0.01
        )
