"""The planner (vlscale.plan): a hand-computed workload, the softmax-vs-sigmoid story, config
files, utilisation precedence and sweeps.

The hand-computed case uses a user device with round numbers (peak 1e12 FLOP/s bf16, measured
matmul efficiency 0.5, NVLink 1e9 B/s with α = 0, η = 1, n½ = 0 from ``measured.links``), so
every duration below is FLOPs / 5e11 or bytes / 1e9, worked out from the formulas in
``vlscale.costs.flops`` (module docstring) and ``vlscale.costs.collectives``.
"""

from __future__ import annotations

import math

import pytest

from vlscale.costs.memory import fsdp_unit_params
from vlscale.errors import ConfigError
from vlscale.plan import make_plan_config, plan
from vlscale.plan.compute_model import CALIBRATED, FALLBACK, resolve_compute
from vlscale.plan.config import read_config_file
from vlscale.plan.planner import default_precision, resolve
from vlscale.plan.sweep import expand_grid, run_sweep
from vlscale.plan.workload_builder import build_workload
from vlscale.sim import ClipGatherLoss
from vlscale.specs.presets import get_model

ROUND_DEVICE_YAML = """
devices:
  - name: round-gpu
    kind: gpu
    devices_per_node: 2
    peak_flops: {bf16: 1.0e12, fp32: 1.0e11, source: "test: round numbers"}
    memory: {hbm_bytes: 1.0e10, hbm_bandwidth: 1.0e11, source: test}
    nvlink: {bandwidth: 1.0e9, nvswitch: true, source: test}
    network: {nics_per_node: 1, nic_bandwidth: 1.0e9, source: test}
    price: {usd_per_hour: 1.0, source: test}
    measured:
      matmul_efficiency: 0.5
      links: {nvlink: {alpha_s: 0.0, efficiency: 1.0, n_half_bytes: 0.0}}
      source: "test: round numbers"
"""


@pytest.fixture
def round_config(tmp_path):
    hw = tmp_path / "round.yaml"
    hw.write_text(ROUND_DEVICE_YAML)
    return make_plan_config(
        model="tiny-clip",
        recipe="clip",
        device="round-gpu",
        devices=2,
        global_batch=8,  # local batch 4
        precision="bf16",
        sharding="fsdp",
        hardware_file=str(hw),
        samples=8_000,
    )


def _round_workload(config, checkpointing=False):
    spec, recipe, cluster = resolve(config)
    layout = config.layout.model_copy(update={"checkpointing": checkpointing})
    return build_workload(
        spec,
        recipe,
        cluster,
        layout.resolved("bf16", cluster.node_size),
        local_batch=config.local_batch,
        resources=resolve_compute(cluster.device, 0.5).resources,
    )


def test_hand_computed_unit_durations(round_config):
    # tiny-clip image tower: 32 px / patch 8 -> N = 16 patches + cls = 17 tokens, d = 64,
    # h = 256, e = 32; text: 32 tokens, d = 64, h = 256. Achieved rate 0.5 * 1e12 = 5e11.
    wl, costs = _round_workload(round_config)
    b, rate = 4, 5e11
    v_block = 8 * 17 * 64**2 + 4 * 17**2 * 64 + 4 * 17 * 64 * 256  # 1,745,152 FLOPs
    # causal text attention: the kernel executes (S + 1) / 2S of QK^T and AV (33 / 64)
    t_block = 8 * 32 * 64**2 + 4 * 32**2 * 64 * 33 / 64 + 4 * 32 * 64 * 256
    stem = 2 * 16 * 3 * 8**2 * 64  # conv 8x8, 3 -> 64, on 16 patches: 393,216
    proj = 2 * 64 * 32  # linear 64 -> 32: 4,096
    units = {u.name: u for u in wl.units}
    assert units["visual.blocks.0"].forward_s == pytest.approx(v_block * b / rate, rel=1e-12)
    assert units["visual.blocks.1"].backward_s == pytest.approx(2 * v_block * b / rate, rel=1e-12)
    assert units["text.blocks.0"].forward_s == pytest.approx(t_block * b / rate, rel=1e-12)
    # the tower's own unit: stem before the blocks, projection after; stem backward is F only
    assert units["visual"].forward_s == pytest.approx((stem + proj) * b / rate, rel=1e-12)
    assert units["visual"].backward_s == pytest.approx((stem + 2 * proj) * b / rate, rel=1e-12)
    assert costs.peak_flops == 1e12
    # the loss runs in fp32 (trainer.losses), at half of the fp32 peak of 1e11
    assert 0.45 < costs.utilisation < 0.55


