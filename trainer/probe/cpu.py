"""Measure this machine and write a device profile the planner uses like a catalog device.

    python -m trainer.probe --out profile.yaml [--name NAME] [--quick] [--cpu]
    vlscale plan --hardware-file profile.yaml --device NAME ...

On a machine where torch sees a GPU it measures GPU 0 instead (``trainer.probe_cuda``: CUDA
events, cuBLAS tiles over the SM count, NCCL between 2 GPUs when there are 2); ``--cpu`` keeps
the CPU probe.

What it measures (torch lives here, on the trainer side; every fit is torch-free in
``vlscale.calibrate.probe_fits``):

- GEMM time over a grid of shapes (m, n, k) per dtype, with one thread and with all of them,
  fitted to the planner's matmul curve (peak, F½, tile / wave quantisation over threads);
- SDPA forward and backward per dtype over attention shapes of the CPU presets, fitted to the
  per-shape ``AttentionCost`` (curve fraction + per-block + per-element cost), and the median
  fraction of the curve the older profiles used;
- elementwise bandwidth: a large ``torch.add`` (2 reads + 1 write) with one and all threads;
- per-kernel dispatch overhead: a chain of tiny ops forward + backward under autograd, divided
  by the kernels it launches (the host cost of one eager op in a training step);
- on CPU with 2+ cores, the collectives the trainer uses (all-gather, reduce-scatter,
  all-reduce, P2P exchange) over gloo between 2 local ranks of one thread each, fitted to the
  α–β model (T = steps · α + bytes / B) of the ``host`` tier.

The device entry it writes has ``kind: cpu``, the measured peaks and bandwidth, the fitted
``compute`` profile (origins: measured) and ``measured.links.host``. Parameters that only
training runs can tell (per-unit and per-step overheads, overlap, data time) keep assumed values
until ``vlscale calibrate`` fits them. Runs in about a minute on a 2-core machine (``--quick``:
a smaller grid).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlscale.calibrate.probe_fits import (
    AttentionSample,
    CommSample,
    GemmSample,
    fit_alpha_beta,
    fit_attention_cost,
    fit_matmul_curve,
    predict_attention_s,
)
from vlscale.errors import ConfigError
from vlscale.paths import atomic_write_text
from vlscale.specs.compute_profile import AttentionCost, ComputeProfile
from vlscale.specs.hardware import DeviceSpec, dump_hardware_file

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timeit(fn, min_s: float = 0.03, reps: int = 5) -> float:
    """Median seconds of ``fn()`` over at least ``reps`` calls (one warm-up call first); with
    ``min_s`` = 0 exactly ``reps`` calls (collectives: every rank must make the same calls)."""
    for _ in range(2):  # warm thread pools and caches
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + min_s
    while len(times) < reps or (min_s > 0 and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def gemm_grid(quick: bool) -> list[tuple[int, int, int]]:
    # row counts of b·S activations (S = 65, 17, 33 tokens) are rarely multiples of a tile
    ms = (32, 260, 2080) if quick else (32, 130, 520, 2080, 8320)
    nk = (64, 256) if quick else (64, 256, 1024)
    return [(m, n, k) for m in ms for n in nk for k in nk]


def measure_gemms(dtype: str, threads_list: list[int], quick: bool) -> list[GemmSample]:
    samples = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for m, n, k in gemm_grid(quick):
            if dtype != "fp32" and m * n * k > 2080 * 1024 * 256:
                continue  # emulated half precision on CPUs without it is slow; keep it short
            a = torch.randn(m, k, dtype=DTYPES[dtype])
            b = torch.randn(k, n, dtype=DTYPES[dtype])
            c = torch.empty(m, n, dtype=DTYPES[dtype])  # reused: no page faults on fresh output
            seconds = timeit(lambda a=a, b=b, c=c: torch.matmul(a, b, out=c))
            samples.append(GemmSample((1, m, n, k), threads, seconds))
    return samples


def measure_bandwidth(threads: int, elements: int = 1 << 24, dtype: str = "fp32") -> float:
    """bytes/s of c = a + b (two reads and one write per element) in ``dtype``."""
    torch.set_num_threads(threads)
    t = DTYPES[dtype]
    a, b = torch.randn(elements, dtype=t), torch.randn(elements, dtype=t)
    c = torch.empty(elements, dtype=t)
    size = torch.finfo(t).bits // 8
    return 3 * size * elements / timeit(lambda: torch.add(a, b, out=c), reps=7)


def measure_op_overhead(threads: int, length: int = 200) -> float:
    """Seconds per kernel of a chain of tiny ops, forward and backward (4 kernels per link:
    mul and add forward, their two gradient kernels backward)."""
    torch.set_num_threads(threads)
    x0 = torch.randn(4, 4, requires_grad=True)

    def chain() -> None:
        x = x0
        for _ in range(length):
            x = x * 1.0001 + 0.5
        x.sum().backward()

    return timeit(chain, reps=7) / (4 * length)


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


def measure_attention(threads: int, quick: bool, dtype: str = "fp32"):
    """SDPA forward and backward timings (``AttentionSample`` lists) over ``ATTENTION_SHAPES``;
    q, k, v laid out as the towers make them (a fused qkv projection viewed as (B, S, 3, H, hd)
    and permuted): CPU kernels differ by layout and dtype."""
    torch.set_num_threads(threads)
    forward, backward = [], []
    heads = 4
    for blocks in (64,) if quick else (64, 256):
        for s, hd, causal in ATTENTION_SHAPES:
            b = blocks // heads
            qkv = torch.randn(b, s, 3 * heads * hd, dtype=DTYPES[dtype], requires_grad=True)

            def run(qkv=qkv, b=b, s=s, hd=hd, causal=causal) -> torch.Tensor:
                q, k, v = qkv.view(b, s, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, S, hd)

            fwd = timeit(run)
            both = timeit(lambda run=run: run().sum().backward())
            flops = 4.0 * blocks * s * s * hd  # forward; backward twice that
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


def _comm_worker(rank: int, port: int, sizes: list[int], queue, backend: str = "gloo") -> None:
    """The trainer's collectives between 2 ranks over ``sizes`` (bytes of one rank's shard):
    gloo on CPU tensors, timed on the host; NCCL on this rank's GPU, timed with CUDA events
    (``trainer.probe_cuda.cuda_seconds``). Rank 0 puts (name, size, steps, bytes, s) rows."""
    import warnings

    import torch.distributed as dist

    warnings.filterwarnings("ignore", category=FutureWarning)  # *_tensor collective names
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = "cpu"
    seconds = lambda fn: timeit(fn, min_s=0.0, reps=9)  # noqa: E731  (every rank: same calls)
    if backend == "nccl":
        from trainer.probe_cuda import cuda_seconds

        torch.cuda.set_device(rank)
        device, seconds = "cuda", lambda fn: cuda_seconds(fn, reps=9)
    dist.init_process_group(backend, rank=rank, world_size=2)
    rows = []
    for size in sizes:
        n = size // 4
        shard, full = torch.randn(n, device=device), torch.empty(2 * n, device=device)
        buf, out = torch.randn(2 * n, device=device), torch.empty(n, device=device)
        recv = torch.empty(n, device=device)

        def p2p(shard=shard, recv=recv) -> None:
            peer = 1 - dist.get_rank()
            ops = [dist.P2POp(dist.isend, shard, peer), dist.P2POp(dist.irecv, recv, peer)]
            for w in dist.batch_isend_irecv(ops):
                w.wait()

        cases = {
            "all_gather": (1, size, lambda f=full, s=shard: dist.all_gather_into_tensor(f, s)),
            "reduce_scatter": (1, size, lambda o=out, b=buf: dist.reduce_scatter_tensor(o, b)),
            "all_reduce": (2, 2 * size, lambda b=buf: dist.all_reduce(b)),
            "p2p": (1, size, p2p),
        }
        for name, (steps, moved, fn) in cases.items():
            dist.barrier()
            rows.append((name, size, steps, moved, seconds(fn)))
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def _fsdp_worker(rank: int, port: int, world: int, units: int, reps: int, queue) -> None:
    """``units`` tiny FSDP2 units (Linear(64, 64)) forward + backward; rank 0 reports the
    median step time."""
    import warnings

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(FSDP_WIDTH, FSDP_WIDTH) for _ in range(units)])
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    x = torch.randn(8, FSDP_WIDTH)
    times = []
    for _ in range(reps + 3):  # every rank runs the same count: the collectives must match
        dist.barrier()
        t0 = time.perf_counter()
        model(x).sum().backward()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        queue.put(statistics.median(times[3:]))
    dist.barrier()
    dist.destroy_process_group()


FSDP_WIDTH = 64
FSDP_UNITS = 16


def measure_fsdp_unit_seconds(world: int, reps: int = 15) -> float:
    """Seconds per FSDP2 unit (forward + backward) of tiny units on ``world`` local ranks."""
    return _spawn(_fsdp_worker, world, (world, FSDP_UNITS, reps)) / FSDP_UNITS


def measure_collectives(quick: bool) -> list[tuple[str, int, int, int, float]]:
    sizes = [1 << 12, 1 << 16, 1 << 20, 1 << 22] + ([] if quick else [1 << 24])
    return _spawn(_comm_worker, 2, (sizes,))


def _spawn(target, world: int, args: tuple, kwargs: dict | None = None):
    """Run ``target(rank, port, *args, queue, **kwargs)`` on ``world`` spawned ranks; rank 0's
    answer."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(r, port, *args, queue), kwargs=kwargs or {})
        for r in range(world)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 120
    while True:  # a worker that dies must not leave us waiting
        try:
            rows = queue.get(timeout=1.0)
            break
        except Exception:  # queue.Empty
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise ConfigError(
                    "collectives", "the gloo workers failed; rerun with --no-comm"
                ) from None
    for p in procs:
        p.join(timeout=60)
    return rows


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


