"""The activation model against what the torch towers really save for backward (fp32, CPU).

What is compared, per tower (``model.visual`` / ``model.text`` forward, images and tokens as
inputs, parameters requiring grad):

* measured bytes = the unique storages of every tensor packed by
  ``torch.autograd.graph.saved_tensors_hooks`` during the forward, minus the storages of the
  model's parameters and buffers (views of them, e.g. the expanded MAP query, included);
* without checkpointing: measured vs ``TowerActivations.kept``;
* with checkpointing (the trainer's own wrapping, ``trainer.parallelize``:
  ``checkpoint_wrapper`` non-reentrant per block): the tensors saved outside the checkpointed
  regions (stem, pooling head), plus what each checkpoint keeps alive for the recompute (its
  block input and the tensors its ``rope`` closure holds), vs ``kept``;
* the recompute peak: from the non-checkpointed run, per block, the storages saved inside that
  block that are neither its input nor shared with other blocks (the RoPE tables), maximum over
  the blocks, vs ``TowerActivations.recompute``.

The bound is 10% as the plan asks; on torch 2.13 the model is exact, and the ratios are
printed (run with ``-s``).
"""

from __future__ import annotations

from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from models.two_tower import TwoTower  # noqa: E402
from trainer.parallelize import apply_activation_checkpointing  # noqa: E402
from vlscale.costs.activations import text_activations, vision_activations  # noqa: E402
from vlscale.costs.loss_buffers import loss_buffer_parts  # noqa: E402
from vlscale.costs.params import parameter_shapes  # noqa: E402
from vlscale.specs import get_model, list_models  # noqa: E402
from vlscale.specs.presets import vision_tower  # noqa: E402

BATCH = 2
TOLERANCE = 0.10


def _rms_eva():
    """tiny-eva with EVA-CLIP-8B's trunk choices: RMSNorm, GELU MLP, no sub-LN, no qkv bias."""
    base = get_model("tiny-eva")
    trunk = {"width": 64, "depth": 2, "heads": 4, "mlp_width": 320, "mlp_kind": "gelu",
             "sub_ln": False, "norm_kind": "rmsnorm", "qkv_bias": "none"}  # fmt: skip
    vision = vision_tower({"family": "eva_vit", "image_size": 32, "patch_size": 8, "trunk": trunk})
    return base.model_copy(update={"name": "tiny-eva-rms", "vision": vision})


def _post_norm_eva():
    """tiny-eva with EVA02-E-14-plus's trunk: post-norm blocks, GELU MLP, no RoPE, no sub-LN."""
    base = get_model("tiny-eva")
    trunk = {"width": 64, "depth": 2, "heads": 4, "mlp_width": 256, "mlp_kind": "gelu",
             "sub_ln": False, "post_norm": True}  # fmt: skip
    fields = {"family": "eva_vit", "image_size": 32, "patch_size": 8, "rope": False}
    vision = vision_tower(fields | {"trunk": trunk})
    return base.model_copy(update={"name": "tiny-eva-post", "vision": vision})


SPECS = {name: get_model(name) for name in ("tiny-clip", "tiny-siglip", "tiny-eva")}
SPECS["tiny-eva-rms"] = _rms_eva()
SPECS["tiny-eva-post"] = _post_norm_eva()
SPECS["tiny-rn"] = get_model("tiny-rn")  # CLIP's ResNet: batch norm, convs, attention pool


class SavedStorages:
    """Unique storages packed for backward, attributed to the block running at the time."""

    def __init__(self, model: torch.nn.Module):
        state = [*model.parameters(), *model.buffers()]
        self.excluded = {t.untyped_storage().data_ptr() for t in state}
        self.nbytes: dict[int, int] = {}
        self.owners: dict[int, set] = {}
        self.block: object = "outside"
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self.excluded:
            self.nbytes[ptr] = storage.nbytes()
            self.owners.setdefault(ptr, set()).add(self.block)
        return t

    def add(self, t) -> None:
        """Count a tensor kept alive by other means (a checkpoint's input)."""
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.excluded:
            self.nbytes[storage.data_ptr()] = storage.nbytes()

    @property
    def total(self) -> int:
        return sum(self.nbytes.values())


def _closure_tensors(fn):
    cells = getattr(fn, "__closure__", None) or ()
    return [c.cell_contents for c in cells if isinstance(c.cell_contents, torch.Tensor)]


def _run_tower(model, tower_name, counter, mask_ratio):
    tower = getattr(model, tower_name)
    spec = tower.spec
    with counter.hooks:
        if tower_name == "visual":
            images = torch.randn(BATCH, 3, spec.image_size, spec.image_size)
            g = torch.Generator().manual_seed(0)
            tower(images, mask_ratio=mask_ratio, generator=g)
        else:
            tokens = torch.randint(0, spec.vocab_size, (BATCH, spec.context_length))
            tower(tokens)


