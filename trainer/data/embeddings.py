"""Precomputed image embeddings (SigLiT, Zhai et al. 2023 §4.4: the frozen image tower runs once
per example, the step trains the text tower only): the directory ``python -m trainer.embed``
writes and the loader that streams it (``--image-embeddings DIR``).

Layout of DIR (written into a temporary directory, then renamed: never half-written)::

    index.json           {"format": 1, "model", "width", "count", "context_length",
                          "shards": [{"embeddings": "emb-00000.npy", "tokens": "tok-00000.npy",
                                      "count": n}, ...]}
    emb-00000.npy        float32 (n, width): the image tower's features, not normalised
    tok-00000.npy        int64 (n, context_length): the tokenised caption of each row

A shard pairs each embedding with its caption's tokens, so the directory is a dataset of its
own (``--data`` is not read). ``EmbeddingLoader`` gives every rank its own rows of each global
batch (rank r: rows r·b .. (r+1)·b of it), epoch after epoch in the written order; its position
is one integer in the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from vlscale.errors import ConfigError

INDEX = "index.json"
FORMAT = 1


def read_index(directory: str | os.PathLike, field: str = "image_embeddings") -> dict:
    """The index of an embeddings directory; one ConfigError when it is not one."""
    path = Path(directory) / INDEX
    try:
        index = json.loads(path.read_text())
        shards = index["shards"]
        width, count = int(index["width"]), int(index["count"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            field,
            f"'{directory}' is not an embeddings directory ({type(exc).__name__}: {exc}); write "
            "one with python -m trainer.embed --model M --data ... --out DIR",
        ) from None
    if sum(int(s["count"]) for s in shards) != count:
        raise ConfigError(field, f"'{directory}': the shards' counts do not add up to {count}")
    return index | {"width": width, "count": count}


def check_embeddings(directory: str, *, width: int, context_length: int, global_batch: int):
    """Width (the model's embed_dim), caption length and count (>= one global batch)."""
    index = read_index(directory)
    if index["width"] != width:
        raise ConfigError(
            "image_embeddings",
            f"'{directory}' holds embeddings of width {index['width']} (model "
            f"{index.get('model')}), this model's embed_dim is {width}; embed with the same model",
        )
    if int(index.get("context_length", context_length)) != context_length:
        raise ConfigError(
            "image_embeddings",
            f"'{directory}' holds captions of {index['context_length']} tokens, the text tower "
            f"takes {context_length}; embed with the same model",
        )
    if index["count"] < global_batch:
        raise ConfigError(
            "image_embeddings",
            f"'{directory}' holds {index['count']} samples, fewer than one global batch "
            f"({global_batch}); embed more samples or use a smaller --global-batch",
        )
    return index


class EmbeddingWriter:
    """Append (features, tokens) batches; ``close`` writes the index and publishes DIR."""

    def __init__(self, out: str | os.PathLike, *, model: str, shard_size: int = 65536):
        self.out = Path(out)
        if self.out.exists():
            raise ConfigError("out", f"'{out}' exists; pass a new directory")
        self.tmp = self.out.with_name(self.out.name + ".partial")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.model, self.shard_size = model, shard_size
        self.shards: list[dict] = []
        self._emb: list[np.ndarray] = []
        self._tok: list[np.ndarray] = []
        self.width = self.context_length = None

    def add(self, features: torch.Tensor, tokens: torch.Tensor) -> None:
        self._emb.append(features.detach().float().cpu().numpy())
        self._tok.append(tokens.detach().long().cpu().numpy())
        self.width, self.context_length = features.shape[1], tokens.shape[1]
        if sum(len(e) for e in self._emb) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._emb:
            return
        emb, tok = np.concatenate(self._emb), np.concatenate(self._tok)
        i = len(self.shards)
        names = {"embeddings": f"emb-{i:05d}.npy", "tokens": f"tok-{i:05d}.npy"}
        np.save(self.tmp / names["embeddings"], emb)
        np.save(self.tmp / names["tokens"], tok)
        self.shards.append(names | {"count": len(emb)})
        self._emb, self._tok = [], []

    def close(self) -> dict:
        self._flush()
        index = {
            "format": FORMAT,
            "model": self.model,
            "width": self.width,
            "count": sum(s["count"] for s in self.shards),
            "context_length": self.context_length,
            "shards": self.shards,
        }
        (self.tmp / INDEX).write_text(json.dumps(index, indent=1))
        os.replace(self.tmp, self.out)
        return index


class EmbeddingLoader:
    """This rank's (features (b, width), tokens (b, S)) batches from an embeddings directory."""

    def __init__(self, directory: str, batch_size: int, rank: int = 0, world_size: int = 1):
        self.dir, self.index = Path(directory), read_index(directory)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.global_batch = batch_size * world_size
        self.position = 0  # global rows consumed (all ranks)
        self.samples = 0
        self.last_wait_s = 0.0
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._starts = np.cumsum([0] + [int(s["count"]) for s in self.index["shards"]])

    def __iter__(self) -> EmbeddingLoader:
        return self

    def _rows(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n rows from global row ``start`` (wrapping at the end of the data)."""
        emb, tok = [], []
        while n > 0:
            row = start % self.index["count"]
            shard = int(np.searchsorted(self._starts, row, side="right") - 1)
            if self._cache is None or self._cache[0] != shard:
                s = self.index["shards"][shard]
                e = np.load(self.dir / s["embeddings"], mmap_mode="r")
                t = np.load(self.dir / s["tokens"], mmap_mode="r")
                self._cache = (shard, e, t)
            _, e, t = self._cache
            lo = row - self._starts[shard]
            take = min(n, len(e) - lo)
            emb.append(np.asarray(e[lo : lo + take]))
            tok.append(np.asarray(t[lo : lo + take]))
            start, n = start + take, n - take
        return np.concatenate(emb), np.concatenate(tok)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        emb, tok = self._rows(self.position + self.rank * self.batch_size, self.batch_size)
        self.position += self.global_batch
        self.samples += self.batch_size
        return torch.from_numpy(emb.astype(np.float32)), torch.from_numpy(tok.astype(np.int64))

    def state_dict(self) -> dict:
        return {"position": self.position, "samples": self.samples, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state.get("world_size") != self.world_size:
            raise ConfigError("world_size", "resume with the same number of ranks")
        self.position, self.samples = int(state["position"]), int(state["samples"])

    def close(self) -> None:
        self._cache = None
