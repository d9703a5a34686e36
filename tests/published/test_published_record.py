"""The published record (vlscale/plan/data/published_runs.yaml), the software stacks fitted on
it, leave-one-out errors and the coverage of the error bars (vlscale.plan.published_record,
vlscale.plan.papers_table, vlscale.specs.stacks).

Figures at the time of writing (``vlscale papers``): 47 runs + 4 FLIP ratio rows from 9 sources;
leave-one-out median |error| nemo-megatron A100 1.3 %, H100 1.9 %, openclip-2022 A100 14.6 %;
P10-P90 holds 36 of 43 published values (84 %), P5-P95 37 (86 %).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from vlscale.errors import ConfigError
from vlscale.plan.compute_model import CALIBRATED, stack_gamma
from vlscale.plan.config import make_plan_config
from vlscale.plan.papers_table import coverage, paper_rows
from vlscale.plan.planner import plan
from vlscale.plan.published_record import fit_group, fit_groups, load_record, predict
from vlscale.plan.published_runs import PREDICTED_RUNS, PUBLISHED_RUNS
from vlscale.specs.stacks import all_stacks, default_stack_name, get_stack


@pytest.fixture(scope="module")
def rows():
    return paper_rows()


def _row(rows, id_):
    return next(r for r in rows if r["id"] == id_)


# ----------------------------------------------------------------------------- the record


def test_record_has_35_runs_from_8_sources(rows):
    record = load_record()
    assert len(record) >= 35
    assert len({r["source_id"] for r in rows}) >= 8
    for run in record:
        assert run.quote and run.where and run.url.startswith("https://")
        if run.split == "not_plannable":
            assert run.reason
        else:
            assert run.published > 0 and run.samples > 0 and run.global_batch > 0


def test_rows_carry_the_contract_keys(rows):
    keys = {"id", "source", "metric", "published", "predicted", "error", "calibration"}
    keys |= {"stack", "hardware", "devices", "split", "loo_error", "p10", "p90"}
    assert all(keys <= set(r) for r in rows)
    planned = [r for r in rows if r["split"] != "not_plannable"]
    assert all(r["predicted"] > 0 for r in planned)
    # a band brackets its held-out prediction
    for r in planned:
        if r["p10"] is not None:
            assert r["p10"] < r["p90"]


# ----------------------------------------------------------------------------- leave-one-out


def test_leave_one_out_recovers_a_known_gamma():
    """Synthetic runs whose 'published' figure is the plan at γ = 0.5: the fit and every
    leave-one-out γ come back at 0.5 and the held-out errors vanish."""
    base = [r for r in load_record() if r.stack == "nemo-megatron" and r.kind == "A100"][:3]
    synthetic = [replace(r, published=predict(r, 0.5)) for r in base]
    fit = fit_group(synthetic)
    assert fit.gamma == pytest.approx(0.5, rel=2e-3)
    assert all(g == pytest.approx(0.5, rel=2e-3) for g in fit.loo_gamma.values())
    assert all(abs(r) < 5e-3 for r in fit.loo_log_residual.values())
    assert fit.sigma < 5e-3


def test_stored_stack_gammas_are_the_refit():
    """A pin: stacks.yaml holds what ``python -m vlscale.plan.stack_fit`` fits now (3 %)."""
    for (kind, stack), fit in fit_groups().items():
        profile = get_stack(stack)
        assert profile.gamma[kind] == pytest.approx(fit.gamma, rel=0.03), (kind, stack)
        assert set(profile.fitted_on[kind]) == set(fit.runs)
        if fit.sigma is not None:
            assert profile.sigma[kind] == pytest.approx(fit.sigma, rel=0.05, abs=0.005)


# ----------------------------------------------------------------------------- stacks


def test_three_profiles_and_a_default_that_changes_nothing():
    stacks = all_stacks()
    assert {"pytorch-fsdp2", "openclip-2022", "nemo-megatron"} <= set(stacks)
    assert default_stack_name() == "pytorch-fsdp2"
    assert stacks["openclip-2022"].attention == "math" and stacks["openclip-2022"].loss == "local"
    variant = stacks["openclip-2022-global-loss"]
    assert variant.loss == "global" and variant.gamma == stacks["openclip-2022"].gamma
    assert stacks["nemo-megatron"].attention == "flash"
    for device in ("V100", "A100-40GB", "A100-80GB"):
        assert stack_gamma(device) == CALIBRATED[device]
        assert stack_gamma(device, "pytorch-fsdp2") == CALIBRATED[device]
    cfg = make_plan_config(model="ViT-B-32", device="A100-40GB", devices=16, global_batch=4096)
    same = plan(cfg.model_copy(update={"stack": "pytorch-fsdp2"})).to_json()
    assert same == plan(cfg).to_json()


def test_unknown_stack_is_a_config_error():
    with pytest.raises(ConfigError, match="stack"):
        make_plan_config(model="ViT-B-32", stack="megatron-2019")


def test_a_stack_without_runs_on_a_device_borrows_the_default_gamma():
    gamma, why = stack_gamma("B200", "nemo-megatron")
    assert "assumed" in why and gamma == stack_gamma("B200")[0]


def test_nemo_g14_within_20_percent_held_out_and_h100_over_a100(rows):
    for kind in ("a100", "h100"):
        for nodes in (1, 16):
            row = _row(rows, f"nemo-vit-g14-{kind}-{nodes}node")
            assert abs(row["loo_error"]) < 0.20, row
    for nodes in (1, 16):
        a100 = _row(rows, f"nemo-vit-g14-a100-{nodes}node")["predicted"]
        h100 = _row(rows, f"nemo-vit-g14-h100-{nodes}node")["predicted"]
        assert 1.4 <= h100 / a100 <= 2.0


def test_openclip_runs_stay_where_they_were(rows):
    """openclip-2022 against the default stack's (the catalog's) γ on the OpenCLIP notes' runs.
    A miss of the issue's "same or better", stated: γ fitted on the 29 scaling-laws runs (0.337)
    is 1.5 % above the catalog's (0.332, solved from ViT-B/32 alone), so ViT-B/16 goes from
    -2.5 % to -4.0 % and ViT-L/14 from -8.9 % to -10.3 % (the planner a little too fast on both).
    Guarded here at 2 points; ViT-B/32, which the catalog's A100 γ was solved from (error 0 by
    construction), is now a prediction and lands within 3 %."""
    for run in PREDICTED_RUNS.values():
        before = abs(plan(run.config).wall_time_h / run.wall_time_h - 1)
        assert abs(_row(rows, run.name)["error"]) <= before + 0.02, run.name
    assert abs(_row(rows, "openclip-vit-b32-a100")["error"]) < 0.03
    assert "openclip-vit-b32-a100" in PUBLISHED_RUNS


# ----------------------------------------------------------------------------- error bars


def test_coverage_of_the_leave_one_out_bands(rows):
    cov = coverage(rows)
    assert cov["runs"] >= 35
    assert 0.70 <= cov["p10_p90"] <= 0.90  # the target; 36 / 43 when written
    assert cov["p05_p95"] >= cov["p10_p90"]


def test_uncertainty_uses_the_record_spread():
    from vlscale.plan.uncertainty import default_spread

    cfg = make_plan_config(model="tiny-clip", device="A100-80GB", devices=8, global_batch=64)
    nemo = default_spread(cfg.model_copy(update={"stack": "nemo-megatron"}))
    assert nemo.compute == get_stack("nemo-megatron").sigma["A100"]
    assert "leave-one-out" in nemo.compute_source
    openclip = default_spread(cfg)  # the default stack borrows openclip-2022's γ on A100
    assert openclip.compute == get_stack("openclip-2022").sigma["A100"]
    borrowed = default_spread(cfg.model_copy(update={"device": "H100"}))
    assert borrowed.compute > openclip.compute and math.isfinite(borrowed.compute)


# ----------------------------------------------------------------------------- commands


def test_papers_coverage_and_stacks_commands(rows):
    from vlscale.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["papers", "--coverage", "--json"])
    assert out.exit_code == 0, out.output
    cov = json.loads(out.output)
    assert {"p10_p90", "p05_p95", "runs"} <= set(cov) and cov == coverage(rows)
    out = runner.invoke(app, ["stacks", "--json"])
    assert out.exit_code == 0, out.output
    names = [s["name"] for s in json.loads(out.output)]
    assert names[0] == "pytorch-fsdp2" and "nemo-megatron" in names


def test_plan_stack_flag():
    from vlscale.cli import app

    args = ["plan", "--model", "ViT-g-14", "--device", "A100-80GB", "--devices", "8"]
    args += ["--global-batch", "512", "--sharding", "ddp", "--samples", "1e9", "--json"]
    runner = CliRunner()
    out = runner.invoke(app, [*args, "--stack", "nemo-megatron"])
    assert out.exit_code == 0, out.output
    nemo = json.loads(out.output)
    assert "nemo-megatron" in nemo["compute_model"]["source"]
    default = json.loads(runner.invoke(app, args).output)
    # NeMo's fused kernels: about twice the catalog's (OpenCLIP-2022) speed on this run
    assert nemo["samples_per_s"] > 1.8 * default["samples_per_s"]
    bad = runner.invoke(app, [*args, "--stack", "nope"])
    assert bad.exit_code == 2 and "stack" in bad.output
