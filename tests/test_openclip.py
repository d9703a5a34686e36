"""OpenCLIP checkpoints in and out (``models.openclip``), against fixtures made with
open-clip-torch 3.3.0 (``tests/fixtures/openclip/README.md``)."""

import json
from pathlib import Path

import pytest
import torch

from models import build_model
from models.openclip import (
    convert_from_openclip,
    from_openclip,
    load_state_dict_file,
    openclip_shapes,
    save_state_dict_file,
    to_openclip,
)
from vlscale.errors import ConfigError
from vlscale.specs import get_model
from vlscale.specs.presets import resolve_model

safetensors_torch = pytest.importorskip("safetensors.torch")

FIXTURES = Path(__file__).parent / "fixtures" / "openclip"
KEY_FILES = sorted((FIXTURES / "keys").glob("*.json"))
TINY = ["tiny_clip", "tiny_clip_mlp2", "tiny_rn"]


def fixture_shapes(path):
    data = json.loads(path.read_text())
    return data["model"], {k: tuple(v) for k, v in data["state_dict"].items()}


def test_there_are_seventeen_key_fixtures():
    assert len(KEY_FILES) == 17  # 12 ViTs, RN50 ... RN50x64


@pytest.mark.parametrize("path", KEY_FILES, ids=lambda p: p.stem)
def test_export_names_and_shapes_are_openclips(path):
    name, want = fixture_shapes(path)
    assert openclip_shapes(get_model(name)) == want


@pytest.mark.parametrize("path", KEY_FILES, ids=lambda p: p.stem)
def test_import_maps_every_key_onto_our_state_dict(path):
    name, shapes = fixture_shapes(path)
    spec = get_model(name)
    theirs = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    ours = convert_from_openclip(theirs, spec)
    model = build_model(spec, device="meta")
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if "logit_bias" not in shapes:  # OpenCLIP's CLIP models have none: ours keeps its init
        want.pop("logit_bias")
    assert {k: tuple(v.shape) for k, v in ours.items()} == want


def load_tiny(name):
    base = FIXTURES / name
    spec = resolve_model(str(base / "open_clip_config.json"))
    weights = safetensors_torch.load_file(str(base / "weights.safetensors"))
    io = safetensors_torch.load_file(str(base / "io.safetensors"))
    return spec, weights, io


def relative_error(got, want):
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("name", TINY)
def test_tiny_openclip_models_are_reproduced(name):
    _, weights, io = load_tiny(name)
    # the model given as the OpenCLIP config file itself (a preset name or ModelSpec also work)
    model = from_openclip(weights, str(FIXTURES / name / "open_clip_config.json")).eval()
    with torch.no_grad():
        image = model.encode_image(io["images"], normalize=False)
        text = model.encode_text(io["tokens"], normalize=False)
    assert relative_error(image, io["image_features"]) <= 1e-5
    assert relative_error(text, io["text_features"]) <= 1e-5
    assert model.logit_scale.item() == io["logit_scale"].item()


@pytest.mark.parametrize("name", TINY)
def test_export_import_round_trip_is_exact(name):
    spec, weights, _ = load_tiny(name)
    exported = to_openclip(from_openclip(weights, spec))
    # OpenCLIP's batch norms also hold num_batches_tracked, which tiny_rn's file leaves out
    extra = exported.keys() - weights.keys()
    assert weights.keys() <= exported.keys()
    assert all(k.endswith(".num_batches_tracked") for k in extra), extra
    for key, tensor in weights.items():
        assert exported[key].shape == tensor.shape, key
        assert torch.equal(exported[key], tensor), key
    # and ours -> OpenCLIP -> ours, on a preset with fused / split / transposed tensors
    torch.manual_seed(0)
    eva = build_model(get_model("tiny-eva"))
    back = from_openclip(to_openclip(eva), get_model("tiny-eva"))
    for key, tensor in eva.state_dict().items():
        if key != "logit_bias":  # EVA-CLIP (softmax) checkpoints have no logit_bias
            assert torch.equal(back.state_dict()[key], tensor), key


def test_eva_export_splits_qkv_and_swiglu_halves():
    torch.manual_seed(0)
    spec = get_model("tiny-eva")
    model = build_model(spec)
    sd = to_openclip(model)
    block = model.visual.blocks[0]
    d, h = spec.vision.trunk.width, spec.vision.trunk.mlp_width
    p = "visual.trunk.blocks.0."
    torch.testing.assert_close(sd[p + "attn.k_proj.weight"], block.attn.qkv.weight[d : 2 * d])
    torch.testing.assert_close(sd[p + "mlp.fc1_g.weight"], block.mlp.fc1.weight[:h])
    torch.testing.assert_close(sd[p + "mlp.fc1_x.weight"], block.mlp.fc1.weight[h:])
    assert sd["logit_scale"].shape == ()


def test_missing_and_unknown_keys_are_listed():
    spec, weights, _ = load_tiny("tiny_clip")
    broken = dict(weights)
    broken.pop("visual.ln_post.weight")
    broken["visual.extra"] = torch.zeros(3)
    broken["ln_final.bias"] = torch.zeros(7)
    with pytest.raises(ConfigError) as err:
        from_openclip(broken, spec)
    message = str(err.value)
    assert message.startswith("init_from: ")
    assert "missing 1 key(s): visual.ln_post.weight" in message
    assert "unexpected 1 key(s): visual.extra" in message
    assert "ln_final.bias (7,) != (64,)" in message


def test_wrong_preset_is_a_clear_error():
    _, weights, _ = load_tiny("tiny_clip")
    with pytest.raises(ConfigError, match="not an OpenCLIP 'tiny-siglip' state_dict"):
        from_openclip(weights, "tiny-siglip")


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_files_round_trip(tmp_path, suffix):
    _, weights, _ = load_tiny("tiny_clip")
    path = tmp_path / f"model{suffix}"
    save_state_dict_file(weights, path)
    loaded = load_state_dict_file(path)
    assert loaded.keys() == weights.keys()
    assert all(torch.equal(loaded[k], weights[k]) for k in weights)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_training_checkpoint_wrapper_is_unwrapped(tmp_path):
    # OpenCLIP's own training checkpoints: {"epoch", "state_dict": {"module." + key}, ...}
    _, weights, _ = load_tiny("tiny_clip")
    path = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in weights.items()}}, path)
    assert load_state_dict_file(path).keys() == weights.keys()


def test_unreadable_file_is_a_config_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="init_from: cannot read"):
        load_state_dict_file(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_state_dict_file(tmp_path / "absent.pt")
