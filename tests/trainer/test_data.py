"""Data pipeline: transforms, shapes set, CSV and tar shards, sharding, resume, corrupt samples."""

from __future__ import annotations

import io
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

from trainer.data import (
    CLIP_MEAN,
    CLIP_STD,
    CorruptSampleWarning,
    CsvDataset,
    ImageTransform,
    Loader,
    ShapesDataset,
    WebDatasetShards,
    build_source,
)
from trainer.data.shapes import COLORS, POSITIONS, SIZES
from trainer.tokenizer import ByteTokenizer
from vlscale.errors import ConfigError

TOK = ByteTokenizer(context_length=24)
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    """(3, H, W) normalised -> [0, 255] floats."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x * std + mean) * 255


def _take(loader: Loader, n: int):
    return [next(loader) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for (ia, ta), (ib, tb) in zip(a, b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(ta, tb)


# ---------------------------------------------------------------- transforms


def test_transform_resizes_shorter_side_and_crops_centre():
    img = Image.new("RGB", (40, 20))
    img.paste(RGB["red"], (0, 0, 20, 20))
    img.paste(RGB["blue"], (20, 0, 40, 20))
    x = ImageTransform(10)(img)
    assert x.shape == (3, 10, 10) and x.dtype == torch.float32
    px = _unnormalise(x)
    # centre crop of the 20x10 resize keeps 5 red and 5 blue columns
    assert px[0, :, 1].mean() > 200 and px[2, :, 1].mean() < 50
    assert px[2, :, -2].mean() > 200 and px[0, :, -2].mean() < 50
    grey = Image.new("L", (7, 9), 128)  # non-RGB input is converted
    assert ImageTransform(5)(grey).shape == (3, 5, 5)


def test_transform_normalises_with_clip_statistics():
    mean_px = tuple(round(m * 255) for m in CLIP_MEAN)
    x = ImageTransform(4)(Image.new("RGB", (4, 4), mean_px))
    assert x.abs().max() < 0.5 / 255 / min(CLIP_STD) + 1e-6  # only rounding of the mean is left


# ---------------------------------------------------------------- shapes


def test_shapes_deterministic_per_seed_and_split():
    a = ShapesDataset(32, seed=3, rank=0, world_size=1)
    b = ShapesDataset(32, seed=3, rank=0, world_size=1)
    c = ShapesDataset(32, seed=4, rank=0, world_size=1)
    ev = ShapesDataset(32, seed=3, split="eval", rank=0, world_size=1)
    same = diff_seed = diff_split = 0
    for i in range(20):
        (ia, ca), (ib, cb) = a.decode(i), b.decode(i)
        same += ia.tobytes() == ib.tobytes() and ca == cb
        diff_seed += ia.tobytes() != c.decode(i)[0].tobytes()
        diff_split += ia.tobytes() != ev.decode(i)[0].tobytes()
    assert same == 20
    assert diff_seed >= 15 and diff_split >= 15  # (a few may coincide by chance)


def _colour_pixels(img: Image.Image, background: int) -> tuple[torch.Tensor, torch.Tensor]:
    px = torch.from_numpy(__import__("numpy").asarray(img).copy()).float()  # (H, W, 3)
    mask = (px - background).abs().amax(-1) > 40  # clearly not the grey background
    return px, mask


@pytest.mark.parametrize("size", [48, 64])
def test_shapes_captions_match_pixels(size):
    ds = ShapesDataset(size, seed=11, rank=0, world_size=1)
    palette = torch.tensor(list(COLORS.values()), dtype=torch.float32)  # (C, 3)
    names = list(COLORS)
    for i in range(40):
        a = ds.attrs(i)
        img, caption = ds.decode(i)
        assert img.size == (size, size)
        for word in (a.color, a.shape, a.size, a.position):
            assert word in caption
        px, mask = _colour_pixels(img, a.background)
        shape_px = px[mask]  # (n, 3)
        nearest = torch.cdist(shape_px, palette).argmin(-1)
        assert names[int(nearest.mode().values)] == a.color, (i, caption)
        ys, xs = mask.nonzero(as_tuple=True)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        # position: the centre of the coloured pixels lies in the named cell of a 3 x 3 grid
        row, col = int((y0 + y1) * 3 // (2 * size)), int((x0 + x1) * 3 // (2 * size))
        assert POSITIONS[row * 3 + col] == a.position, (i, caption)
        # size: the coloured extent is closest to the named fraction of the image
        extent = max(x1 - x0, y1 - y0) / size
        assert min(SIZES, key=lambda k: abs(SIZES[k] - extent)) == a.size, (i, caption)
        # shape: how much of its bounding box the shape fills (square 1, circle pi/4, ...)
        fill = mask[y0:y1, x0:x1].float().mean()
        if a.shape == "square":
            assert fill > 0.9
        elif a.shape == "circle":
            assert 0.7 < fill < 0.86
        else:
            assert fill < 0.66


def test_shapes_zero_shot_classes_and_templates():
    ds = ShapesDataset(32, rank=0, world_size=1)
    assert len(ds.classes) == len(ds.class_names) == 30
    a = ds.attrs(5)
    assert ds.class_names[a.class_index] == f"{a.color} {a.shape}"
    assert all(t.format(**ds.classes[0]) for t in ds.templates)


def test_shapes_rank_sharding_disjoint_and_covering():
    world, k = 3, 10
    seen = []
    for r in range(world):
        ds = ShapesDataset(16, rank=r, world_size=world)
        it = ds.records(0)
        seen.append([next(it)[0] for _ in range(k)])
    flat = [i for s in seen for i in s]
    assert sorted(flat) == list(range(world * k))


def test_loader_resume_continues_exactly_and_workers_do_not_change_batches():
    ds = ShapesDataset(16, seed=1, rank=1, world_size=2)
    inline = Loader(ds, TOK, 16, 3)
    ref = _take(inline, 6)
    assert inline.samples == 18 and inline.last_wait_s > 0  # data time for the trainer
    loader = Loader(ds, TOK, 16, 3, num_workers=2)
    _assert_same_batches(_take(loader, 6), ref)  # threads: same batches, same order

    first = Loader(ds, TOK, 16, 3)
    _take(first, 2)
    state = first.state_dict()
    resumed = Loader(ds, TOK, 16, 3, num_workers=2)
    resumed.load_state_dict(state)
    _assert_same_batches(_take(resumed, 4), ref[2:])
    resumed.close()
    loader.close()


def test_loader_process_workers_match_inline():
    ds = ShapesDataset(16, seed=2, rank=0, world_size=1)
    loader = Loader(ds, TOK, 16, 4, num_workers=2, worker_type="process")
    try:
        _assert_same_batches(_take(loader, 2), _take(Loader(ds, TOK, 16, 4), 2))
    finally:
        loader.close()


def test_loader_state_refuses_other_world_size():
    state = Loader(ShapesDataset(16, rank=0, world_size=2), TOK, 16, 2).state_dict()
    with pytest.raises(ConfigError, match="world_size"):
        Loader(ShapesDataset(16, rank=0, world_size=4), TOK, 16, 2).load_state_dict(state)


# ---------------------------------------------------------------- CSV files


def _write_csv_set(root: Path) -> tuple[Path, list[str]]:
    """Solid-colour PNG/JPG images whose caption is their colour; three broken rows."""
    (root / "img").mkdir()
    lines, good = ["filepath,title"], []
    for k, name in enumerate(["red", "green", "blue", "white", "red", "blue"]):
        ext = "png" if k % 2 else "jpg"
        Image.new("RGB", (20 + k, 16), RGB[name]).save(root / "img" / f"{k}.{ext}")
        lines.append(f"img/{k}.{ext},{name}")
        good.append(name)
    (root / "img" / "bad.jpg").write_bytes(b"this is not a jpeg")
    Image.new("RGB", (8, 8)).save(root / "img" / "nocap.png")
    lines += ["img/bad.jpg,red", "img/nocap.png,", "img/missing.png,blue"]
    path = root / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, good


def _captions(tokens: torch.Tensor) -> list[str]:
    return [TOK.decode(row) for row in tokens]


def test_csv_reads_files_and_counts_corrupt(tmp_path):
    path, good = _write_csv_set(tmp_path)
    ds = CsvDataset(path, rank=0, world_size=1, seed=5)
    loader = Loader(ds, TOK, 12, 3)
    with pytest.warns(CorruptSampleWarning, match="skipped corrupt sample"):
        batches = _take(loader, 2)  # 6 good samples = one full epoch of 9 rows
    caps = [c for _, t in batches for c in _captions(t)]
    assert sorted(caps) == sorted(good)
    # the corrupt rows are 6, 7, 8: exactly those read so far were skipped
    consumed = ds.order(0)[: loader.state_dict()["cursor"]]
    assert loader.skipped == int((consumed >= 6).sum()) > 0
    for images, tokens in batches:  # each image has the colour its caption names
        for img, cap in zip(images, _captions(tokens), strict=True):
            mean = _unnormalise(img).mean(dim=(1, 2))
            assert torch.allclose(mean, torch.tensor(RGB[cap], dtype=torch.float32), atol=12)


def test_csv_sharding_and_resume(tmp_path):
    path, _ = _write_csv_set(tmp_path)
    n = 9
    rows = []
    for r in range(2):
        it = CsvDataset(path, rank=r, world_size=2).records(0)
        rows.append([next(it)[0][0] for _ in range((n + 1 - r) // 2)])
    assert sorted(rows[0] + rows[1]) == list(range(n))  # one epoch, disjoint and covering

    ds = CsvDataset(path, rank=1, world_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptSampleWarning)
        ref = _take(Loader(ds, TOK, 12, 2), 5)
        first = Loader(ds, TOK, 12, 2)
        _take(first, 2)
        resumed = Loader(CsvDataset(path, rank=1, world_size=2), TOK, 12, 2)
        resumed.load_state_dict(first.state_dict())
        _assert_same_batches(_take(resumed, 3), ref[2:])
    assert resumed.skipped >= first.skipped


def test_csv_bad_input(tmp_path):
    with pytest.raises(ConfigError, match=r"^data"):
        CsvDataset(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,caption\na.png,x\n")
    with pytest.raises(ConfigError, match="image_key"):
        CsvDataset(bad)


# ---------------------------------------------------------------- tar shards


def _image_bytes(colour: str, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (18, 14), RGB[colour]).save(buf, format=fmt)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write_shards(root: Path, n_shards: int = 4, per_shard: int = 3) -> list[str]:
    """Shards of solid-colour samples captioned '<colour> <key>'; shard 0 has two broken ones."""
    names, good = list(RGB), []
    for s in range(n_shards):
        with tarfile.open(root / f"shard-{s:03d}.tar", "w") as tar:
            for k in range(per_shard):
                key, colour = f"{s:03d}{k:03d}", names[(s + k) % len(names)]
                fmt = "png" if k % 2 else "jpeg"
                _add(tar, f"{key}.{'png' if k % 2 else 'jpg'}", _image_bytes(colour, fmt))
                _add(tar, f"{key}.txt", f"{colour} {key}".encode())
                good.append(f"{colour} {key}")
            if s == 0:
                _add(tar, "nocap.png", _image_bytes("red", "png"))  # caption missing
                _add(tar, "broken.jpg", b"\xff\xd8 not really")  # undecodable
                _add(tar, "broken.txt", b"red broken")
    return good


def test_tar_shards_read_all_samples_and_count_corrupt(tmp_path):
    good = _write_shards(tmp_path)
    ds = WebDatasetShards(tmp_path, rank=0, world_size=1, seed=2)
    loader = Loader(ds, TOK, 10, 4)
    with pytest.warns(CorruptSampleWarning):
        batches = _take(loader, 3)  # 12 good samples = one epoch
    caps = [c for _, t in batches for c in _captions(t)]
    assert sorted(caps) == sorted(good)
    assert loader.skipped == 2
    for images, tokens in batches:
        for img, cap in zip(images, _captions(tokens), strict=True):
            mean = _unnormalise(img).mean(dim=(1, 2))
            colour = cap.split()[0]
            assert torch.allclose(mean, torch.tensor(RGB[colour], dtype=torch.float32), atol=12)


def test_tar_shards_sharding_and_resume_mid_shard(tmp_path):
    good = _write_shards(tmp_path, n_shards=4, per_shard=3)
    spec = str(tmp_path / "shard-{000..003}.tar")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptSampleWarning)
        per_rank = []
        for r in range(2):
            loader = Loader(WebDatasetShards(spec, rank=r, world_size=2), TOK, 10, 3)
            per_rank.append([c for _, t in _take(loader, 2) for c in _captions(t)])
        assert not set(per_rank[0]) & set(per_rank[1])
        assert sorted(per_rank[0] + per_rank[1]) == sorted(good)

        ds = WebDatasetShards(spec, rank=1, world_size=2, seed=9)
        ref = _take(Loader(ds, TOK, 10, 2), 5)
        first = Loader(ds, TOK, 10, 2)
        _take(first, 1)  # stops inside a 3-sample shard
        assert first.state_dict()["cursor"][1] % 3 != 0
        resumed = Loader(WebDatasetShards(spec, rank=1, world_size=2, seed=9), TOK, 10, 2)
        resumed.load_state_dict(first.state_dict())
        _assert_same_batches(_take(resumed, 4), ref[1:])


def test_truncated_shard_is_counted(tmp_path):
    _write_shards(tmp_path, n_shards=2, per_shard=4)
    data = (tmp_path / "shard-001.tar").read_bytes()
    (tmp_path / "shard-001.tar").write_bytes(data[: len(data) // 2])
    loader = Loader(WebDatasetShards(tmp_path, rank=0, world_size=1), TOK, 10, 4)
    with pytest.warns(CorruptSampleWarning, match="shard"):
        _take(loader, 2)
    assert loader.skipped >= 1


def test_tar_bad_input(tmp_path):
    with pytest.raises(ConfigError, match=r"^data"):
        WebDatasetShards(tmp_path)  # empty folder
    _write_shards(tmp_path, n_shards=1)
    with pytest.raises(ConfigError, match="re-shard"):
        WebDatasetShards(tmp_path, rank=0, world_size=2)


def test_build_source_dispatch_and_missing_path(tmp_path):
    assert isinstance(build_source("shapes", image_size=16, rank=0, world_size=1), ShapesDataset)
    path, _ = _write_csv_set(tmp_path)
    assert isinstance(build_source(str(path), image_size=16, rank=0, world_size=1), CsvDataset)
    for missing in (tmp_path / "nope", tmp_path / "nope.csv", tmp_path / "x-{0..3}.tar"):
        with pytest.raises(ConfigError, match=r"^data") as info:
            build_source(str(missing), image_size=16, rank=0, world_size=1)
        assert info.value.field == "data"