def test_hand_computed_checkpointing_adds_the_recompute(round_config):
    wl, _ = _round_workload(round_config, checkpointing=True)
    v_block = 8 * 17 * 64**2 + 4 * 17**2 * 64 + 4 * 17 * 64 * 256
    recompute = v_block - 2 * 17 * 256 * 64  # early stop skips the MLP output matmul
    unit = next(u for u in wl.units if u.name == "visual.blocks.0")
    assert unit.backward_s == pytest.approx((2 * v_block + recompute) * 4 / 5e11, rel=1e-12)


def test_hand_computed_communication(round_config):
    wl, costs = _round_workload(round_config)
    # CLIP loss: each rank gathers b * e fp32 = 4 * 32 * 4 = 512 bytes from the other rank:
    # one step at 1e9 B/s with alpha = 0, eta = 1.
    assert isinstance(wl.loss, ClipGatherLoss)
    assert wl.loss.all_gather_s == pytest.approx(512 / 1e9, rel=1e-12)
    assert wl.loss.reduce_scatter_s == pytest.approx(512 / 1e9, rel=1e-12)
    # loss FLOPs 12 * b * B * e = 12 * 4 * 8 * 32, forward a third of them, in fp32: 0.5 * 1e11
    assert wl.loss.forward_s == pytest.approx(12 * 4 * 8 * 32 / 3 / 5e10, rel=1e-12)
    # both embeddings gathered: twice 512 bytes forward
    assert costs.loss_comm_bytes_per_rank["forward"] == 2 * 512
    # FSDP: a ViT block of tiny-clip holds qkv (3d*d + 3d), out (d*d + d), fc1 (d*h + h),
    # fc2 (h*d + d) and two LayerNorms (4d) = 49,984 parameters; bf16 shard = 49,984 bytes
    block_params = 3 * 64 * 64 + 3 * 64 + 64 * 64 + 64 + 2 * 64 * 256 + 256 + 64 + 4 * 64
    assert fsdp_unit_params(get_model("tiny-clip"))[0] == block_params
    unit = next(u for u in wl.units if u.name == "visual.blocks.0")
    assert unit.all_gather_s == pytest.approx(block_params * 2 / 2 / 1e9, rel=1e-12)
    assert unit.reduce_scatter_s == pytest.approx(block_params * 4 / 2 / 1e9, rel=1e-12)


def test_measured_profile_sets_the_utilisation(round_config):
    result = plan(round_config)
    # towers at 0.5 of bf16 (a causal text kernel skips half its attention: counted FLOPs run
    # faster than 0.5), the loss in fp32 at 0.5 of a tenth of the peak
    assert 0.45 < result.costs.utilisation < 0.55
    assert result.utilisation_source.startswith("measured profile")
    given = plan(round_config.model_copy(update={"utilisation": 0.25}))
    assert given.costs.utilisation == pytest.approx(result.costs.utilisation / 2)
    # half the rate: every compute op takes twice as long, so the step grows
    assert given.step_time_s > result.step_time_s


def test_calibrated_and_fallback_utilisation():
    v100 = plan(
        make_plan_config(
            model="tiny-clip", device="V100", devices=8, global_batch=64, precision="fp16"
        )
    )
    assert v100.compute["framework_efficiency"] == CALIBRATED["V100"][0]
    assert "calibrated" in v100.utilisation_source
    tpu = plan(make_plan_config(model="tiny-clip", device="TPUv5e", devices=8, global_batch=64))
    assert tpu.compute["framework_efficiency"] == FALLBACK[0]
    assert FALLBACK[1] in tpu.utilisation_source


def test_default_scenario_is_the_documented_one():
    c = make_plan_config()
    assert (c.model, c.devices, c.device, c.global_batch) == ("ViT-L-14", 256, "H100", 32_768)
    assert (c.samples, c.layout.sharding) == (12_800_000_000, "fsdp")
    # precision follows the device when not given: bf16 on H100 (fp16 on V100)
    assert c.layout.precision is None and default_precision(resolve(c)[2].device) == "bf16"


def test_plan_json_is_consistent():
    r = plan(make_plan_config(model="ViT-B-16", devices=16, global_batch=1024, samples=10**8))
    j = r.to_json()
    assert j["loss_memory_bytes"] == j["memory_breakdown"]["loss_buffers"]
    assert sum(j["memory_breakdown"].values()) == j["memory_per_device_bytes"]
    assert j["samples_per_s"] == pytest.approx(1024 / j["step_time_s"])
    assert j["steps"] == math.ceil(10**8 / 1024)
    assert j["device_hours"] == pytest.approx(j["wall_time_h"] * 16)
    assert 0 < j["mfu"] <= j["utilisation"] + 1e-12  # model FLOPs can't beat the achieved rate
    assert j["fits"] is (j["memory_per_device_bytes"] <= j["device_memory_bytes"])


