"""trainer.tokenizer's Hugging Face path with a REAL ``tokenizers`` file: a tiny BPE trained in
memory on shape captions (no download), saved as JSON, loaded through ``HFTokenizer`` /
``build_tokenizer``. Skipped when ``tokenizers`` is not installed.

Contract checked (same as the byte tokenizer, OpenCLIP's ``tokenize``): LongTensor (N, ctx),
rows ``[bos, ids..., eos, pad...]``, truncation keeps eos, eos is the highest id (eos pooling is
an argmax) unless the caller opts out for ``pool='last'``, and the vocabulary fits the model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

tokenizers = pytest.importorskip("tokenizers")

from trainer.tokenizer import HFTokenizer, build_tokenizer  # noqa: E402
from vlscale.errors import ConfigError  # noqa: E402

BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<pad>", "<unk>"
CAPTIONS = [
    "a red circle at the top left",
    "a blue square in the center",
    "two green triangles near the bottom",
    "a small yellow star on the right",
    "a large red square at the bottom right",
    "three blue circles in a row",
]


def _bpe(specials_first=(PAD, UNK), added_last=(BOS, EOS)):
    """A CLIP-like BPE ("</w>" word ends) trained on CAPTIONS; ``added_last`` get the top ids."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.BPEDecoder(suffix="</w>")
    trainer = trainers.BpeTrainer(
        vocab_size=80, special_tokens=list(specials_first), end_of_word_suffix="</w>"
    )
    tok.train_from_iterator(CAPTIONS * 3, trainer)
    tok.add_special_tokens(list(added_last))  # appended: ids after the learnt vocabulary
    return tok


def _save(tok, tmp_path: Path, name: str = "tokenizer.json") -> Path:
    path = tmp_path / name
    tok.save(str(path))
    return path


@pytest.fixture
def bpe_file(tmp_path):
    return _save(_bpe(), tmp_path)


def test_rows_follow_the_contract(bpe_file):
    raw = tokenizers.Tokenizer.from_file(str(bpe_file))
    tok = HFTokenizer(bpe_file, context_length=16, pad_token=PAD)
    texts = ["a red circle", "", "Two GREEN triangles near the bottom"]
    out = tok(texts)
    assert out.shape == (3, 16) and out.dtype == torch.long
    assert tok.bos_id == raw.token_to_id(BOS) and tok.eos_id == raw.token_to_id(EOS)
    assert tok.pad_id == raw.token_to_id(PAD)
    assert tok.eos_id == tok.vocab_size - 1 == raw.get_vocab_size() - 1
    for row, text in zip(out.tolist(), texts, strict=True):
        ids = raw.encode(text, add_special_tokens=False).ids
        assert ids == tok.encode(text)
        assert row[: len(ids) + 2] == [tok.bos_id, *ids, tok.eos_id]
        assert row[len(ids) + 2 :] == [tok.pad_id] * (16 - len(ids) - 2)
    # eos pooling (OpenCLIP's argmax over ids) lands on each row's eos
    eos_pos = out.argmax(dim=-1)
    assert (out[torch.arange(3), eos_pos] == tok.eos_id).all()
    assert (out >= 0).all() and (out < tok.vocab_size).all()


def test_default_pad_is_zero_as_openclip(bpe_file):
    out = HFTokenizer(bpe_file, context_length=12)(["a star"])
    n = len(HFTokenizer(bpe_file).encode("a star"))
    assert (out[0, n + 2 :] == 0).all()


def test_truncation_keeps_eos(bpe_file):
    tok = HFTokenizer(bpe_file, context_length=5)
    text = CAPTIONS[2]
    ids = tok.encode(text)
    assert len(ids) > 3  # really longer than the context
    out = tok([text])
    assert out.shape == (1, 5)
    assert out[0].tolist() == [tok.bos_id, *ids[:3], tok.eos_id]
    assert (out[0] == tok.eos_id).sum() == 1


def test_decode_round_trip(bpe_file):
    tok = HFTokenizer(bpe_file, context_length=32, pad_token=PAD)
    for text in CAPTIONS:
        assert tok.decode(tok(text)[0]) == text


def test_saved_padding_and_truncation_settings_do_not_leak_into_rows(tmp_path):
    # A tokenizer.json may carry padding/truncation settings (many published ones do); HF
    # applies them inside encode, which would put pads before eos and cut captions early.
    raw = _bpe()  # BPE training may break merge ties differently: save ONE trained model twice
    plain = HFTokenizer(_save(raw, tmp_path, "plain.json"), context_length=24)
    raw.enable_padding(pad_id=0, pad_token=PAD, length=20)
    raw.enable_truncation(max_length=3)
    tok = HFTokenizer(_save(raw, tmp_path, "configured.json"), context_length=24)
    assert torch.equal(tok(CAPTIONS), plain(CAPTIONS))


