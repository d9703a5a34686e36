"""The presets compute OpenCLIP's (EVA: timm's) function: norm eps, RoPE layout and positions,
EVA-CLIP-E's block type, FLIP's kept-patch count. Each fact names the file it comes from."""

import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from models import build_model
from models.flop_counting import count_flops
from models.layers import Block
from models.rope import VisionRope
from vlscale.costs.flops import train_flops_per_sample
from vlscale.costs.params import count_params
from vlscale.specs import get_model
from vlscale.specs.presets import vision_tower

# (image tower eps, text tower eps). Sources:
#   OpenCLIP's own ViT and text transformer: open_clip/transformer.py, ``LayerNorm`` subclasses
#   torch's nn.LayerNorm and keeps its default eps=1e-5;
#   timm ViT (SigLIP image towers): timm/models/vision_transformer.py,
#   ``norm_layer = partial(nn.LayerNorm, eps=1e-6)``;
#   timm EVA: timm/models/eva.py, ``norm_layer = LayerNorm`` from timm/layers/norm.py (eps=1e-6);
#   SigLIP text towers: open_clip/model_configs/ViT-B-16-SigLIP.json, "norm_kwargs": {"eps": 1e-6}.
EPS = {
    "ViT-B-32": (1e-5, 1e-5),
    "ViT-B-16": (1e-5, 1e-5),
    "ViT-L-14": (1e-5, 1e-5),
    "ViT-L-14-336": (1e-5, 1e-5),
    "ViT-H-14": (1e-5, 1e-5),
    "ViT-g-14": (1e-5, 1e-5),
    "ViT-bigG-14": (1e-5, 1e-5),
    "ViT-B-16-SigLIP": (1e-6, 1e-6),
    "ViT-SO400M-14-SigLIP": (1e-6, 1e-6),
    "EVA02-B-16": (1e-6, 1e-5),
    "EVA02-L-14": (1e-6, 1e-5),
    "EVA02-E-14-plus": (1e-6, 1e-5),
}


@pytest.mark.parametrize("name", list(EPS))
def test_norm_eps_per_tower_is_openclips(name):
    spec = get_model(name)
    vision_eps, text_eps = EPS[name]
    assert spec.vision.trunk.norm_eps == vision_eps
    assert spec.text.trunk.norm_eps == text_eps
    model = build_model(spec, device="meta")
    for tower, eps in ((model.visual, vision_eps), (model.text, text_eps)):
        norms = [
            m for m in tower.modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.RMSNorm))
        ]
        assert norms and all(m.eps == eps for m in norms)


def test_eps_changes_the_function():
    # the fixture tests (tests/test_openclip.py) catch a wrong eps; here: eps is really used
    spec = get_model("tiny-clip")
    other = spec.model_copy(
        update={"text": spec.text.model_copy(update={"trunk": spec.text.trunk.model_copy(
            update={"norm_eps": 1e-1})})}
    )  # fmt: skip
    torch.manual_seed(0)
    a = build_model(spec).eval()
    b = build_model(other).eval()
    b.load_state_dict(a.state_dict())
    tokens = torch.randint(0, spec.text.vocab_size, (2, spec.text.context_length))
    assert not torch.allclose(a.encode_text(tokens), b.encode_text(tokens))


# --- RoPE ------------------------------------------------------------------------------------
# timm/models/eva.py: eva02_base_patch16_clip_224 and eva02_large_patch14_clip_224 set
# use_rot_pos_emb=True, ref_feat_shape=(16, 16); RotaryEmbeddingCat(in_pixels=False).
# timm/layers/pos_embed_sincos.py: build_fourier_pos_embed positions t = arange(g) / g * ref,
# bands 1 / 10000^(i / nb) with nb = head_dim / 4, sin / cos repeat_interleave(2) (pairs
# interleaved), apply_rot_embed_cat: x * cos + rot(x) * sin, rot pairs (a, b) -> (-b, a).
ROPE = {"EVA02-B-16": (14, 16), "EVA02-L-14": (16, 16)}  # preset: (grid, ref grid)