def test_fp32_on_a_tf32_device_uses_the_tf32_peak_and_fp32_gathers():
    base = dict(model="tiny-clip", device="A100-40GB", devices=8, global_batch=64)
    fp32 = plan(make_plan_config(base, precision="fp32"))
    bf16 = plan(make_plan_config(base, precision="bf16"))
    assert fp32.costs.peak_flops == 156e12  # A100 TF32 dense peak
    loss_ag = fp32.costs.loss_comm_bytes_per_rank["forward"]
    assert loss_ag == bf16.costs.loss_comm_bytes_per_rank["forward"]  # loss is fp32 anyway
    param_ag = fp32.costs.comm_bytes_per_rank["all_gather"] - loss_ag
    assert param_ag == pytest.approx(2 * (bf16.costs.comm_bytes_per_rank["all_gather"] - loss_ag))


# --------------------------------------------------------------------- softmax versus sigmoid


def _loss_story(world: int, local_batch: int = 64) -> dict[str, dict]:
    out = {}
    for recipe, impl in (("clip", "gather"), ("siglip", "gather"), ("siglip", "ring")):
        cfg = make_plan_config(
            model="ViT-B-16",
            recipe=recipe,
            loss_impl=impl,
            device="H100",
            devices=world,
            global_batch=world * local_batch,
            samples=10**9,
        )
        out[f"{recipe}/{impl}"] = plan(cfg).to_json()
    return out


def test_softmax_needs_more_loss_memory_as_the_world_grows_and_the_ring_does_not():
    worlds = (8, 64, 512)
    stories = [_loss_story(w) for w in worlds]
    for variant in ("clip/gather", "siglip/gather"):
        mem = [s[variant]["loss_memory_bytes"] for s in stories]
        assert mem[0] < mem[1] < mem[2], (variant, mem)
    ring = [s["siglip/ring"]["loss_memory_bytes"] for s in stories]
    assert ring[0] == ring[1] == ring[2]
    assert ring[-1] < stories[-1]["siglip/gather"]["loss_memory_bytes"]


def test_clip_moves_twice_the_ring_bytes_and_the_ring_moves_one_all_gather():
    s = _loss_story(64)
    clip, gather, ring = (s[k]["loss_comm_bytes_per_device"] for k in s)
    assert clip["forward"] == pytest.approx(2 * ring["forward"])
    assert ring["forward"] == pytest.approx(gather["forward"])
    e = get_model("ViT-B-16").embed_dim
    assert ring["forward"] == (64 - 1) * 64 * e * 4  # W-1 hops of b * e fp32


# --------------------------------------------------------------------- config files and sweeps


def test_read_config_file_yaml_toml_and_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("model: tiny-clip\ndevices: 8\n")
    (tmp_path / "a.toml").write_text('model = "tiny-clip"\ndevices = 8\n')
    assert read_config_file(tmp_path / "a.yaml") == read_config_file(tmp_path / "a.toml")
    (tmp_path / "empty.yaml").write_text("")
    assert read_config_file(tmp_path / "empty.yaml") == {}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    (tmp_path / "bad.toml").write_text("model = \n")
    for name in ("missing.yaml", "list.yaml", "bad.yaml", "bad.toml"):
        with pytest.raises(ConfigError) as err:
            read_config_file(tmp_path / name)
        assert err.value.field == "config"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"devices": 3}, "global_batch"),  # 32,768 is not divisible by 3
        ({"devices": 8, "global_batch": 64, "grad_accum": 3}, "grad_accum"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"recipe": "clip", "loss_impl": "ring"}, "loss_impl"),
        ({"recipe": "eva-clip", "loss_impl": "ring"}, "loss_impl"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_make_plan_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as err:
        make_plan_config(**overrides)
    assert err.value.field == field


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"device": "Z999"}, "device"),
        ({"model": "ViT-Z-99"}, "model"),
        ({"device": "V100", "precision": "bf16"}, "precision"),
        ({"image_size": 100}, "image_size"),  # patch 14 does not divide 100
    ],
)
def test_plan_rejects_what_only_resolving_finds(overrides, field):
    with pytest.raises(ConfigError) as err:
        plan(make_plan_config(**overrides))
    assert err.value.field == field


