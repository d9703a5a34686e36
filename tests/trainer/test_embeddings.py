"""Precomputed image embeddings: ``python -m trainer.embed`` writes them once, the trainer
streams them with ``--image-embeddings DIR`` (no image tower in the step), and bad input is one
line with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.data.embeddings import EmbeddingLoader, read_index
from trainer.embed import build_parser, embed

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def emb_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("emb") / "tiny-clip"
    flags = ("--samples", "40", "--batch", "16", "--shard-size", "16")
    args = build_parser().parse_args(["--model", "tiny-clip", "--out", str(out), *flags])
    embed(args)
    return out


def test_embed_writes_features_and_tokens_in_shards(emb_dir):
    index = read_index(emb_dir)
    assert index["count"] == 40 and index["width"] == 32 and index["context_length"] == 32
    assert [s["count"] for s in index["shards"]] == [16, 16, 8]
    first = np.load(emb_dir / index["shards"][0]["embeddings"])
    assert first.shape == (16, 32) and not np.allclose(np.linalg.norm(first, axis=1), 1.0)


def test_loader_gives_each_rank_its_rows_and_wraps(emb_dir):
    ranks = [EmbeddingLoader(str(emb_dir), 4, rank=r, world_size=2) for r in range(2)]
    seen = [torch.cat([next(loader)[0] for _ in range(5)]) for loader in ranks]  # 40 rows
    rows = {tuple(r.tolist()) for s in seen for r in s}
    assert len(rows) == 40  # every row once per epoch, no rank overlap
    again = next(ranks[0])[0]
    state = ranks[0].state_dict()
    assert torch.equal(again, EmbeddingLoader(str(emb_dir), 4, 0, 2).__next__()[0])
    fresh = EmbeddingLoader(str(emb_dir), 4, 0, 2)
    fresh.load_state_dict(state)
    assert fresh.position == ranks[0].position


def _train(*args: str, out: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "trainer.train", "--steps", "3", "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_trains_the_text_tower_from_embeddings(emb_dir, tmp_path):
    run = _train(
        "--model", "tiny-clip", "--global-batch", "8", "--image-embeddings", str(emb_dir),
        out=tmp_path / "run",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = (tmp_path / "run" / "run.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    layout = header["layout"]
    assert layout["image_embeddings"] == str(emb_dir) and layout["lock_image"] is True
    assert len(lines) >= 4


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--model", "tiny-siglip", "--global-batch", "8"), "width 32"),
        (("--model", "tiny-clip", "--global-batch", "64"), "fewer than one global batch"),
        (("--model", "tiny-clip", "--global-batch", "8", "--lock-image-unlocked-groups", "1"),
         "contradicts"),
    ],
)  # fmt: skip
def test_bad_embeddings_are_one_line_and_exit_2(emb_dir, tmp_path, args, says):
    run = _train(*args, "--image-embeddings", str(emb_dir), out=tmp_path / "bad")
    assert run.returncode == 2
    assert says in run.stderr + run.stdout
    assert len((run.stderr + run.stdout).strip().splitlines()) == 1


def test_model_without_image_tower_encodes_features_as_given():
    from models import build_model
    from vlscale.specs import get_model

    model = build_model(get_model("tiny-clip"))
    model.drop_image_tower()
    assert not any(n.startswith("visual.") for n, _ in model.named_parameters())
    feats = torch.randn(3, 32)
    img = model.encode_image(feats)
    assert torch.allclose(img, torch.nn.functional.normalize(feats, dim=-1))
