"""What every data source shares: rank sharding, a resumable cursor, and corrupt-sample errors.

Sharding rule (all sources): the data is ONE infinite global stream of *units* (a sample for
index-addressable sources, a whole tar shard for streamed ones), epoch after epoch, each epoch
in its own seeded order. Rank ``r`` of ``W`` takes units ``r, r + W, r + 2W, ...``::

    unit(r, i) = global unit  r + W * i          (i = the rank's own counter)

so ranks are disjoint, together they cover the stream, and epochs join without a seam. A
source's ``records(cursor)`` yields ``(record, cursor_after)`` pairs; saving ``cursor_after`` of
the last record that went into a batch and restarting from it resumes at exactly the next
sample. ``decode(record)`` turns a record into ``(PIL image, caption)`` or raises
:class:`CorruptSample`, which the loader counts and warns about.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from PIL import Image

from vlscale.errors import ConfigError


class CorruptSample(Exception):
    """A record that cannot become a training sample (undecodable image, missing caption)."""


class CorruptSampleWarning(UserWarning):
    """Warned once per skipped sample; the running count is in the message."""


class SampleSource(Protocol):
    """A rank's view of a dataset (see the module docstring)."""

    rank: int
    world_size: int

    def initial_cursor(self) -> Any: ...

    def records(self, cursor: Any) -> Iterator[tuple[Any, Any]]: ...

    def decode(self, record: Any) -> tuple[Image.Image, str]: ...


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values, else the default process group's, else (0, 1)."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        initialised = dist.is_available() and dist.is_initialized()
        rank = rank if rank is not None else (dist.get_rank() if initialised else 0)
        world_size = (
            world_size if world_size is not None else (dist.get_world_size() if initialised else 1)
        )
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError("rank", f"need 0 <= rank < world_size, got rank={rank} of {world_size}")
    return rank, world_size


def derived_seed(seed: int, salt: int, scale: int = 1_000_003) -> int:
    """``seed * scale + salt`` within the 64 bits torch's generators take (the seed itself may be
    up to 2**63 - 1); unchanged for every seed small enough not to wrap."""
    return (seed * scale + salt) % 2**64


def caption_text(raw: str | bytes | None) -> str:
    """A usable caption or CorruptSample: decoded UTF-8, stripped, non-empty."""
    if raw is None:
        raise CorruptSample("missing caption")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptSample(f"caption is not UTF-8: {exc}") from exc
    text = raw.strip()
    if not text:
        raise CorruptSample("empty caption")
    return text


def open_image(source) -> Image.Image:
    """Fully decode an image (path or file object) to RGB, or raise CorruptSample."""
    try:
        with Image.open(source) as img:
            img.load()  # decode now: truncated files fail here, not later in a worker
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise CorruptSample(f"undecodable image: {exc}") from exc