def test_sweep_rows_and_errors(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "base: {model: tiny-clip, device: H100, global_batch: 64, samples: 12.8e9}\n"
        "grid:\n  devices: [8, 16, 3]\n  loss_impl: [gather, ring]\n"
    )
    points = expand_grid(grid)
    assert len(points) == 6
    assert points[0] == {
        "model": "tiny-clip",
        "device": "H100",
        "global_batch": 64,
        "samples": "12.8e9",
        "devices": 8,
        "loss_impl": "gather",
    }
    frame = run_sweep(points, progress=False)
    assert len(frame) == 6
    ok = frame["error"].isna()
    # clip + ring is invalid everywhere, 64 samples over 3 devices is invalid too
    assert ok.tolist() == [True, False, True, False, False, False]
    assert (frame.loc[ok, "samples"] == 12_800_000_000).all()
    assert "memory_breakdown.activations" in frame.columns  # nested dicts flattened
    assert frame.loc[~ok, "error"].str.contains("loss_impl|divisible").all()


@pytest.mark.parametrize(
    "text",
    [
        "base: {}\ngrid: {devices: []}\n",
        "base: {}\ngrid: {devices: 8}\n",
        "grid: {devices: [8]}\nextra: 1\n",
        "base: [1]\ngrid: {}\n",
    ],
)
def test_bad_grids_name_the_fix(tmp_path, text):
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    with pytest.raises(ConfigError) as err:
        expand_grid(grid)
    assert err.value.field.startswith("grid")


@pytest.mark.parametrize(
    "recipe, impl, ckpt",
    [("clip", "gather", False), ("clip", "gather", True), ("siglip", "ring", False)],
)
def test_hfu_counts_recompute_and_mfu_does_not(recipe, impl, ckpt):
    cfg = make_plan_config(
        model="ViT-B-16", recipe=recipe, loss_impl=impl, devices=64, global_batch=8192,
        checkpointing=ckpt,
    )  # fmt: skip
    out = plan(cfg).to_json()
    if not ckpt and impl == "gather":
        assert out["hfu"] == pytest.approx(out["mfu"], rel=1e-9)  # nothing is recomputed
    else:
        # activation recompute, or the ring's recomputed block logits
        assert out["hfu"] > out["mfu"]


def test_one_fp32_rank_is_planned_unwrapped_like_the_trainer_runs_it():
    """trainer.parallelize.needs_wrapping: one fp32 rank runs the plain module. The planner
    drops FSDP's copies, the per-unit overhead and DTensor dispatch there, and only there."""
    from vlscale.plan.planner import plan

    profile = "reports/validation/cpu/profile.yaml"

    def run(**kw):
        base = dict(model="small-clip", device="xeon-2c", hardware_file=profile, samples=32)
        base |= dict(global_batch=32, failures={"enabled": False})
        return plan(make_plan_config(**(base | kw)))

    plain, wrapped = (
        run(devices=1, precision="fp32"),
        run(devices=1, precision="fp32", wrap_one_rank=True),
    )
    names = {t.op.name for t in plain.costs.op_times}
    assert not any(n.startswith("fsdp.") for n in names)
    assert any(t.op.name.startswith("fsdp.") for t in wrapped.costs.op_times)
    assert plain.step_time_s < wrapped.step_time_s
    # the optimizer's ops are plain tensor ops, not DTensor ones
    assert all(t.op.dispatch != "dtensor" for t in plain.costs.op_times)
    # bf16 keeps FSDP for its precision policy, and two ranks are always wrapped
    for kw in (dict(devices=1, precision="bf16"), dict(devices=2, precision="fp32")):
        assert run(**kw).step_time_s == run(**kw, wrap_one_rank=True).step_time_s


def _l14_4096(sharding: str, *extra) -> dict:
    flags = dict(model="ViT-L-14", devices=4096, global_batch=131_072, sharding=sharding)
    return plan(make_plan_config(flags | dict(extra))).to_json()


