"""Hand-computed parameter counts (the arithmetic is written out, not copied from the code)."""

from vlscale.costs.params import block_params, count_params, vision_params
from vlscale.specs import get_model


def test_vit_b_32_block_by_hand():
    # ln1 2·768 + qkv 3·768² + 3·768 + out 768² + 768 + ln2 2·768 + fc1 768·3072 + 3072
    # + fc2 3072·768 + 768
    d, h = 768, 3072
    expected = 2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + d * h + h + h * d + d
    assert expected == 7_087_872
    assert block_params(get_model("ViT-B-32").vision.trunk) == expected


def test_vit_b_32_image_tower_by_hand():
    d = 768
    stem = 3 * 32 * 32 * d  # conv without bias
    tokens = d + 50 * d  # cls + positions for 49 patches + cls
    norms = 2 * d + 2 * d  # ln_pre, ln_post
    proj = d * 512
    expected = stem + tokens + norms + 12 * 7_087_872 + proj
    assert vision_params(get_model("ViT-B-32").vision, 512) == expected == 87_849_216


def test_eva02_block_has_qv_bias_subln_and_swiglu():
    # EVA02-B-16: q, v biases only; sub-LN over d before out-proj and over h before fc2.
    d, h = 768, 2048
    attn = 3 * d * d + 2 * d + 2 * d + d * d + d
    mlp = 2 * (d * h + h) + 2 * h + h * d + d
    expected = 2 * d + attn + 2 * d + mlp
    assert block_params(get_model("EVA02-B-16").vision.trunk) == expected


def test_total_is_towers_plus_two_logit_scalars():
    count = count_params(get_model("ViT-B-16-SigLIP"))
    assert count.total == count.image + count.text + 2
