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

Results stream: :func:`iter_map` yields each chunk's results, in input order, as soon as it and
every chunk before it have finished, and reads the points lazily, with a bounded number of
chunks in flight (``TASKS_PER_WORKER`` per worker), so a long grid is never all in memory and its
first rows can be written while the rest are planned. The progress bar (rich) writes to stderr
and advances per finished chunk.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from vlscale.errors import ConfigError

MAX_CHUNK = 64
TASKS_PER_WORKER = 4
CONNECT_TIMEOUT = "10s"  # how long to wait for a Dask scheduler before saying it is not there


def chunk_size(n: int, workers: int) -> int:
    """Points per task: ceil(n / (TASKS_PER_WORKER · workers)), at least 1, at most MAX_CHUNK."""
    return max(1, min(MAX_CHUNK, math.ceil(n / (TASKS_PER_WORKER * max(1, workers)))))


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


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


def worker_count(workers: int | None, scheduler: str | None) -> int | None:
    """Local processes a map will use (None for a Dask cluster: its size is known on connect)."""
    if workers is not None and workers < 1:
        raise ConfigError("workers", f"{workers} is not a number of processes; give 1 or more")
    if scheduler is not None:
        _distributed()  # a missing extra is said before any work
        return None
    return workers or os.cpu_count() or 1


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ConfigError(
            "scheduler", "a Dask scheduler needs the 'dask' extra: pip install 'vlscale[dask]'"
        ) from None
    return distributed


def iter_map(
    fn: Callable[[Any], Any],
    points: Iterable[Any],
    total: int,
    *,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
) -> Iterator[list[Any]]:
    """``fn`` over the ``total`` points, yielded chunk by chunk in input order (see the module
    docstring for the backend); concatenated, the chunks are ``[fn(p) for p in points]``.

    Bad options and an unreachable Dask scheduler are ConfigErrors raised here, at the call;
    the points are read and planned only as the result is iterated."""
    n_workers = worker_count(workers, scheduler)
    if scheduler is not None:
        return _map_dask(fn, points, total, _connect(scheduler), progress)
    assert n_workers is not None
    size = chunk_size(total, n_workers)
    if n_workers == 1 or total < 2 * size:
        return _map_serial(fn, points, total, size, progress)
    return _map_processes(fn, points, total, n_workers, size, progress)


def _map_serial(fn, points, total: int, size: int, progress: bool) -> Iterator[list[Any]]:
    with _progress_bar(total, progress, "planning") as advance:
        for chunk in _chunks(points, size):
            out = []
            for p in chunk:
                out.append(fn(p))
                advance(1)
            yield out


def map_points(
    fn: Callable[[Any], Any],
    points: Sequence[Any],
    *,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
) -> list[Any]:
    """``[fn(p) for p in points]``, on the backend chosen as the module docstring says."""
    chunks = iter_map(
        fn, points, len(points), progress=progress, workers=workers, scheduler=scheduler
    )
    return [row for chunk in chunks for row in chunk]


class _Ordered:
    """Chunk results that arrive in any order, released in index order; bounds what is held."""

    def __init__(self, window: int):
        self.window = window
        self.results: dict[int, list[Any]] = {}
        self.next = 0

    def put(self, index: int, rows: list[Any]) -> None:
        self.results[index] = rows

    def refill(self, chunks: Iterator, pending: dict, submit: Callable[[list], Any]) -> None:
        """Submit the next chunks while fewer than ``window`` are in flight or held;
        ``submit(chunk)`` returns the key ``pending`` tracks it by."""
        while len(pending) + len(self.results) < self.window:
            item = next(chunks, None)
            if item is None:
                return
            i, chunk = item
            pending[submit(chunk)] = (i, len(chunk))

    def ready(self) -> Iterator[list[Any]]:
        while self.next in self.results:
            yield self.results.pop(self.next)
            self.next += 1


def _map_processes(fn, points, total: int, n_workers: int, size: int, progress: bool):
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    chunks = enumerate(_chunks(points, size))
    order = _Ordered(TASKS_PER_WORKER * n_workers)
    pending: dict[Any, tuple[int, int]] = {}  # future -> (chunk index, points in it)
    label = f"planning ({n_workers} processes)"
    with ProcessPoolExecutor(max_workers=min(n_workers, math.ceil(total / size))) as pool:

        def submit_more() -> None:
            order.refill(chunks, pending, lambda chunk: pool.submit(_apply, fn, chunk))

        try:
            # submit (which forks the workers) before the progress bar starts its refresh
            # thread: a fork while another thread holds a lock can leave the child stuck on it
            submit_more()
            with _progress_bar(total, progress, label) as advance:
                while pending:
                    finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                    for future in finished:
                        i, n = pending.pop(future)
                        order.put(i, future.result())
                        advance(n)
                    yield from order.ready()
                    submit_more()
        finally:
            for future in pending:  # the consumer stopped (an error): drop what is queued
                future.cancel()


def _connect(address: str):
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            "scheduler", f"cannot reach a Dask scheduler at '{address}' ({exc}); check the address"
        ) from None
    except (ValueError, TypeError) as exc:  # 'not-an-address': "missing port number"
        why = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(
            "scheduler",
            f"'{address}' is not a Dask scheduler address ({why}); write e.g. tcp://10.0.0.1:8786",
        ) from None


def _map_dask(fn, points, total: int, client, progress: bool):
    from distributed import as_completed

    try:
        n_workers = max(1, sum(client.nthreads().values()))
        chunks = enumerate(_chunks(points, chunk_size(total, n_workers)))
        order = _Ordered(TASKS_PER_WORKER * n_workers)
        pending: dict[str, tuple[int, int]] = {}  # future key -> (chunk index, points in it)
        running = as_completed()

        def submit(chunk: list) -> str:
            # pure=False: identical chunks (a grid may repeat a point) are separate tasks
            future = client.submit(_apply, fn, chunk, pure=False)
            running.add(future)
            return future.key

        def submit_more() -> None:
            order.refill(chunks, pending, submit)

        submit_more()
        label = f"planning (dask, {n_workers} threads)"
        with _progress_bar(total, progress, label) as advance:
            for future in running:
                i, n = pending.pop(future.key)
                order.put(i, future.result())
                advance(n)
                yield from order.ready()
                submit_more()
    finally:
        client.close()
