"""CUDA-only checks; skipped without a GPU (run them with benchmarks/gpu_calibration.sh)."""

import pytest
import torch

from models import build_model
from models.flop_counting import count_flops
from vlscale.costs.flops import forward_flops
from vlscale.specs import get_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _batch(spec, b, device):
    images = torch.randn(b, 3, spec.vision.image_size, spec.vision.image_size, device=device)
    tokens = torch.randint(0, spec.text.vocab_size, (b, spec.text.context_length), device=device)
    return images, tokens


def test_flip_indices_are_drawn_on_the_gpu():
    spec = get_model("tiny-eva")
    model = build_model(spec).cuda()
    x = torch.randn(4, spec.vision.num_patches, spec.vision.trunk.width, device="cuda")
    kept, idx = model.visual.drop_patches(x, 0.5)
    assert idx.device.type == "cuda" and kept.device.type == "cuda"
    assert kept.shape[1] == spec.vision.kept_patches(0.5)


@pytest.mark.parametrize("name", ["tiny-clip", "tiny-eva", "ViT-B-16"])
def test_forward_flops_match_the_counter_on_cuda(name):
    spec = get_model(name)
    model = build_model(spec).cuda()
    images, tokens = _batch(spec, 1, "cuda")
    with torch.no_grad():
        counted, _ = count_flops(model, images, tokens)
    assert counted == pytest.approx(forward_flops(spec).total, rel=0.005)


def test_bf16_training_step_is_finite():
    spec = get_model("tiny-siglip")
    model = build_model(spec).cuda()
    images, tokens = _batch(spec, 8, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        img, txt = model(images, tokens)
        loss = -(img * txt).sum(-1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
