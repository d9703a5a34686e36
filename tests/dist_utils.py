"""Run a function on W gloo CPU processes and collect what each rank returns.

Usage (from any test module)::

    from tests.dist_utils import run_distributed

    def _body(ctx, n):                 # module-level, so spawn can pickle it by name
        t = torch.full((n,), float(ctx.rank))
        dist.all_reduce(t)             # the default group is initialised (gloo)
        return t                       # any torch.save-able object

    results = run_distributed(_body, 2, 3)   # [rank 0's result, rank 1's result]

Each rank gets a ``DistContext`` (rank, world_size, mesh: a 1-D CPU ``DeviceMesh`` over all
ranks named "dp"). Processes are started with torch.multiprocessing "spawn"; the rendezvous is a
TCPStore that the parent opens on a free port (port 0, so the OS picks one and no other test can
steal it between picking and binding). Results come back through a queue as ``torch.save`` bytes
(no shared-memory handles outliving their process). An exception on any rank is re-raised in
the parent as ``RuntimeError`` carrying that rank's traceback; a rank that hangs is killed after
``timeout`` seconds. Every rank calls ``destroy_process_group`` before exiting.
"""

from __future__ import annotations

import io
import os
import queue
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

_HOST = "127.0.0.1"


@dataclass
class DistContext:
    """What a rank knows about its world."""

    rank: int
    world_size: int
    mesh: DeviceMesh


def _worker(rank, world_size, port, fn, args, results, threads):
    torch.set_num_threads(threads)  # W processes share the few cores of a CI runner
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        store = dist.TCPStore(_HOST, port, world_size, is_master=False, timeout=timedelta(60))
        dist.init_process_group(
            "gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=120)
        )
        try:
            mesh = init_device_mesh("cpu", (world_size,), mesh_dim_names=("dp",))
            out = fn(DistContext(rank, world_size, mesh), *args)
            buf = io.BytesIO()
            torch.save(out, buf)
            results.put((rank, True, buf.getvalue()))
        finally:
            dist.destroy_process_group()
    except BaseException:
        results.put((rank, False, traceback.format_exc()))


def run_distributed(
    fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0, threads: int = 1
) -> list[Any]:
    """Run ``fn(ctx, *args)`` on ``world_size`` gloo processes; return results in rank order.

    ``fn`` and ``args`` must be picklable (a module-level function, plain data or tensors).
    """
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    # The parent hosts the rendezvous store: binding port 0 picks a free port atomically.
    store = dist.TCPStore(_HOST, 0, world_size + 1, is_master=True, wait_for_workers=False)
    procs = [
        ctx.Process(
            target=_worker,
            args=(r, world_size, store.port, fn, args, results, threads),
            daemon=True,
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    collected: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(world_size):
            try:
                rank, ok, payload = results.get(timeout=timeout)
            except queue.Empty:
                missing = sorted(set(range(world_size)) - set(collected))
                raise RuntimeError(
                    f"ranks {missing} gave no result within {timeout:.0f} s (hang or crash)"
                ) from None
            if ok:
                collected[rank] = torch.load(io.BytesIO(payload), weights_only=False)
            else:
                errors.append(f"--- rank {rank} ---\n{payload}")
                break  # the other ranks are likely blocked on the failed one
    finally:
        for p in procs:
            p.join(timeout=5 if not errors else 1)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        del store
    if errors:
        raise RuntimeError("distributed run failed:\n" + "\n".join(errors))
    return [collected[r] for r in range(world_size)]
