"""The trainer's collectives between 2 local ranks, timed: gloo on CPU tensors (host time, one
thread per rank) or NCCL on one GPU per rank (CUDA events); and the cost of a collective inside
FSDP2, from tiny ``fully_shard`` units on 1 and 2 ranks.

Each size is the bytes of one rank's shard; a row is (name, size, steps, bytes moved, seconds):
all-gather and reduce-scatter take 1 step of ``size`` bytes, all-reduce 2 of 2 · size, P2P one
exchange of ``size`` bytes each way.
"""

from __future__ import annotations

import os
import socket
import statistics
import time

import torch

from trainer.probe.assembly import CollectiveRow
from trainer.probe.timing import cuda_seconds, host_seconds
from vlscale.errors import ConfigError

FSDP_WIDTH = 64
FSDP_UNITS = 16


def measure_collectives(quick: bool, backend: str = "gloo") -> list[CollectiveRow]:
    """Rows of all-gather, reduce-scatter, all-reduce and P2P over a range of sizes."""
    if backend == "gloo":
        sizes = [1 << 12, 1 << 16, 1 << 20, 1 << 22] + ([] if quick else [1 << 24])
    else:
        sizes = [1 << 12, 1 << 16, 1 << 20, 1 << 24] + ([] if quick else [1 << 27])
    return _spawn(_comm_worker, 2, (sizes,), {"backend": backend})


def measure_fsdp_unit_seconds(world: int, reps: int = 15) -> float:
    """Seconds per FSDP2 unit (forward + backward) of tiny units on ``world`` local ranks."""
    return _spawn(_fsdp_worker, world, (world, FSDP_UNITS, reps)) / FSDP_UNITS


def _comm_worker(rank: int, port: int, sizes: list[int], queue, backend: str = "gloo") -> None:
    """One rank of ``measure_collectives``; rank 0 puts the rows on ``queue``."""
    import warnings

    import torch.distributed as dist

    warnings.filterwarnings("ignore", category=FutureWarning)  # *_tensor collective names
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = "cpu"
    seconds = lambda fn: host_seconds(fn, min_s=0.0, reps=9)  # noqa: E731  (every rank: same calls)
    if backend == "nccl":
        torch.cuda.set_device(rank)
        device, seconds = "cuda", lambda fn: cuda_seconds(fn, reps=9)
    dist.init_process_group(backend, rank=rank, world_size=2)
    rows = []
    for size in sizes:
        for name, (steps, moved, fn) in _collective_cases(dist, size, device).items():
            dist.barrier()
            rows.append((name, size, steps, moved, seconds(fn)))
    if rank == 0:
        queue.put(rows)
    dist.barrier()
    dist.destroy_process_group()


def _collective_cases(dist, size: int, device: str) -> dict:
    """name: (steps, bytes moved, call) for one shard of ``size`` bytes (fp32)."""
    n = size // 4
    shard, full = torch.randn(n, device=device), torch.empty(2 * n, device=device)
    buf, out = torch.randn(2 * n, device=device), torch.empty(n, device=device)
    recv = torch.empty(n, device=device)

    def p2p() -> None:
        peer = 1 - dist.get_rank()
        ops = [dist.P2POp(dist.isend, shard, peer), dist.P2POp(dist.irecv, recv, peer)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()

    return {
        "all_gather": (1, size, lambda: dist.all_gather_into_tensor(full, shard)),
        "reduce_scatter": (1, size, lambda: dist.reduce_scatter_tensor(out, buf)),
        "all_reduce": (2, 2 * size, lambda: dist.all_reduce(buf)),
        "p2p": (1, size, p2p),
    }


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


def _spawn(target, world: int, args: tuple, kwargs: dict | None = None):
    """Run ``target(rank, port, *args, queue, **kwargs)`` on ``world`` spawned ranks; rank 0's
    answer. A worker that dies, or no answer in 120 s, is a ConfigError."""
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
                backend = (kwargs or {}).get("backend", "gloo")
                raise ConfigError(
                    "collectives", f"the {backend} workers failed; rerun with --no-comm"
                ) from None
    for p in procs:
        p.join(timeout=60)
    return rows
