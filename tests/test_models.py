"""Behaviour of the torch towers: FLIP patch dropout, 2-D RoPE, pooling, causality, init."""

import math

import pytest
import torch
import torch.nn.functional as F

from models import build_model, init_weights
from models.rope import VisionRope, rope_tables
from vlscale.errors import ConfigError
from vlscale.specs import get_model

TINY = ["tiny-clip", "tiny-siglip", "tiny-eva", "small-clip"]


def images_for(spec, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = spec.vision.image_size
    return torch.randn(batch, 3, size, size, generator=g)


def tokens_for(spec, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.text.vocab_size, (batch, spec.text.context_length), generator=g)


@pytest.fixture(scope="module")
def eva():
    torch.manual_seed(0)
    spec = get_model("tiny-eva")
    return spec, build_model(spec)


# --- FLIP patch dropout ----------------------------------------------------------------------


@pytest.mark.parametrize("r", [0.25, 0.5, 0.75, 0.9])
def test_patch_dropout_keeps_the_right_count(eva, r):
    spec, model = eva
    x = torch.randn(3, spec.vision.num_patches, spec.vision.trunk.width)
    kept, ids = model.visual.drop_patches(x, r)
    k = spec.vision.kept_patches(r)
    assert kept.shape == (3, k, x.shape[-1])
    assert ids.shape == (3, k)
    for b in range(3):
        assert len(set(ids[b].tolist())) == k  # no patch kept twice
        torch.testing.assert_close(kept[b], x[b, ids[b]])


def test_cls_token_is_kept_and_first(eva):
    spec, model = eva
    seen = {}
    hook = model.visual.blocks[0].register_forward_pre_hook(
        lambda mod, args: seen.setdefault("x", args[0])
    )
    try:
        model.visual(images_for(spec), mask_ratio=0.5)
    finally:
        hook.remove()
    x = seen["x"]
    assert x.shape[1] == 1 + spec.vision.kept_patches(0.5)
    cls = (model.visual.cls_token + model.visual.pos_embed[:, :1])[0, 0]
    for b in range(x.shape[0]):
        torch.testing.assert_close(x[b, 0], cls)


def test_samples_keep_different_patches(eva):
    spec, model = eva
    x = torch.randn(8, spec.vision.num_patches, spec.vision.trunk.width)
    _, ids = model.visual.drop_patches(x, 0.5, torch.Generator().manual_seed(1))
    sets = {tuple(sorted(row.tolist())) for row in ids}
    assert len(sets) > 1


def test_patch_indices_live_on_the_input_device(eva):
    spec, _ = eva
    meta_tower = build_model(spec, device="meta").visual
    x = torch.empty(2, spec.vision.num_patches, spec.vision.trunk.width, device="meta")
    kept, ids = meta_tower.drop_patches(x, 0.5)
    assert ids.device.type == "meta" and kept.device.type == "meta"


def test_mask_ratio_zero_is_the_identity_path(eva):
    spec, model = eva
    x = torch.randn(2, spec.vision.num_patches, spec.vision.trunk.width)
    state = torch.get_rng_state()
    kept, ids = model.visual.drop_patches(x, 0.0)
    assert kept is x and ids is None
    assert torch.equal(state, torch.get_rng_state())  # no random draw at all
    imgs = images_for(spec)
    torch.testing.assert_close(model.visual(imgs), model.visual(imgs, mask_ratio=0.0))


def test_generator_makes_dropout_deterministic(eva):
    spec, model = eva
    imgs = images_for(spec)
    a = model.visual(imgs, 0.5, torch.Generator().manual_seed(3))
    b = model.visual(imgs, 0.5, torch.Generator().manual_seed(3))
    c = model.visual(imgs, 0.5, torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("r", [-0.1, 1.0])
def test_bad_mask_ratio_is_a_config_error(eva, r):
    spec, model = eva
    with pytest.raises(ConfigError, match="mask_ratio"):
        model.visual(images_for(spec), mask_ratio=r)


# --- 2-D RoPE --------------------------------------------------------------------------------


def reference_attention(attn, x, rope_full, prefix, keep):
    """Attention of the FULL sequence's q, k, v (RoPE at every original position), restricted
    to the tokens ``keep`` (B, K) plus the prefix: written out with explicit softmax."""
    b, s, d = x.shape
    h, hd = attn.heads, attn.head_dim
    qkv = F.linear(x, attn.qkv.weight, attn._qkv_bias()).view(b, s, 3, h, hd)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, S, hd)
    q, k = rope_full(q), rope_full(k)
    rows = torch.cat([torch.arange(prefix).expand(b, prefix), keep + prefix], dim=1)  # (B, T)
    idx = rows[:, None, :, None].expand(b, h, rows.shape[1], hd)
    q, k, v = (t.gather(2, idx) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    o = (weights @ v).transpose(1, 2).reshape(b, rows.shape[1], d)
    return attn.out(attn.sub_norm(o))


def test_rope_at_kept_positions_equals_full_sequence_restricted(eva):
    spec, model = eva
    torch.manual_seed(0)
    tower = model.visual
    n, d = spec.vision.num_patches, spec.vision.trunk.width
    x_full = torch.randn(3, 1 + n, d)  # cls + all patches
    _, keep = tower.drop_patches(x_full[:, 1:], 0.5, torch.Generator().manual_seed(0))
    x_kept = torch.cat(
        [x_full[:, :1], x_full[:, 1:].gather(1, keep[..., None].expand(-1, -1, d))], 1
    )
    attn = tower.blocks[0].attn
    got = attn(x_kept, rope=tower.rope.rotation(keep, prefix=1))
    want = reference_attention(attn, x_full, tower.rope.rotation(None, prefix=1), 1, keep)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rope_depends_only_on_relative_position():
    # q·k after rotation is unchanged when both move by the same (row, col) offset
    grid, hd = 6, 16
    cos, sin = rope_tables(grid, hd)
    rope = VisionRope(grid, hd)
    torch.testing.assert_close(rope.cos, cos)
    torch.testing.assert_close(rope.sin, sin)
    q, k = torch.randn(hd), torch.randn(hd)

    def rotated(vec, pos):
        out = rope.rotation(torch.tensor([[pos]]), prefix=0)(vec.view(1, 1, 1, hd))
        return out.view(hd)

    def at(r, c):
        return r * grid + c

    base = rotated(q, at(1, 1)) @ rotated(k, at(2, 3))
    shifted = rotated(q, at(3, 2)) @ rotated(k, at(4, 4))
    torch.testing.assert_close(base, shifted, rtol=1e-5, atol=1e-5)
    moved = rotated(q, at(1, 1)) @ rotated(k, at(3, 2))  # a different offset
    assert not torch.allclose(base, moved)


def test_rope_leaves_cls_untouched(eva):
    spec, model = eva
    x = torch.randn(2, 4, 1 + spec.vision.num_patches, spec.vision.trunk.head_dim)
    y = model.visual.rope.rotation(None, prefix=1)(x)
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    assert not torch.allclose(y[:, :, 2:], x[:, :, 2:])


# --- text tower ------------------------------------------------------------------------------


def final_norm_output(text, tokens):
    seen = {}
    hook = text.norm.register_forward_hook(lambda m, a, out: seen.setdefault("y", out))
    try:
        pooled = text(tokens)
    finally:
        hook.remove()
    return seen["y"], pooled


def test_eos_pooling_picks_the_argmax_position():
    spec = get_model("tiny-clip")
    text = build_model(spec).text
    tokens = torch.randint(1, 100, (3, spec.text.context_length))
    eos = [5, 17, spec.text.context_length - 1]
    for b, pos in enumerate(eos):
        tokens[b, pos] = spec.text.vocab_size - 1
    normed, pooled = final_norm_output(text, tokens)
    want = text.proj(normed[torch.arange(3), torch.tensor(eos)])
    torch.testing.assert_close(pooled, want)


def test_last_pooling_uses_the_last_position():
    spec = get_model("tiny-siglip")
    text = build_model(spec).text
    normed, pooled = final_norm_output(text, tokens_for(spec, 2))
    torch.testing.assert_close(pooled, text.proj(normed[:, -1]))


def test_causal_text_ignores_later_tokens():
    spec = get_model("tiny-clip")
    text = build_model(spec).text
    tokens = tokens_for(spec, 2)
    changed = tokens.clone()
    j = 20
    changed[:, j:] = (changed[:, j:] + 1) % spec.text.vocab_size
    before, _ = final_norm_output(text, tokens)
    after, _ = final_norm_output(text, changed)
    torch.testing.assert_close(before[:, :j], after[:, :j])
    assert not torch.allclose(before[:, j:], after[:, j:])


def test_bidirectional_text_sees_later_tokens():
    spec = get_model("tiny-siglip")
    assert not spec.text.causal
    text = build_model(spec).text
    tokens = tokens_for(spec, 2)
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % spec.text.vocab_size
    before, _ = final_norm_output(text, tokens)
    after, _ = final_norm_output(text, changed)
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_too_long_text_is_a_config_error():
    spec = get_model("tiny-clip")
    text = build_model(spec).text
    with pytest.raises(ConfigError, match="context_length"):
        text(torch.zeros(1, spec.text.context_length + 1, dtype=torch.long))


# --- whole model -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_on_tiny_presets(name):
    spec = get_model(name)
    torch.manual_seed(0)
    model = build_model(spec)
    img, txt = model(images_for(spec), tokens_for(spec), mask_ratio=0.5)
    assert img.shape == txt.shape == (4, spec.embed_dim)
    assert img.dtype == torch.float32
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(4))
    logits = model.logit_scale.exp() * img @ txt.T + model.logit_bias
    F.cross_entropy(logits, torch.arange(4)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname


def test_blocks_are_exposed_as_module_lists():
    spec = get_model("tiny-eva")
    model = build_model(spec, device="meta")
    assert isinstance(model.visual.blocks, torch.nn.ModuleList)
    assert isinstance(model.text.blocks, torch.nn.ModuleList)
    assert len(model.visual.blocks) == spec.vision.trunk.depth


@pytest.mark.parametrize("name", ["tiny-eva", "tiny-siglip"])
def test_init_after_to_empty(name):
    spec = get_model(name)
    model = build_model(spec, device="meta", init_logit_scale=math.log(10), init_logit_bias=-10)
    model.to_empty(device="cpu")
    init_weights(model)
    for pname, p in model.named_parameters():
        assert torch.isfinite(p).all(), pname
    assert model.logit_scale.shape == model.logit_bias.shape == (1,)
    assert model.logit_scale.item() == pytest.approx(math.log(10))
    assert model.logit_bias.item() == pytest.approx(-10)
    if model.visual.rope is not None:  # recomputed, not left as uninitialised memory
        cos, sin = rope_tables(spec.vision.grid, spec.vision.trunk.head_dim)
        torch.testing.assert_close(model.visual.rope.cos, cos)
        torch.testing.assert_close(model.visual.rope.sin, sin)
    fc1 = model.visual.blocks[0].mlp.fc1.weight  # (h or 2h, d): fan-in d
    # trunc normal at ±2σ with σ = d^-1/2 has std 0.880·σ
    sigma = spec.vision.trunk.width**-0.5
    assert 0.85 * sigma < fc1.std().item() < 0.91 * sigma
    torch.testing.assert_close(
        model.visual.blocks[0].norm1.weight, torch.ones(spec.vision.trunk.width)
    )
    img, _ = model(images_for(spec), tokens_for(spec))
    assert torch.isfinite(img).all()


def test_default_logit_params():
    model = build_model(get_model("tiny-clip"))
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.logit_bias.item() == 0.0


def test_dtype_argument():
    model = build_model(get_model("tiny-clip"), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
