"""A software stack's extra memory (vlscale.costs.stack_memory) reaches the plan; the default
stack adds nothing."""

from __future__ import annotations

import pytest

from vlscale.costs.stack_memory import attention_score_bytes, global_logit_bytes
from vlscale.plan.config import make_plan_config
from vlscale.plan.planner import plan
from vlscale.specs.presets import get_model


def _cfg(**kw):
    base = dict(model="ViT-B-16", device="A100-40GB", devices=8, global_batch=1024)
    return make_plan_config(**(base | kw))


def test_math_attention_saves_the_scores_of_every_block():
    spec = get_model("ViT-B-16")
    b = 16
    got = attention_score_bytes(spec, b, "bf16", checkpointing=False)
    # ViT-B/16: 12 blocks, 12 heads, 197 tokens; text: 12 blocks, 8 heads, 77 tokens; plus one
    # block's backward gradient of the largest (the image block)
    image, text = b * 12 * 197**2 * 2, b * 8 * 77**2 * 2
    assert got == 12 * image + 12 * text + image
    # with checkpointing only the recomputed block holds them, twice at its backward
    assert attention_score_bytes(spec, b, "bf16", checkpointing=True) == 2 * image


def test_global_logits_are_the_full_square():
    assert global_logit_bytes("softmax", 100, 8) == 4 * 700 * 800 * 4
    assert global_logit_bytes("sigmoid", 100, 8) == 0
    assert global_logit_bytes("softmax", 100, 1) == 0


def test_stacks_change_memory_not_the_default():
    default = plan(_cfg()).to_json()
    assert plan(_cfg(stack="pytorch-fsdp2")).to_json() == default
    math = plan(_cfg(stack="openclip-2022")).to_json()
    glob = plan(_cfg(stack="openclip-2022-global-loss")).to_json()
    assert math["memory_breakdown"]["activations"] > default["memory_breakdown"]["activations"]
    assert math["memory_breakdown"]["loss_buffers"] == default["memory_breakdown"]["loss_buffers"]
    extra = global_logit_bytes("softmax", 128, 8)
    assert glob["memory_breakdown"]["loss_buffers"] == pytest.approx(
        default["memory_breakdown"]["loss_buffers"] + extra
    )
    # the variant shares openclip-2022's γ: the same speed
    assert glob["step_time_s"] == pytest.approx(math["step_time_s"])
