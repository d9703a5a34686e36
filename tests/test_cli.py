"""CLI contract: JSON keys stay stable, bad input exits 2 with one line on stderr."""

import json
import subprocess
import sys

import pytest

from vlscale.costs.params import count_params
from vlscale.specs import get_model


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vlscale.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_params_json_contract():
    out = run_cli("params", "ViT-L-14", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    count = count_params(get_model("ViT-L-14"))
    assert data == {
        "model": "ViT-L-14",
        "image": count.image,
        "text": count.text,
        "total": count.total,
    }


def test_models_json_lists_every_preset():
    data = json.loads(run_cli("models", "--json").stdout)
    names = [row["name"] for row in data]
    assert "EVA-CLIP-18B" in names
    for row in data:
        assert {"name", "image_params", "text_params"} <= set(row)
        assert isinstance(row["image_params"], int)


def test_params_table_for_people():
    out = run_cli("params", "ViT-B-32")
    assert out.returncode == 0
    assert "87,849,216" in out.stdout


@pytest.mark.parametrize(
    "args, field",
    [
        (("params", "ViT-Z-99"), "model"),
        (("flops", "ViT-B-32", "--mask-ratio", "1.0"), "mask_ratio"),
        (("flops", "ViT-B-32", "--mask-ratio", "-0.2"), "mask_ratio"),
        (("flops", "ViT-B-32", "--image-size", "-224"), "image_size"),
        (("flops", "ViT-B-32", "--image-size", "100"), "image_size"),
        (("memory", "ViT-B-32", "--local-batch", "-1"), "local_batch"),
        (("memory", "ViT-B-32", "--shard-degree", "0"), "shard_degree"),
        (("memory", "ViT-B-32", "--precision", "fp8"), "precision"),
        (("memory", "ViT-B-32", "--recipe", "clip", "--loss-impl", "ring"), "loss_impl"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(args, field):
    out = run_cli(*args)
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.strip().splitlines() if ln]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: ")
    assert field in lines[0]
    assert out.stdout == ""
