"""``--model FILE``: vlscale's own YAML/JSON model spec or an OpenCLIP model config, resolved
once (``vlscale.specs.presets.resolve_model``) for every command."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.cli_args import load_config
from vlscale.costs.params import count_params
from vlscale.errors import ConfigError
from vlscale.plan.config import make_plan_config
from vlscale.plan.planner import resolve
from vlscale.specs import get_model, list_models
from vlscale.specs.presets import resolve_model

FIXTURES = Path(__file__).parent / "fixtures" / "openclip"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlscale.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", list_models())
def test_every_preset_round_trips_through_its_yaml(tmp_path, name):
    spec = get_model(name)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    assert resolve_model(str(path)) == spec


def test_models_show_yaml_is_a_starting_file(tmp_path):
    out = run_cli("models", "show", "EVA02-B-16", "--yaml")
    assert out.returncode == 0, out.stderr
    data = yaml.safe_load(out.stdout)
    assert data["vision"]["rope_ref_grid"] == 16 and data["vision"]["trunk"]["norm_eps"] == 1e-6
    # edit it into a user's own architecture and plan with it
    data["vision"]["trunk"]["depth"] = 6
    data.pop("name")
    path = tmp_path / "my-eva.yaml"
    path.write_text(yaml.safe_dump(data))
    out = run_cli("params", str(path), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    spec = resolve_model(str(path))
    assert result["model"] == "my-eva" and result["total"] == count_params(spec).total
    assert result["image"] < count_params(get_model("EVA02-B-16")).image


def test_openclip_config_resolves_to_openclips_architecture():
    spec = resolve_model(str(FIXTURES / "tiny_clip_mlp2" / "open_clip_config.json"))
    v, t = spec.vision, spec.text
    assert (v.image_size, v.patch_size, v.trunk.width, v.trunk.depth) == (48, 16, 96, 3)
    assert (v.trunk.heads, v.trunk.mlp_width, v.trunk.norm_eps) == (3, 192, 1e-5)  # head_width 32
    assert (t.vocab_size, t.context_length, t.trunk.width, t.trunk.heads) == (500, 12, 32, 4)
    assert t.trunk.mlp_width == 128 and t.causal and t.pool == "eos" and spec.embed_dim == 48


def test_vit_b_32_openclip_config_equals_the_preset(tmp_path):
    # the content of open_clip/model_configs/ViT-B-32.json
    config = {
        "embed_dim": 512,
        "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                     "layers": 12},
    }  # fmt: skip
    path = tmp_path / "ViT-B-32.json"
    path.write_text(json.dumps(config))
    spec = resolve_model(str(path))
    preset = get_model("ViT-B-32")
    assert (spec.vision, spec.text, spec.embed_dim) == (preset.vision, preset.text, 512)


@pytest.mark.parametrize(
    "content, field",
    [
        ('{"embed_dim": 8, "vision_cfg": {"timm_model_name": "vit_x"}}', "model.vision_cfg"),
        ('{"embed_dim": 8, "vision_cfg": {}, "quick_gelu": true}', "model.quick_gelu"),
        ('{"embed_dim": 8, "vision_cfg": {"layers": [3, 4, 6]}}', "model.vision_cfg.layers"),
        (
            '{"embed_dim": 8, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 7}}',
            "model.vision_cfg.width",
        ),
        ("vision: {image_size: 32}", "model"),
        ("[1, 2]", "model"),
        ("a: [", "model"),
    ],
)
def test_bad_model_files_are_one_line_errors(tmp_path, content, field):
    path = tmp_path / "m.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        resolve_model(str(path))
    assert err.value.field.startswith(field)
    out = run_cli("flops", str(path), "--json")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: model") and len(out.stderr.strip().splitlines()) == 1


def test_missing_model_file_is_a_config_error():
    with pytest.raises(ConfigError, match="no such model file"):
        resolve_model("nowhere/model.yaml")


def test_plan_and_trainer_accept_model_files(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(get_model("tiny-clip").model_dump(mode="json")))
    spec, _, _ = resolve(make_plan_config(model=str(path), devices=8, global_batch=64))
    assert spec == get_model("tiny-clip")
    cfg = load_config(["--model", str(path)], world_size=1)
    assert cfg.model_spec() == get_model("tiny-clip")
    out = run_cli("plan", "--model", str(path), "--devices", "8", "--global-batch", "64", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["step_time_s"] > 0


def test_models_show_unknown_name_is_one_line():
    out = run_cli("models", "show", "ViT-B-33", "--yaml")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: model: unknown model 'ViT-B-33'; did you mean: ViT-B-32")
