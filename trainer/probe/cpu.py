"""The probe on a CPU: measure this host and write a ``kind: cpu`` device profile.

What it measures (every fit is torch-free, in ``vlscale.calibrate.probe_fits``):

- GEMM time over a grid of shapes (m, n, k) per dtype, with one thread and with all of them,
  fitted to the planner's matmul curve (peak, F½, tile / wave quantisation over threads);
- SDPA forward and backward per dtype over attention shapes of the CPU presets, fitted to the
  per-shape ``AttentionCost`` (curve fraction + per-block + per-element cost), and the median
  fraction of the curve (``attention_fraction``, ``attention_scale``);
- elementwise bandwidth with one and all threads, and per-kernel dispatch overhead
  (``kernels``);
- fp32 convolutions of CLIP's ResNets (``CONV_SHAPES``) against the fitted GEMM curve at their
  implicit-GEMM shapes: reported (``conv_fp32``: per shape and the median of curve time /
  measured time), not priced — the planner prices a convolution as that GEMM;
- with 2+ cores, the trainer's collectives over gloo between 2 local ranks of one thread each,
  fitted to T = steps · α + bytes / B (the ``host`` link), and the cost of a collective inside
  FSDP2 beyond its transfer (``collectives``).

Parameters that only training runs can tell (per-unit and per-step overheads, overlap, data
time) keep assumed values until ``vlscale calibrate`` fits them.
"""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

from trainer.probe.assembly import fit_link, fit_per_collective, origins, probe_source
from trainer.probe.collectives import (
    FSDP_WIDTH,
    measure_collectives,
    measure_fsdp_unit_seconds,
)
from trainer.probe.kernels import (
    gemm_grid,
    measure_bandwidth,
    measure_convs,
    measure_gemms,
    measure_op_overhead,
    time_sdpa,
)
from trainer.probe.timing import host_seconds
from vlscale.calibrate.probe_fits import (
    AttentionSample,
    fit_attention_cost,
    fit_matmul_curve,
    predict_attention_s,
    predict_gemm_s,
)
from vlscale.specs.compute_profile import AttentionCost, ComputeProfile
from vlscale.specs.hardware import DeviceSpec

CPU_DTYPES = ("fp32", "bf16")
BANDWIDTH_ELEMENTS = 1 << 24

# (tokens, head dim, causal): the attention shapes of the CPU presets' towers (ViT: patches +
# class token; text: causal) and two longer ones; each at two batch·head counts
ATTENTION_SHAPES = (
    (17, 16, False),
    (32, 16, True),
    (65, 32, False),
    (32, 32, True),
    (65, 64, False),
    (32, 64, True),
    (129, 64, False),
    (257, 64, False),
)

# (b, c_in, c_out, kernel, side): tiny-rn's bottleneck convs at batch 16 (1x1 and 3x3, narrow
# channels, the CPU campaign's) and RN50's first stage at batch 2
CONV_SHAPES = (
    (16, 8, 8, 1, 16),
    (16, 8, 8, 3, 16),
    (16, 32, 16, 1, 16),
    (16, 32, 32, 3, 8),
    (2, 64, 64, 3, 56),
    (2, 256, 64, 1, 56),
)


def conv_report(samples, peak: float, curve, host_threads: int) -> dict:
    """Per conv sample: its implicit-GEMM shape, measured seconds and (curve time) / (measured
    time), > 1 when the conv kernel beats the GEMM curve; and the median of that fraction."""
    rows = [
        {
            "shape": list(x.shape),
            "seconds": x.seconds,
            "fraction": predict_gemm_s(x, peak, curve, host_threads) / x.seconds,
        }
        for x in samples
    ]
    return {"median_fraction": statistics.median(r["fraction"] for r in rows), "samples": rows}


def measure_cpu_gemms(dtype: str, threads_list: list[int], quick: bool):
    """GEMM samples of ``gemm_grid("cpu")`` with each thread count; half precision, emulated on
    CPUs without it, skips the largest shapes."""
    samples = []
    shapes = gemm_grid("cpu", quick)
    if dtype != "fp32":
        shapes = [(m, n, k) for m, n, k in shapes if m * n * k <= 2080 * 1024 * 256]
    for threads in threads_list:
        torch.set_num_threads(threads)
        samples += measure_gemms(shapes, dtype, "cpu", host_seconds, threads)
    return samples


