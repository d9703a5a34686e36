"""Trainer configuration: precedence, validation, and the exit-2 contract of ``trainer.train``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli_args import build_parser, load_config
from trainer.config import TrainConfig
from vlscale.errors import ConfigError
from vlscale.specs.layout import RunLayout

REPO = Path(__file__).resolve().parents[2]


def test_yaml_then_cli_precedence(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model: tiny-siglip\nrecipe: siglip\nglobal-batch: 64\nsteps: 7\n")
    cfg = load_config(["--config", str(f), "--steps", "9", "--loss-impl", "ring"], world_size=4)
    assert (cfg.model, cfg.recipe, cfg.global_batch) == ("tiny-siglip", "siglip", 64)  # file
    assert cfg.steps == 9 and cfg.loss_impl == "ring"  # command line wins
    assert cfg.lr == TrainConfig.model_fields["lr"].default  # untouched default
    assert cfg.local_batch(4) == 16 == cfg.local_batch()  # the layout's devices: the world


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
    for name in [*TrainConfig.model_fields, *RunLayout.model_fields]:
        if name != "layout":
            assert "--" + name.replace("_", "-") in text


def test_layout_flags_are_generated_from_the_layout_fields():
    """One home for names and help: each RunLayout field is a flag whose help starts with the
    field's description (less the planner's "None: ..." default, which the trainer fills in)."""
    actions = {a.dest: a for a in build_parser()._actions}
    for name, field in RunLayout.model_fields.items():
        first = field.description.split(" (None")[0]
        assert actions[name].help.startswith(first), name
    assert actions["shard_size"].type is int and actions["devices"].type is int
    assert actions["sharding"].choices == ["ddp", "fsdp", "hsdp"]


def test_layout_from_flags_file_and_launch(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("sharding: hsdp\nshard-size: 2\ngrad_accum: 2\nglobal_batch: 16\n")
    cfg = load_config(["--config", str(f), "--no-reshard-after-forward"], world_size=4)
    assert cfg.layout == RunLayout(
        devices=4, devices_per_node=4, sharding="hsdp", shard_size=2, precision="fp32",
        reshard_after_forward=False, grad_accum=2,
    )  # fmt: skip
    assert (cfg.layout.shard_group, cfg.layout.replicas, cfg.local_batch()) == (2, 2, 2)
    # HSDP's shard size defaults to the ranks per node (torchrun's LOCAL_WORLD_SIZE)
    cfg = load_config(["--sharding", "hsdp", "--devices-per-node", "2"], world_size=4)
    assert cfg.layout.shard_size == 2
    # the header's nested mapping reads back as the same layout
    f.write_text(f"layout: {cfg.layout.model_dump_json()}\n")
    assert load_config(["--config", str(f)], world_size=4).layout == cfg.layout
    # and so does the header's flat config
    flat = cfg.flat_dump()
    assert "layout" not in flat and flat["sharding"] == "hsdp" and flat["devices"] == 4


def test_launch_fills_and_checks_devices(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    cfg = load_config(["--global-batch", "8"])
    assert (cfg.layout.devices, cfg.layout.devices_per_node) == (4, 2)
    assert load_config(["--global-batch", "8", "--devices", "4"]).layout.devices == 4
    with pytest.raises(ConfigError, match="devices: 8 but this launch has 4 ranks"):
        load_config(["--global-batch", "8", "--devices", "8"])
    with pytest.raises(ConfigError) as err:
        load_config(["--global-batch", "8", "--devices-per-node", "4"])
    assert err.value.field == "devices_per_node"


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--sharding", "fsdp", "--shard-size", "2"], "shard_size"),
        (["--sharding", "hsdp", "--shard-size", "3"], "shard_size"),
        (["--sharding", "zero3"], "--sharding"),  # the parser's choices, one line
    ],
)
def test_bad_layout_names_the_field(argv, field):
    with pytest.raises(ConfigError) as err:
        load_config([*argv, "--global-batch", "8"], world_size=4)
    assert err.value.field == field


def test_one_file_for_both_halves(tmp_path, capsys):
    """The planner's keys are ignored and listed in one stderr line; the shared keys are read;
    a key of neither half is still refused."""
    f = tmp_path / "run.yaml"
    f.write_text(
        "model: tiny-clip\ndevice: H100\ndevices: 2\nsamples: 1000000\nsharding: hsdp\n"
        "shard_size: 1\nprice_per_device_hour: 2.5\nhardware_file: hw.yaml\nglobal_batch: 8\n"
        "num_slices: 1\nutilisation: 0.5\n"
    )
    cfg = load_config(["--config", str(f)], world_size=2)
    assert cfg.device == "auto" and cfg.layout.shard_size == 1 and cfg.global_batch == 8
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "note: ignored planner keys: device, samples, price_per_device_hour, hardware_file, "
        "num_slices, utilisation"
    ]
    f.write_text("device: cpu\nglobal_batch: 8\n")  # the trainer's own device key
    assert load_config(["--config", str(f)], world_size=1).device == "cpu"
    assert capsys.readouterr().err == ""
    f.write_text("samples: 10\nshard_sise: 2\n")
    with pytest.raises(ConfigError, match="did you mean 'shard_size'"):
        load_config(["--config", str(f)], world_size=1)


def test_run_file_key_lists_cover_both_configs():
    """``vlscale.specs.run_file`` names every key of both halves (torch-free, for the planner)."""
    from vlscale.plan.config import PlanConfig
    from vlscale.specs import run_file

    trainer = run_file.TRAINER_KEYS | run_file.SHARED_KEYS | run_file.LAYOUT_KEYS
    planner = run_file.PLANNER_KEYS | run_file.SHARED_KEYS | run_file.LAYOUT_KEYS
    assert set(TrainConfig.model_fields) <= trainer
    assert set(PlanConfig.model_fields) <= planner
    own, foreign, unknown = run_file.split_keys(
        {"global-batch": 8, "samples": 1, "nope": 0}, trainer
    )
    assert (own, foreign, unknown) == ({"global_batch": 8}, ["samples"], ["nope"])


def test_identity_hash_unchanged_by_the_layout_type():
    """The run identity keeps the flat layout fields, so checkpoints written before the layout
    had a type of its own resume: hashes computed by the trainer before this change."""
    from trainer.identity import config_hash

    argv = ["--global-batch", "16", "--grad-accum", "2", "--precision", "bf16",
            "--sharding", "ddp", "--checkpointing"]  # fmt: skip
    assert config_hash(load_config(argv, world_size=2)) == "4bf27c4cf0749fec"
    assert config_hash(load_config([], world_size=1)) == "023380581ce60827"


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
        (["--devices", "4"], None, "devices: 4 but this launch has 1 rank (torchrun's"),
        (["--sharding", "hsdp", "--shard-size", "3"], 2, "shard_size: 3 does not divide"),
    ],
)
def test_bad_config_exits_2_before_any_process_group(tmp_path, argv, world, needle):
    proc, out = _train(tmp_path, *argv, env_world=world)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr  # one clear message
    assert not out.exists()  # nothing written


def test_train_reads_a_run_file_with_planner_keys(tmp_path):
    """``python -m trainer.train --config run.yaml`` on a file the planner reads too: it trains,
    names the keys it ignored in one stderr line, and records the layout as it ran; the planner,
    reading that header, sees exactly that layout."""
    from vlscale.calibrate.runs import plan_config_of
    from vlscale.records import read_run

    f = tmp_path / "run.yaml"
    f.write_text(
        "model: tiny-clip\nrecipe: clip\nglobal_batch: 8\ndevices: 1\nsharding: fsdp\n"
        "precision: fp32\ncheckpointing: true\nreshard_after_forward: false\ngrad_accum: 2\n"
        "device: H100\nsamples: 80\nprice_per_device_hour: 2.0\n"
        "steps: 1\nwarmup_steps: 0\npeak_flops: 1.0e+11\n"
    )
    proc, out = _train(tmp_path, "--config", str(f))
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note: ignored")]
    assert notes == ["note: ignored planner keys: device, samples, price_per_device_hour"]
    run = read_run(out / "run.jsonl")
    layout = run.header.layout
    assert layout == RunLayout(
        devices=1, devices_per_node=1, sharding="fsdp", precision="fp32", checkpointing=True,
        reshard_after_forward=False, grad_accum=2,
    )  # fmt: skip
    assert not layout.wrapped and run.header.wrapped is False
    plan = plan_config_of(run, "H100", None)
    planned = plan.layout if "layout" in type(plan).model_fields else plan
    for name in RunLayout.model_fields:
        if hasattr(planned, name) and name != "shard_size":  # fsdp: no shard size to compare
            assert getattr(planned, name) == getattr(layout, name), name
