"""SigLIP 2's modules, losses, draws and config checks, in one process (fast).

Independent truths: the decoder's attention pattern is read off the logits (a later position's
change must not reach earlier logits in a teacher-forced pass, and must in a parallel one); the
chunked cross-entropy against an unchunked one written out here; the draws against K_m and the
local size computed from the spec; bad input through ``load_config`` and the CLI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.decoder import Decoder
from models.init import init_weights
from models.siglip2 import build_siglip2_model, patch_mask_of
from models.vision import VisionTower
from trainer.cli_args import load_config
from trainer.losses.siglip2 import caption_loss
from trainer.siglip2 import build_inputs, draw_generator, draw_inputs, local_views, phase_at
from vlscale.errors import ConfigError
from vlscale.specs.presets import resolve_model
from vlscale.specs.siglip2 import Siglip2Spec, local_image_size

REPO = Path(__file__).resolve().parents[2]
SPEC = resolve_model("tiny-siglip")
L, V = SPEC.text.context_length, SPEC.text.vocab_size


def _decoder() -> Decoder:
    torch.manual_seed(0)
    return init_weights(
        Decoder(vocab=V, context=L, width=32, depth=2, heads=4, mlp_width=64,
                vision_width=SPEC.vision.trunk.width, eps=1e-6)
    ).eval()  # fmt: skip


def _logits(dec: Decoder, tokens, memory, parallel: bool) -> torch.Tensor:
    flags = torch.full((tokens.shape[0],), parallel)
    with torch.no_grad():
        return dec(tokens, memory, flags)  # (B, L, V)


def test_teacher_forced_pass_is_causal_and_parallel_pass_is_not():
    dec = _decoder()
    tokens = torch.randint(1, V, (2, L))
    memory = torch.randn(2, SPEC.vision.seq_len(), SPEC.vision.trunk.width)
    j = L // 2
    changed = tokens.clone()
    changed[:, j] = (tokens[:, j] % (V - 1)) + 1  # another token at position j
    causal, causal2 = _logits(dec, tokens, memory, False), _logits(dec, changed, memory, False)
    torch.testing.assert_close(causal[:, :j], causal2[:, :j], rtol=0, atol=0)
    assert not torch.allclose(causal[:, j:], causal2[:, j:])  # the change is seen from j on
    # parallel: the input is parallel_token everywhere, so a later *position* is the thing to
    # change: every earlier position sees it through full attention
    par = _logits(dec, tokens, memory, True)
    with torch.no_grad():
        dec.pos_embed[:, j] += 1.0
    par2, causal3 = _logits(dec, tokens, memory, True), _logits(dec, tokens, memory, False)
    assert (par[:, :j] - par2[:, :j]).abs().amax(dim=-1).min() > 0  # every earlier position
    torch.testing.assert_close(causal3[:, :j], causal[:, :j], rtol=0, atol=0)
    # and a parallel pass does not read the caption at all
    torch.testing.assert_close(_logits(dec, changed, memory, True), par2)


def _reference_caption_loss(h, weight, bias, tokens, pad):
    """Unchunked: all (B, L, V) logits at once, targets = next token, pads ignored, mean per
    example over its real targets, then mean over examples."""
    logits = h @ weight.T + bias  # (B, L, V)
    targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], pad)], dim=1)
    nll = -logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]  # (B, L)
    real = targets != pad
    return torch.stack([nll[i][real[i]].mean() for i in range(len(h))]).mean()


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_cross_entropy_equals_unchunked(chunk):
    torch.manual_seed(1)
    b, s, d, v, pad = 3, 9, 8, 11, 0
    tokens = torch.randint(1, v, (b, s))
    tokens[0, 5:] = pad  # a short caption
    tokens[2, 8:] = pad
    h = torch.randn(b, s, d, requires_grad=True)
    weight = torch.randn(v, d, requires_grad=True)
    bias = torch.randn(v, requires_grad=True)
    got = caption_loss(h, weight, bias, tokens, pad, chunk)
    grads = torch.autograd.grad(got, (h, weight, bias))
    want = _reference_caption_loss(h, weight, bias, tokens, pad)
    want_grads = torch.autograd.grad(want, (h, weight, bias))
    torch.testing.assert_close(got, want)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)


def test_chunked_cross_entropy_keeps_no_logits():
    """Saved tensors of the forward (what backward keeps): no logits, i.e. nothing with V
    columns (the head's weight is (V, d), its bias (V,)); unchunked, (B·L, V) would be."""
    b, s, d, v = 2, 16, 8, 500
    h = torch.randn(b, s, d, requires_grad=True)
    weight, bias = torch.randn(v, d, requires_grad=True), torch.zeros(v, requires_grad=True)
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        caption_loss(h, weight, bias, torch.randint(1, v, (b, s)), 0, 4)
    assert shapes and not [x for x in shapes if len(x) == 2 and x[-1] == v], shapes


def test_vision_tower_tokens_leave_its_features_alone():
    torch.manual_seed(0)
    tower = init_weights(VisionTower(SPEC.vision, SPEC.embed_dim)).eval()
    images = torch.randn(2, 3, 32, 32)
    feats, tokens = tower(images, tokens="both")
    torch.testing.assert_close(feats, tower(images), rtol=0, atol=0)
    assert tokens.shape == (2, SPEC.vision.seq_len(), SPEC.vision.trunk.width)
    small = tower(torch.randn(2, 3, 16, 16), tokens="only")  # a local view: a 2 x 2 grid
    assert small.shape == (2, 4, SPEC.vision.trunk.width)


S2 = Siglip2Spec(naflex=None, distill={"local_views": 3, "local_image_size": 16, "head_dim": 24})


def test_local_views_have_the_configured_size_and_masks_are_exactly_km():
    phase = S2.phases()[-1]
    assert phase.distill and phase.masked
    b, world = 4, 2
    draws = draw_inputs(S2, phase, SPEC.vision, draw_generator(0, 5, 0), 1, b, world)
    images = torch.randn(b, 3, 32, 32)
    size = local_image_size(S2, SPEC.vision)
    views = local_views(images, draws.boxes, size)
    assert size == 16 and views.shape == (b * 3, 3, 16, 16)
    k_m = SPEC.vision.num_patches - SPEC.vision.kept_patches(S2.masked.mask_ratio)
    mask = patch_mask_of(draws.mask_ids, SPEC.vision.num_patches)
    assert mask.sum(dim=1).tolist() == [k_m] * b
    # the model's masked head sees b·K_m rows, its distill head b·n_loc
    torch.manual_seed(0)
    model = build_siglip2_model(SPEC, S2)
    tokens = torch.randint(1, V, (b, L))
    extra = build_inputs(S2, draws, images, tokens, 0, size)
    out = model(images, tokens, extra=extra)
    assert out["masked"].shape == (b * k_m, 24) and out["local"].shape == (b * 3, 24)
    assert out["caption"].shape == ()  # every pass in one call: their mean


def test_draws_are_the_global_batch_rows():
    """Rank r's draws are rows r·b.. of the world's: the same examples draw alike at W = 1."""
    phase = S2.phases()[-1]
    one = draw_inputs(S2, phase, SPEC.vision, draw_generator(3, 2, 1), 0, 4, 1)
    two = [draw_inputs(S2, phase, SPEC.vision, draw_generator(3, 2, 1), r, 2, 2) for r in (0, 1)]
    torch.testing.assert_close(torch.cat([t.mask_ids for t in two]), one.mask_ids)
    torch.testing.assert_close(torch.cat([t.boxes for t in two]), one.boxes)
    for p in range(S2.decoder.passes):
        assert torch.cat([t.passes[p] for t in two]).tolist() == one.passes[p].tolist()


def test_phase_of_each_step():
    phases = Siglip2Spec(naflex=None, distill_start=0.5).phases()
    names = [phase_at(phases, s, 6).name for s in range(1, 7)]
    assert names == ["base"] * 3 + ["self-distillation"] * 3
    phases = Siglip2Spec(naflex=None).phases()  # 80 %
    assert [phase_at(phases, s, 10).name for s in (8, 9)] == ["base", "self-distillation"]


def test_recipe_siglip2_alone_trains_without_naflex():
    cfg = load_config(["--recipe", "siglip2", "--model", "tiny-siglip"], world_size=1)
    s2 = cfg.recipe_spec().objectives
    assert s2.naflex is None and s2.decoder is not None and s2.distill is not None
    cfg = load_config(["--recipe", "siglip2", "--siglip2", "{distill_start: 0.5}"], 1)
    assert cfg.recipe_spec().objectives.naflex is None


BAD = [
    ("naflex on", ["--siglip2", "{naflex: {}}"], "siglip2.naflex", "{naflex: null}"),
    ("other recipe", ["--recipe", "siglip", "--siglip2", "{masked: null}"], "siglip2", "recipe"),
    ("wide decoder", ["--siglip2", "{decoder: {width: 128}}"], "siglip2.decoder.width", "64"),
    ("naflex lengths", ["--siglip2", "{naflex: {lengths: [5, 16]}}"], "siglip2.naflex.lengths",
     "multiples"),
    ("resnet", ["--model", "tiny-rn"], "siglip2.decoder", "ResNet"),
    ("resnet distill", ["--model", "tiny-rn", "--siglip2", "{decoder: null}"], "siglip2.distill",
     "ViT"),
    ("embeddings", ["--image-embeddings", "/nonexistent", "--siglip2", "{decoder: null}"],
     "siglip2.distill", "--image-embeddings"),
    ("locked", ["--lock-image", "--siglip2", "{decoder: null}"], "siglip2.distill", "--lock-image"),
    ("flip", ["--mask-ratio", "0.5"], "mask_ratio", "siglip2"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "field", "hint"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_siglip2_input_names_the_field(argv, field, hint):
    base = ["--model", "tiny-siglip", "--recipe", "siglip2"]
    with pytest.raises(ConfigError) as err:
        load_config([*base, *argv], world_size=1)
    assert err.value.field == field and hint in str(err.value)


def test_bad_siglip2_input_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--model", "tiny-siglip", "--recipe", "siglip2",
         "--siglip2", "{naflex: {}}", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: siglip2.naflex:"), proc.stderr
    assert not out.exists()


def test_decoder_forward_flops_are_the_contracts():
    """FlopCounterMode on one pass against the contract's formula (vlscale/specs/siglip2.py's
    module contract: attention in full also when causal, the head over all L positions)."""
    from models.flop_counting import count_flops

    dec = _decoder()
    d, h, depth, s_v, v = 32, 64, 2, SPEC.vision.seq_len(), SPEC.vision.trunk.width
    tokens = torch.randint(1, V, (1, L))
    memory = torch.randn(1, s_v, v)
    for parallel in (False, True):
        flops, _ = count_flops(_logits, dec, tokens, memory, parallel)
        block = (2 * L * d * 3 * d + 4 * L * L * d + 2 * L * d * d
                 + 2 * L * d * d + 2 * s_v * v * 2 * d + 4 * L * s_v * d + 2 * L * d * d
                 + 4 * L * d * h)  # fmt: skip
        assert flops == depth * block + 2 * L * d * V


def test_student_parameter_order():
    model = build_siglip2_model(SPEC, S2, device="meta")
    # torch yields a module's own parameters before its children's
    tops = list(dict.fromkeys(n.split(".")[0] for n, _ in model.named_parameters()))
    assert tops == ["logit_scale", "logit_bias", "patch_mask_token", "visual", "text", "decoder",
                    "distill_head", "masked_head"]  # fmt: skip
    names = [n for n, _ in model.named_parameters() if n.startswith("decoder.blocks.0.")]
    assert [n.removeprefix("decoder.blocks.0.") for n in names] == [
        f"{m}.{p}" for m in ("norm1", "self_attn.qkv", "self_attn.out", "norm2", "cross_attn.q",
                             "cross_attn.kv", "cross_attn.out", "norm3", "mlp.fc1", "mlp.fc2")
        for p in ("weight", "bias")
    ]  # fmt: skip
