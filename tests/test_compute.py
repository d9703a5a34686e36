"""The per-op pricing (vlscale.costs.compute): hand-computed rooflines, the reduction to
FLOPs / peak with ideal efficiencies, tile / wave quantisation, and the planner on top of it."""

import math

import pytest

from vlscale.costs.compute import RankResources, matmul_efficiency, op_time, rank_resources
from vlscale.costs.ops import Op
from vlscale.plan.compute_model import default_profile
from vlscale.plan.config import make_plan_config
from vlscale.plan.planner import plan
from vlscale.specs.compute_profile import AttentionCost, ComputeProfile, MatmulCurve
from vlscale.specs.hardware import dump_hardware_file, get_device

IDEAL = MatmulCurve(peak_fraction=1.0, flops_half=0.0, source="test: ideal")


def profile(**kw) -> ComputeProfile:
    base = dict(matmul={"default": IDEAL}, memory_efficiency=1.0, op_overhead_s=0.0, source="test")
    return ComputeProfile(**(base | kw))


def res(prof, peak=1e12, bw=1e11) -> RankResources:
    return RankResources({"bf16": peak, "fp32": peak / 10}, bw, 1.0, prof)


def test_ideal_matmul_is_flops_over_peak():
    op = Op("mm", "matmul", "forward", 2.0 * 64 * 96 * 80, 0.0, 1, (1, 64, 96, 80), dtype="bf16")
    t = op_time(op, res(profile()))
    assert t.time_s == op.flops / 1e12 and t.bound == "compute"


def test_memory_bound_op_and_overhead():
    op = Op("add", "elementwise", "forward", 0.0, 3e6, 4)
    t = op_time(op, res(profile(op_overhead_s=2e-6)))
    assert t.memory_s == pytest.approx(3e6 / 1e11)
    assert t.overhead_s == pytest.approx(8e-6)
    assert t.time_s == pytest.approx(3e6 / 1e11 + 8e-6) and t.bound == "memory"
    # a rank's bandwidth is the device's times the elementwise efficiency
    h100 = get_device("H100")
    shared = rank_resources(h100, profile(memory_efficiency=0.5))
    assert shared.bandwidth == pytest.approx(0.5 * h100.memory.hbm_bandwidth)
    tiny = op_time(
        Op("tiny", "elementwise", "forward", 0.0, 16.0, 1), res(profile(op_overhead_s=1e-5))
    )
    assert tiny.bound == "overhead"


def test_framework_efficiency_divides_the_roofline_not_the_overhead():
    op = Op("mm", "matmul", "forward", 1e9, 0.0, 1, (1, 100, 100, 50_000), dtype="bf16")
    t = op_time(op, res(profile(op_overhead_s=1e-6)), efficiency=0.5)
    assert t.compute_s == pytest.approx(2e-3) and t.overhead_s == pytest.approx(1e-6)


def test_a_gemm_is_its_quantised_roofline_plus_one_latency():
    """F½ = P · pf · latency: time = F / (P · pf · q) + latency, whatever q is (a saturation
    that divided the latency by q made a 1-tile GEMM on 132 SMs cost 132 latencies)."""
    latency, pf, peak = 3e-6, 0.72, 1e12
    curve = MatmulCurve(
        peak_fraction=pf,
        flops_half=peak * pf * latency,
        tile_m=128,
        tile_n=256,
        parallel_units=132,
        source="test",
    )
    prof = profile(matmul={"default": curve})
    slots = 132 * 128 * 256  # one wave of full tiles
    cases = {  # (m, n, k): q by hand (tiles, waves)
        (4096, 4096, 4096): 4096 * 4096 / (4 * slots),  # 32 x 16 = 512 tiles: 4 waves
        (1000, 3000, 768): 1000 * 3000 / slots,  # 8 x 12 = 96 tiles: 1 wave
        (256, 256, 64): 256 * 256 / slots,  # 2 x 1 tiles: 1 wave, mostly empty
    }
    for (m, n, k), q in cases.items():
        flops = 2.0 * m * n * k
        op = Op("mm", "matmul", "forward", flops, 0.0, 1, (1, m, n, k), dtype="bf16")
        t = op_time(op, res(prof, peak=peak)).compute_s
        assert t == pytest.approx(flops / (peak * pf * q) + latency, rel=1e-9)


def test_a_tiny_gemm_takes_a_small_tile_not_a_128x256_one():
    """An 8×8×768 fp32 logit block (the SigLIP ring at 4,096 ranks) is latency-bound: one
    16×16 tile on one SM, a few µs, not the 0.1 ms of a 128×256 tile."""
    h100 = get_device("H100")
    prof = default_profile(h100)
    curve = prof.curve("fp32")
    assert (curve.tile_m, curve.tile_n, curve.parallel_units) == (128, 256, 132)
    flops = 2.0 * 8 * 8 * 768
    op = Op("logits", "matmul", "forward", flops, 0.0, 1, (1, 8, 8, 768), dtype="fp32")
    t = op_time(op, rank_resources(h100, prof)).compute_s
    peak = h100.peak_flops.fp32 * curve.peak_fraction
    latency = curve.flops_half / peak
    one_small_tile = 2.0 * 16 * 16 * 768 / (peak / 132)
    assert t == pytest.approx(latency + one_small_tile, rel=1e-9)
    assert t < 10e-6


