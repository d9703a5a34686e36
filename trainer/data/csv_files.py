"""``CsvDataset``: image paths and captions listed in a CSV file (OpenCLIP's ``--csv-img-key
filepath --csv-caption-key title`` layout).

Relative image paths are resolved against the CSV file's folder. Each epoch visits the rows in
a fresh order, ``torch.randperm`` seeded with (seed, epoch) (or file order with
``shuffle=False``); ranks take every W-th position of that endless stream (``stream.py``)::

    global position g = rank + W * i,   epoch = g // N,   row = order_epoch[g % N]
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from trainer.data.stream import caption_text, derived_seed, open_image, resolve_rank
from vlscale.errors import ConfigError

MAX_CAPTION_CHARS = 16_384
"""The longest field (caption or image path) a CSV may hold, in characters. Alt-text captions
run to hundreds of characters and the text tower reads at most its context length (77 tokens
for CLIP); a longer field is a broken file (a missing quote, a binary blob), reported as a data
error naming the file and line, before it can fill memory (``csv.field_size_limit``)."""


def read_rows(path: Path, image_key: str, caption_key: str, sep: str) -> list[tuple[str, str]]:
    """``(image, caption)`` of every row, or one ConfigError naming the file (and line): not
    UTF-8, a NUL byte, a field over :data:`MAX_CAPTION_CHARS`, missing columns."""
    old_limit = csv.field_size_limit(MAX_CAPTION_CHARS)
    reader = None
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=sep)
            missing = {image_key, caption_key} - set(reader.fieldnames or ())
            if missing:
                raise ConfigError(
                    "data",
                    f"{path} has columns {reader.fieldnames} but lacks {sorted(missing)}; "
                    "rename the header or set image_key / caption_key (and sep for TSV)",
                )
            return [(r[image_key], r[caption_key]) for r in reader]
    except UnicodeDecodeError as exc:
        raise ConfigError(
            "data",
            f"{path} is not UTF-8 text (it holds the byte 0x{exc.object[exc.start]:02x}); "
            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None
    except csv.Error as exc:
        # line_num counts the lines read before the failing one
        line = f" line {reader.line_num + 1}" if reader is not None else ""
        what = str(exc)
        if "field larger than field limit" in what:
            what = f"a field is longer than {MAX_CAPTION_CHARS} characters (the maximum caption)"
        raise ConfigError(
            "data", f"{path}{line}: {what}; fix or drop that row (is a quote unclosed?)"
        ) from None
    finally:
        csv.field_size_limit(old_limit)


class CsvDataset:
    """Rows of (image path, caption); records are ``(row, path, caption)``; cursor = count."""

    def __init__(
        self,
        path: str | Path,
        *,
        image_key: str = "filepath",
        caption_key: str = "title",
        sep: str = ",",
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                "data",
                f"no CSV file at '{path}'; pass an existing CSV with columns "
                f"{image_key},{caption_key}, or --data shapes for the built-in synthetic set",
            )
        rows = read_rows(path, image_key, caption_key, sep)
        if not rows:
            raise ConfigError("data", f"{path} has no rows; add image,caption lines")
        self.root = path.parent
        self.rows = rows
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self._order: tuple[int, torch.Tensor] | None = None  # (epoch, permutation) cache

    def __len__(self) -> int:
        return len(self.rows)

    def order(self, epoch: int) -> torch.Tensor:
        """Row order of ``epoch`` (same on every rank)."""
        if self._order is None or self._order[0] != epoch:
            n = len(self.rows)
            if self.shuffle:
                gen = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
                perm = torch.randperm(n, generator=gen)
            else:
                perm = torch.arange(n)
            self._order = (epoch, perm)
        return self._order[1]

    def initial_cursor(self) -> int:
        return 0

    def records(self, cursor: int = 0) -> Iterator[tuple[tuple[int, str, str | None], int]]:
        n, i = len(self.rows), cursor
        while True:
            g = self.rank + self.world_size * i
            row = int(self.order(g // n)[g % n])
            image, caption = self.rows[row]
            yield (row, str(self.root / image), caption), i + 1
            i += 1

    def decode(self, record: tuple[int, str, str | None]) -> tuple[Image.Image, str]:
        _, image_path, caption = record
        text = caption_text(caption)
        return open_image(image_path), text
