"""Where a sweep's points are planned: this process, a local process pool, or a Dask cluster.

Each point is independent (one ``plan()`` call), so the work is an ordered map. Points travel in
chunks: one task per point costs more in pickling and scheduling than a small plan takes
(~10-50 ms), while a few chunks per worker still balance load. Chunk size
``ceil(n / (4 · workers))``, capped at 64, gives every worker about four tasks.

- ``serial``: in this process (``workers == 1`` or fewer points than two chunks).
- ``processes``: ``concurrent.futures.ProcessPoolExecutor`` on ``os.cpu_count()`` workers by
  default; results are reordered by chunk index, so the rows do not depend on which worker
  finished first.
- ``dask``: ``dask.distributed.Client(address)``; needs the optional extra ``dask``
  (``pip install 'vlscale[dask]'``). Same chunks, same reordering.

The progress bar (rich) writes to stderr and advances per finished chunk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from vlscale.errors import ConfigError

MAX_CHUNK = 64
TASKS_PER_WORKER = 4
CONNECT_TIMEOUT = "10s"  # how long to wait for a Dask scheduler before saying it is not there


def chunk_size(n: int, workers: int) -> int:
    """Points per task: ceil(n / (TASKS_PER_WORKER · workers)), at least 1, at most MAX_CHUNK."""
    return max(1, min(MAX_CHUNK, math.ceil(n / (TASKS_PER_WORKER * max(1, workers)))))


def _chunks(items: Sequence[Any], size: int) -> list[list[Any]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _apply(fn: Callable[[Any], Any], chunk: list[Any]) -> list[Any]:
    """One task: ``fn`` over a chunk (module-level so that it pickles)."""
    return [fn(item) for item in chunk]


@contextmanager
def _progress_bar(total: int, enabled: bool, label: str) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; a rich bar on stderr when enabled, a no-op otherwise."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def map_points(
    fn: Callable[[Any], Any],
    points: Sequence[Any],
    *,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
) -> list[Any]:
    """``[fn(p) for p in points]``, on the backend chosen as the module docstring says."""
    if workers is not None and workers < 1:
        raise ConfigError("workers", f"{workers} is not a number of processes; give 1 or more")
    if scheduler is not None:
        return _map_dask(fn, points, scheduler, progress)
    n_workers = workers or os.cpu_count() or 1
    size = chunk_size(len(points), n_workers)
    if n_workers == 1 or len(points) < 2 * size:
        with _progress_bar(len(points), progress, "planning") as advance:
            out = []
            for p in points:
                out.append(fn(p))
                advance(1)
            return out
    return _map_processes(fn, points, n_workers, size, progress)


def _map_processes(fn, points, n_workers: int, size: int, progress: bool) -> list[Any]:
    from concurrent.futures import ProcessPoolExecutor, as_completed

    chunks = _chunks(points, size)
    results: list[list[Any] | None] = [None] * len(chunks)
    label = f"planning ({n_workers} processes)"
    with ProcessPoolExecutor(max_workers=min(n_workers, len(chunks))) as pool:
        # submit (which forks the workers) before the progress bar starts its refresh thread:
        # a fork while another thread holds a lock can leave the child stuck on that lock
        futures = {pool.submit(_apply, fn, chunk): i for i, chunk in enumerate(chunks)}
        with _progress_bar(len(points), progress, label) as advance:
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                advance(len(chunks[i]))
    return [row for chunk in results for row in chunk]  # type: ignore[union-attr]


def _map_dask(fn, points, address: str, progress: bool) -> list[Any]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError(
            "scheduler", "a Dask scheduler needs the 'dask' extra: pip install 'vlscale[dask]'"
        ) from None
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            "scheduler", f"cannot reach a Dask scheduler at '{address}' ({exc}); check the address"
        ) from None
    try:
        n_workers = max(1, sum(client.nthreads().values()))
        chunks = _chunks(points, chunk_size(len(points), n_workers))
        results: list[list[Any] | None] = [None] * len(chunks)
        label = f"planning (dask, {n_workers} threads)"
        with _progress_bar(len(points), progress, label) as advance:
            # pure=False: identical chunks (a grid may repeat a point) are still separate tasks
            futures = client.map(_apply, [fn] * len(chunks), chunks, pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            for future in as_completed(futures):
                i = index[future.key]
                results[i] = future.result()
                advance(len(chunks[i]))
        return [row for chunk in results for row in chunk]  # type: ignore[union-attr]
    finally:
        client.close()
