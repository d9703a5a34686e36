"""Tokenizer contract: shapes, bos/eos/pad placement, eos highest, truncation keeps eos."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from trainer.tokenizer import ByteTokenizer, HFTokenizer, build_tokenizer
from vlscale.errors import ConfigError
from vlscale.specs.presets import BYTE_VOCAB


def test_byte_shapes_and_layout():
    tok = ByteTokenizer(context_length=16)
    out = tok(["ab", "", "héllo"])
    assert out.shape == (3, 16) and out.dtype == torch.long
    n_ab = len(b"ab")
    assert out[0, 0] == tok.bos_id and out[0, n_ab + 1] == tok.eos_id
    assert (out[0, n_ab + 2 :] == tok.pad_id).all()
    assert out[1, :2].tolist() == [tok.bos_id, tok.eos_id]
    assert (out >= 0).all() and (out < BYTE_VOCAB).all()


def test_eos_is_the_highest_id_and_argmax_finds_it():
    tok = ByteTokenizer(context_length=32)
    assert tok.eos_id == BYTE_VOCAB - 1 == tok.vocab_size - 1
    texts = ["a red circle", "\xff\xfe bytes that are high", "x"]
    out = tok(texts)
    # eos pooling (OpenCLIP argmax) must land on the eos position
    eos_pos = out.argmax(dim=-1)
    for row, pos in enumerate(eos_pos.tolist()):
        assert out[row, pos] == tok.eos_id
        assert pos == len(texts[row].encode()) + 1


@pytest.mark.parametrize("text", ["a small red circle at the top left", "ünïcödé ✓", ""])
def test_round_trip(text):
    tok = ByteTokenizer(context_length=128)
    assert tok.decode(tok(text)[0]) == text


def test_truncation_keeps_eos():
    tok = ByteTokenizer(context_length=8)
    out = tok(["a much longer caption than eight bytes"])
    assert out.shape == (1, 8)
    assert out[0, 0] == tok.bos_id and out[0, -1] == tok.eos_id
    assert tok.decode(out[0]) == "a much longer caption"[:6]
    assert (out[0] == tok.eos_id).sum() == 1


def test_bad_context_length():
    with pytest.raises(ConfigError, match="context_length"):
        ByteTokenizer(context_length=1)


def test_build_tokenizer_checks_vocab():
    assert isinstance(build_tokenizer("byte", 10, vocab_size=BYTE_VOCAB), ByteTokenizer)
    with pytest.raises(ConfigError, match="vocab_size"):
        build_tokenizer("byte", 10, vocab_size=100)
    with pytest.raises(ConfigError, match="tokenizer"):
        build_tokenizer("bpe-of-my-dreams", 10)


def test_hf_missing_package_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(ConfigError, match="pip install tokenizers"):
        HFTokenizer(tmp_path / "tokenizer.json")


def _fake_tokenizers(vocab: list[str]):
    """A stand-in for the `tokenizers` package: whitespace split over a fixed vocabulary."""
    index = {w: i for i, w in enumerate(vocab)}

    class _Encoding:
        def __init__(self, ids):
            self.ids = ids

    class Tokenizer:
        @staticmethod
        def from_file(path):
            return Tokenizer()

        def get_vocab_size(self):
            return len(vocab)

        def token_to_id(self, token):
            return index.get(token)

        def encode(self, text, add_special_tokens=True):
            return _Encoding([index.get(w, index["<unk>"]) for w in text.split()])

        def decode(self, ids):
            return " ".join(vocab[i] for i in ids)

    return types.SimpleNamespace(Tokenizer=Tokenizer)


def test_hf_same_contract(monkeypatch, tmp_path):
    vocab = ["<pad>", "<unk>", "a", "red", "circle", "<|startoftext|>", "<|endoftext|>"]
    monkeypatch.setitem(sys.modules, "tokenizers", _fake_tokenizers(vocab))
    path = tmp_path / "tokenizer.json"
    path.write_text("{}")
    tok = HFTokenizer(path, context_length=4, pad_token="<pad>")
    out = tok(["a red circle", "red"])
    assert out.shape == (2, 4)
    assert out[0].tolist() == [5, 2, 3, 6]  # truncated, eos kept
    assert out[1].tolist() == [5, 3, 6, 0]
    assert tok.decode(out[1]) == "red"


def test_hf_eos_must_be_highest(monkeypatch, tmp_path):
    vocab = ["<pad>", "<|startoftext|>", "<|endoftext|>", "<unk>", "zebra"]
    monkeypatch.setitem(sys.modules, "tokenizers", _fake_tokenizers(vocab))
    path = tmp_path / "tokenizer.json"
    path.write_text("{}")
    with pytest.raises(ConfigError, match="pool='last'"):
        HFTokenizer(path)
    HFTokenizer(path, require_eos_highest=False)  # allowed for last-token pooling
