"""The torch model allocates exactly the parameters that vlscale.costs.params counts.

Built on the meta device, so even EVA-CLIP-18B costs nothing to build.
"""

import pytest

from models import build_model
from vlscale.costs.params import block_params, count_params, map_head_params
from vlscale.specs import get_model, list_models


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list_models())
def test_module_params_equal_analytic(name):
    spec = get_model(name)
    model = build_model(spec, device="meta")
    count = count_params(spec)
    assert numel(model.visual) == count.image
    assert numel(model.text) == count.text
    assert numel(model) == count.total
    # the towers and the two logit scalars are everything the model owns
    assert numel(model) == numel(model.visual) + numel(model.text) + 2


@pytest.mark.parametrize("name", ["ViT-B-16", "EVA02-B-16", "ViT-B-16-SigLIP", "EVA-CLIP-8B"])
def test_per_block_and_head_params_equal_analytic(name):
    # a finer check than the totals: the per-block count is what the memory model shards
    spec = get_model(name)
    model = build_model(spec, device="meta")
    assert len(model.visual.blocks) == spec.vision.trunk.depth
    assert len(model.text.blocks) == spec.text.trunk.depth
    for block in model.visual.blocks:
        assert numel(block) == block_params(spec.vision.trunk)
    for block in model.text.blocks:
        assert numel(block) == block_params(spec.text.trunk)
    if spec.vision.pool == "map":
        assert numel(model.visual.head) == map_head_params(spec.vision.trunk)


def test_all_parameters_are_on_meta_when_built_on_meta():
    model = build_model(get_model("ViT-L-14"), device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {b.device.type for b in model.buffers()} <= {"meta"}
