"""Spec validation and preset lookup: bad input gives one clear message naming the field."""

import pytest
from pydantic import ValidationError

from vlscale.errors import ConfigError, from_validation_error
from vlscale.specs import TrunkSpec, VisionTowerSpec, get_model, list_models
from vlscale.specs.recipes import RecipeSpec, default_recipe
from vlscale.specs.towers import kept_patches

REQUIRED_PRESETS = [
    "ViT-B-32",
    "ViT-B-16",
    "ViT-L-14",
    "ViT-L-14-336",
    "ViT-H-14",
    "ViT-g-14",
    "ViT-bigG-14",
    "ViT-B-16-SigLIP",
    "ViT-SO400M-14-SigLIP",
    "EVA02-B-16",
    "EVA02-L-14",
    "EVA02-E-14-plus",
    "EVA-CLIP-8B",
    "EVA-CLIP-18B",
]


def test_required_presets_exist_and_tiny_ones_too():
    names = list_models()
    for name in REQUIRED_PRESETS:
        assert name in names
    assert any(n.startswith("tiny-") for n in names)


def test_lookup_is_case_insensitive():
    assert get_model("vit-l-14").name == "ViT-L-14"


def test_unknown_preset_lists_close_matches():
    with pytest.raises(ConfigError) as err:
        get_model("ViT-L-41")
    assert err.value.field == "model"
    assert "ViT-L-14" in str(err.value)


def test_heads_must_divide_width():
    with pytest.raises(ValidationError) as err:
        TrunkSpec(width=100, depth=2, heads=3, mlp_width=400)
    error = from_validation_error(err.value)
    assert error.field == "heads"
    assert "heads=3 does not divide width=100" in str(error)
    assert "e.g. 2" in str(error)  # a nearby divisor is suggested


@pytest.mark.parametrize("field", ["width", "depth", "heads", "mlp_width"])
def test_sizes_must_be_positive(field):
    kwargs = dict(width=64, depth=2, heads=4, mlp_width=256) | {field: -1}
    with pytest.raises(ValidationError) as err:
        TrunkSpec(**kwargs)
    assert from_validation_error(err.value).field == field


def test_patch_must_divide_image():
    trunk = TrunkSpec(width=64, depth=1, heads=4, mlp_width=128)
    with pytest.raises(ValidationError, match="does not divide image_size") as err:
        VisionTowerSpec(image_size=30, patch_size=8, trunk=trunk)
    assert from_validation_error(err.value).field == "patch_size"


def test_image_size_override_is_validated():
    spec = get_model("ViT-L-14")
    assert spec.with_image_size(336).vision.num_patches == 24 * 24
    with pytest.raises(ValidationError):
        spec.with_image_size(225)


@pytest.mark.parametrize(
    "n, r, kept",
    # (10, 0.7): 1 - 0.7 = 0.30000000000000004 in floats, so 3.0000000000000004 -> 3, and
    # (10, 0.3): 10 * 0.7 = 7.0 -> 7; floor, never round: 49 * 0.5 = 24.5 -> 24
    [
        (196, 0.0, 196),
        (196, 0.5, 98),
        (196, 0.75, 49),
        (49, 0.5, 24),
        (4, 0.9, 1),
        (10, 0.7, 3),
        (10, 0.3, 7),
        (256, 0.9, 25),
    ],
)
def test_kept_patches_floors_like_openclip(n, r, kept):
    # open_clip/transformer.py PatchDropout: max(1, int(num_tokens * (1 - prob)));
    # timm/layers/patch_dropout.py: max(1, int(L * (1. - self.prob)))
    assert kept_patches(n, r) == kept


@pytest.mark.parametrize("r", [-0.1, 1.0, 1.5])
def test_mask_ratio_outside_unit_interval_rejected(r):
    with pytest.raises(ValueError):
        kept_patches(196, r)
    with pytest.raises(ValidationError):
        RecipeSpec(mask_ratio=r)


def test_recipe_defaults_follow_the_papers():
    import math

    assert default_recipe("siglip").init_logit_bias == -10.0
    assert default_recipe("siglip").init_logit_scale == pytest.approx(math.log(10))
    eva = default_recipe("eva-clip")
    assert (eva.mask_ratio, eva.optimizer, eva.betas) == (0.5, "lamb", (0.9, 0.95))
    assert default_recipe("clip").init_logit_scale == pytest.approx(math.log(1 / 0.07))


def test_ring_only_for_sigmoid():
    with pytest.raises(ValidationError, match="ring"):
        RecipeSpec(name="clip", loss_impl="ring")
    assert RecipeSpec(name="siglip", loss_impl="ring").loss == "sigmoid"