def cpu_bandwidth(threads: int, dtype: str = "fp32") -> float:
    torch.set_num_threads(threads)
    seconds = lambda fn: host_seconds(fn, reps=7)  # noqa: E731
    return measure_bandwidth(BANDWIDTH_ELEMENTS, dtype, "cpu", seconds)


def measure_attention(threads: int, quick: bool, dtype: str = "fp32"):
    """SDPA forward and backward timings (``AttentionSample`` lists) over ``ATTENTION_SHAPES``
    with 4 heads; FLOPs 4 · blocks · S² · hd forward (causal: the executed (S + 1) / 2S of it),
    twice that backward."""
    torch.set_num_threads(threads)
    forward, backward = [], []
    heads = 4
    for blocks in (64,) if quick else (64, 256):
        for s, hd, causal in ATTENTION_SHAPES:
            shape = (blocks // heads, heads, s, hd)
            fwd, both = time_sdpa(shape, causal, dtype, "cpu", host_seconds)
            flops = 4.0 * blocks * s * s * hd
            executed = flops * (s + 1) / (2 * s) if causal else flops
            forward.append(AttentionSample(blocks, s, hd, executed, fwd))
            backward.append(AttentionSample(blocks, s, hd, 2 * executed, max(both - fwd, 1e-7)))
    return forward, backward


def attention_fractions(samples, peak: float, curve) -> float:
    """Median over shapes of (matmul-curve time of the FLOPs) / (measured time)."""
    return statistics.median(
        predict_attention_s(x, peak, curve, AttentionCost(fraction=1, block_s=0, element_s=0))
        / x.seconds
        for x in samples
    )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def host_memory_bytes() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 8 * 2**30


def _fit_gemms(threads_list: list[int], host_threads: int, quick: bool, src: str, report: dict):
    """Matmul curves and fitted peaks per dtype."""
    curves, peaks = {}, {}
    for dtype in CPU_DTYPES:
        samples = measure_cpu_gemms(dtype, threads_list, quick)
        fit = fit_matmul_curve(samples, host_threads, src)
        curves[dtype], peaks[dtype] = fit.curve, fit.peak_flops
        report[f"gemm_{dtype}"] = {
            "peak_flops": fit.peak_flops,
            "flops_half": fit.curve.flops_half,
            "tile": fit.curve.tile_m,
            "rms_log_error": fit.rms_log_error,
            "median_abs_log_error": fit.median_abs_log_error,
        }
    return curves, peaks


def _fit_attention(host_threads: int, quick: bool, peaks: dict, curves: dict, report: dict):
    """Per dtype and direction: the fitted per-shape cost (what the planner uses), and the median
    fraction of the curve (``attention_fraction``: fp32 forward; ``attention_scale``: the others
    relative to it)."""
    costs, fractions = {}, {}
    for dt in CPU_DTYPES:
        fwd, bwd = measure_attention(host_threads, quick, dt)
        for key, samples in ((dt, fwd), (f"{dt}.backward", bwd)):
            cost, err = fit_attention_cost(samples, peaks[dt], curves[dt])
            costs[key] = cost
            fractions[key] = attention_fractions(samples, peaks[dt], curves[dt])
            report[f"attention_{key}"] = cost.model_dump() | {"median_rel_error": err}
    attention = fractions["fp32"]
    scale = {k: v / attention for k, v in fractions.items() if k != "fp32"}
    report |= {"attention_scale": scale, "attention_fraction": attention}
    return costs, attention, scale


def _measure_comm(quick: bool, report: dict) -> tuple[dict, dict, float]:
    """gloo between 2 ranks: the ``host`` link, per-collective α–β, and the collective overhead
    inside FSDP2: the same tiny units on 2 ranks and on 1, each unit issuing 2 all-gathers
    (reshard) and 1 reduce-scatter, less their transfer, per collective."""
    rows = measure_collectives(quick)
    alpha, bandwidth, rms = fit_link(rows)
    per_op = {}
    for op, (a, b, err) in fit_per_collective(rows).items():
        per_op[op] = {"alpha_s": a, "bandwidth": b}
        report[f"collective_{op}"] = {"alpha_s": a, "bandwidth": b, "median_rel_error": err}
    one, two = measure_fsdp_unit_seconds(1), measure_fsdp_unit_seconds(2)
    shard = (FSDP_WIDTH * FSDP_WIDTH + FSDP_WIDTH) * 4 / 2
    ag, rs = per_op["all_gather"], per_op["reduce_scatter"]
    transfer = 2 * (ag["alpha_s"] + shard / ag["bandwidth"])
    transfer += rs["alpha_s"] + shard / rs["bandwidth"]
    overhead = max(0.0, (two - one - transfer) / 3)
    report["fsdp_unit_s"] = {"world_1": one, "world_2": two}
    report["collective_overhead_s"] = overhead
    link = {"alpha_s": alpha, "bandwidth": bandwidth, "efficiency": 1.0, "n_half_bytes": 0.0}
    report["collectives"] = {
        "alpha_s": alpha,
        "bandwidth": bandwidth,
        "rms_rel_error": rms,
        "samples": rows,
    }
    return {"host": link}, per_op, overhead


def probe_cpu(name: str, quick: bool, comm: bool) -> tuple[DeviceSpec, dict]:
    """Measure and fit; returns the device entry and a report of the fits."""
    host_threads = os.cpu_count() or 1
    src = probe_source(cpu_model())
    report: dict = {"host_threads": host_threads, "load_before": os.getloadavg()[0]}
    curves, peaks = _fit_gemms(sorted({1, host_threads}), host_threads, quick, src, report)
    torch.set_num_threads(host_threads)
    convs = measure_convs(CONV_SHAPES, "fp32", "cpu", host_seconds, host_threads)
    report["conv_fp32"] = conv_report(convs, peaks["fp32"], curves["fp32"], host_threads)
    bw_all, bw_one = cpu_bandwidth(host_threads), cpu_bandwidth(1)
    torch.set_num_threads(host_threads)
    overhead = measure_op_overhead("cpu", lambda fn: host_seconds(fn, reps=7))
    memory_scale = {dt: cpu_bandwidth(host_threads, dt) / bw_all for dt in CPU_DTYPES[1:]}
    attention_costs, attention, attention_scale = _fit_attention(
        host_threads, quick, peaks, curves, report
    )
    report |= {"memory_scale": memory_scale, "bandwidth": bw_all}
    report |= {"thread_bandwidth": bw_one, "op_overhead_s": overhead}
    links, per_op, collective_overhead = {}, {}, 0.0
    if comm and host_threads >= 2:
        links, per_op, collective_overhead = _measure_comm(quick, report)
    torch.set_num_threads(host_threads)
    comm_origin = "measured" if per_op else "assumed"
    profile = ComputeProfile(
        matmul=curves,
        attention_fraction=attention,
        memory_efficiency=1.0,
        op_overhead_s=overhead,
        plain_op_overhead_s=overhead,
        unit_overhead_s=2e-4,
        step_overhead_s=1e-3,
        comm_overlap=0.0,
        collective_overhead_s=collective_overhead,
        thread_bandwidth=bw_one,
        memory_scale=memory_scale,
        attention_scale=attention_scale,
        attention_costs=attention_costs,
        collectives=per_op,
        origins=origins(
            measured=[
                "matmul",
                "attention_fraction",
                "memory_efficiency",
                "op_overhead_s",
                "plain_op_overhead_s",
                "memory_scale",
                "attention_scale",
                "attention_costs",
            ],
            assumed=["unit_overhead_s", "step_overhead_s", "comm_overlap", "data_s_per_sample"],
        )
        | {"collectives": comm_origin, "collective_overhead_s": comm_origin},
        source=src,
    )
    device = DeviceSpec(
        name=name,
        kind="cpu",
        devices_per_node=host_threads,
        peak_flops={"fp32": peaks["fp32"], "bf16": peaks["bf16"], "source": src},
        memory={"hbm_bytes": host_memory_bytes(), "hbm_bandwidth": bw_all, "source": src},
        network={
            "nics_per_node": 1,
            "nic_bandwidth": 1.25e9,
            "source": "assumed: 10 Gb/s Ethernet between hosts (not measured)",
        },
        price={"usd_per_hour": 0.0, "source": "assumed: a machine you already have"},
        measured={"links": links, "source": src} if links else None,
        compute=profile,
    )
    report["load_after"] = os.getloadavg()[0]
    return device, report
