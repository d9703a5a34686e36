"""The kernels the probe times, on either device: GEMMs over a grid of shapes, elementwise
bandwidth, per-kernel overhead and SDPA in the towers' q, k, v layout.

Each function takes the timer (``timing.host_seconds`` or ``timing.cuda_seconds``) and the
device, so the CPU and CUDA probes share one definition of what is measured:

- GEMM: ``c = a @ b`` with ``a`` (m, k), ``b`` (k, n), into a reused output (no page faults on
  fresh memory), m·n·k multiply-adds;
- bandwidth: ``c = a + b``, two reads and one write per element, 3 · size · elements bytes;
- overhead: a chain of tiny ops, forward and backward, 4 kernels per link (mul and add forward,
  their two gradient kernels backward), host time per kernel;
- SDPA: q, k, v viewed from one fused projection (B, S, 3, H, hd) and permuted, as the towers
  make them (CPU kernels differ by layout);
- convolution: ``F.conv2d`` forward, stride 1, "same" padding, bias-free (as the ResNet's), timed
  with its implicit-GEMM shape (M = b·H·W, N = C_out, K = C_in·k², as ``vlscale.costs`` prices
  it) so that it compares with the GEMM curve.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlscale.calibrate.probe_fits import GemmSample

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def gemm_grid(device: str, quick: bool) -> list[tuple[int, int, int]]:
    """(m, n, k) shapes: CPU ones around the CPU presets (rows of b·S activations, S = 65, 17, 33
    tokens, rarely tile multiples); CUDA ones at the towers of CLIP-class models (1000 and 3000
    rows are not tile multiples: they show the wave quantisation)."""
    if device == "cpu":
        ms = (32, 260, 2080) if quick else (32, 130, 520, 2080, 8320)
        nk = (64, 256) if quick else (64, 256, 1024)
    else:
        ms = (128, 1000, 8192) if quick else (128, 1000, 3000, 8192, 16384)
        nk = (1024, 4096) if quick else (768, 3072, 8192)
    return [(m, n, k) for m in ms for n in nk for k in nk]


def measure_gemms(shapes, dtype: str, device: str, seconds, threads: int = 1) -> list[GemmSample]:
    """One ``GemmSample`` per (m, n, k) of ``shapes``, recorded with ``threads``."""
    samples = []
    for m, n, k in shapes:
        a = torch.randn(m, k, device=device, dtype=DTYPES[dtype])
        b = torch.randn(k, n, device=device, dtype=DTYPES[dtype])
        c = torch.empty(m, n, device=device, dtype=DTYPES[dtype])
        t = seconds(lambda a=a, b=b, c=c: torch.matmul(a, b, out=c))
        samples.append(GemmSample((1, m, n, k), threads, t))
    return samples


def measure_bandwidth(elements: int, dtype: str, device: str, seconds) -> float:
    """Bytes/s of ``c = a + b`` over ``elements`` elements of ``dtype``."""
    t = DTYPES[dtype]
    a = torch.randn(elements, device=device, dtype=t)
    b, c = torch.randn_like(a), torch.empty_like(a)
    size = torch.finfo(t).bits // 8
    return 3 * size * elements / seconds(lambda: torch.add(a, b, out=c))


def measure_op_overhead(device: str, seconds, length: int = 200) -> float:
    """Host seconds per kernel of a chain of ``length`` tiny links, forward and backward; on a
    GPU the chain ends with a synchronisation, so its time is the launches'."""
    x0 = torch.randn(4, 4, device=device, requires_grad=True)

    def chain() -> None:
        x = x0
        for _ in range(length):
            x = x * 1.0001 + 0.5
        x.sum().backward()
        if device != "cpu":
            torch.cuda.synchronize()

    return seconds(chain) / (4 * length)


def time_sdpa(shape, causal: bool, dtype: str, device: str, seconds) -> tuple[float, float]:
    """(forward, forward + backward) seconds of SDPA at ``shape`` = (b, heads, tokens, head dim)."""
    b, heads, s, hd = shape
    qkv = torch.randn(b, s, 3 * heads * hd, device=device, dtype=DTYPES[dtype])
    qkv.requires_grad_()

    def run() -> torch.Tensor:
        q, k, v = qkv.view(b, s, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, S, hd)

    return seconds(run), seconds(lambda: run().sum().backward())


def conv_gemm_shape(b: int, c_in: int, c_out: int, k: int, side: int):
    """(1, M, N, K) of a stride-1 "same" k×k convolution over a (b, c_in, side, side) map."""
    return (1, b * side * side, c_out, c_in * k * k)


def measure_convs(shapes, dtype: str, device: str, seconds, threads: int = 1) -> list[GemmSample]:
    """One ``GemmSample`` (its implicit-GEMM shape, the conv's time) per (b, c_in, c_out, k,
    side) of ``shapes``: ``F.conv2d`` forward, recorded with ``threads``."""
    samples = []
    for b, c_in, c_out, k, side in shapes:
        x = torch.randn(b, c_in, side, side, device=device, dtype=DTYPES[dtype])
        w = torch.randn(c_out, c_in, k, k, device=device, dtype=DTYPES[dtype])
        t = seconds(lambda x=x, w=w, k=k: F.conv2d(x, w, padding=k // 2))
        samples.append(GemmSample(conv_gemm_shape(b, c_in, c_out, k, side), threads, t))
    return samples
