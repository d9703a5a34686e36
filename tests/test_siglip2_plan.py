"""SigLIP 2 through ``vlscale plan`` / ``compare``: the phases in the JSON, the run integrated
over them, the human phase table, and bad input (one line, exit 2, nothing printed)."""

from __future__ import annotations

import csv
import json

import pytest

from tests.test_plan_cli import vlscale

EIGHT = ["--devices", "8", "--global-batch", "256"]
TINY = ["--model", "tiny-siglip", *EIGHT, "--samples", "1e7"]


def _json(*args: str) -> dict:
    out = vlscale("plan", *TINY, "--recipe", "siglip2", *args, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_plan_json_has_the_phases_and_integrates_them():
    r = _json()
    names = [p["name"] for p in r["phases"]]
    assert names == ["base", "self-distillation", "naflex"]
    for p in r["phases"]:
        for key in ("start_fraction", "end_fraction", "step_time_s", "memory_per_device_bytes"):
            assert key in p
        assert p["model_flops_per_step"] > 0
    assert r["wall_time_h"] == pytest.approx(sum(p["wall_time_h"] for p in r["phases"]))
    assert r["cost_usd"] == pytest.approx(sum(p["cost_usd"] for p in r["phases"]))
    biggest = max(r["phases"], key=lambda p: p["memory_per_device_bytes"])
    assert r["binding_phase"] == biggest["name"]
    assert r["memory_per_device_bytes"] == biggest["memory_per_device_bytes"]
    naflex = r["phases"][-1]
    assert [x["length"] for x in naflex["lengths"]] == [128, 256, 576, 784, 1024]
    assert naflex["lengths"][-1]["global_batch"] == 128  # halved from 1024 tokens on
    assert naflex["memory_per_device_bytes"] == max(
        x["memory_per_device_bytes"] for x in naflex["lengths"]
    )


def test_phase_starts_move_with_the_flags():
    r = _json("--distill-start", "0.5", "--naflex-start", "0.75")
    fractions = [(p["start_fraction"], p["end_fraction"]) for p in r["phases"]]
    assert fractions == [(0.0, 0.5), (0.5, 0.75), (0.75, 1.0)]


def test_objectives_off_drop_their_phase():
    r = _json("--objectives", "decoder")
    assert [p["name"] for p in r["phases"]] == ["base"]
    assert r["siglip2"]["distill"] is None and r["siglip2"]["decoder"] is not None


def test_siglip2_mapping_from_a_plan_file(tmp_path):
    f = tmp_path / "s2.yaml"
    f.write_text("siglip2:\n  decoder: {passes: 1}\n  naflex: null\n  distill_start: 0.6\n")
    r = _json("--config", str(f))
    assert [p["name"] for p in r["phases"]] == ["base", "self-distillation"]
    assert r["phases"][1]["start_fraction"] == 0.6
    assert r["siglip2"]["decoder"]["passes"] == 1


def test_human_plan_prints_the_phase_table_and_explain_still_works():
    out = vlscale("plan", *TINY, "--recipe", "siglip2", "--explain")
    assert out.returncode == 0, out.stderr
    assert "SigLIP 2 phases" in out.stdout and "self-distillation" in out.stdout
    assert "where each number comes from" in out.stdout
    js = vlscale("plan", *TINY, "--recipe", "siglip2", "--explain", "--json")
    assert js.returncode == 0 and "explain" in json.loads(js.stdout)


def test_other_recipes_have_no_phase_keys():
    out = vlscale("plan", *TINY, "--recipe", "siglip", "--json")
    assert out.returncode == 0
    assert not {"phases", "binding_phase", "siglip2"} & set(json.loads(out.stdout))


def test_compare_puts_siglip2_beside_siglip_and_prices_each_objective():
    out = vlscale("compare", *TINY, "--recipe", "siglip2", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["recipe"] for r in rows] == ["siglip"] + ["siglip2"] * 5
    assert [r.get("without") for r in rows[1:]] == [
        None,
        "distill,masked,naflex",
        "decoder,masked,naflex",
        "decoder,distill,naflex",
        "decoder,distill,masked",
    ]
    full, no_decoder = rows[1], rows[2]
    assert full["cost_usd"] > no_decoder["cost_usd"]
    human = vlscale("compare", *TINY, "--recipe", "siglip2")
    assert "what each SigLIP 2 objective costs" in human.stdout


def _sweep_rows(tmp_path, grid: str, *flags: str) -> tuple[list[dict], str]:
    (tmp_path / "grid.yaml").write_text(grid)
    out = vlscale("sweep", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "x.csv"),
                  "--quiet", *flags)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return list(csv.DictReader((tmp_path / "x.csv").open())), out.stderr


BASE = "base: {model: tiny-siglip, global_batch: 256, samples: 1.0e7, recipe: clip}\n"


def test_sweep_recipe_flag_sets_every_point_over_the_grid_file(tmp_path):
    rows, _ = _sweep_rows(tmp_path, BASE + "grid: {devices: [8, 16]}\n", "--recipe", "siglip2",
                          "--loss-impl", "ring")  # fmt: skip
    assert [(r["in.recipe"], r["recipe"], r["loss_impl"]) for r in rows] == [
        ("siglip2", "siglip2", "ring")
    ] * 2
    want = _json("--loss-impl", "ring")  # the same point through `vlscale plan`
    assert float(rows[0]["step_time_s"]) == pytest.approx(want["step_time_s"])
    assert float(rows[0]["phase.self-distillation.step_time_s"]) == pytest.approx(
        want["phases"][1]["step_time_s"]
    )


