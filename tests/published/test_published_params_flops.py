"""Published parameter and FLOP counts, reproduced by vlscale.costs within 1%.

Sources:
- OpenCLIP, docs/model_profile.csv
  https://github.com/mlfoundations/open_clip/blob/main/docs/model_profile.csv
  columns image_mparams, text_mparams, image_gflops, text_gflops (per sample, 2 FLOPs / MAC).
- EVA-CLIP-18B paper, Sun et al. 2024, arXiv 2402.04252, Table 1: image / text tower sizes.
"""

import pytest

from vlscale.costs.flops import forward_flops
from vlscale.costs.params import count_params
from vlscale.specs import get_model

# name: (image M params, text M params, image GFLOPs, text GFLOPs) from model_profile.csv
OPENCLIP_PROFILE = {
    "ViT-B-32": (87.85, 63.43, 8.82, 5.96),
    "ViT-B-16": (86.19, 63.43, 35.13, 5.96),
    "ViT-L-14": (303.97, 123.65, 162.03, 13.30),
    "ViT-L-16": (304.09, 123.65, 123.11, 13.30),
    "ViT-L-14-336": (304.29, 123.65, 381.92, 13.30),
    "ViT-H-14": (632.08, 354.03, 334.59, 47.09),
    "ViT-g-14": (1012.65, 354.03, 534.06, 47.09),
    "ViT-bigG-14": (1844.91, 694.66, 967.5, 97.86),
    "ViT-B-16-SigLIP": (92.88, 110.27, 35.42, 11.02),
    "ViT-SO400M-14-SigLIP": (427.68, 449.68, 220.35, 13.19),
    "EVA02-B-16": (86.26, 63.43, 35.13, 5.96),
    "EVA02-L-14": (304.11, 123.65, 162.0, 13.3),
    "EVA02-E-14-plus": (4350.56, 694.33, 2264.33, 97.86),
}

# name: (image params, text params) from arXiv 2402.04252 Table 1 (rounded there)
EVA_CLIP_PAPER = {
    "EVA-CLIP-8B": (7.5e9, 695e6),
    "EVA-CLIP-18B": (17.5e9, 695e6),
}

REL = 0.01


@pytest.mark.parametrize("name", list(OPENCLIP_PROFILE))
def test_openclip_profile_params(name):
    image_m, text_m, _, _ = OPENCLIP_PROFILE[name]
    count = count_params(get_model(name))
    assert count.image / 1e6 == pytest.approx(image_m, rel=REL)
    assert count.text / 1e6 == pytest.approx(text_m, rel=REL)


@pytest.mark.parametrize("name", list(OPENCLIP_PROFILE))
def test_openclip_profile_gflops(name):
    _, _, image_g, text_g = OPENCLIP_PROFILE[name]
    flops = forward_flops(get_model(name))
    assert flops.image / 1e9 == pytest.approx(image_g, rel=REL)
    assert flops.text / 1e9 == pytest.approx(text_g, rel=REL)


@pytest.mark.parametrize("name", list(EVA_CLIP_PAPER))
def test_eva_clip_paper_params(name):
    image, text = EVA_CLIP_PAPER[name]
    count = count_params(get_model(name))
    assert count.image == pytest.approx(image, rel=REL)
    assert count.text == pytest.approx(text, rel=REL)


# --- CLIP's ResNets, same source (model_profile.csv rows RN50 ... RN50x64) -------------------
OPENCLIP_RN_PROFILE = {
    "RN50": (38.32, 63.69, 12.22, 5.96),
    "RN101": (56.26, 63.43, 19.54, 5.96),
    "RN50x4": (87.14, 91.16, 42.56, 9.27),
    "RN50x16": (167.33, 123.65, 149.39, 13.3),
    "RN50x64": (420.38, 202.88, 529.11, 23.55),
}
# OpenCLIP's attention pool computes every token's query and keeps the mean token's; ours (as
# the original CLIP) computes that one query only. Adding the other L - 1 queries and their
# attention brings ours within 0.3-1.7% under the profile; the rest is not explained here (the
# profiler may count ops FlopCounterMode does not), hence 2%, not REL.
RN_IMAGE_FLOPS_REL = 0.02


@pytest.mark.parametrize("name", list(OPENCLIP_RN_PROFILE))
def test_openclip_profile_resnets(name):
    image_m, text_m, image_g, text_g = OPENCLIP_RN_PROFILE[name]
    spec = get_model(name)
    count, flops = count_params(spec), forward_flops(spec)
    assert count.image / 1e6 == pytest.approx(image_m, rel=REL)
    assert count.text / 1e6 == pytest.approx(text_m, rel=REL)
    assert flops.text / 1e9 == pytest.approx(text_g, rel=REL)
    v = spec.vision
    tokens, width = v.grid**2 + 1, v.feature_width
    every_query = 2 * (tokens - 1) * width**2 + 4 * (tokens - 1) * tokens * width
    assert flops.image < image_g * 1e9  # one query: less than OpenCLIP's module
    assert (flops.image + every_query) / 1e9 == pytest.approx(image_g, rel=RN_IMAGE_FLOPS_REL)
