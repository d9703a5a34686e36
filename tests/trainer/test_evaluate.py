"""Zero-shot accuracy and retrieval R@1: exact and constant models, a brute-force reference,
and a 2-rank FSDP2 run that must match the single-process numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer import evaluate as E
from vlscale.errors import ConfigError

C, K, PER_CLASS, D = 4, 3, 3, 16


class _Lookup(nn.Module):
    """Exact encoders: image class id in pixel [0, 0, 0], caption class id in token 0."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = nn.Parameter(table)  # (C, d)

    def encode_image(self, images):  # (B, 3, H, W) -> (B, d)
        return self.table[images[:, 0, 0, 0].long()]

    def encode_text(self, tokens):  # (B, L) -> (B, d)
        return self.table[tokens[:, 0]]


class _Constant(_Lookup):
    def encode_image(self, images):
        return self.table[:1].expand(images.shape[0], -1)

    def encode_text(self, tokens):
        return self.table[:1].expand(tokens.shape[0], -1)


def _data(seed: int = 0):
    """PER_CLASS images per class, in shuffled order; captions repeat per class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(C).repeat_interleave(PER_CLASS)[
        torch.randperm(C * PER_CLASS, generator=g)
    ]
    images = torch.rand(len(labels), 3, 4, 4, generator=g)
    images[:, 0, 0, 0] = labels.float()
    captions = torch.randint(0, 50, (len(labels), 6), generator=g)
    captions[:, 0] = labels
    captions[:, 1:] = labels[:, None] * 7  # identical rows within a class
    prompts = torch.randint(0, 50, (C, K, 6), generator=g)  # templates differ in their tail
    prompts[:, :, 0] = torch.arange(C)[:, None]
    return images, labels, captions, prompts


def _run(model, **kw):
    images, labels, captions, prompts = _data()
    return E.evaluate(model, images=images, labels=labels, class_prompts=prompts,
                      captions=captions, batch_size=5, **kw)  # fmt: skip


def test_exact_model_scores_one():
    table = torch.randn(C, D, generator=torch.Generator().manual_seed(1))
    out = _run(_Lookup(table))
    assert out["zeroshot_top1"] == 1.0 and out["i2t_r1"] == 1.0 and out["t2i_r1"] == 1.0
    assert out["zeroshot_chance"] == 1 / C and out["eval_classes"] == C


def test_constant_model_scores_chance():
    out = _run(_Constant(torch.randn(C, D)))
    # Balanced classes and ties broken to the first index: exactly one class's share.
    assert out["zeroshot_top1"] == pytest.approx(1 / C)
    assert out["i2t_r1"] == pytest.approx(1 / C) and out["t2i_r1"] == pytest.approx(1 / C)


def test_strict_groups_make_duplicate_captions_ambiguous():
    table = torch.randn(C, D, generator=torch.Generator().manual_seed(1))
    out = _run(_Lookup(table), groups=torch.arange(C * PER_CLASS))
    # Each caption matches PER_CLASS identical images; argmax picks only one of them.
    assert out["t2i_r1"] == pytest.approx(1 / PER_CLASS)


def _reference(img, cls_prompt_emb, txt, labels, groups):
    """Plain-loop cosine similarity, written independently of trainer.evaluate."""

    def unit(v):
        return v / v.norm()

    def cos(a, b):
        return float(unit(a) @ unit(b))

    w = [unit(sum(unit(e) for e in cls_prompt_emb[c])) for c in range(len(cls_prompt_emb))]
    n = len(img)
    acc = sum(max(range(len(w)), key=lambda c: cos(img[i], w[c])) == labels[i] for i in range(n))
    i2t = sum(
        groups[max(range(n), key=lambda j: cos(img[i], txt[j]))] == groups[i] for i in range(n)
    )
    t2i = sum(
        groups[max(range(n), key=lambda j: cos(txt[i], img[j]))] == groups[i] for i in range(n)
    )
    return acc / n, i2t / n, t2i / n


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.vis = nn.Parameter(torch.randn(3 * 4 * 4, D, generator=g))
        self.emb = nn.Parameter(torch.randn(50, D, generator=g))

    def encode_image(self, images):
        return images.flatten(1) @ self.vis

    def encode_text(self, tokens):
        return self.emb[tokens].mean(dim=1)


def test_matches_bruteforce_reference_on_random_model():
    model = _Linear()
    images, labels, captions, prompts = _data(seed=5)
    images[:, 0, 0, 0] = 0.5  # no label leak
    captions = torch.randint(0, 50, captions.shape, generator=torch.Generator().manual_seed(9))
    prompts = torch.randint(0, 50, prompts.shape, generator=torch.Generator().manual_seed(8))
    groups = torch.arange(len(labels))
    out = E.evaluate(model, images=images, labels=labels, class_prompts=prompts,
                     captions=captions, groups=groups, batch_size=4)  # fmt: skip
    with torch.no_grad():
        img, txt = model.encode_image(images), model.encode_text(captions)
        cls = [model.encode_text(prompts[c]) for c in range(C)]
    acc, i2t, t2i = _reference(img, cls, txt, labels.tolist(), groups.tolist())
    assert out["zeroshot_top1"] == pytest.approx(acc)
    assert out["i2t_r1"] == pytest.approx(i2t) and out["t2i_r1"] == pytest.approx(t2i)


def test_restores_training_mode_and_checks_inputs():
    model = _Lookup(torch.randn(C, D)).train()
    _run(model)
    assert model.training
    images, labels, captions, prompts = _data()
    with pytest.raises(ConfigError, match="labels"):
        E.evaluate(model, images=images, labels=labels + C, class_prompts=prompts)
    with pytest.raises(ConfigError, match="captions"):
        E.evaluate(
            model, images=images, labels=labels, class_prompts=prompts, captions=captions[:2]
        )
    with pytest.raises(ConfigError, match="eval_batch_size"):
        E.evaluate(model, images=images, labels=labels, class_prompts=prompts, batch_size=0)


def test_build_class_prompts_fills_fields_and_reports_missing_ones():
    def tok(texts):  # one row per text: its length, then its first letters' codes
        return torch.tensor([[len(t), *map(ord, t[:3])] for t in texts])

    classes = [{"color": "red", "shape": "circle"}, {"color": "blue", "shape": "square"}]
    templates = ["a {color} {shape}", "a photo of a {color} {shape}."]
    out = E.build_class_prompts(classes, templates, tok)
    assert out.shape == (2, 2, 4)
    assert out[1, 1, 0] == len("a photo of a blue square.")
    with pytest.raises(ConfigError, match="size"):
        E.build_class_prompts(classes, ["a {size} {shape}"], tok)


# ----------------------------------------------------------------------------- FSDP2, 2 ranks


def _tiny_model():
    from models import build_model
    from vlscale.specs.presets import get_model

    torch.manual_seed(0)
    return build_model(get_model("tiny-clip"))


def _tiny_data():
    g = torch.Generator().manual_seed(2)
    n = 7  # not a multiple of the world size or the batch: exercises the padding
    images = torch.rand(n, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    captions = torch.randint(1, 259, (n, 32), generator=g)
    prompts = torch.randint(1, 259, (3, 2, 32), generator=g)
    return images, labels, captions, prompts


def _fsdp_eval(ctx):
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    model = _tiny_model()
    for block in [*model.visual.blocks, *model.text.blocks]:
        fully_shard(block, mesh=ctx.mesh)
    fully_shard(model.visual, mesh=ctx.mesh)
    fully_shard(model.text, mesh=ctx.mesh)
    fully_shard(model, mesh=ctx.mesh)
    for name in ("encode_image", "encode_text"):
        register_fsdp_forward_method(model, name)
    images, labels, captions, prompts = _tiny_data()
    kw = dict(images=images, labels=labels, class_prompts=prompts, captions=captions, batch_size=2)
    out = E.evaluate(model, **kw)
    # The gathered embeddings themselves, to compare beyond the (coarse) metrics.
    emb = E.encode_sharded(model.encode_image, images, batch_size=3, device=torch.device("cpu"))
    return out, emb


@pytest.mark.dist
def test_fsdp2_two_ranks_match_single_process():
    from tests.dist_utils import run_distributed

    model = _tiny_model().eval()
    images, labels, captions, prompts = _tiny_data()
    want = E.evaluate(model, images=images, labels=labels, class_prompts=prompts,
                      captions=captions, batch_size=4)  # fmt: skip
    with torch.no_grad():
        want_emb = F.normalize(model.encode_image(images).float(), dim=-1)
    results = run_distributed(_fsdp_eval, 2)
    for out, emb in results:
        assert out == want
        torch.testing.assert_close(emb, want_emb, rtol=1e-5, atol=1e-6)