def test_measured_attention_cost_by_hand():
    """A backward SDPA kernel with a measured cost: FLOPs at its fraction of the curve, plus
    its blocks' cost; on half the host (W = 2 ranks of a CPU) the blocks take twice as long."""
    cost = AttentionCost(fraction=0.5, block_s=4e-5, element_s=3e-8)
    prof = profile(attention_costs={"bf16.backward": cost}, attention_fraction=0.9)
    g, s, d = 128, 65, 32
    flops = 8.0 * g * s * s * d
    op = Op("sdpa.grad", "attention", "backward", flops, 0.0, 1, (g, s, s, d), dtype="bf16")
    blocks = g * (4e-5 + 3e-8 * s * d)
    assert op_time(op, res(prof)).compute_s == pytest.approx(flops / (1e12 * 0.5) + blocks)
    half = RankResources({"bf16": 5e11}, 1e11, 0.5, prof)
    assert op_time(op, half).compute_s == pytest.approx(flops / (5e11 * 0.5) + 2 * blocks)
    # forward has no measured cost here: the fraction path (0.9 of the curve) prices it
    fwd = Op("sdpa", "attention", "forward", flops / 2, 0.0, 1, (g, s, s, d), dtype="bf16")
    assert op_time(fwd, res(prof)).compute_s == pytest.approx(flops / 2 / (1e12 * 0.9))


def test_wave_quantisation_by_hand():
    # 128x128 tiles on 108 units: m = n = 1280 -> 100 tiles in one wave: 100 / 108 of the units
    curve = MatmulCurve(
        peak_fraction=0.8, flops_half=0.0, tile_m=128, tile_n=128, parallel_units=108, source="test"
    )
    assert matmul_efficiency(curve, (1, 1280, 1280, 64)) == pytest.approx(0.8 * 100 / 108)
    # 129 rows need a second, almost empty row of tiles: 2 x 1 tiles of which 129 / 256 is used
    assert matmul_efficiency(curve, (1, 129, 128, 64)) == pytest.approx(
        0.8 * (129 * 128) / (1 * 108 * 128 * 128)
    )
    # saturation: F / (F + F_half · q), so the latency is paid once whatever the quantisation
    sat = curve.model_copy(update={"flops_half": 2.0 * 1280 * 1280 * 64})
    q = 100 / 108
    assert matmul_efficiency(sat, (1, 1280, 1280, 64)) == pytest.approx(0.8 * q / (1 + q))


def test_plan_with_ideal_profile_is_flops_over_peak(tmp_path):
    """One device, every efficiency 1, no overheads, memory free: the step's compute is the
    executed FLOPs over the peak (the old model at u = 1)."""
    dev = get_device("H100").model_copy(
        update={"name": "ideal-gpu", "aliases": (), "compute": profile(memory_efficiency=1.0)}
    )
    hw = tmp_path / "ideal.yaml"
    dump_hardware_file(hw, devices=[dev])
    cfg = make_plan_config(
        model="tiny-clip",
        device="ideal-gpu",
        hardware_file=str(hw),
        devices=1,
        global_batch=8,
        precision="bf16",
        grad_clip=False,
    )
    r = plan(cfg)
    compute = sum(t.compute_s for t in r.costs.op_times)
    memory = sum(t.memory_s for t in r.costs.op_times)
    peaks = {"bf16": dev.peak_flops.bf16, "fp32": dev.peak_flops.fp32}
    by_hand = sum(t.op.executed_flops / peaks[t.op.dtype] for t in r.costs.op_times)
    assert compute == pytest.approx(by_hand, rel=1e-12)
    # the step is the ops back to back (one rank, nothing to overlap)
    assert r.step_time_s == pytest.approx(
        sum(max(t.compute_s, t.memory_s) for t in r.costs.op_times), rel=1e-9
    )
    assert memory > 0


def test_grad_accumulation_keeps_the_model_flops_and_costs_time():
    base = dict(model="tiny-clip", device="A100-40GB", devices=8, global_batch=256)
    one = plan(make_plan_config(base))
    four = plan(make_plan_config(base, grad_accum=4))
    assert four.costs.model_flops_per_step == pytest.approx(
        one.costs.model_flops_per_step, rel=0.02
    )
    assert four.step_time_s > one.step_time_s  # 4 micro-steps of fixed costs
    assert four.memory_breakdown["activations"] < one.memory_breakdown["activations"]
    with pytest.raises(Exception, match="grad_accum"):
        make_plan_config(base, grad_accum=3)  # 32 per rank is not divisible by 3


def test_h100_over_a100_is_physical():
    """ViT-L-14 on 256 GPUs: the H100 / A100 throughput ratio stays within what the dense peaks
    (989 / 312 TFLOP/s bf16 = 3.2x) and published training benchmarks (about 2-3x) allow."""
    cfg = dict(
        model="ViT-L-14",
        devices=256,
        global_batch=32768,
        samples=12_800_000_000,
        sharding="ddp",
        checkpointing=True,
        precision="bf16",
    )
    a100 = plan(make_plan_config(cfg, device="A100-40GB")).samples_per_s_per_device
    h100 = plan(make_plan_config(cfg, device="H100")).samples_per_s_per_device
    assert 1.5 < h100 / a100 < 3.3
    assert math.isfinite(h100)
