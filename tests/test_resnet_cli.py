"""ResNet presets through the CLI: `vlscale models / params / flops / memory / plan` (issue 18),
and a mask ratio with a ResNet is one line and exit 2."""

from __future__ import annotations

import pytest

from tests.test_cli_bad_input import _fails
from tests.test_plan_cli import ok_json, vlscale
from vlscale.costs.flops import forward_flops
from vlscale.costs.params import count_params
from vlscale.specs import get_model


def test_models_lists_resnets_without_a_patch():
    rows = {r["name"]: r for r in ok_json("models")}
    for name in ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "tiny-rn"):
        assert rows[name]["patch_size"] is None
        assert rows[name]["total_params"] == count_params(get_model(name)).total
    assert rows["ViT-B-32"]["patch_size"] == 32
    table = vlscale("models").stdout
    rn50 = next(line for line in table.splitlines() if " RN50 " in line)
    assert "224" in rn50 and "-" in rn50


def test_params_and_flops_of_rn50x64():
    assert ok_json("params", "RN50x64")["total"] == count_params(get_model("RN50x64")).total
    flops = ok_json("flops", "RN50x64")
    assert flops["image"] == forward_flops(get_model("RN50x64")).image
    assert round(flops["image"] / 1e9, 2) == 520.25
    assert flops["flip_ratio"] == {"linear": 1.0, "attention": 1.0, "total": 1.0}


@pytest.mark.parametrize("name", ["RN50", "RN50x64"])
def test_memory_and_plan_run(name):
    memory = ok_json("memory", name, "--local-batch", "32", "--world-size", "8")
    assert memory["total"] > memory["breakdown"]["activations"] > 0
    plan = ok_json("plan", "--model", name, "--devices", "64", "--global-batch", "32768")
    assert plan["model"] == name and plan["step_time_s"] > 0 and 0 < plan["mfu"] < 1


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "--model", "RN50", "--mask-ratio", "0.5"],
        ["plan", "--model", "RN50", "--recipe", "eva-clip"],  # FLIP's default r = 0.5
        ["flops", "RN50", "--mask-ratio", "0.25"],
        ["memory", "RN50", "--mask-ratio", "0.25"],
    ],
)
def test_mask_ratio_with_a_resnet_is_one_line(args):
    _fails(*args, field="mask_ratio: patch dropout has no meaning for a ResNet image tower (RN50)")


def test_compare_a_resnet_leaves_out_the_flip_recipe_and_says_so():
    """The default compare set's EVA-CLIP is FLIP patch dropping, which a ResNet cannot do: it
    is left out with a note, and the other recipes compare (a ViT keeps all four)."""
    import json

    args = ["compare", "--devices", "8", "--global-batch", "256", "--json"]
    out = vlscale(*args, "--model", "RN50")
    assert out.returncode == 0, out.stderr
    assert "eva-clip left out" in out.stderr
    got = [(r["recipe"], r["loss_impl"]) for r in json.loads(out.stdout)]
    assert got == [("clip", "gather"), ("siglip", "gather"), ("siglip", "ring")]
    vit = vlscale(*args, "--model", "ViT-B-32")
    assert [r["recipe"] for r in json.loads(vit.stdout)][-1] == "eva-clip"
    assert "left out" not in vit.stderr
