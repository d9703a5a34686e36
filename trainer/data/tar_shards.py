"""``WebDatasetShards``: streamed tar shards in the WebDataset layout, read with ``tarfile``.

A sample is the set of members sharing a key (the member path up to the first dot of its file
name): ``000123.jpg`` + ``000123.txt``, wherever they lie in the shard. Images may be
jpg/jpeg/png/webp; the caption is the ``.txt``. A shard's member headers are listed first, then
each sample is read by offset (``tarfile`` mode ``r:*``: plain or compressed), so nothing but
the member list and the current sample is held in memory.

Sharding (``stream.py``): the unit is a whole shard. Epoch e visits the shards in an order
seeded by (seed, e); rank r takes shard slots r, r + W, ... of that endless sequence. The cursor
is ``(i, m)``: the rank's i-th shard slot, m samples of it already consumed. A shard that cannot
be read to its end yields one broken record (counted by the loader) and the stream moves on.
With fewer shards than ranks two ranks would read the same shard in the same epoch, so that is
refused: split the data into at least W shards (ideally many more).
"""

from __future__ import annotations

import glob
import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from trainer.data.stream import CorruptSample, caption_text, derived_seed, open_image, resolve_rank
from vlscale.errors import ConfigError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_shards(spec: str | Path) -> list[Path]:
    """A folder (all ``*.tar*`` in it), a glob, or a brace range ``data-{000..099}.tar``."""
    text = str(spec)
    match = _BRACE.search(text)
    if match:
        lo, hi = match.group(1), match.group(2)
        width = len(lo)
        names = [
            text[: match.start()] + str(k).zfill(width) + text[match.end() :]
            for k in range(int(lo), int(hi) + 1)
        ]
        paths = [Path(n) for n in names]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ConfigError("data", f"shard {missing[0]} of {text} does not exist; fix the range")
        return paths
    path = Path(text)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if ".tar" in p.name and p.is_file())
    else:
        paths = sorted(Path(p) for p in glob.glob(text))
    if not paths:
        raise ConfigError(
            "data",
            f"no tar shards at '{text}'; pass a folder of .tar files, a glob or a brace range "
            "(data-{000..099}.tar), or --data shapes for the built-in synthetic set",
        )
    return paths


def _key_and_ext(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def iter_tar_samples(path: Path, skip: int = 0) -> Iterator[dict]:
    """Samples ``{"__key__", "__shard__", ext: bytes, ...}`` of one shard, in the order in which
    their keys first appear; the first ``skip`` samples are passed over without reading them.

    Members are grouped by key whatever their order in the file (a shard written with all
    ``.png`` first and all ``.txt`` after gives the same samples as an interleaved one): the
    member headers are listed first (``tarfile`` seeks over the data of a plain tar), then each
    sample's members are read by offset. Only the member list, not the shard, is held in memory.
    A read error ends the shard with ``{"__error__": message}`` after the samples listed before
    it.
    """
    try:
        tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 (closed by the `with` below)
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield _broken(path, exc)
        return
    with tar:
        groups: dict[str, list[tarfile.TarInfo]] = {}
        error = None
        try:
            while (member := tar.next()) is not None:
                if member.isfile():
                    groups.setdefault(_key_and_ext(member.name)[0], []).append(member)
        except (tarfile.TarError, OSError, EOFError) as exc:
            # keep the samples listed so far (one that lost members fails decoding and is
            # counted); the unreadable tail is one broken record
            error = exc
        for m, (key, members) in enumerate(groups.items()):
            if m < skip:
                continue
            sample: dict = {"__key__": key, "__shard__": str(path)}
            try:
                for member in members:
                    data = tar.extractfile(member)
                    sample[_key_and_ext(member.name)[1]] = data.read() if data else b""
            except (tarfile.TarError, OSError, EOFError) as exc:
                yield _broken(path, exc)
                return
            yield sample
        if error is not None:
            yield _broken(path, error)


def _broken(path: Path, exc: BaseException) -> dict:
    text = str(exc)
    if "could not be opened successfully" in text:  # tarfile's r:* tried every method
        text = "not a tar file (plain, gz, bz2 or xz)"
    text = " ".join(text.split())  # one line, whatever the library wrote
    return {"__key__": "?", "__shard__": str(path), "__error__": f"unreadable shard: {text}"}


class WebDatasetShards:
    """Rank-sharded, resumable stream over tar shards (a ``SampleSource``)."""

    def __init__(
        self,
        shards: str | Path | list[str | Path],
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        if isinstance(shards, (list, tuple)):
            self.shards = [Path(s) for s in shards]
            missing = [s for s in self.shards if not s.is_file()]
            if missing or not self.shards:
                raise ConfigError("data", f"shard list is empty or lacks {missing[:1]}; fix it")
        else:
            self.shards = expand_shards(shards)
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = resolve_rank(rank, world_size)
        if len(self.shards) < self.world_size:
            raise ConfigError(
                "data",
                f"{len(self.shards)} tar shards for {self.world_size} ranks: ranks would read the "
                "same shard; re-shard the data into at least as many shards as ranks",
            )

    def shard_of_slot(self, slot: int) -> Path:
        """The shard at global slot ``slot`` (epoch = slot // S, seeded order per epoch)."""
        n = len(self.shards)
        epoch, pos = divmod(slot, n)
        if not self.shuffle:
            return self.shards[pos]
        gen = torch.Generator().manual_seed(derived_seed(self.seed, epoch))
        return self.shards[int(torch.randperm(n, generator=gen)[pos])]

    def initial_cursor(self) -> tuple[int, int]:
        return (0, 0)

    def records(self, cursor: tuple[int, int] = (0, 0)) -> Iterator[tuple[dict, tuple[int, int]]]:
        i, skip = cursor
        empty_in_a_row = 0
        while True:
            shard = self.shard_of_slot(self.rank + self.world_size * i)
            m = skip  # samples before the checkpoint's position are not read again
            for sample in iter_tar_samples(shard, skip):
                m += 1
                yield sample, (i, m)
            empty_in_a_row = empty_in_a_row + 1 if m == 0 else 0
            if empty_in_a_row > len(self.shards):  # a full round of empty shards: never ends
                raise ConfigError("data", f"the tar shards of this rank hold no files: {shard}")
            i, skip = i + 1, 0

    def decode(self, sample: dict) -> tuple[Image.Image, str]:
        if "__error__" in sample:
            raise CorruptSample(sample["__error__"])
        text = caption_text(sample.get("txt"))
        image = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
        if image is None:
            raise CorruptSample(f"no image ({'/'.join(IMAGE_EXTS)}) for key {sample['__key__']}")
        return open_image(io.BytesIO(image)), text
