"""Properties of the memory model that must hold for every preset and layout."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.layouts import memory
from vlscale.costs.activations import activation_bytes
from vlscale.costs.memory import loss_buffer_bytes
from vlscale.specs import get_model, list_models

PRESETS = st.sampled_from(list_models())
VIT_PRESETS = st.sampled_from(list_models("vit"))  # image towers that drop patches (FLIP)
LAYOUT = st.fixed_dictionaries(
    {
        "precision": st.sampled_from(["fp32", "bf16", "fp16"]),
        "optimizer": st.sampled_from(["adamw", "lamb", "adafactor"]),
        "checkpointing": st.booleans(),
        "mask_ratio": st.sampled_from([0.0, 0.25, 0.5, 0.75]),
        "reshard_after_forward": st.booleans(),
    }
)
LOSS = st.sampled_from([("softmax", "gather"), ("sigmoid", "gather"), ("sigmoid", "ring")])


def preset(name: str, layout: dict):
    """The preset, for a layout its image tower can run (a ResNet drops no patches: r = 0)."""
    spec = get_model(name)
    assume(layout["mask_ratio"] == 0.0 or spec.vision.kind == "vit")
    return spec


# per-test settings (a global profile would change other modules' hypothesis tests too)
FAST = settings(max_examples=60, deadline=None)


@FAST
@given(
    name=PRESETS,
    layout=LAYOUT,
    loss=LOSS,
    batch=st.integers(1, 512),
    log_world=st.integers(0, 10),
    log_s1=st.integers(0, 10),
    log_s2=st.integers(0, 10),
)
def test_memory_does_not_grow_with_shard_degree(
    name, layout, loss, batch, log_world, log_s1, log_s2
):
    world = 2**log_world
    s1, s2 = sorted((2 ** min(log_s1, log_world), 2 ** min(log_s2, log_world)))
    spec = preset(name, layout)
    kw = dict(local_batch=batch, world_size=world, loss=loss[0], loss_impl=loss[1], **layout)
    less = memory(spec, shard_degree=s1, **kw)
    more = memory(spec, shard_degree=s2, **kw)
    assert more.total <= less.total
    for field in ("params", "grads", "optimizer_state", "master_weights"):
        assert getattr(more, field) <= getattr(less, field)


@FAST
@given(name=PRESETS, batch=st.integers(1, 256), precision=st.sampled_from(["fp32", "bf16"]))
def test_checkpointing_lowers_activations(name, batch, precision):
    spec = get_model(name)
    for r in (0.0, 0.5) if spec.vision.kind == "vit" else (0.0,):
        full = activation_bytes(spec, batch, precision, checkpointing=False, mask_ratio=r)
        ckpt = activation_bytes(spec, batch, precision, checkpointing=True, mask_ratio=r)
        assert sum(ckpt.values()) < sum(full.values())
        assert ckpt["image"] < full["image"] and ckpt["text"] < full["text"]


@FAST
@given(
    name=VIT_PRESETS,
    batch=st.integers(1, 256),
    ckpt=st.booleans(),
    r1=st.floats(0.01, 0.95),
    r2=st.floats(0.01, 0.95),
)
def test_activations_fall_with_the_mask_ratio(name, batch, ckpt, r1, r2):
    """Among ratios that drop patches, more masking never costs more. (From r = 0 to a tiny r
    it can: the gather that drops tokens saves its b·N·d input, which a 2-block model does not
    win back by dropping one token; ``test_flip_at_half_saves_memory`` covers r = 0 vs 0.5.)"""
    spec = get_model(name)
    lo, hi = sorted((r1, r2))
    # a ratio too small to drop a single patch takes the identity path (e.g. 1/32 of 16 patches)
    assume(spec.vision.kept_patches(lo) < spec.vision.num_patches)
    a = activation_bytes(spec, batch, "bf16", checkpointing=ckpt, mask_ratio=lo)
    b = activation_bytes(spec, batch, "bf16", checkpointing=ckpt, mask_ratio=hi)
    assert b["image"] <= a["image"]
    assert sum(b.values()) <= sum(a.values())
    assert b["text"] == a["text"]


def test_flip_at_half_saves_memory():
    for name in list_models("vit"):
        spec = get_model(name)
        full = activation_bytes(spec, 8, "bf16", mask_ratio=0.0)["image"]
        half = activation_bytes(spec, 8, "bf16", mask_ratio=0.5)["image"]
        assert half < full, name


@FAST
@given(batch=st.integers(1, 4096), embed=st.integers(1, 2048), log_w=st.integers(0, 12))
def test_ring_loss_memory_is_flat_in_world_size_and_gathers_grow(batch, embed, log_w):
    w1, w2 = 2**log_w, 2 ** (log_w + 1)
    ring = [loss_buffer_bytes("sigmoid", "ring", batch, w, embed) for w in (w1, w2)]
    # W = 1 has no hops and W = 2 no block in flight behind the received one; from W = 3 on
    # the ring's backward holds the same buffers whatever W is
    assert ring[0] <= ring[1]
    assert ring[0] == ring[1] or w1 < 3
    for loss in ("softmax", "sigmoid"):
        grows = [loss_buffer_bytes(loss, "gather", batch, w, embed) for w in (w1, w2)]
        assert grows[1] > grows[0]


@FAST
@given(name=PRESETS, layout=LAYOUT, loss=LOSS, batch=st.integers(1, 1024), log_w=st.integers(0, 8))
def test_total_is_the_sum_of_the_breakdown(name, layout, loss, batch, log_w):
    m = memory(
        preset(name, layout),
        local_batch=batch,
        shard_degree=2**log_w,
        world_size=2**log_w,
        loss=loss[0],
        loss_impl=loss[1],
        **layout,
    )
    assert all(v >= 0 for v in m.as_dict().values())


@FAST
@given(
    name=PRESETS,
    layout=LAYOUT,
    loss=LOSS,
    batch=st.integers(1, 1024),
    extra=st.integers(1, 1024),
    log_w=st.integers(0, 8),
)
def test_memory_grows_with_local_batch(name, layout, loss, batch, extra, log_w):
    kw = dict(shard_degree=1, world_size=2**log_w, loss=loss[0], loss_impl=loss[1], **layout)
    spec = preset(name, layout)
    small = memory(spec, local_batch=batch, **kw)
    large = memory(spec, local_batch=batch + extra, **kw)
    assert large.total > small.total
    assert large.activations > small.activations
    assert large.loss_buffers > small.loss_buffers


@FAST
@given(
    name=PRESETS,
    layout=LAYOUT,
    loss=LOSS,
    batch=st.integers(1, 512),
    nodes=st.integers(1, 64),
    per_node=st.sampled_from([1, 2, 4, 8]),
    pick=st.integers(0, 10**6),
)
def test_hsdp_memory_lies_between_fsdp_and_ddp(name, layout, loss, batch, nodes, per_node, pick):
    """HSDP over shard groups of s (any divisor of W) holds at most DDP's bytes and at least
    FSDP's; at s = W it is FSDP, at s = 1 it is DDP (its shard groups hold whole copies)."""
    world = nodes * per_node
    divisors = [d for d in range(1, world + 1) if world % d == 0]
    s = divisors[pick % len(divisors)]
    spec = preset(name, layout)
    kw = dict(local_batch=batch, world_size=world, loss=loss[0], loss_impl=loss[1], **layout)
    ddp = memory(spec, shard_degree=1, **kw)
    fsdp = memory(spec, shard_degree=world, **kw)
    hsdp = memory(spec, shard_degree=s, sharding="hsdp", **kw)
    assert fsdp.total <= hsdp.total <= ddp.total
    if s == world:
        assert hsdp == fsdp
    if s == 1:
        assert hsdp == ddp