def reference_angle(k: int, row: int, col: int, head_dim: int, grid: int, ref: int) -> float:
    """Angle of dim k at patch (row, col), written from timm's description, one dim at a time."""
    nb = head_dim // 4
    axis, i = divmod(k // 2, nb)  # pairs (2j, 2j+1); first nb pairs rows, next nb columns
    pos = (row if axis == 0 else col) / grid * ref
    return pos / 10000 ** (i / nb)


@pytest.mark.parametrize("name", list(ROPE))
def test_rope_positions_and_pairing_are_timms(name):
    spec = get_model(name)
    grid, ref = ROPE[name]
    assert spec.vision.rope and spec.vision.grid == grid and spec.vision.rope_ref_grid == ref
    hd = spec.vision.trunk.head_dim
    rope = VisionRope(grid, hd, ref_grid=spec.vision.rope_ref_grid)
    for row, col in ((0, 0), (1, 0), (0, 1), (5, 9), (grid - 1, grid - 1)):
        n = row * grid + col
        want = torch.tensor([reference_angle(k, row, col, hd, grid, ref) for k in range(hd)])
        torch.testing.assert_close(rope.cos[n], want.cos(), rtol=0, atol=2e-6)
        torch.testing.assert_close(rope.sin[n], want.sin(), rtol=0, atol=2e-6)
    # interleaved pairing: e_{2j} rotates into dims (2j, 2j+1) by the pair's angle
    n, j = 5 * grid + 9, 3
    x = torch.zeros(1, 1, grid * grid, hd)
    x[..., 2 * j] = 1.0
    y = rope.rotation(None, prefix=0)(x)[0, 0, n]
    theta = reference_angle(2 * j, 5, 9, hd, grid, ref)
    expected = torch.zeros(hd)
    expected[2 * j], expected[2 * j + 1] = math.cos(theta), math.sin(theta)
    torch.testing.assert_close(y, expected, rtol=0, atol=2e-6)


def test_eva02_b16_positions_are_scaled_by_16_over_14():
    rope = VisionRope(14, 64, ref_grid=16)
    # dim 0 is row frequency 1 (i = 0): the angle is the scaled row position itself
    angles = torch.atan2(rope.sin[:, 0], rope.cos[:, 0])
    torch.testing.assert_close(angles[14 * 1], torch.tensor(16 / 14))
    torch.testing.assert_close(angles[14 * 2], torch.tensor(2 * 16 / 14))


# --- EVA02-E-14-plus -------------------------------------------------------------------------


def test_eva02_e14_plus_is_a_post_norm_vit_without_rope():
    # timm/models/eva.py eva02_enormous_patch14_clip_224: use_post_norm=True (EvaBlockPostNorm:
    # x + norm1(attn(x)), x + norm2(mlp(x))), no use_rot_pos_emb, GELU Mlp, qkv fused with
    # q_bias / v_bias; totals as before (4,350,556,928 image parameters)
    spec = get_model("EVA02-E-14-plus")
    t = spec.vision.trunk
    assert spec.vision.rope is False and t.post_norm and not t.sub_ln and t.mlp_kind == "gelu"
    assert t.qkv_bias == "qv"
    assert count_params(spec).image == 4_350_556_928
    model = build_model(spec, device="meta")
    assert model.visual.rope is None


def tiny_post_norm_eva(depth, mlp_width):
    """A tiny EVA tower with EVA02-E-14-plus's trunk: post-norm, GELU MLP, no RoPE, no sub-LN."""
    trunk = {"width": 64, "depth": depth, "heads": 4, "mlp_width": mlp_width, "mlp_kind": "gelu",
             "sub_ln": False, "post_norm": True}  # fmt: skip
    fields = {"family": "eva_vit", "image_size": 32, "patch_size": 8, "rope": False}
    return vision_tower(fields | {"trunk": trunk})


def test_post_norm_block_normalises_the_branch_output():
    trunk = tiny_post_norm_eva(depth=1, mlp_width=128).trunk
    torch.manual_seed(0)
    block = Block(trunk)
    for p in block.parameters():  # non-trivial norms, so pre- and post-norm differ
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 5, 64)
    x1 = x + block.norm1(block.attn(x))
    want = x1 + block.norm2(block.mlp(x1))
    torch.testing.assert_close(block(x), want)
    pre = x + block.attn(block.norm1(x))
    assert not torch.allclose(block(x), pre + block.mlp(block.norm2(pre)))


def tiny_post_norm():
    base = get_model("tiny-eva")
    vision = tiny_post_norm_eva(depth=2, mlp_width=256)
    return base.model_copy(update={"name": "tiny-eva-post", "vision": vision})


@pytest.mark.parametrize("recompute", [False, True])
def test_post_norm_train_flops_equal_flop_counter(recompute):
    # post-norm: the last matmul feeds norm2, which saves it, so checkpointing recomputes it
    spec = tiny_post_norm()
    model = build_model(spec, device="meta")
    if recompute:
        for block in [*model.visual.blocks, *model.text.blocks]:
            fwd = block.forward
            block.forward = lambda *a, _f=fwd, **k: checkpoint(_f, *a, use_reentrant=False, **k)
    images = torch.empty(2, 3, 32, 32, device="meta")
    tokens = torch.zeros(2, spec.text.context_length, dtype=torch.long, device="meta")

    def step():
        img, txt = model(images, tokens, mask_ratio=0.5)
        (img * txt).sum().backward()

    measured, _ = count_flops(step)
    assert measured == 2 * train_flops_per_sample(spec, 0.5, recompute)


# --- FLIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, r, kept", [("ViT-B-32", 0.5, 24), ("EVA02-B-16", 0.5, 98)])
def test_flip_kept_patches_per_preset(name, r, kept):
    # open_clip/transformer.py PatchDropout: max(1, int(num_tokens * (1 - prob)))
    assert get_model(name).vision.kept_patches(r) == kept


def test_patch_dropout_only_in_training_mode():
    # open_clip/transformer.py PatchDropout.forward and timm/layers/patch_dropout.py:
    # ``if not self.training or self.prob == 0.: return x``
    spec = get_model("tiny-clip")
    torch.manual_seed(0)
    model = build_model(spec)
    seen = []
    model.visual.blocks[0].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    images = torch.randn(2, 3, 32, 32)
    model.train()
    model.encode_image(images, mask_ratio=0.5)
    model.eval()
    a = model.encode_image(images, mask_ratio=0.5)
    b = model.encode_image(images)
    assert seen == [1 + spec.vision.kept_patches(0.5), 1 + 16, 1 + 16]
    torch.testing.assert_close(a, b)
