"""Input pipeline as simpy processes: decode workers feeding a bounded queue of batches.

Each worker takes the next batch ticket (until ``steps`` batches are made), decodes it for
``batch_decode_s`` × jitter, then ``put``s it into a ``simpy.Store`` of ``queue_depth`` slots,
blocking while the queue is full (back-pressure, as a DataLoader with a prefetch limit). The
training step ``get``s one batch per step; when the queue is empty the step waits: a data stall.
"""

from __future__ import annotations

import numpy as np
import simpy

from vlscale.sim.workload import InputPipeline


def decode_times(spec: InputPipeline, n: int, seed: int) -> np.ndarray:
    """Decode time of the i-th started batch; the same on every simulated rank (same seed)."""
    base = np.full(n, spec.batch_decode_s)
    if spec.jitter_sigma > 0:
        rng = np.random.default_rng(seed)
        base = base * np.exp(spec.jitter_sigma * rng.standard_normal(n))
    return base


def start_pipeline(
    env: simpy.Environment,
    spec: InputPipeline,
    steps: int,
    rank: int,
    seed: int,
    records: list,
) -> simpy.Store:
    """Start the workers of one rank; returns the queue its training loop reads from."""
    store = simpy.Store(env, capacity=spec.queue_depth)
    times = decode_times(spec, steps, seed)
    tickets = iter(range(steps))
    for w in range(spec.workers):
        env.process(_worker(env, store, w, tickets, times, rank, records))
    return store


def _worker(env, store, worker, tickets, times, rank, records):
    """Decode batches until no tickets are left; ``put`` blocks while the queue is full."""
    for i in tickets:
        t0 = env.now
        yield env.timeout(float(times[i]))
        records.append((rank, i, "input", "decode", f"worker {worker} batch {i}", t0, env.now))
        yield store.put(i)
