"""Trainer configuration: precedence, validation, and the exit-2 contract of ``trainer.train``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.config import TrainConfig, build_parser, load_config
from vlscale.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_yaml_then_cli_precedence(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model: tiny-siglip\nrecipe: siglip\nglobal-batch: 64\nsteps: 7\n")
    cfg = load_config(["--config", str(f), "--steps", "9", "--loss-impl", "ring"], world_size=4)
    assert (cfg.model, cfg.recipe, cfg.global_batch) == ("tiny-siglip", "siglip", 64)  # file
    assert cfg.steps == 9 and cfg.loss_impl == "ring"  # command line wins
    assert cfg.lr == TrainConfig.model_fields["lr"].default  # untouched default
    assert cfg.local_batch(4) == 16


def test_recipe_defaults_and_overrides():
    eva = load_config(["--recipe", "eva-clip"], world_size=1).recipe_spec()
    assert (eva.mask_ratio, eva.optimizer) == (0.5, "lamb")
    eva = load_config(["--recipe", "eva-clip", "--mask-ratio", "0.75"], world_size=1)
    assert eva.recipe_spec().mask_ratio == 0.75


def test_unmasked_final_steps():
    cfg = load_config(["--recipe", "eva-clip", "--steps", "10", "--unmasked-final-steps", "3"], 1)
    ratios = [cfg.mask_ratio_at(s) for s in range(1, 11)]
    assert ratios == [0.5] * 7 + [0.0] * 3


def test_help_lists_every_option():
    text = build_parser().format_help()
    for name in TrainConfig.model_fields:
        assert "--" + name.replace("_", "-") in text


@pytest.mark.parametrize(
    ("argv", "world", "field"),
    [
        (["--model", "ViT-B-33"], 1, "model"),
        (["--global-batch", "30"], 4, "global_batch"),
        (["--global-batch", "32", "--grad-accum", "3"], 2, "global_batch"),
        (["--recipe", "clip", "--loss-impl", "ring"], 1, "loss_impl"),
        (["--data", "/no/such/data.csv"], 1, "data"),
        (["--profile-steps", "5:99", "--steps", "10"], 1, "profile_steps"),
        (["--unmasked-final-steps", "11", "--steps", "10"], 1, "unmasked_final_steps"),
        (["--init-image-from", "/no/such/ckpt"], 1, "init_image_from"),
        (["--tokenizer", "/no/such/tokenizer.json"], 1, "tokenizer"),
        (["--tokenizer", "gpt2"], 1, "tokenizer"),
    ],
)
def test_bad_config_names_the_field(argv, world, field):
    with pytest.raises(ConfigError) as err:
        load_config(argv, world_size=world)
    assert err.value.field == field


def test_unknown_yaml_key_suggests(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("global_bach: 64\n")
    with pytest.raises(ConfigError, match="global_batch"):
        load_config(["--config", str(f)], world_size=1)


def _train(tmp_path, *argv, env_world=None):
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    if env_world:
        env["WORLD_SIZE"] = str(env_world)  # what torchrun would set, before any group exists
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.train", "--out", str(out), *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc, out


@pytest.mark.parametrize(
    ("argv", "world", "needle"),
    [
        (["--model", "nope-model"], None, "model: unknown model"),
        (["--global-batch", "9"], 2, "global_batch: 9 is not divisible"),
        (["--recipe", "eva-clip", "--loss-impl", "ring"], None, "loss_impl:"),
        (["--data", "missing.csv"], None, "data: no dataset"),
    ],
)
def test_bad_config_exits_2_before_any_process_group(tmp_path, argv, world, needle):
    proc, out = _train(tmp_path, *argv, env_world=world)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr  # one clear message
    assert not out.exists()  # nothing written
