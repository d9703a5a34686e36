"""Text tokenizers for the trainer: byte-level by default, optionally a Hugging Face JSON file.

Output contract (both tokenizers, same as OpenCLIP's ``tokenize``)::

    tokens = tokenizer(["a red circle", ...])      # LongTensor (N, context_length)
    row    = [bos, t_1, ..., t_k, eos, pad, ..., pad]

Texts longer than the context are cut so that the row still ends in ``eos``: the text tower's
``pool="eos"`` takes the position of the *highest* token id (OpenCLIP's ``argmax``), so ``eos``
must be the highest id in the vocabulary and must always be present.

Byte vocabulary (``vlscale.specs.presets.BYTE_VOCAB`` = 260 ids)::

    0 pad | 1..256 the bytes 0..255 (byte b -> b + 1) | 257 unk | 258 bos | 259 eos

``pad = 0`` lets a zero-initialised buffer be all padding; ``unk`` is unused by the byte
tokenizer itself and reserved so that the vocabulary size matches the preset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vlscale.errors import ConfigError
from vlscale.specs.presets import BYTE_VOCAB

PAD_ID = 0
BYTE_OFFSET = 1
UNK_ID = 257
BOS_ID = 258
EOS_ID = 259
assert EOS_ID == BYTE_VOCAB - 1, "eos must be the highest id for eos pooling"


def _check_context(context_length: int) -> None:
    if context_length < 2:
        raise ConfigError(
            "context_length",
            f"must be at least 2 (room for bos and eos), got {context_length}; use e.g. 77",
        )


def pack_rows(ids: Sequence[Sequence[int]], context_length: int, bos: int, eos: int, pad: int):
    """Rows ``[bos] + ids[: ctx - 2] + [eos]`` right-padded with ``pad`` -> LongTensor (N, ctx)."""
    _check_context(context_length)
    out = torch.full((len(ids), context_length), pad, dtype=torch.long)  # (N, ctx)
    body = context_length - 2  # bos and eos always fit, so truncation never drops eos
    for row, seq in enumerate(ids):
        kept = list(seq[:body])
        out[row, : len(kept) + 2] = torch.tensor([bos, *kept, eos], dtype=torch.long)
    return out


class ByteTokenizer:
    """UTF-8 bytes as tokens; vocabulary of 260 with ``eos`` = 259, the highest id."""

    vocab_size = BYTE_VOCAB
    pad_id, bos_id, eos_id, unk_id = PAD_ID, BOS_ID, EOS_ID, UNK_ID

    def __init__(self, context_length: int = 77):
        _check_context(context_length)
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without bos/eos."""
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids = [self.encode(t) for t in texts]
        return pack_rows(ids, self.context_length, BOS_ID, EOS_ID, PAD_ID)

    def decode(self, row: Sequence[int] | torch.Tensor) -> str:
        """Text of one row; special ids are dropped, a multi-byte character cut by
        truncation becomes U+FFFD."""
        ids = row.tolist() if isinstance(row, torch.Tensor) else list(row)
        data = bytes(
            i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < BYTE_OFFSET + 256
        )  # drop pad/bos/eos/unk
        return data.decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers`` JSON file with the same output contract.

    ``bos_token`` / ``eos_token`` / ``pad_token`` name special tokens in that file (defaults are
    OpenAI CLIP's). With ``require_eos_highest`` (needed by ``pool="eos"`` text towers) the eos id
    must be the largest id in the vocabulary.
    """

    def __init__(
        self,
        path: str | Path,
        context_length: int = 77,
        *,
        bos_token: str = "<|startoftext|>",
        eos_token: str = "<|endoftext|>",
        pad_token: str | None = None,
        require_eos_highest: bool = True,
    ):
        _check_context(context_length)
        try:
            import tokenizers  # lazy: optional dependency, only for this tokenizer
        except ImportError as exc:
            raise ConfigError(
                "tokenizer",
                "the Hugging Face 'tokenizers' package is not installed; "
                "run `pip install tokenizers`, or use --tokenizer byte",
            ) from exc
        path = Path(path)
        if not path.is_file():
            raise ConfigError("tokenizer", f"no tokenizer file at {path}; pass a tokenizer.json")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # the Rust side raises a bare Exception for any parse error
            raise ConfigError(
                "tokenizer",
                f"{path} is not a valid tokenizer.json ({exc}); pass a file saved by Hugging Face "
                "tokenizers, or use --tokenizer byte",
            ) from None
        # A saved file may carry padding / truncation settings that HF applies inside encode
        # (pads before our eos, captions cut short); rows are packed by pack_rows alone.
        for reset in ("no_padding", "no_truncation"):  # getattr: minimal stand-ins lack them
            getattr(self._tok, reset, lambda: None)()
        self.context_length = context_length
        self.vocab_size = int(self._tok.get_vocab_size())
        self.bos_id = self._special_id(bos_token, "bos_token")
        self.eos_id = self._special_id(eos_token, "eos_token")
        self.pad_id = 0 if pad_token is None else self._special_id(pad_token, "pad_token")
        if require_eos_highest and self.eos_id != self.vocab_size - 1:
            raise ConfigError(
                "tokenizer",
                f"eos token {eos_token!r} has id {self.eos_id} but the highest id is "
                f"{self.vocab_size - 1}; eos pooling takes the argmax id, so use a tokenizer whose "
                "eos is last, or a text tower with pool='last'",
            )

    def _special_id(self, token: str, field: str) -> int:
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise ConfigError(field, f"token {token!r} is not in the tokenizer vocabulary")
        return int(tid)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        ids = [self.encode(t) for t in texts]
        return pack_rows(ids, self.context_length, self.bos_id, self.eos_id, self.pad_id)

    def decode(self, row: Sequence[int] | torch.Tensor) -> str:
        """Text of one row: the ids between a leading bos and the first eos. The padding id is
        not filtered out: with OpenCLIP's pad 0 it is also a real token (CLIP's "!")."""
        ids = row.tolist() if isinstance(row, torch.Tensor) else list(row)
        if ids and ids[0] == self.bos_id:
            ids = ids[1:]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._tok.decode(ids)


def build_tokenizer(
    name: str = "byte", context_length: int = 77, vocab_size: int | None = None
) -> ByteTokenizer | HFTokenizer:
    """``"byte"`` or a path to a ``tokenizer.json``; checks the ids fit the model's vocabulary."""
    if name == "byte":
        tok: ByteTokenizer | HFTokenizer = ByteTokenizer(context_length)
    elif name.endswith(".json"):
        tok = HFTokenizer(name, context_length)
    else:
        raise ConfigError(
            "tokenizer", f"unknown tokenizer {name!r}; use 'byte' or a path to a tokenizer.json"
        )
    if vocab_size is not None and tok.vocab_size > vocab_size:
        raise ConfigError(
            "tokenizer",
            f"tokenizer has {tok.vocab_size} ids but the text tower's vocab_size is {vocab_size}; "
            f"pick a model whose text vocab_size is at least {tok.vocab_size} "
            f"(byte tokenizer: {BYTE_VOCAB})",
        )
    return tok
