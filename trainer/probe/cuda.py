"""The probe on a CUDA device: measure GPU 0 and write a ``kind: gpu`` device profile
(``python -m trainer.probe`` picks it when torch sees a GPU).

What differs from the CPU probe (``trainer.probe.cpu``):

- times come from CUDA events around each call (the host returns before the kernel ends);
- GEMMs run at sizes of the towers of CLIP-class models (m = batch · tokens up to 16 k rows,
  n, k from 768 to 8 k) in fp32 (tensor cores off: the trainer leaves TF32 disabled), bf16 and
  fp16; the curve is fitted with the GPU's SM count as its parallel units and cuBLAS's output
  tiles (128×128, 128×256, 256×128) as the candidate tiles (``fit_matmul_curve``);
- the datasheet peak of the card stays the device's peak when the catalog knows the card, and the
  fitted asymptote becomes the curve's ``peak_fraction`` (large-GEMM efficiency); an unknown
  card gets the fitted asymptote as its peak;
- HBM bandwidth from a large ``torch.add`` (2 reads + 1 write); its ratio to the datasheet is the
  profile's ``memory_efficiency``;
- the launch overhead: a chain of tiny ops forward + backward, host wall time per kernel (what
  an eager step pays when kernels are too small to hide the launches);
- with 2+ visible GPUs, NCCL all-gather / reduce-scatter / all-reduce / P2P between 2 ranks,
  fitted to T = steps · α + bytes / B and written as ``measured.links.nvlink``.

Every measurement function takes its sizes as arguments, so the assembly
(:func:`assemble_gpu_device`) is tested on the CPU with synthetic numbers
(tests/trainer/test_probe_cuda.py); the CUDA timing itself runs only on a GPU.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from trainer.probe.assembly import CollectiveRow, fit_link, origins, probe_source
from trainer.probe.collectives import measure_collectives
from trainer.probe.kernels import (
    gemm_grid,
    measure_bandwidth,
    measure_gemms,
    measure_op_overhead,
    time_sdpa,
)
from trainer.probe.timing import cuda_seconds, host_seconds
from vlscale.calibrate.probe_fits import GemmSample, fit_matmul_curve
from vlscale.costs.compute import matmul_efficiency
from vlscale.specs.compute_profile import ComputeProfile, MatmulCurve
from vlscale.specs.hardware import DeviceSpec, get_device

CUDA_DTYPES = ("fp32", "bf16", "fp16")
GPU_TILES = ((128, 128), (128, 256), (256, 128))
BANDWIDTH_ELEMENTS = 1 << 28  # 3 GiB moved in fp32
# (b, heads, tokens, head dim): ViT-sized SDPA shapes
ATTENTION_SHAPES = ((32, 12, 197, 64), (32, 12, 257, 64), (16, 16, 257, 64), (8, 16, 577, 64))


def measure_attention(peak: float, curve: MatmulCurve, dtype: str) -> tuple[float, float]:
    """(forward, backward) SDPA fractions: matmul-curve time of SDPA's FLOPs / measured time,
    median over ``ATTENTION_SHAPES`` (4 · b · heads · S² · hd FLOPs forward, twice that
    backward), each at most 2."""
    forward, backward = [], []
    for b, h, s, hd in ATTENTION_SHAPES:
        fwd, both = time_sdpa((b, h, s, hd), False, dtype, "cuda", cuda_seconds)
        flops = 4.0 * b * h * s * s * hd
        ideal = flops / (peak * matmul_efficiency(curve, (b * h, s, s, hd)))
        forward.append(ideal / fwd)
        backward.append(2 * ideal / max(both - fwd, 1e-9))
    return min(2.0, statistics.median(forward)), min(2.0, statistics.median(backward))


@dataclass
class GpuMeasurements:
    """Everything the CUDA probe measured, in SI units (assembled by ``assemble_gpu_device``)."""

    card: str  # torch.cuda.get_device_name
    sms: int
    memory_bytes: float
    gemms: dict[str, list[GemmSample]]
    bandwidth: float  # fp32 elementwise bytes/s
    memory_scale: dict[str, float]  # other dtypes' elementwise bytes/s relative to fp32
    launch_overhead_s: float
    attention: dict[str, tuple[float, float]] = field(default_factory=dict)  # dtype: (fwd, bwd)
    collectives: list[CollectiveRow] = field(default_factory=list)


def assemble_gpu_device(name: str, m: GpuMeasurements, catalog_key: str | None, source: str):
    """The ``kind: gpu`` device entry and a report of the fits.

    Known card: datasheet peaks and bandwidth from the catalog entry ``catalog_key``; the fitted
    GEMM asymptote P_fit gives ``peak_fraction = min(1, P_fit / P_datasheet)`` and the measured
    bandwidth ``memory_efficiency = min(1, BW / BW_datasheet)``. Unknown card: the measured
    asymptote and bandwidth are the peak (fractions 1).
    """
    catalog = get_device(catalog_key) if catalog_key else None
    report: dict = {}
    curves, peaks = _fit_gemm_curves(m, catalog, source, report)
    hbm = catalog.memory.hbm_bandwidth if catalog else m.bandwidth
    memory_efficiency = min(1.0, m.bandwidth / hbm)
    fwd, attention_scale = _attention_terms(m.attention)
    links = {}
    if m.collectives:
        alpha, bandwidth, err = fit_link(m.collectives)
        links["nvlink"] = {"alpha_s": alpha, "bandwidth": bandwidth}
        report["nccl"] = {"alpha_s": alpha, "bandwidth": bandwidth, "median_rel_error": err}
    profile = ComputeProfile(
        matmul=curves,
        attention_fraction=fwd,
        memory_efficiency=memory_efficiency,
        op_overhead_s=m.launch_overhead_s,
        memory_scale=m.memory_scale,
        attention_scale=attention_scale,
        source=source,
        origins=origins(
            measured=[
                "matmul",
                "attention_fraction",
                "memory_efficiency",
                "op_overhead_s",
                "memory_scale",
                "attention_scale",
            ]
        ),
    )
    memory = {
        "hbm_bytes": m.memory_bytes,
        "hbm_bandwidth": hbm,
        "source": catalog.memory.source if catalog else source,
    }
    device = _gpu_device(name, catalog, peaks, memory, links, profile, source)
    report |= {
        "card": m.card,
        "catalog_key": catalog_key,
        "bandwidth": m.bandwidth,
        "memory_efficiency": memory_efficiency,
        "launch_overhead_s": m.launch_overhead_s,
        "attention": m.attention,
    }
    return device, report


def _fit_gemm_curves(m: GpuMeasurements, catalog: DeviceSpec | None, source: str, report: dict):
    """Per dtype: the fitted curve (its ``peak_fraction`` against the datasheet) and the peak."""
    curves, peaks = {}, {}
    for dtype, samples in m.gemms.items():
        fit = fit_matmul_curve(samples, 1, source, tiles=GPU_TILES, parallel_units=m.sms)
        datasheet = getattr(catalog.peak_flops, dtype, None) if catalog else None
        peak = datasheet or fit.peak_flops
        fraction = min(1.0, fit.peak_flops / peak)
        curves[dtype] = fit.curve.model_copy(update={"peak_fraction": fraction})
        peaks[dtype] = peak
        report[f"gemm_{dtype}"] = {
            "fitted_peak_flops": fit.peak_flops,
            "datasheet_peak_flops": datasheet,
            "peak_fraction": fraction,
            "flops_half": fit.curve.flops_half,
            "tile": [fit.curve.tile_m, fit.curve.tile_n],
            "median_abs_log_error": fit.median_abs_log_error,
        }
    return curves, peaks


def _attention_terms(attention: dict[str, tuple[float, float]]) -> tuple[float, dict]:
    """``attention_fraction`` (bf16 forward, else fp32) and every other (dtype, direction)
    relative to it (``attention_scale``)."""
    fwd, bwd = attention.get("bf16") or attention.get("fp32") or (1.0, 1.0)
    scale = {"bf16.backward": bwd / fwd} if "bf16" in attention else {}
    for dtype, (f, b) in attention.items():
        if dtype != "bf16":
            scale |= {dtype: f / fwd, f"{dtype}.backward": b / fwd}
    return fwd, scale


def _gpu_device(name, catalog, peaks, memory, links, profile, source) -> DeviceSpec:
    """A known card keeps its node (GPUs per node, NVLink, NICs, price) from the catalog; an
    unknown one gets the measured NVLink (or PCIe) and assumed network and price."""
    keep_out = {"name", "aliases", "compute", "measured", "derived_from"}
    base = catalog.model_dump(exclude=keep_out) if catalog else {"devices_per_node": 1}
    nvlink = {
        "bandwidth": links.get("nvlink", {}).get("bandwidth", 25e9),
        "nvswitch": False,
        "source": "NCCL between 2 GPUs, measured" if links else "assumed: PCIe 4.0 x16, 25 GB/s",
    }
    network = {"nics_per_node": 1, "nic_bandwidth": 50e9, "source": "assumed: one 400G NIC"}
    peak_source = catalog.peak_flops.source if catalog else source
    return DeviceSpec(
        **base
        | {
            "name": name,
            "kind": "gpu",
            "peak_flops": peaks | {"source": peak_source},
            "memory": memory,
            "nvlink": base.get("nvlink") or nvlink,
            "network": base.get("network") or network,
            "price": base.get("price") or {"usd_per_hour": 0.0, "source": "assumed: owned"},
            "measured": {"links": links, "source": source} if links else None,
            "compute": profile,
        }
    )


def probe_cuda(name: str | None, quick: bool, comm: bool) -> tuple[DeviceSpec, dict]:
    """Measure GPU 0 and assemble its device entry (module docstring)."""
    from trainer.profiling import catalog_device_key

    nccl_pair = torch.cuda.device_count() >= 2
    props = torch.cuda.get_device_properties(0)
    card = torch.cuda.get_device_name(0)
    key = catalog_device_key(card)
    source = probe_source(card)
    shapes = gemm_grid("cuda", quick)
    gemms = {dt: measure_gemms(shapes, dt, "cuda", cuda_seconds) for dt in CUDA_DTYPES}
    bandwidth = gpu_bandwidth("fp32")
    memory_scale = {dt: gpu_bandwidth(dt) / bandwidth for dt in ("bf16", "fp16")}
    # attention fractions need a curve: a first fit of each dtype's GEMMs
    attention = {}
    for dtype in ("bf16", "fp32"):
        fit = fit_matmul_curve(
            gemms[dtype], 1, source, tiles=GPU_TILES, parallel_units=props.multi_processor_count
        )
        attention[dtype] = measure_attention(fit.peak_flops, fit.curve, dtype)
    m = GpuMeasurements(
        card=card,
        sms=props.multi_processor_count,
        memory_bytes=float(props.total_memory),
        gemms=gemms,
        bandwidth=bandwidth,
        memory_scale=memory_scale,
        launch_overhead_s=measure_op_overhead("cuda", launch_seconds),
        attention=attention,
        collectives=measure_collectives(quick, "nccl") if comm and nccl_pair else [],
    )
    return assemble_gpu_device(name or f"{key or 'gpu'}-probed", m, key, source)


def gpu_bandwidth(dtype: str) -> float:
    return measure_bandwidth(BANDWIDTH_ELEMENTS, dtype, "cuda", cuda_seconds)


def launch_seconds(fn) -> float:
    """Host seconds of a synchronised chain: 3 warm-up calls, median of 7."""
    return host_seconds(fn, min_s=0.0, reps=7, warmup=3)
