"""OpenCLIP interop through the real entry points: a run starts from an OpenCLIP model config
(``--model``) and its weights (``--init-from``), and ``trainer.export`` turns the run's DCP
checkpoint back into OpenCLIP's state_dict."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trainer.export import main as export_main

safetensors_torch = pytest.importorskip("safetensors.torch")

TINY = Path(__file__).parents[1] / "fixtures" / "openclip" / "tiny_clip"
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _train(out, *extra):
    cmd = [sys.executable, "-m", "trainer.train", "--global-batch", "4", "--out", str(out),
           "--model", str(TINY / "open_clip_config.json"), *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)


def test_init_from_openclip_then_export_gives_the_weights_back(tmp_path):
    weights = TINY / "weights.safetensors"
    # a vanishing lr keeps the one step from moving the weights measurably
    proc = _train(
        tmp_path / "run", "--init-from", str(weights), "--steps", "1", "--ckpt-every", "1",
        "--lr", "1e-12", "--warmup-steps", "0", "--weight-decay", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "exported.safetensors"
    code = export_main(["--format", "openclip", "--run", str(tmp_path / "run"), "--out", str(out)])
    assert code == 0
    got = safetensors_torch.load_file(str(out))
    want = safetensors_torch.load_file(str(weights))
    assert got.keys() == want.keys()
    for key, tensor in want.items():
        assert got[key].shape == tensor.shape, key
        torch.testing.assert_close(got[key], tensor, rtol=0, atol=1e-6, msg=key)


def test_init_from_a_mismatched_file_lists_the_keys(tmp_path):
    weights = safetensors_torch.load_file(str(TINY / "weights.safetensors"))
    weights.pop("ln_final.weight")
    bad = tmp_path / "bad.pt"
    torch.save(weights, bad)
    proc = _train(tmp_path / "run", "--init-from", str(bad), "--steps", "1", "--warmup-steps", "0")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: init_from: the checkpoint is not an OpenCLIP 'open_clip_config' state_dict "
        "(missing 1 key(s): ln_final.weight); pass the --model it was trained with"
    )
    assert not (tmp_path / "run" / "run.jsonl").exists()


def test_export_without_checkpoint_is_a_config_error(tmp_path, capsys):
    code = export_main(["--format", "openclip", "--run", str(tmp_path), "--out", "x.pt"])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: run: no complete checkpoint")


def test_init_image_from_an_openclip_file_loads_only_the_image_tower(tmp_path):
    weights = TINY / "weights.safetensors"
    proc = _train(
        tmp_path / "run", "--init-image-from", str(weights), "--steps", "1", "--ckpt-every", "1",
        "--lr", "1e-12", "--warmup-steps", "0", "--weight-decay", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "exported.pt"
    assert (
        export_main(["--format", "openclip", "--run", str(tmp_path / "run"), "--out", str(out)])
        == 0
    )
    got = torch.load(out, weights_only=True)
    want = safetensors_torch.load_file(str(weights))
    visual = [k for k in want if k.startswith("visual.")]
    for key in visual:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=key)
    assert not torch.allclose(got["token_embedding.weight"], want["token_embedding.weight"])


def _load_sharded(ctx, path):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from models import build_model, init_weights
    from trainer.init_from import load_openclip_weights
    from trainer.parallelize import parallelize
    from vlscale.specs.layout import RunLayout
    from vlscale.specs.presets import resolve_model

    model = build_model(resolve_model(str(TINY / "open_clip_config.json")), device="meta")
    layout = RunLayout(devices=ctx.world_size, sharding="fsdp", precision="fp32")
    parallelize(model, ctx.mesh, layout, torch.device("cpu"), init_weights)
    load_openclip_weights(model, path, field="init_from")
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {k: v.clone() for k, v in full.items()}


@pytest.mark.dist
def test_init_from_loads_into_fsdp_shards():
    from models.openclip import convert_from_openclip
    from tests.dist_utils import run_distributed
    from vlscale.specs.presets import resolve_model

    weights = TINY / "weights.safetensors"
    spec = resolve_model(str(TINY / "open_clip_config.json"))
    want = convert_from_openclip(safetensors_torch.load_file(str(weights)), spec)
    for full in run_distributed(_load_sharded, 2, str(weights)):
        for key, tensor in want.items():
            torch.testing.assert_close(full[key], tensor, rtol=0, atol=0, msg=key)
