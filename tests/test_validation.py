"""The FLIP mask ratio and the loss implementation are checked in one place each
(``vlscale.specs.fields``, ``vlscale.specs.recipes``); every layer gives the same answer."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from vlscale.costs.activations import activation_bytes
from vlscale.costs.flops import forward_flops, loss_flops
from vlscale.costs.memory import loss_buffer_bytes
from vlscale.errors import ConfigError
from vlscale.plan.config import make_plan_config
from vlscale.records import StepRecord
from vlscale.specs import get_model
from vlscale.specs.fields import check_mask_ratio
from vlscale.specs.recipes import RecipeSpec, check_loss_impl
from vlscale.specs.towers import kept_patches

BAD = [float("nan"), -0.1, 1.0, True, math.inf]


@pytest.mark.parametrize("r", BAD, ids=str)
def test_bad_mask_ratio_is_one_clear_config_error(r):
    with pytest.raises(ConfigError) as err:
        check_mask_ratio(r)
    assert err.value.field == "mask_ratio"
    assert str(err.value).startswith(f"mask_ratio: must be a number in [0, 1), got {r}")


def test_nan_names_the_range_not_an_inequality():
    with pytest.raises(ConfigError, match=r"mask_ratio: must be a number in \[0, 1\), got nan"):
        check_mask_ratio(float("nan"))


@pytest.mark.parametrize("r", [0, 0.0, 0.5, 0.999])
def test_good_mask_ratio_is_returned_as_a_float(r):
    assert check_mask_ratio(r) == r and isinstance(check_mask_ratio(r), float)


@pytest.mark.parametrize("r", BAD, ids=str)
def test_every_layer_refuses_the_same_mask_ratios(r):
    spec = get_model("ViT-B-32")
    calls = [
        lambda: kept_patches(196, r),
        lambda: forward_flops(spec, mask_ratio=r),
        lambda: activation_bytes(spec, 2, "bf16", False, r),
        lambda: make_plan_config(model="ViT-B-32", mask_ratio=r),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="mask_ratio: must be a number in"):
            call()


@pytest.mark.parametrize("r", BAD, ids=str)
def test_pydantic_fields_use_the_same_rule(r):
    with pytest.raises(ValidationError, match=r"must be a number in \[0, 1\)"):
        RecipeSpec(mask_ratio=r)
    with pytest.raises(ConfigError, match=r"^mask_ratio: must be a number in \[0, 1\)"):
        make_plan_config(mask_ratio=r)
    step = dict(step=1, samples_seen=0, warmup=False, step_time_s=1.0, data_time_s=0.0)
    with pytest.raises(ValidationError, match="mask_ratio"):
        StepRecord(mask_ratio=r, **step)


def test_ring_needs_sigmoid_everywhere():
    with pytest.raises(ConfigError, match="chunked sigmoid") as err:
        check_loss_impl("softmax", "ring")
    assert err.value.field == "loss_impl"
    with pytest.raises(ConfigError, match="chunked sigmoid"):
        loss_flops("softmax", "ring", 4, 2, 8)
    with pytest.raises(ConfigError, match="chunked sigmoid"):
        loss_buffer_bytes("softmax", "ring", 4, 2, 8)
    with pytest.raises(ValidationError, match="chunked sigmoid"):
        RecipeSpec(name="eva-clip", loss_impl="ring")
    check_loss_impl("sigmoid", "ring")


@pytest.mark.parametrize(
    ("loss", "impl", "field"), [("hinge", "gather", "loss"), ("sigmoid", "chunked", "loss_impl")]
)
def test_unknown_loss_or_impl_names_the_field(loss, impl, field):
    with pytest.raises(ConfigError) as err:
        check_loss_impl(loss, impl)
    assert err.value.field == field