def test_sweep_beside_another_recipe_keeps_every_phase_column(tmp_path):
    """The first planned row is CLIP's: the SigLIP 2 columns must still be written (they were
    dropped, with a warning, when the header came from that row alone)."""
    from vlscale.plan.sweep import siglip2_columns

    rows, err = _sweep_rows(tmp_path, BASE + "grid: {devices: [8], recipe: [clip, siglip2]}\n")
    assert "not written" not in err
    clip, s2 = rows
    assert set(siglip2_columns()) <= set(clip)
    assert all(clip[k] == "" for k in siglip2_columns())
    assert s2["binding_phase"] and s2["phase.base.objectives"] == "decoder"
    assert s2["phase.self-distillation.objectives"] == "decoder+distill+masked"
    wall = sum(float(s2[f"phase.{n}.wall_time_h"]) for n in ("base", "self-distillation", "naflex"))
    assert float(s2["wall_time_h"]) == pytest.approx(wall)
    assert json.loads(s2["siglip2.decoder"])["passes"] == 3  # nested specs are JSON


def test_sweep_phase_columns_cover_every_scalar_of_a_phase():
    from vlscale.plan.sweep import PHASE_FIELDS

    for phase in _json()["phases"]:
        scalars = {k for k, v in phase.items() if k != "name" and not isinstance(v, list | dict)}
        assert scalars | {"objectives"} == set(PHASE_FIELDS), phase["name"]


def _fails(*args: str, field: str) -> None:
    out = vlscale(*args)
    assert out.returncode == 2, (out.returncode, out.stderr)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), out.stderr
    assert out.stdout == ""


def test_phase_fractions_out_of_order():
    _fails(
        "plan",
        *TINY,
        "--recipe",
        "siglip2",
        "--distill-start",
        "0.9",
        "--naflex-start",
        "0.5",
        field="siglip2.naflex_start",
    )


def test_decoder_wider_than_the_text_tower(tmp_path):
    f = tmp_path / "wide.yaml"
    f.write_text("recipe: siglip2\nsiglip2:\n  decoder: {width: 4096}\n")
    _fails("plan", *TINY, "--config", str(f), field="siglip2.decoder.width")


def test_naflex_lengths_off_the_patch_grid():
    # ViT-B-16-SigLIP is 224 px / 16: a grid side of 14 divides none of 128, 256, ...
    _fails(
        "plan",
        "--model",
        "ViT-B-16-SigLIP",
        "--recipe",
        "siglip2",
        *EIGHT,
        field="siglip2.naflex.lengths",
    )


@pytest.mark.parametrize(
    "flag", [["--objectives", "none"], ["--distill-start", "0.5"], ["--naflex-start", "0.95"]]
)
def test_siglip2_options_with_another_recipe(flag):
    _fails("plan", *TINY, "--recipe", "siglip", *flag, field="siglip2")


def test_distillation_with_a_resnet_tower():
    _fails("plan", "--model", "RN50", "--recipe", "siglip2", *EIGHT, field="siglip2.distill")


def test_unknown_objective():
    _fails("plan", *TINY, "--recipe", "siglip2", "--objectives", "decoder,foo", field="objectives")


def test_objectives_with_a_locked_tower_are_refused():
    _fails("plan", *TINY, "--recipe", "siglip2", "--lock-image", field="siglip2")
    # every objective off: SigLIP, locks and all
    out = vlscale("plan", *TINY, "--recipe", "siglip2", "--objectives", "none", "--lock-image")
    assert out.returncode == 0, out.stderr


def test_flip_masking_is_not_siglip2s():
    """SigLIP 2's masking is its own (siglip2.masked): FLIP's ratio is refused, as the
    trainer refuses it, by the one rule in ``RecipeSpec``."""
    _fails("plan", *TINY, "--recipe", "siglip2", "--mask-ratio", "0.5", field="mask_ratio")
    _fails(
        "memory", "tiny-siglip", "--recipe", "siglip2", "--mask-ratio", "0.5", field="mask_ratio"
    )


def test_memory_shows_every_phase_and_the_binding_one():
    """``vlscale memory --recipe siglip2``: each phase's total (NaFlex at its largest length),
    the breakdown of the largest, whose batch limit is the smallest over the phases."""
    from vlscale.costs.memory import estimate_memory
    from vlscale.costs.siglip2_memory import phases_memory
    from vlscale.specs.layout import RunLayout
    from vlscale.specs.presets import get_model
    from vlscale.specs.recipes import default_recipe

    args = ["memory", "ViT-B-16-SigLIP2-256", "--local-batch", "64", "--world-size", "64"]
    out = vlscale(*args, "--recipe", "siglip2", "--device", "H100", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert list(r["phases"]) == ["base", "self-distillation", "naflex"]
    assert r["total"] == max(r["phases"].values()) == r["phases"][r["binding_phase"]]
    layout = RunLayout(**r["layout"])
    spec, recipe = get_model("ViT-B-16-SigLIP2-256"), default_recipe("siglip2")
    by_hand = phases_memory(spec, layout, recipe, local_batch=64)
    assert r["phases"] == {name: m.total for name, m in by_hand.items()}
    siglip = estimate_memory(spec, layout, default_recipe("siglip"), local_batch=64).total
    assert r["phases"]["base"] > siglip  # the decoder's states and activations
    plan = _json_plan("ViT-B-16-SigLIP2-256", "64", "4096")
    assert r["max_local_batch"] == plan["max_local_batch"]


def _json_plan(model: str, devices: str, batch: str) -> dict:
    out = vlscale("plan", "--model", model, "--devices", devices, "--global-batch", batch,
                  "--recipe", "siglip2", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)