def measure_full(model, tower_name, mask_ratio):
    """(kept bytes, recompute peak) of a forward without checkpointing."""
    counter = SavedStorages(model)
    inputs = {}

    def enter(block, args, kwargs):
        counter.block = block
        inputs[block] = args[0].untyped_storage().data_ptr()

    def leave(block, args, output):
        counter.block = "outside"

    tower = getattr(model, tower_name)
    handles = [b.register_forward_pre_hook(enter, with_kwargs=True) for b in tower.blocks]
    handles += [b.register_forward_hook(leave) for b in tower.blocks]
    _run_tower(model, tower_name, counter, mask_ratio)
    for h in handles:
        h.remove()
    peak = 0
    for block, input_ptr in inputs.items():
        private = [
            n
            for ptr, n in counter.nbytes.items()
            if counter.owners[ptr] == {block} and ptr != input_ptr
        ]
        peak = max(peak, sum(private))
    return counter.total, peak


def measure_checkpointed(model, tower_name, mask_ratio):
    """Bytes kept with per-block checkpointing: saved outside + what the checkpoints hold."""
    counter = SavedStorages(model)

    def keep_inputs(block, args, kwargs):
        counter.add(args[0])
        for t in _closure_tensors(kwargs.get("rope")):
            counter.add(t)

    tower = getattr(model, tower_name)
    handles = [b.register_forward_pre_hook(keep_inputs, with_kwargs=True) for b in tower.blocks]
    _run_tower(model, tower_name, counter, mask_ratio)
    for h in handles:
        h.remove()
    return counter.total


def _estimate(spec, tower_name, ckpt, mask_ratio):
    if tower_name == "visual":
        return vision_activations(spec.vision, BATCH, 4, ckpt, mask_ratio)
    return text_activations(spec.text, BATCH, 4, ckpt)


def _check(label, estimate, measured):
    ratio = estimate / measured
    print(f"{label}: estimate {estimate} B, measured {measured} B, ratio {ratio:.4f}")
    assert abs(ratio - 1) <= TOLERANCE, label


CASES = [
    (name, tower, r)
    for name in SPECS
    for tower, r in (("visual", 0.0), ("visual", 0.5), ("text", 0.0))
    if not (r and SPECS[name].vision.kind == "resnet")  # a ResNet drops no patches
]


@pytest.mark.parametrize(("name", "tower", "mask_ratio"), CASES)
def test_activation_estimate_matches_saved_tensors(name, tower, mask_ratio):
    spec = SPECS[name]
    torch.manual_seed(0)
    model = TwoTower(spec)
    kept, recompute = measure_full(model, tower, mask_ratio)
    no_ckpt = _estimate(spec, tower, False, mask_ratio)
    _check(f"{name} {tower} r={mask_ratio} full", no_ckpt.kept, kept)

    ckpt = _estimate(spec, tower, True, mask_ratio)
    _check(f"{name} {tower} r={mask_ratio} recompute", ckpt.recompute, recompute)
    apply_activation_checkpointing(model)
    kept_ckpt = measure_checkpointed(model, tower, mask_ratio)
    _check(f"{name} {tower} r={mask_ratio} checkpointed", ckpt.kept, kept_ckpt)


@pytest.mark.parametrize("name", [*list_models(), "tiny-eva-rms", "tiny-eva-post"])
def test_parameter_shapes_match_the_torch_model(name):
    spec = SPECS.get(name) or get_model(name)
    with torch.device("meta"):
        model = TwoTower(spec)
    assert Counter(tuple(p.shape) for p in model.parameters()) == Counter(parameter_shapes(spec))


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_gather_loss_buffers_match_saved_tensors(loss):
    """Single process (W = 1, the gathers are identities): what the trainer's loss saves, plus
    the two normalisations, vs the saved part of ``loss_buffer_parts`` (its backward part, the
    b×B logit gradients, is allocated only in backward). W = 2 and 4, and the ring:
    tests/trainer/test_loss_memory.py."""
    from trainer.losses import clip_loss, siglip_loss
    from trainer.losses.saved_memory import SavedTensorBytes

    b, e = 64, 32
    image = torch.randn(b, e, requires_grad=True)
    text = torch.randn(b, e, requires_grad=True)
    scale, bias = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    with SavedTensorBytes() as saved:
        x = torch.nn.functional.normalize(image, dim=-1)
        y = torch.nn.functional.normalize(text, dim=-1)
        clip_loss(x, y, scale) if loss == "softmax" else siglip_loss(x, y, scale, bias)
    estimate = loss_buffer_parts(loss, "gather", b, 1, e).saved
    _check(f"{loss}-gather loss saved", estimate, saved.bytes)