def test_post_processor_special_tokens_are_not_doubled(tmp_path):
    # HF CLIP files add bos/eos in a post-processor; rows must still hold exactly one of each.
    from tokenizers import processors

    raw = _bpe()
    raw.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        special_tokens=[(BOS, raw.token_to_id(BOS)), (EOS, raw.token_to_id(EOS))],
    )
    tok = HFTokenizer(_save(raw, tmp_path), context_length=16)
    out = tok(CAPTIONS[:3])
    assert ((out == tok.bos_id).sum(-1) == 1).all() and ((out == tok.eos_id).sum(-1) == 1).all()


def test_eos_not_highest_is_refused_unless_pooling_last(tmp_path):
    path = _save(_bpe(added_last=(EOS, BOS)), tmp_path)  # bos gets the top id
    with pytest.raises(ConfigError, match="pool='last'"):
        HFTokenizer(path)
    with pytest.raises(ConfigError, match="eos"):
        build_tokenizer(str(path), 16)
    # the documented exception: a pool='last' text tower does not need eos to be highest
    tok = HFTokenizer(path, context_length=8, require_eos_highest=False)
    assert tok.eos_id < tok.vocab_size - 1
    row = tok(["a red circle"])[0].tolist()
    n = len(tok.encode("a red circle"))
    assert row[0] == tok.bos_id and row[n + 1] == tok.eos_id


def test_missing_special_token_names_the_field(tmp_path):
    path = _save(_bpe(added_last=(BOS,)), tmp_path)  # no eos in the vocabulary
    with pytest.raises(ConfigError, match="eos_token"):
        HFTokenizer(path)
    with pytest.raises(ConfigError, match=r"tokenizer\.json"):
        HFTokenizer(tmp_path / "nope.json")


def test_build_tokenizer_vocab_must_fit_the_model(bpe_file):
    v = HFTokenizer(bpe_file).vocab_size
    tok = build_tokenizer(str(bpe_file), 16, vocab_size=v)
    assert isinstance(tok, HFTokenizer) and tok.context_length == 16
    with pytest.raises(ConfigError, match="vocab_size"):
        build_tokenizer(str(bpe_file), 16, vocab_size=v - 1)


def test_tokens_run_through_a_text_tower_with_eos_pooling(bpe_file):
    # The ids fit an embedding table of the model's vocab size and the eos-pooled features
    # depend on the caption (a wrong pooling position would read a pad for every row).
    from models import build_model
    from vlscale.specs.presets import get_model

    spec = get_model("tiny-clip")
    tok = build_tokenizer(str(bpe_file), spec.text.context_length, vocab_size=spec.text.vocab_size)
    torch.manual_seed(0)
    model = build_model(spec)
    with torch.no_grad():
        feats = model.encode_text(tok(CAPTIONS[:2]))  # (2, embed_dim)
    assert feats.shape == (2, spec.embed_dim) and torch.isfinite(feats).all()
    assert not torch.allclose(feats[0], feats[1])


def test_decode_keeps_a_real_token_with_id_zero(tmp_path):
    # OpenAI CLIP's id 0 is a real token ("!") and rows are padded with 0 (OpenCLIP). Decoding
    # a row must keep that token inside the caption and drop only the padding after eos.
    from tokenizers import models, pre_tokenizers

    words = ["!", "a", "red", "circle", "star", UNK, BOS, EOS]
    raw = tokenizers.Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, UNK))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = HFTokenizer(_save(raw, tmp_path), context_length=10)
    assert tok.pad_id == 0 == raw.token_to_id("!")
    row = tok(["a red star !"])[0]
    assert row.tolist()[:6] == [tok.bos_id, 1, 2, 4, 0, tok.eos_id]
    assert tok.decode(row) == raw.decode([1, 2, 4, 0]) == "a red star !"


def test_trainer_trains_with_a_tokenizer_file(bpe_file, tmp_path):
    """`--tokenizer tokenizer.json` reaches the training loader and the shapes evaluation."""
    import os
    import subprocess
    import sys

    from vlscale.records import read_run

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer.train", "--model", "tiny-clip", "--steps", "2",
           "--global-batch", "8", "--eval-every", "2", "--tokenizer", str(bpe_file),
           "--out", str(out)]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = read_run(out / "run.jsonl")
    assert len(run.steps) == 2 and len(run.evals) == 1
    assert run.header.config["tokenizer"] == str(bpe_file)
