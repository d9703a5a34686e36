"""The run layout at the planner's edges: flags generated from RunLayout's fields (one home for
names, help and defaults), plan files with flat keys, a nested ``layout:`` or trainer keys, the
``layout`` of ``plan --json``, and bad layouts as one line with exit status 2."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from vlscale.cli import app
from vlscale.cli.layout_options import option_name, shown_default
from vlscale.errors import ConfigError
from vlscale.plan.config import DEFAULT_LAYOUT, make_plan_config, planner_part
from vlscale.specs.layout import RunLayout
from vlscale.specs.run_file import LAYOUT_KEYS, TRAINER_KEYS, split_keys

LAYOUT_COMMANDS = {"plan": DEFAULT_LAYOUT, "compare": DEFAULT_LAYOUT, "sweep": DEFAULT_LAYOUT}


def _options(name: str) -> dict:
    """The command's options by parameter name (typer's own click, whichever it vendors)."""
    command = typer.main.get_command(app).commands[name]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


@pytest.mark.parametrize(("name", "defaults"), [*LAYOUT_COMMANDS.items(), ("memory", RunLayout())])
def test_every_layout_field_is_a_flag_whose_help_and_default_come_from_the_field(name, defaults):
    options = _options(name)
    for field, info in RunLayout.model_fields.items():
        opt = options[field]
        assert option_name(field) in opt.opts, (name, field, opt.opts)
        assert opt.help == info.description, (name, field)
        # unset flags leave a --config file's value alone; --help shows the layout's default
        assert opt.default is None, (name, field)
        assert opt.show_default == shown_default(field, getattr(defaults, field)), (name, field)
        if info.annotation is bool:
            assert f"--no-{option_name(field)[2:]}" in opt.secondary_opts, (name, field)


def test_shown_defaults_are_the_fields_defaults():
    # the planner's default layout differs from RunLayout() in the world size only
    assert DEFAULT_LAYOUT.model_dump(exclude_defaults=True) == {"devices": 256}
    assert shown_default("sharding", RunLayout().sharding) == "fsdp"
    assert shown_default("reshard_after_forward", True) == "reshard-after-forward"
    assert shown_default("checkpointing", False) == "no-checkpointing"
    assert shown_default("shard_size", None) is False  # the help says what None means


def _plan(*args: str) -> dict:
    result = CliRunner().invoke(app, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_json_carries_the_resolved_layout():
    out = _plan("--model", "ViT-B-32", "--devices", "16", "--global-batch", "1024")
    assert out["layout"] == {
        "devices": 16,
        "devices_per_node": 8,
        "sharding": "fsdp",
        "shard_size": None,
        "reshard_after_forward": True,
        "precision": "bf16",
        "checkpointing": False,
        "grad_accum": 1,
        "wrap_one_rank": False,
        "lock_image": False,
        "lock_image_unlocked_groups": 0,
        "lock_image_freeze_bn_stats": False,
        "image_embeddings": None,
        "lock_text": False,
        "lock_text_unlocked_layers": 0,
    }
    hsdp = _plan(
        *("--model", "ViT-B-32", "--devices", "32", "--global-batch", "1024"),
        *("--sharding", "hsdp", "--no-reshard-after-forward"),
    )
    assert hsdp["layout"]["shard_size"] == 8  # the devices per node
    assert hsdp["layout"]["reshard_after_forward"] is False
    assert hsdp["sharding"] == "hsdp"


def test_flat_nested_and_flag_layouts_agree(tmp_path):
    flat = make_plan_config({"devices": 64, "sharding": "hsdp", "shard_size": 16})
    nested = make_plan_config({"layout": {"devices": 64, "sharding": "hsdp", "shard_size": 16}})
    assert flat == nested and flat.layout.shard_group == 16 and flat.devices == 64
    # a flat key given over a nested layout wins (a flag over a file)
    over = make_plan_config({"layout": {"devices": 64}}, devices=128)
    assert over.layout.devices == 128
    # unchanged layouts keep the embedded scenario's world size
    assert make_plan_config({"layout": {"sharding": "ddp"}}).layout.devices == 256
    assert make_plan_config(flat).layout == flat.layout  # a PlanConfig round-trips


def test_run_file_keys_split_between_planner_and_trainer(tmp_path):
    run = {
        "model": "ViT-B-32",
        "devices": 16,
        "global_batch": 1024,
        "sharding": "hsdp",
        "shard_size": 8,
        "steps": 100,
        "lr": 1e-3,
        "device": "cuda",
        "grad_clip": 1.0,
    }
    kept, ignored = planner_part(run)
    assert ignored == ["device", "lr", "steps"]
    assert kept["grad_clip"] is True and "steps" not in kept
    assert make_plan_config(kept).layout.shard_group == 8
    # a key neither half reads is told apart from the other half's keys
    own, foreign, unknown = split_keys({"devcies": 8, "lr": 1.0, "devices": 4}, {"devices"})
    assert own == {"devices": 4} and foreign == ["lr"] and unknown == ["devcies"]
    assert {"steps", "lr"} <= TRAINER_KEYS and {"devices", "shard_size"} <= LAYOUT_KEYS

    path = tmp_path / "run.yaml"
    path.write_text("\n".join(f"{k}: {v}" for k, v in run.items()))
    result = CliRunner().invoke(app, ["plan", "--config", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == "note: ignored trainer keys: device, lr, steps"
    assert json.loads(result.stdout)["layout"]["shard_size"] == 8


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["plan", "--shard-size", "8"], "shard_size: applies to --sharding hsdp only"),
        (["plan", "--sharding", "hsdp", "--shard-size", "7"], "shard_size: 7 does not divide"),
        # groups of 3 on 8-GPU nodes would straddle nodes
        (
            [
                "plan",
                "--devices",
                "24",
                "--global-batch",
                "48",
                "--sharding",
                "hsdp",
                "--shard-size",
                "3",
            ],
            "shard_size: 3 neither divides",
        ),
        (["plan", "--sharding", "zero3"], "sharding:"),
        (["compare", "--shard-size", "8"], "shard_size: applies to --sharding hsdp only"),
        (["memory", "ViT-B-32", "--shard-size", "2"], "shard_size: applies to --sharding"),
        (
            ["memory", "ViT-B-32", "--devices", "8", "--sharding", "hsdp", "--shard-size", "3"],
            "shard_size: 3 does not divide",
        ),
    ],
)
def test_bad_layouts_are_one_line_and_exit_2(args, field):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), result.stderr


def test_bad_nested_layout_names_the_field():
    with pytest.raises(ConfigError, match=r"^layout: must be a mapping"):
        make_plan_config({"layout": 8})
    with pytest.raises(ConfigError, match=r"^shard_size:"):
        make_plan_config({"layout": {"sharding": "ddp", "shard_size": 2}})


def test_copies_with_flat_layout_keys_reach_the_layout():
    base = make_plan_config(devices=64, global_batch=1024)
    hsdp = base.model_copy(update={"sharding": "hsdp", "shard_size": 8})
    assert hsdp.layout.shard_group == 8 and hsdp.layout.devices == 64
    with pytest.raises(ConfigError, match="shard_size"):
        base.model_copy(update={"shard_size": 8})  # validated, not set beside the layout
    assert base.model_copy(update={"seed": 3}).seed == 3  # other keys: pydantic's plain copy


def test_a_sharding_flag_over_an_hsdp_file_drops_its_shard_size():
    hsdp = {"devices": 64, "global_batch": 1024, "sharding": "hsdp", "shard_size": 8}
    assert make_plan_config(hsdp, sharding="fsdp").layout.shard_size is None
    nested = {"global_batch": 1024, "layout": {"devices": 64, "sharding": "hsdp", "shard_size": 8}}
    assert make_plan_config(nested, sharding="ddp").layout.sharding == "ddp"
    assert make_plan_config(hsdp, shard_size=16).layout.shard_size == 16
    with pytest.raises(ConfigError, match="shard_size: applies"):
        make_plan_config(hsdp, sharding="fsdp", shard_size=8)


def test_a_bad_value_from_the_config_file_names_the_file(tmp_path):
    """Errors in a --config file say which file; a flag's own bad value does not blame it."""
    path = tmp_path / "run.yaml"
    path.write_text("model: ViT-B-32\nglobal_batch: 1000\ndevices: 64\nprice: -1\n")
    result = CliRunner().invoke(app, ["plan", "--config", str(path), "--json"])
    assert result.exit_code == 2
    assert f"(in '{path}')" in result.stderr and "price_per_device_hour" in result.stderr
    path.write_text("model: ViT-B-32\ndevices: 64\n")
    result = CliRunner().invoke(app, ["plan", "--config", str(path), "--global-batch", "1001"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: global_batch: 1001") and str(path) not in result.stderr
