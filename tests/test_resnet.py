"""CLIP's ResNet image tower: the spec (``vlscale.specs.towers.ResNetTowerSpec``), its presets,
the torch module (``models.resnet``) and OpenCLIP's ``tiny_rn`` fixture reproduced
(``tests/fixtures/openclip/README.md``). Key maps and the round trip: ``tests/test_openclip.py``."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.checkpoint import checkpoint

from models import build_model
from models.openclip import convert_from_openclip, from_openclip
from models.resnet import BatchNorm2d, block_stage
from vlscale.costs.params import count_params
from vlscale.errors import ConfigError
from vlscale.specs import get_model, list_models
from vlscale.specs.presets import resolve_model

safetensors_torch = pytest.importorskip("safetensors.torch")

TINY_RN = Path(__file__).parent / "fixtures" / "openclip" / "tiny_rn"
KEYS = Path(__file__).parent / "fixtures" / "openclip" / "keys"

# name: (image size, blocks per stage, width, embed_dim, text width, text heads), as OpenCLIP's
# open_clip/model_configs/<name>.json
OPENCLIP_RN = {
    "RN50": (224, (3, 4, 6, 3), 64, 1024, 512, 8),
    "RN101": (224, (3, 4, 23, 3), 64, 512, 512, 8),
    "RN50x4": (288, (4, 6, 10, 6), 80, 640, 640, 10),
    "RN50x16": (384, (6, 8, 18, 8), 96, 768, 768, 12),
    "RN50x64": (448, (3, 15, 36, 10), 128, 1024, 1024, 16),
}


@pytest.mark.parametrize("name", OPENCLIP_RN)
def test_presets_are_openclips_configs(name):
    spec = get_model(name)
    v, t = spec.vision, spec.text
    image, layers, width, embed, text_width, text_heads = OPENCLIP_RN[name]
    assert (v.kind, v.image_size, v.layers, v.width, spec.embed_dim) == (
        "resnet", image, layers, width, embed
    )  # fmt: skip
    assert v.heads == width * 32 // 64 and v.grid == image // 32 and v.norm_eps == 1e-5
    assert (t.trunk.width, t.trunk.heads, t.trunk.depth, t.context_length) == (
        text_width, text_heads, 12, 77
    )  # fmt: skip


@pytest.mark.parametrize("name", OPENCLIP_RN)
def test_parameters_equal_openclips_state_dict(name):
    # every OpenCLIP parameter (not the batch-norm statistics) once, plus our logit_bias
    shapes = json.loads((KEYS / f"{name}.json").read_text())["state_dict"]
    stats = ("running_mean", "running_var", "num_batches_tracked")
    theirs = sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith(stats))
    model = build_model(get_model(name), device="meta")
    assert sum(p.numel() for p in model.parameters()) == theirs + 1


@pytest.mark.parametrize("name", [*OPENCLIP_RN, "tiny-rn"])
def test_presets_round_trip_through_yaml(tmp_path, name):
    spec = get_model(name)
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    assert resolve_model(str(path)) == spec


def test_resnets_are_listed_and_counted():
    # `vlscale models` lists what it can count: vlscale.costs models ResNet towers (exact
    # equalities in tests/test_resnet_costs.py)
    assert {*OPENCLIP_RN, "tiny-rn"} <= set(list_models())
    model = build_model(get_model("RN50"), device="meta")
    assert count_params(get_model("RN50")).total == sum(p.numel() for p in model.parameters())


def test_openclip_config_resolves_to_a_resnet():
    spec = resolve_model(str(TINY_RN / "open_clip_config.json"))
    v = spec.vision
    assert (v.kind, v.layers, v.width, v.image_size, v.heads) == ("resnet", (1, 2, 1, 1), 8, 64, 4)


@pytest.mark.parametrize(
    "vision, field",
    [
        ({"layers": [1, 1, 1], "width": 8}, "model.vision_cfg.layers"),
        ({"layers": [1, 1, 1, 0], "width": 8}, "model.vision_cfg.layers"),
        ({"layers": [1, 1, 1, 1], "width": 7}, "model.vision_cfg.width"),
        ({"layers": [1, 1, 1, 1], "image_size": 200}, "model.vision_cfg.image_size"),
        ({"layers": [1, 1, 1, 1], "width": 8, "head_width": 48}, "model.vision_cfg.head_width"),
    ],
)
def test_bad_resnet_configs_are_one_config_error(tmp_path, vision, field):
    path = tmp_path / "rn.json"
    path.write_text(json.dumps({"embed_dim": 8, "vision_cfg": vision}))
    with pytest.raises(ConfigError) as err:
        resolve_model(str(path))
    assert err.value.field == field


def test_patch_dropout_with_a_resnet_is_one_clear_error():
    spec = get_model("RN50")
    assert spec.check_mask_ratio(0.0) == 0.0
    with pytest.raises(ConfigError) as err:
        spec.check_mask_ratio(0.5)
    assert str(err.value) == (
        "mask_ratio: patch dropout has no meaning for a ResNet image tower (RN50); use 0 or a ViT"
    )
    model = build_model(get_model("tiny-rn"))
    with pytest.raises(ConfigError, match="tiny-rn"):
        model.encode_image(torch.zeros(1, 3, 64, 64), mask_ratio=0.5)


def test_blocks_are_the_bottlenecks_in_order():
    spec = get_model("RN50")
    model = build_model(spec, device="meta")
    blocks = model.visual.blocks
    assert len(blocks) == sum(spec.vision.layers) == 16
    # the first block of each stage has the shortcut convolution; stages 1-3 stride by pooling
    firsts = [i for i, b in enumerate(blocks) if b.downsample is not None]
    assert firsts == [0, 3, 7, 13]
    assert [block_stage(spec.vision, i) for i in firsts] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert [isinstance(blocks[i].pool, torch.nn.AvgPool2d) for i in firsts] == [0, 1, 1, 1]
    assert all(m.stride == (1, 1) for m in model.visual.blocks.modules() if hasattr(m, "stride")
               and isinstance(m, torch.nn.Conv2d))  # fmt: skip


def test_tiny_rn_forward_and_init():
    torch.manual_seed(0)
    model = build_model(get_model("tiny-rn"))
    out = model.encode_image(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 32) and torch.isfinite(out).all()
    # each bottleneck starts as its shortcut: its last batch norm's weight is zero (as OpenCLIP)
    assert all(not b.bn3.weight.any() and b.bn1.weight.all() for b in model.visual.blocks)


def _load_tiny_rn(spec=None):
    weights = safetensors_torch.load_file(str(TINY_RN / "weights.safetensors"))
    io = safetensors_torch.load_file(str(TINY_RN / "io.safetensors"))
    spec = spec or resolve_model(str(TINY_RN / "open_clip_config.json"))
    return from_openclip(weights, spec).eval(), io


def _image_error(model, io) -> float:
    with torch.no_grad():
        got = model.encode_image(io["images"], normalize=False)
    want = io["image_features"]
    return ((got - want).norm() / want.norm()).item()


def test_tiny_rn_reproduces_openclip_in_eval_mode():
    model, io = _load_tiny_rn()
    assert _image_error(model, io) <= 1e-5


def test_tiny_rn_fails_with_a_wrong_batch_norm_eps():
    spec = resolve_model(str(TINY_RN / "open_clip_config.json"))
    wrong = spec.model_copy(update={"vision": spec.vision.model_copy(update={"norm_eps": 1e-3})})
    model, io = _load_tiny_rn(wrong)
    assert _image_error(model, io) > 1e-4


def test_tiny_rn_fails_without_the_running_statistics():
    model, io = _load_tiny_rn()
    for m in model.modules():
        if isinstance(m, BatchNorm2d):
            m.reset_running_stats()  # as if the file's running_mean / running_var were ignored
    assert _image_error(model, io) > 1e-3
    model, io = _load_tiny_rn()
    model.visual.train()  # batch statistics instead of the running ones
    assert _image_error(model, io) > 1e-3


def test_checkpoint_recompute_moves_running_stats_once():
    torch.manual_seed(0)
    plain = build_model(get_model("tiny-rn")).visual
    checkpointed = build_model(get_model("tiny-rn")).visual
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(4, 3, 64, 64)
    plain(x).sum().backward()
    y = checkpointed.stem(x)
    for block in checkpointed.blocks:
        y = checkpoint(block, y, use_reentrant=False)
    checkpointed.pool(y).sum().backward()
    for (name, a), b in zip(
        plain.state_dict().items(), checkpointed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
    for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_bf16_parameters_with_fp32_statistics():
    # FSDP2's mixed precision casts parameters, not buffers: batch norm must still run
    torch.manual_seed(0)
    tower = build_model(get_model("tiny-rn")).visual
    for p in tower.parameters():
        p.data = p.data.bfloat16()
    out = tower(torch.randn(2, 3, 64, 64, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and tower.blocks[0].bn1.running_mean.dtype == torch.float32


def test_image_tower_alone_loads_from_an_openclip_file():
    # trainer --init-image-from: only the visual.* tensors, num_batches_tracked optional
    weights = safetensors_torch.load_file(str(TINY_RN / "weights.safetensors"))
    spec = resolve_model(str(TINY_RN / "open_clip_config.json"))
    ours = convert_from_openclip(weights, spec, only="visual.")
    model = build_model(spec, device="meta")
    want = {k for k in model.state_dict() if k.startswith("visual.")}
    assert set(ours) == {k for k in want if not k.endswith("num_batches_tracked")}
