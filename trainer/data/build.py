"""Pick the source for ``--data`` and wrap it in a :class:`~trainer.data.loader.Loader`.

``data`` is ``"shapes"`` (built-in procedural set), a ``.csv`` / ``.tsv`` file, or tar shards
(a folder of ``.tar`` files, a glob, or a brace range such as ``data-{000..099}.tar``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from trainer.data.csv_files import CsvDataset
from trainer.data.loader import Loader
from trainer.data.shapes import ShapesDataset
from trainer.data.stream import SampleSource
from trainer.data.tar_shards import WebDatasetShards
from vlscale.errors import ConfigError

SHAPES = "shapes"


def build_source(
    data: str,
    *,
    image_size: int,
    seed: int = 0,
    split: str = "train",
    rank: int | None = None,
    world_size: int | None = None,
) -> SampleSource:
    """The rank's sample source for ``data`` (see the module docstring)."""
    if data == SHAPES:
        return ShapesDataset(image_size, seed=seed, split=split, rank=rank, world_size=world_size)
    path = Path(data)
    kw = dict(seed=seed, rank=rank, world_size=world_size)
    if path.suffix.lower() in (".csv", ".tsv"):
        sep = "\t" if path.suffix.lower() == ".tsv" else ","
        return CsvDataset(path, sep=sep, **kw)
    if path.is_dir() or ".tar" in path.name or any(c in data for c in "*?{"):
        return WebDatasetShards(data, **kw)
    raise ConfigError(
        "data",
        f"no dataset at '{data}'; pass a CSV file, a folder / glob / brace range of .tar shards, "
        "or --data shapes for the built-in synthetic set",
    )


def build_loader(
    data: str,
    tokenizer: Callable[[list[str]], torch.Tensor],
    *,
    image_size: int,
    batch_size: int,
    seed: int = 0,
    split: str = "train",
    rank: int | None = None,
    world_size: int | None = None,
    num_workers: int = 0,
    worker_type: str = "thread",
) -> Loader:
    """A loader of ``batch_size`` (the LOCAL batch) for this rank."""
    source = build_source(
        data, image_size=image_size, seed=seed, split=split, rank=rank, world_size=world_size
    )
    return Loader(
        source,
        tokenizer,
        image_size,
        batch_size,
        num_workers=num_workers,
        worker_type=worker_type,  # type: ignore[arg-type]
    )