def test_hsdp_at_4096_h100_runs_near_ddp_in_near_fsdp_memory():
    """Issue 16: ViT-L-14 CLIP on 4,096 H100 at global batch 131,072 (`vlscale plan --model
    ViT-L-14 --devices 4096 --global-batch 131072 --sharding ddp|fsdp|hsdp --shard-size 8`):

        sharding   step time   memory per device
        ddp        0.2769 s    17,134,706,980 B (15.96 GiB)
        fsdp       2.6104 s     9,541,664,235 B ( 8.89 GiB; 1.65 s exposed all-gather)
        hsdp-8     0.2673 s    10,395,226,884 B ( 9.68 GiB)

    HSDP with shard groups of one 8-GPU node gathers and reduce-scatters over NVLink and
    all-reduces a 1/8 fp32 shard across the 512 nodes: its step is within 1.2x of DDP's (here
    0.965x), its memory at most FSDP's + (DDP's - FSDP's) / 2 = 13,338,185,607 B."""
    ddp, fsdp = _l14_4096("ddp"), _l14_4096("fsdp")
    hsdp = _l14_4096("hsdp", ("shard_size", 8))
    assert hsdp["layout"]["shard_size"] == 8 and hsdp["sharding"] == "hsdp"
    assert hsdp["step_time_s"] <= 1.2 * ddp["step_time_s"]
    mem = {k: r["memory_per_device_bytes"] for k, r in (("ddp", ddp), ("fsdp", fsdp))}
    assert hsdp["memory_per_device_bytes"] <= mem["fsdp"] + (mem["ddp"] - mem["fsdp"]) / 2
    # the recorded numbers (docstring), to the printed digits
    assert (round(ddp["step_time_s"], 4), round(fsdp["step_time_s"], 4)) == (0.2769, 2.6104)
    assert round(hsdp["step_time_s"], 4) == 0.2673
    assert (mem["ddp"], mem["fsdp"], hsdp["memory_per_device_bytes"]) == (
        17_134_706_980,
        9_541_664_235,
        10_395_226_884,
    )
    # its traffic: the all-reduce of the shard across replicas is on top of FSDP's collectives
    assert hsdp["comm_bytes_per_device"]["all_reduce"] > 0


def test_hsdp_over_the_whole_world_is_fsdp():
    """Shard groups of all W ranks leave one replica: no all-reduce, FSDP's step and memory."""
    base = dict(model="ViT-B-32", devices=32, global_batch=2048)
    fsdp = plan(make_plan_config(base | {"sharding": "fsdp"})).to_json()
    hsdp = plan(make_plan_config(base | {"sharding": "hsdp", "shard_size": 32})).to_json()
    for key in ("step_time_s", "memory_per_device_bytes", "comm_bytes_per_device"):
        assert hsdp[key] == fsdp[key], key


def test_hsdp_memory_follows_the_shard_size_and_the_loss_the_world():
    base = dict(model="ViT-B-32", devices=32, global_batch=2048, sharding="hsdp")
    by_s = {s: plan(make_plan_config(base | {"shard_size": s})).to_json() for s in (2, 4, 8, 16)}
    totals = [by_s[s]["memory_per_device_bytes"] for s in (2, 4, 8, 16)]
    assert totals == sorted(totals, reverse=True)
    losses = {r["memory_breakdown"]["loss_buffers"] for r in by_s.values()}
    assert len(losses) == 1  # the loss spans all 32 ranks whatever s


def test_replica_groups_take_one_rank_per_node_per_group():
    from vlscale.costs.topology import replica_group
    from vlscale.specs.hardware import make_cluster

    cluster = make_cluster("H100", 32)  # 4 nodes of 8
    shapes = {s: replica_group(cluster, s) for s in (1, 2, 4, 8, 16, 32)}
    assert {s: (g.inner_size, g.outer_size) for s, g in shapes.items()} == {
        1: (8, 4),  # DDP's group: the whole world
        2: (4, 4),
        4: (2, 4),
        8: (1, 4),  # one rank per node, on its own NIC rail
        16: (1, 2),
        32: (1, 1),
    }
    assert shapes[8].tiers == (shapes[8].outer,)  # only the network joins them
    assert shapes[2].inner.name == "nvlink"
    with pytest.raises(ConfigError, match="shard_size: 3 neither divides"):
        replica_group(make_cluster("H100", 24), 3)


def test_every_node_aligned_shard_size_plans():
    """``hsdp_shard_sizes(W, node)`` lists exactly the shard sizes the planner accepts (what
    ``vlscale tune`` searches): 24 ranks on 8-GPU nodes take 2, 4 and 8, not 3, 6 or 12."""
    from vlscale.specs.layout import hsdp_shard_sizes

    assert hsdp_shard_sizes(24) == [2, 3, 4, 6, 8, 12]
    assert hsdp_shard_sizes(24, 8) == [2, 4, 8]
    base = dict(model="tiny-clip", devices=24, global_batch=48, sharding="hsdp")
    for s in hsdp_shard_sizes(24):
        config = make_plan_config(base | {"shard_size": s})
        if s in hsdp_shard_sizes(24, 8):
            assert plan(config).config.layout.shard_size == s
        else:
            with pytest.raises(ConfigError, match="shard_size"):
                plan(config)
