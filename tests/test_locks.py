"""Locked towers in the planner (``vlscale.costs.locks``): OpenCLIP's groups, what a lock
removes from memory and from the step, ``plan --json``'s ``locked`` and its bad input."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vlscale.cli import app
from vlscale.costs.flops import (
    layers_forward_flops,
    layers_train_flops,
    model_flops_per_sample,
    train_flops_per_sample,
)
from vlscale.costs.layers import model_layers
from vlscale.costs.locks import lock_groups, locked_state, trainable_layers, trainable_unit_params
from vlscale.costs.memory import estimate_memory
from vlscale.costs.params import count_params
from vlscale.errors import ConfigError
from vlscale.specs import get_model
from vlscale.specs.layout import RunLayout
from vlscale.specs.recipes import default_recipe

SPEC = get_model("ViT-B-16")


def _layout(**locks) -> RunLayout:
    return RunLayout(devices=8, precision="bf16", **locks).resolved("bf16", 8)


def test_groups_are_openclips():
    image = lock_groups(model_layers(SPEC).image)
    depth = SPEC.vision.trunk.depth
    assert len(image) == depth + 2  # stem, blocks 0..d-2, [last block + norm/head], proj
    assert [x.role for x in image[0]] == ["stem"]
    assert [x.role for x in image[-2]] == ["block", "head"]
    assert [x.role for x in image[-1]] == ["proj"]


def test_locked_image_trains_the_text_tower_and_the_root_only():
    counts = count_params(SPEC)
    trained = sum(trainable_unit_params(SPEC, _layout(lock_image=True)).values())
    assert trained == counts.total - counts.image
    all_groups = _layout(lock_image=True, lock_image_unlocked_groups=SPEC.vision.trunk.depth + 2)
    assert sum(trainable_unit_params(SPEC, all_groups).values()) == counts.total


def test_lock_removes_model_states_and_activations():
    recipe = default_recipe("clip")
    free = estimate_memory(SPEC, _layout(), recipe, local_batch=32)
    locked = estimate_memory(SPEC, _layout(lock_image=True), recipe, local_batch=32)
    image = count_params(SPEC).image
    assert free.optimizer_state - locked.optimizer_state == pytest.approx(8 * image / 8, abs=8)
    assert free.master_weights - locked.master_weights == pytest.approx(4 * image / 8, abs=8)
    assert locked.params == pytest.approx(4 * image / 8, abs=8)  # the locked fp32 shards
    assert locked.activations < free.activations
    partial = estimate_memory(
        SPEC, _layout(lock_image=True, lock_image_unlocked_groups=3), recipe, local_batch=32
    )
    assert locked.activations < partial.activations < free.activations


def test_bad_locks_are_one_config_error():
    with pytest.raises(ValueError, match="lock_image_unlocked_groups: applies with --lock-image"):
        RunLayout(lock_image_unlocked_groups=2)
    with pytest.raises(ConfigError, match="has 14 groups"):
        trainable_unit_params(SPEC, _layout(lock_image=True, lock_image_unlocked_groups=15))
    with pytest.raises(ConfigError, match="batch norm"):
        trainable_unit_params(SPEC, _layout(lock_image=True, lock_image_freeze_bn_stats=True))


def _plan(*args: str) -> dict:
    result = CliRunner().invoke(app, ["plan", "--model", "ViT-B-16", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_plan_prices_a_locked_image_tower():
    free, locked = _plan(), _plan("--lock-image")
    assert free["locked"] == {"image": "none", "text": "none"}
    assert locked["locked"] == {"image": "all", "text": "none"}
    assert _plan("--lock-image", "--lock-image-unlocked-groups", "2")["locked"]["image"] == 2
    assert locked["step_time_s"] < free["step_time_s"]
    assert locked["memory_per_device_bytes"] < free["memory_per_device_bytes"]
    comm, free_comm = locked["comm_bytes_per_device"], free["comm_bytes_per_device"]
    assert comm["reduce_scatter"] < free_comm["reduce_scatter"]
    assert comm["all_gather"] < free_comm["all_gather"]  # no backward re-gather of the tower
    assert locked_state(RunLayout(lock_text=True))["text"] == "all"


def test_plan_bad_lock_exits_2():
    result = CliRunner().invoke(
        app, ["plan", "--model", "ViT-B-16", "--lock-image-unlocked-groups", "1"]
    )
    assert result.exit_code == 2
    assert "--lock-image" in result.output


def test_model_flops_count_a_locked_tower_forward_only():
    layers = model_layers(SPEC)

    kw = dict(mask_ratio=0.0, loss="softmax", loss_impl="gather", local_batch=32, world_size=8)
    free = model_flops_per_sample(SPEC, **kw)
    trainable = trainable_layers(SPEC, _layout(lock_image=True))
    locked = model_flops_per_sample(SPEC, **kw, trainable=trainable)
    image_backward = layers_train_flops(layers.image) - layers_forward_flops(layers.image)
    assert free - locked == pytest.approx(image_backward, rel=1e-12)
    assert train_flops_per_sample(SPEC, trainable=trainable) < train_flops_per_sample(SPEC)


def test_precomputed_embeddings_take_the_image_tower_out_of_the_step():
    locked, pre = _plan("--lock-image"), _plan("--image-embeddings", "precomputed")
    assert pre["locked"]["image"] == "all"
    assert "embedding_pass" not in locked
    assert pre["step_time_s"] < locked["step_time_s"]
    assert pre["memory_breakdown"]["params"] < locked["memory_breakdown"]["params"]
    assert (
        pre["comm_bytes_per_device"]["all_gather"] < locked["comm_bytes_per_device"]["all_gather"]
    )
    one = pre["embedding_pass"]
    assert set(one) == {"flops", "time_h", "cost_usd"}
    from vlscale.costs.locks import image_forward_flops

    assert one["flops"] == pytest.approx(pre["samples"] * image_forward_flops(SPEC))
    # the pass costs about what the locked tower's forward costs over the same samples
    saved_h = (locked["step_time_s"] - pre["step_time_s"]) * pre["steps"] / 3600
    assert one["time_h"] == pytest.approx(saved_h, rel=0.25)
    price = pre["cost_usd"] / pre["device_hours"]  # the run's device-hour price
    assert one["cost_usd"] == pytest.approx(one["time_h"] * pre["devices"] * price, rel=1e-9)


def test_embeddings_contradicting_unlocked_groups_exit_2():
    args = ("--image-embeddings", "precomputed", "--lock-image-unlocked-groups", "2")
    result = CliRunner().invoke(app, ["plan", "--model", "ViT-B-16", *args])
    assert result.exit_code == 2
    assert "image_embeddings" in result.output and "contradicts" in result.output


@pytest.mark.parametrize("preset", ["ViT-B-32", "ViT-SO400M-14-SigLIP", "EVA02-B-16", "tiny-clip"])
def test_every_lock_saves_memory_never_adds_it(preset):
    spec, recipe = get_model(preset), default_recipe("siglip")
    base = estimate_memory(spec, _layout(), recipe, local_batch=16).total
    groups = len(lock_groups(model_layers(spec).image))
    previous = 0
    for n in range(groups + 1):  # more unlocked groups, more memory, up to the free tower
        layout = _layout(lock_image=True, lock_image_unlocked_groups=n)
        total = estimate_memory(spec, layout, recipe, local_batch=16).total
        assert previous <= total <= base
        previous = total
    assert previous == base
    text = estimate_memory(spec, _layout(lock_text=True), recipe, local_batch=16).total
    assert text < base
