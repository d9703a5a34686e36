"""``Loader``: batches of (images (B, 3, H, W) float32, tokens (B, ctx) int64) from a source.

Pipeline: the source's records, in order -> decode + transform (inline, or on ``num_workers``
threads / spawned processes, at most ``prefetch`` batches ahead) -> results taken back IN
SUBMISSION ORDER -> corrupt ones skipped, counted and warned about -> ``batch_size`` good
samples stacked, captions tokenised in the calling thread. ``MAX_BAD_IN_A_ROW`` corrupt records
in a row, or more than ``MAX_BAD_FRACTION`` of them once ``FRACTION_AFTER`` records were read,
stop the loader with a ``ConfigError`` naming the first bad ones.

Because results are consumed in order, the batch sequence does not depend on the number or kind
of workers, and the resume point is simply the cursor after the last record that went into the
last returned batch: ``state_dict()`` saves it, ``load_state_dict()`` restarts the stream there
(records read ahead but not yet returned are read again). ``last_wait_s`` is how long the last
``next()`` blocked: the trainer's data time.

Process workers are started with "spawn" (forking a process that already runs torch threads
can deadlock), so the launching script needs the usual ``if __name__ == "__main__":`` guard;
threads suit Pillow decoding well (it releases the GIL) and start instantly.

Checkpointing note: the state is per rank (``rank`` is in it). torch.distributed.checkpoint
de-duplicates equal non-tensor keys across ranks, so store it under a per-rank key.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Literal

import torch

from trainer.data.stream import CorruptSample, CorruptSampleWarning, SampleSource
from trainer.data.transforms import ImageTransform
from vlscale.errors import ConfigError

WARN_FIRST = 10  # warn for each of the first corrupt samples, then at powers of two
# Bounds on unreadable data: a source whose records all fail (every CSV path missing, shards of
# random bytes) would otherwise be skipped through forever without a single batch.
MAX_BAD_IN_A_ROW = 256  # consecutive corrupt records
MAX_BAD_FRACTION = 0.5  # of all records read, judged once FRACTION_AFTER records were read
FRACTION_AFTER = 1024
NAMED_BAD = 3  # bad records named in the error


def decode_record(source: SampleSource, transform: Callable, record: Any):
    """(image tensor (3, H, W), caption) or the CorruptSample that explains why not."""
    try:
        image, caption = source.decode(record)
        return transform(image), caption
    except CorruptSample as exc:
        return exc


_WORKER: tuple[SampleSource, Callable] | None = None  # per worker process, set once


def _init_process_worker(source: SampleSource, transform: Callable) -> None:
    global _WORKER
    torch.set_num_threads(1)  # W decode processes must not each spin up all cores
    # Ctrl-C reaches the whole foreground process group: the rank stops gracefully
    # (trainer.signals) and closes this pool itself, so a worker must not die of it first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = (source, transform)


def _decode_in_process(record: Any):
    assert _WORKER is not None, "worker initialiser did not run"
    return decode_record(_WORKER[0], _WORKER[1], record)


def describe(record: Any) -> str:
    """Where a record comes from, for warnings: shard:key, file path or sample index."""
    if isinstance(record, dict):
        return f"{record.get('__shard__')}:{record.get('__key__')}"
    if isinstance(record, tuple) and len(record) > 1:
        return str(record[1])
    return f"sample {record}"


class Loader:
    """Iterator over batches of one rank's source; see the module docstring."""

    def __init__(
        self,
        source: SampleSource,
        tokenizer: Callable[[list[str]], torch.Tensor],
        image_size: int,
        batch_size: int,
        *,
        num_workers: int = 0,
        worker_type: Literal["thread", "process"] = "thread",
        prefetch: int = 2,
        transform: Callable | None = None,
        max_bad_in_a_row: int = MAX_BAD_IN_A_ROW,
        max_bad_fraction: float = MAX_BAD_FRACTION,
    ):
        if batch_size < 1:
            raise ConfigError("local_batch", f"must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ConfigError("num_workers", f"must be >= 0, got {num_workers}")
        if worker_type not in ("thread", "process"):
            raise ConfigError("worker_type", f"use 'thread' or 'process', got {worker_type!r}")
        self.source, self.tokenizer, self.batch_size = source, tokenizer, batch_size
        self.transform = transform or ImageTransform(image_size)
        self.num_workers, self.worker_type = num_workers, worker_type
        self.window = max(1, prefetch) * batch_size  # records decoded ahead
        self.max_bad_in_a_row, self.max_bad_fraction = max_bad_in_a_row, max_bad_fraction
        self.skipped = 0  # corrupt records skipped so far (kept across resume)
        self._bad_in_a_row = 0
        self._first_bad: list[str] = []  # "where: why" of the first bad records (for the error)
        self.samples = 0  # good samples returned so far
        self.last_wait_s = 0.0
        self._cursor = source.initial_cursor()
        self._stream: Iterator | None = None
        self._executor: Executor | None = None

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Loader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        if self._stream is None:
            self._stream = self._decoded(self._cursor)
        images, captions, cursor = [], [], self._cursor
        while len(images) < self.batch_size:
            record, result, cursor = next(self._stream)
            if isinstance(result, CorruptSample):
                self._report(record, result)
                continue
            self._bad_in_a_row = 0
            images.append(result[0])
            captions.append(result[1])
        batch = torch.stack(images), self.tokenizer(captions)  # (B, 3, H, W), (B, ctx)
        self._cursor = cursor
        self.samples += len(images)
        self.last_wait_s = time.perf_counter() - t0
        return batch

    def _decoded(self, cursor: Any) -> Iterator[tuple[Any, Any, Any]]:
        """(record, decoded-or-CorruptSample, cursor after it), in stream order."""
        records = self.source.records(cursor)
        if self.num_workers == 0:
            for record, after in records:
                yield record, decode_record(self.source, self.transform, record), after
            return
        pool = self._pool()
        pending: deque = deque()
        for record, after in records:
            if self.worker_type == "process":
                fut = pool.submit(_decode_in_process, record)
            else:
                fut = pool.submit(decode_record, self.source, self.transform, record)
            pending.append((record, fut, after))
            if len(pending) >= self.window:
                record0, fut0, after0 = pending.popleft()
                yield record0, fut0.result(), after0

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.worker_type == "thread":
                self._executor = ThreadPoolExecutor(self.num_workers, "decode")
            else:
                self._executor = ProcessPoolExecutor(
                    self.num_workers,
                    mp_context=multiprocessing.get_context("spawn"),  # fork + torch threads: unsafe
                    initializer=_init_process_worker,
                    initargs=(self.source, self.transform),
                )
        return self._executor

    def _report(self, record: Any, exc: CorruptSample) -> None:
        self.skipped += 1
        self._bad_in_a_row += 1
        n = self.skipped
        exc = " ".join(str(exc).split())  # one line (library messages may span several)
        bad = f"{describe(record)} ({exc})"
        if len(self._first_bad) < NAMED_BAD and bad not in self._first_bad:
            self._first_bad.append(bad)
        seen = n + self.samples
        if self._bad_in_a_row >= self.max_bad_in_a_row:
            raise self._too_many(f"{self._bad_in_a_row} unreadable samples in a row")
        if seen >= FRACTION_AFTER and n / seen > self.max_bad_fraction:
            raise self._too_many(
                f"{n} of {seen} samples unreadable (> {self.max_bad_fraction:.0%})"
            )
        if n <= WARN_FIRST or (n & (n - 1)) == 0:
            warnings.warn(
                f"skipped corrupt sample {describe(record)}: {exc} ({n} skipped so far)",
                CorruptSampleWarning,
                stacklevel=3,
            )

    def _too_many(self, what: str) -> ConfigError:
        return ConfigError(
            "data",
            f"{what}, first: {'; '.join(self._first_bad)}; check that the paths exist and the "
            "files are images / tar shards (CSV paths are relative to the CSV's folder)",
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "cursor": self._cursor,
            "skipped": self.skipped,
            "samples": self.samples,
            "rank": self.source.rank,
            "world_size": self.source.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.source.world_size or state["rank"] != self.source.rank:
            raise ConfigError(
                "world_size",
                f"data position was saved by rank {state['rank']} of {state['world_size']}, "
                f"this is rank {self.source.rank} of {self.source.world_size}; resume with the "
                "same number of ranks",
            )
        self._restart()
        c = state["cursor"]
        self._cursor = tuple(c) if isinstance(c, list) else c  # JSON turns tuples into lists
        self.skipped, self.samples = state["skipped"], state["samples"]

    def _restart(self) -> None:
        if self._stream is not None:
            self._stream.close()  # pending futures are dropped; their records are read again
            self._stream = None

    def close(self) -> None:
        self._restart()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def __del__(self):
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down the pool
            self.close()
