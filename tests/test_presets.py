"""The preset file (``vlscale/specs/data/models.yaml``): every entry loads, names the OpenCLIP
config it mirrors where OpenCLIP has one, and families fill in defaults without hiding fields.

That the presets ARE OpenCLIP's models is held by ``tests/test_openclip.py`` (state-dict names
and shapes against OpenCLIP's own, ``tests/fixtures/openclip/keys``)."""

import json
from pathlib import Path

import pytest

from vlscale.errors import ConfigError
from vlscale.specs.models import ModelSpec
from vlscale.specs.presets import (
    BYTE_VOCAB,
    get_model,
    list_models,
    openclip_config_name,
    text_tower,
    vision_tower,
)

KEYS = Path(__file__).parent / "fixtures" / "openclip" / "keys"


@pytest.mark.parametrize("name", list_models())
def test_every_preset_is_a_valid_model_file(name):
    spec = get_model(name)
    assert spec.name == name and spec.source
    # what `vlscale models show NAME --yaml` prints reads back as the same model
    assert ModelSpec.model_validate(spec.model_dump()) == spec


@pytest.mark.parametrize("path", sorted(KEYS.glob("*.json")), ids=lambda p: p.stem)
def test_presets_with_openclip_fixtures_name_that_config(path):
    name = json.loads(path.read_text())["model"]
    assert openclip_config_name(name) == f"{name}.json"


@pytest.mark.parametrize("name", list_models())
def test_the_source_names_the_mirrored_openclip_config(name):
    config = openclip_config_name(name)
    if config is not None:
        assert f"model_configs/{config}" in get_model(name).source


def test_cpu_presets_use_the_byte_vocabulary():
    for name in ("tiny-clip", "tiny-siglip", "tiny-eva", "small-clip", "medium-clip"):
        assert get_model(name).text.vocab_size == BYTE_VOCAB
        assert openclip_config_name(name) is None


def test_family_defaults_merge_under_the_towers_own_fields():
    trunk = {"width": 64, "depth": 2, "heads": 4, "mlp_width": 256, "mlp_kind": "gelu"}
    tower = vision_tower({"family": "eva_vit", "image_size": 32, "patch_size": 8, "trunk": trunk})
    assert tower.rope and tower.pool == "cls" and tower.proj == "linear_bias"
    assert tower.trunk.mlp_kind == "gelu"  # the tower's own field wins
    assert tower.trunk.sub_ln and tower.trunk.norm_eps == 1e-6  # the family's defaults stay


def test_shared_text_towers_are_looked_up_by_name():
    assert text_tower("openclip-L") == get_model("ViT-L-14").text
    assert get_model("ViT-bigG-14").text == get_model("EVA02-E-14-plus").text


def test_unknown_family_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown tower family 'vitt'"):
        vision_tower({"family": "vitt", "image_size": 32, "patch_size": 8})