def probe(name: str, quick: bool, comm: bool) -> tuple[DeviceSpec, dict]:
    """Measure and fit; returns the device entry and a report of the fits."""
    host_threads = os.cpu_count() or 1
    threads_list = sorted({1, host_threads})
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    src = f"measured by python -m trainer.probe on {socket.gethostname()} ({cpu_model()}), {stamp}"
    report: dict = {"host_threads": host_threads, "load_before": os.getloadavg()[0]}
    curves, peaks = {}, {}
    for dtype in DTYPES:
        fit = fit_matmul_curve(measure_gemms(dtype, threads_list, quick), host_threads, src)
        curves[dtype], peaks[dtype] = fit.curve, fit.peak_flops
        report[f"gemm_{dtype}"] = {
            "peak_flops": fit.peak_flops,
            "flops_half": fit.curve.flops_half,
            "tile": fit.curve.tile_m,
            "rms_log_error": fit.rms_log_error,
            "median_abs_log_error": fit.median_abs_log_error,
        }
    bw_all = measure_bandwidth(host_threads)
    bw_one = measure_bandwidth(1)
    overhead = measure_op_overhead(host_threads)
    # other dtypes relative to fp32: elementwise bytes/s
    memory_scale = {
        dt: measure_bandwidth(host_threads, dtype=dt) / bw_all for dt in DTYPES if dt != "fp32"
    }
    # SDPA per dtype and direction: the fitted per-shape cost (what the planner uses), and the
    # median fraction of the curve (attention_fraction / attention_scale: fp32 forward, and the
    # others relative to it), kept for profiles and readers that predate the per-shape cost
    attention_costs, fractions = {}, {}
    for dt in DTYPES:
        fwd, bwd = measure_attention(host_threads, quick, dt)
        for key, samples in ((dt, fwd), (f"{dt}.backward", bwd)):
            cost, err = fit_attention_cost(samples, peaks[dt], curves[dt])
            attention_costs[key] = cost
            fractions[key] = attention_fractions(samples, peaks[dt], curves[dt])
            report[f"attention_{key}"] = cost.model_dump() | {"median_rel_error": err}
    attention = fractions["fp32"]
    attention_scale = {k: v / attention for k, v in fractions.items() if k != "fp32"}
    report |= {"memory_scale": memory_scale, "attention_scale": attention_scale}
    report |= {
        "bandwidth": bw_all,
        "thread_bandwidth": bw_one,
        "op_overhead_s": overhead,
        "attention_fraction": attention,
    }
    links, per_op, collective_overhead = {}, {}, 0.0
    if comm and host_threads >= 2:
        rows = measure_collectives(quick)
        samples = [CommSample(steps, moved, t) for _, _, steps, moved, t in rows]
        alpha, bandwidth, rms = fit_alpha_beta(samples)
        for op in ("all_gather", "reduce_scatter", "all_reduce", "p2p"):
            a, b, err = fit_alpha_beta(
                [CommSample(st, mv, t) for o, _, st, mv, t in rows if o == op]
            )
            per_op[op] = {"alpha_s": a, "bandwidth": b}
            report[f"collective_{op}"] = {"alpha_s": a, "bandwidth": b, "median_rel_error": err}
        # What a collective costs inside FSDP2 beyond its transfer: the same tiny units on two
        # ranks and on one; each unit issues 2 all-gathers (reshard) and 1 reduce-scatter.
        one, two = measure_fsdp_unit_seconds(1), measure_fsdp_unit_seconds(2)
        shard = (FSDP_WIDTH * FSDP_WIDTH + FSDP_WIDTH) * 4 / 2
        ag, rs = per_op["all_gather"], per_op["reduce_scatter"]
        transfer = 2 * (ag["alpha_s"] + shard / ag["bandwidth"])
        transfer += rs["alpha_s"] + shard / rs["bandwidth"]
        collective_overhead = max(0.0, (two - one - transfer) / 3)
        report["fsdp_unit_s"] = {"world_1": one, "world_2": two}
        report["collective_overhead_s"] = collective_overhead
        links["host"] = {
            "alpha_s": alpha,
            "bandwidth": bandwidth,
            "efficiency": 1.0,
            "n_half_bytes": 0.0,
        }
        report["collectives"] = {
            "alpha_s": alpha,
            "bandwidth": bandwidth,
            "rms_rel_error": rms,
            "samples": rows,
        }
    torch.set_num_threads(host_threads)
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
        origins={
            "matmul": "measured",
            "attention_fraction": "measured",
            "memory_efficiency": "measured",
            "op_overhead_s": "measured",
            "plain_op_overhead_s": "measured",
            "memory_scale": "measured",
            "attention_scale": "measured",
            "attention_costs": "measured",
            "unit_overhead_s": "assumed",
            "step_overhead_s": "assumed",
            "comm_overlap": "assumed",
            "data_s_per_sample": "assumed",
            "collectives": "measured" if per_op else "assumed",
            "collective_overhead_s": "measured" if per_op else "assumed",
        },
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="hardware file to write (YAML)")
    parser.add_argument(
        "--name", default="this-cpu", help="device name in the file (GPU: <catalog name>-probed)"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--no-comm", action="store_true", help="skip the collectives")
    parser.add_argument(
        "--cpu", action="store_true", help="measure the CPU even when a GPU is visible"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if not out.parent.is_dir():
            raise ConfigError("out", f"folder {out.parent} does not exist; create it first")
        t0 = time.perf_counter()
        if torch.cuda.is_available() and not args.cpu:
            from trainer.probe_cuda import probe_cuda

            name = None if args.name == "this-cpu" else args.name
            device, report = probe_cuda(name, args.quick, not args.no_comm)
        else:
            device, report = probe(args.name, args.quick, not args.no_comm)
        dump_hardware_file(out, devices=[device])
        # the raw measurements and fit errors next to the profile, for whoever doubts a number
        raw = out.with_suffix(".probe.json")
        atomic_write_text(raw, json.dumps(report, indent=1, default=str) + "\n")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if device.kind == "gpu":
        print(f"wrote {out} ({time.perf_counter() - t0:.0f} s): device {device.name}")
        for dtype in ("fp32", "bf16", "fp16"):
            g = report[f"gemm_{dtype}"]
            print(
                f"  {dtype}: GEMM asymptote {g['fitted_peak_flops'] / 1e12:.0f} TFLOP/s = "
                f"{g['peak_fraction']:.2f} of the datasheet, F_half {g['flops_half']:.3g}, "
                f"tile {g['tile']}, median fit error {g['median_abs_log_error']:.0%}"
            )
        print(
            f"  HBM {report['bandwidth'] / 1e12:.2f} TB/s ({report['memory_efficiency']:.2f}), "
            f"launch {report['launch_overhead_s'] * 1e6:.1f} us/kernel, attention "
            f"{report['attention']}"
        )
        return 0
    g = report["gemm_fp32"]
    print(
        f"wrote {out} ({time.perf_counter() - t0:.0f} s): device {device.name}, fp32 peak "
        f"{g['peak_flops'] / 1e9:.0f} GFLOP/s (median fit error {g['median_abs_log_error']:.0%}), "
        f"bandwidth {report['bandwidth'] / 1e9:.1f} GB/s, op overhead "
        f"{report['op_overhead_s'] * 1e6:.1f} us, attention fraction "
        f"{report['attention_fraction']:.2f}"
    )
    if "collectives" in report:
        c = report["collectives"]
        print(
            f"gloo, 2 ranks: alpha {c['alpha_s'] * 1e6:.0f} us, {c['bandwidth'] / 1e9:.2f} GB/s "
            f"(median error {c['rms_rel_error']:.0%}); per collective: "
            + ", ".join(
                f"{op} {report['collective_' + op]['alpha_s'] * 1e6:.0f} us + "
                f"{report['collective_' + op]['bandwidth'] / 1e9:.2f} GB/s"
                for op in ("all_gather", "reduce_scatter", "all_reduce", "p2p")
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
