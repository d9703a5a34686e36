"""Properties of ``vlscale.plan.plan`` over random configurations (hypothesis).

Random valid scenarios: any preset (tiny and real), any catalog device, 1-128 devices, any
recipe / loss implementation / mask ratio / precision the device has / sharding /
checkpointing / optimizer. Not repeated here because they are collective-level facts, already
held in tests/properties/test_collective_properties.py: an all-reduce moves the bytes of a
reduce-scatter plus an all-gather (``test_all_reduce_moves_a_reduce_scatter_plus_an_all_gather``)
and a ring exchange moves the bytes of one all-gather
(``test_ring_exchange_moves_the_bytes_of_one_all_gather``). Below they are checked on whole
plans: DDP's gradient all-reduce against FSDP's all-gather + reduce-scatter, and the SigLIP
ring's forward bytes against the SigLIP gather's.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from vlscale.errors import ConfigError
from vlscale.plan import PlanConfig, make_plan_config, plan
from vlscale.specs.hardware import DeviceSpec, dump_hardware_file, get_device, list_devices
from vlscale.specs.presets import list_models

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TINY = ["tiny-clip", "tiny-siglip", "tiny-eva", "small-clip"]
WORLDS = [1, 2, 4, 8, 16, 32, 64, 128]
GPUS = [d for d in list_devices() if get_device(d).kind == "gpu"]


def _precisions(device: DeviceSpec) -> list[str]:
    peaks = device.peak_flops
    out = [p for p in ("bf16", "fp16") if getattr(peaks, p) is not None]
    return out + (["fp32"] if peaks.fp32 or peaks.tf32 else [])


@st.composite
def configs(draw, devices=None, models=None, world=None) -> PlanConfig:
    """A valid PlanConfig (the constructor would raise ConfigError otherwise)."""
    device = draw(st.sampled_from(devices or list_devices()))
    recipe = draw(st.sampled_from(["clip", "siglip", "eva-clip"]))
    n = world if world is not None else draw(st.sampled_from(WORLDS))
    local = draw(st.sampled_from([1, 2, 8, 32, 128]))
    model = draw(st.sampled_from(models or TINY + list_models()))
    loss_impl = draw(st.sampled_from(["gather", "ring"])) if recipe == "siglip" else "gather"
    mask_ratio = draw(st.sampled_from([None, 0.0, 0.25, 0.5, 0.75]))
    return make_plan_config(
        model=model,
        recipe=recipe,
        loss_impl=loss_impl,
        # a ResNet drops no patches (and eva-clip's default r is 0.5)
        mask_ratio=0.0 if model in list_models("resnet") else mask_ratio,
        optimizer=draw(st.sampled_from([None, "adamw", "lamb", "adafactor"])),
        device=device,
        devices=n,
        global_batch=local * n,
        samples=draw(st.integers(1, 10**12)),
        precision=draw(st.sampled_from(_precisions(get_device(device)))),
        sharding=draw(st.sampled_from(["fsdp", "ddp"])),
        checkpointing=draw(st.booleans()),
    )


def _scaled(device: DeviceSpec, name: str, flops: float, bandwidth: float) -> DeviceSpec:
    """A copy of ``device`` with every peak FLOP/s times ``flops`` and every bandwidth (HBM,
    NVLink / ICI, NIC) times ``bandwidth``."""
    peaks = {
        k: (v * flops if v is not None else None)
        for k, v in device.peak_flops.model_dump().items()
        if k != "source"
    }
    update = {
        "name": name,
        "aliases": (),
        "peak_flops": device.peak_flops.model_copy(update=peaks),
        "memory": device.memory.model_copy(
            update={"hbm_bandwidth": device.memory.hbm_bandwidth * bandwidth}
        ),
        "network": device.network.model_copy(
            update={"nic_bandwidth": device.network.nic_bandwidth * bandwidth}
        ),
    }
    if device.nvlink is not None:
        update["nvlink"] = device.nvlink.model_copy(
            update={"bandwidth": device.nvlink.bandwidth * bandwidth}
        )
    if device.ici is not None:
        update["ici"] = device.ici.model_copy(
            update={"link_bandwidth": device.ici.link_bandwidth * bandwidth}
        )
    return device.model_copy(update=update)


@SETTINGS
@given(
    cfg=configs(),
    factor=st.floats(0.05, 0.95),
    which=st.sampled_from(["flops", "bandwidth", "both"]),
    u=st.floats(0.1, 1.0),
)
def test_step_time_never_decreases_when_flops_or_bandwidth_fall(cfg, factor, which, u):
    device = get_device(cfg.device)
    f_flops = factor if which in ("flops", "both") else 1.0
    f_bw = factor if which in ("bandwidth", "both") else 1.0
    with tempfile.TemporaryDirectory() as tmp:
        hw = Path(tmp) / "hw.yaml"
        dump_hardware_file(
            hw,
            devices=[_scaled(device, "copy", 1.0, 1.0), _scaled(device, "slow", f_flops, f_bw)],
        )
        common = {"utilisation": u, "hardware_file": str(hw)}
        catalog = plan(cfg.model_copy(update={"utilisation": u}))
        copy = plan(cfg.model_copy(update=common | {"device": "copy"}))
        slow = plan(cfg.model_copy(update=common | {"device": "slow"}))
    # a hardware-file copy of a catalog device plans exactly as the catalog entry
    assert copy.step_time_s == catalog.step_time_s
    assert slow.step_time_s >= copy.step_time_s * (1 - 1e-12)
    if f_flops < 1:  # every compute op is strictly longer, and compute is on the path
        assert slow.step_time_s > copy.step_time_s


@SETTINGS
@given(cfg=configs())
def test_simulated_step_equals_the_critical_path_and_plan_is_sane(cfg):
    r = plan(cfg)  # no stragglers, no input pipeline
    assert r.step_time_s == r.critical_path_s or abs(r.step_time_s - r.critical_path_s) <= (
        1e-9 * r.critical_path_s
    )
    assert r.step_time_s > 0 and 0 < r.mfu <= r.costs.utilisation * (1 + 1e-9)
    assert r.memory_per_device_bytes == sum(r.memory_breakdown.values())
    assert r.fits is (r.memory_per_device_bytes <= r.device_memory_bytes)
    assert r.wall_time_h > 0 and r.cost_usd >= 0 and 0 < r.goodput <= 1


@FEW
@given(cfg=configs(devices=GPUS, world=None))
def test_ddp_all_reduce_moves_fsdp_all_gather_plus_reduce_scatter(cfg):
    # fp32 parameters, no resharding: FSDP gathers each unit once (fp32) and reduce-scatters
    # its fp32 gradient; DDP all-reduces the same fp32 gradient. The loss adds the same
    # gathers / scatters (or ring hops) to both.
    base = {"precision": "fp32", "reshard_after_forward": False}
    fsdp = plan(cfg.model_copy(update=base | {"sharding": "fsdp"})).costs.comm_bytes_per_rank
    ddp = plan(cfg.model_copy(update=base | {"sharding": "ddp"})).costs.comm_bytes_per_rank
    lhs = fsdp["all_gather"] + fsdp["reduce_scatter"]
    rhs = ddp["all_reduce"] + ddp["all_gather"] + ddp["reduce_scatter"]
    assert abs(lhs - rhs) <= 1e-9 * max(lhs, 1.0)
    assert fsdp["all_reduce"] == 0 and ddp["p2p"] == fsdp["p2p"]


@FEW
@given(
    cfg=configs(devices=None, world=None),
    world=st.sampled_from([2, 4, 8, 16, 64, 128]),
)
def test_ring_moves_one_all_gather_and_clip_twice_that(cfg, world):
    n = cfg.local_batch
    variants = {}
    for recipe, impl in (("clip", "gather"), ("siglip", "gather"), ("siglip", "ring")):
        c = make_plan_config(
            cfg, recipe=recipe, loss_impl=impl, devices=world, global_batch=n * world
        )
        variants[impl if recipe == "siglip" else "clip"] = plan(c).to_json()
    fwd = {k: v["loss_comm_bytes_per_device"]["forward"] for k, v in variants.items()}
    assert fwd["ring"] > 0
    assert abs(fwd["ring"] - fwd["gather"]) <= 1e-9 * fwd["ring"]
    assert abs(fwd["clip"] - 2 * fwd["ring"]) <= 1e-9 * fwd["ring"]


@FEW
@given(cfg=configs(world=None))
def test_memory_falls_as_the_shard_degree_rises(cfg):
    """FSDP over all W > 1 devices holds 1/W of the replicated (DDP) model states (ZeRO-3: each
    rank keeps only its shard, bytes rounded up), so the total falls strictly."""
    assume(cfg.devices > 1)
    w = cfg.devices
    fsdp = plan(cfg.model_copy(update={"sharding": "fsdp"}))
    ddp = plan(cfg.model_copy(update={"sharding": "ddp"}))
    sharded, replicated = fsdp.memory_breakdown, ddp.memory_breakdown
    # Adafactor factors each SHARD's second moment (rows + columns of the local piece), which
    # is not 1/W of the full tensor's factors; only "no more" holds for it
    exact = ["params", "grads", "master_weights"]
    if cfg.optimizer != "adafactor":
        exact.append("optimizer_state")
    for key in exact:
        assert 0 <= sharded[key] * w - replicated[key] < w, key  # ceil(replicated / W)
    assert sharded["optimizer_state"] <= replicated["optimizer_state"]
    assert fsdp.memory_per_device_bytes < ddp.memory_per_device_bytes


@FEW
@given(cfg=configs(world=1), k=st.integers(1, 7))
def test_more_devices_at_fixed_local_batch_never_need_more_model_state(cfg, k):
    b = cfg.local_batch
    small, large = 2 ** (k - 1), 2**k
    cfg = cfg.model_copy(update={"sharding": "fsdp"})
    lo = plan(make_plan_config(cfg, devices=small, global_batch=b * small))
    hi = plan(make_plan_config(cfg, devices=large, global_batch=b * large))

    def state(r):  # everything but the loss, whose gathered buffers grow with the world
        return r.memory_per_device_bytes - r.memory_breakdown["loss_buffers"]

    assert state(hi) <= state(lo)
    if cfg.loss_impl == "ring":  # the ring's loss buffers do not depend on the world size
        assert hi.memory_per_device_bytes <= lo.memory_per_device_bytes


@FEW
@given(cfg=configs(), extra=st.integers(1, 10**12))
def test_more_samples_never_cost_less(cfg, extra):
    a = plan(cfg)
    b = plan(cfg.model_copy(update={"samples": cfg.samples + extra}))
    assert b.steps >= a.steps
    assert b.wall_time_h >= a.wall_time_h
    assert b.device_hours >= a.device_hours
    assert b.cost_usd >= a.cost_usd


# --------------------------------------------------------------------- valid or ConfigError

_any_text = st.text(max_size=8)
RAW = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from([*TINY, "ViT-L-14", "ViT-Z-99", ""]), _any_text),
        "device": st.one_of(
            st.sampled_from([*list_devices(), "h100", "tpu-v3", "Z999", ""]), _any_text
        ),
        "devices": st.one_of(st.integers(-2, 4096), st.just(2**20)),
        "global_batch": st.one_of(st.integers(-2, 10**6), st.just(2**40)),
        "samples": st.one_of(
            st.integers(-5, 10**30), st.sampled_from(["abc", "12.8e9", 1.5, 12.8e9, None])
        ),
        "recipe": st.sampled_from(["clip", "siglip", "eva-clip", "align"]),
        "loss_impl": st.sampled_from(["gather", "ring", "tree"]),
        "mask_ratio": st.one_of(st.none(), st.floats(-0.5, 1.5), st.just(float("nan"))),
        "precision": st.sampled_from(["fp32", "bf16", "fp16", "fp8"]),
        "sharding": st.sampled_from(["ddp", "fsdp", "zero3"]),
        "checkpointing": st.one_of(st.booleans(), st.just("maybe")),
        "optimizer": st.sampled_from([None, "adamw", "lamb", "adafactor", "sgd"]),
        "image_size": st.one_of(st.none(), st.integers(-1, 10**5)),
        "utilisation": st.one_of(st.none(), st.floats(-1.0, 2.0)),
        "num_slices": st.integers(0, 4),
    },
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=RAW, on_valid_base=st.booleans())
def test_any_configuration_plans_or_raises_config_error(raw, on_valid_base):
    # A million ranks through the ring's W-1 hops is minutes of simulation, not a bad input.
    assume(not (raw.get("loss_impl") == "ring" and raw.get("devices", 0) > 4096))
    if on_valid_base:  # so that a fair share of the examples gets past validation
        raw = {"model": "tiny-clip", "devices": 8, "global_batch": 64} | raw
    try:
        result = plan(make_plan_config(raw))
    except ConfigError as exc:
        event(f"ConfigError {exc.field.split(':')[0]}")
        assert exc.field and str(exc).startswith(exc.field)
        return
    event("planned")
    assert result.step_time_s > 0


@FEW
@given(cfg=configs(devices=GPUS), pick=st.integers(0, 10**6))
def test_hsdp_plans_between_fsdp_and_ddp_and_is_fsdp_over_the_world(cfg, pick):
    """Every shard size that divides a node or is whole nodes plans; its memory lies between
    FSDP's and DDP's; HSDP over all W ranks is FSDP, step and memory alike."""
    from vlscale.specs.hardware import make_cluster
    from vlscale.specs.layout import hsdp_shard_sizes

    w = cfg.devices
    node = make_cluster(cfg.device, w).node_size
    sizes = [*hsdp_shard_sizes(w, node), w]
    s = sizes[pick % len(sizes)]
    fsdp, ddp = (plan(cfg.model_copy(update={"sharding": k})) for k in ("fsdp", "ddp"))
    hsdp = plan(cfg.model_copy(update={"sharding": "hsdp", "shard_size": s}))
    event(f"s = {'W' if s == w else s}")
    total = lambda r: r.memory_per_device_bytes  # noqa: E731
    assert total(fsdp) <= total(hsdp) <= total(ddp)
    if s == w:
        assert hsdp.step_time_s == fsdp.step_time_s and total(hsdp) == total(fsdp)
