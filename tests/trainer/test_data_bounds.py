"""Unreadable data stops the loader with one clear error instead of skipping forever; tar members
are grouped by key whatever their order in the shard."""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from pathlib import Path

import pytest
from PIL import Image

from trainer.data import CorruptSampleWarning, CsvDataset, Loader, WebDatasetShards
from trainer.data.tar_shards import iter_tar_samples
from trainer.tokenizer import ByteTokenizer
from vlscale.errors import ConfigError

TOK = ByteTokenizer(context_length=16)


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), colour).save(buf, format="PNG")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _next_quietly(loader: Loader):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptSampleWarning)
        return next(loader)


@pytest.mark.timeout(60)
def test_csv_whose_images_are_all_missing_stops_naming_the_path(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("filepath,title\ngone0.png,x\ngone1.png,y\n")
    loader = Loader(CsvDataset(csv, rank=0, world_size=1), TOK, 8, 2)
    with pytest.raises(ConfigError, match="in a row") as err:
        _next_quietly(loader)
    assert err.value.field == "data" and "gone" in str(err.value)
    assert loader.skipped == loader.max_bad_in_a_row  # stopped at the bound, not later


@pytest.mark.timeout(60)
def test_shards_of_random_bytes_stop(tmp_path):
    for k in range(3):
        (tmp_path / f"s{k}.tar").write_bytes(os.urandom(4096))
    loader = Loader(WebDatasetShards(tmp_path, rank=0, world_size=1), TOK, 8, 2)
    with pytest.raises(ConfigError, match="unreadable shard"):
        _next_quietly(loader)


def test_fraction_bound_stops_a_mostly_broken_set(tmp_path):
    # one good image, three missing: never 3 bad in a row... except by shuffling, so no shuffle
    Image.new("RGB", (8, 8), "red").save(tmp_path / "ok.png")
    rows = ["ok.png,red", "no1.png,a", "no2.png,b", "no3.png,c"]
    csv = tmp_path / "d.csv"
    csv.write_text("filepath,title\n" + "\n".join(rows) + "\n")
    source = CsvDataset(csv, rank=0, world_size=1, shuffle=False)
    loader = Loader(source, TOK, 8, 4, max_bad_in_a_row=10, max_bad_fraction=0.5)
    with pytest.raises(ConfigError, match=r"unreadable \(> 50%\)") as err:
        for _ in range(400):  # 1024 records (256 good) are read before the fraction is judged
            _next_quietly(loader)
    assert "no1.png" in str(err.value)
    # the same data under a looser fraction keeps going: the bound, not the data, stopped it
    loose = Loader(CsvDataset(csv, rank=0, world_size=1, shuffle=False), TOK, 8, 4,
                   max_bad_in_a_row=10, max_bad_fraction=0.8)  # fmt: skip
    for _ in range(400):
        _next_quietly(loose)


def _write(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            _add(tar, name, data)


def test_tar_members_grouped_by_key_whatever_their_order(tmp_path):
    colours = ["red", "green", "blue"]
    images = [(f"k{i}.png", _png(c)) for i, c in enumerate(colours)]
    texts = [(f"k{i}.txt", c.encode()) for i, c in enumerate(colours)]
    _write(
        tmp_path / "interleaved.tar", [m for pair in zip(images, texts, strict=True) for m in pair]
    )
    _write(tmp_path / "grouped_by_ext.tar", images + texts[::-1])  # all .png, then .txt reversed
    a = list(iter_tar_samples(tmp_path / "interleaved.tar"))
    b = list(iter_tar_samples(tmp_path / "grouped_by_ext.tar"))
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b] == ["k0", "k1", "k2"]
    for x, y in zip(a, b, strict=True):
        assert x["png"] == y["png"] and x["txt"] == y["txt"]
    # resume inside the shard: skip passes over the first samples without reading them
    assert [s["__key__"] for s in iter_tar_samples(tmp_path / "grouped_by_ext.tar", 2)] == ["k2"]


def test_unordered_shard_trains_without_skips(tmp_path):
    images = [(f"k{i}.png", _png("red")) for i in range(4)]
    texts = [(f"k{i}.txt", b"red") for i in range(4)]
    _write(tmp_path / "s.tar", images + texts)
    loader = Loader(WebDatasetShards(tmp_path, rank=0, world_size=1), TOK, 8, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptSampleWarning)  # a skipped sample fails the test
        images_batch, _ = next(loader)
    assert images_batch.shape == (4, 3, 8, 8) and loader.skipped == 0
