"""Per-rank compute slowdown, and why two simulated ranks stand for W.

Model: in every step each rank r draws a slowdown s_r = exp(σ·Z), Z ~ N(0, 1) iid (lognormal,
median 1), and all its compute that step takes s_r times the nominal duration. Communication is
not rescaled, but a collective (or ring hop) starts only when its slowest member arrives.

Representative-rank reduction. All ranks run the same program and meet at the same collectives,
and every arrival time is a max-plus function of the rank's own scaled durations and of the shared
collective times, hence non-decreasing in s_r. So at every collective the last to arrive is the
rank with the largest s, and the other ranks never influence anyone. Simulating two ranks —
the one we report (s_0) and the slowest of the other W−1 (s_max) — therefore gives exactly the
timeline of a full W-rank simulation. s_max is drawn directly from its distribution by the order
statistic of the maximum: for U ~ U(0, 1), max of k iid normals = Φ⁻¹(U^(1/k)), so one uniform per
step replaces W−1 draws (David & Nagaraja, *Order Statistics*, 3rd ed., §2.1). Ring hops are
treated as synced across ranks too: a delay walks around the ring in W−1 hops, so over a whole
ring pass everyone waits for the slowest (conservative for a single hop).

Across steps. Ranks leave a step at different times (the optimizer runs at each rank's own
speed), so a step's last arrival depends on two consecutive draws of each rank. FSDP re-syncs at
the start of every step (the unit-0 all-gather waits for everyone), so the reduction stays exact
step after step. DDP does not: its forward has no collective, and a rank late from step k but fast
in step k+1 can tie with one that was early and slow; the virtual rank, slowest in every step at
once, then over-estimates. By monotonicity the reduction is always an upper bound on the full
simulation (the tests check: exact for one step and for FSDP, an upper bound for DDP).

The input pipeline is the same on every rank (simulated per simulated rank with the same decode
draws); with data stalls the virtual rank's queue history is also the slowest, again an upper
bound.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class StragglerModel(BaseModel):
    """Lognormal per-rank, per-step compute slowdown with median 1 and log-std ``sigma``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sigma: float = Field(default=0.05, ge=0.0, le=2.0)

    def draw(self, rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
        """iid slowdowns of shape ``size``."""
        return np.exp(self.sigma * rng.standard_normal(size))

    def draw_max(self, rng: np.random.Generator, k: int, steps: int) -> np.ndarray:
        """For each of ``steps`` steps, the largest of ``k`` iid slowdowns (shape (steps,)).

        Φ⁻¹(U^(1/k)) computed as −Φ⁻¹(1 − U^(1/k)) with 1 − U^(1/k) = −expm1(ln U / k), which
        keeps precision when U^(1/k) is within 1e-6 of one (k in the thousands).
        """
        from scipy.special import ndtri  # lazy: scipy costs ~0.2 s of import time

        if k < 1:
            raise ValueError("k must be >= 1")
        u = rng.random(steps)
        # guard u = 0 (probability ~2^-53): the max is then the smallest possible
        u = np.clip(u, np.finfo(float).tiny, 1.0)
        z = -ndtri(-np.expm1(np.log(u) / k))
        return np.exp(self.sigma * z)


def slowdown_matrix(
    model: StragglerModel | None,
    world_size: int,
    steps: int,
    rng: np.random.Generator,
    explicit_ranks: bool,
) -> np.ndarray:
    """Slowdowns of the simulated ranks, shape (simulated ranks, steps).

    No model: one rank at nominal speed (all ranks are alike). ``explicit_ranks`` or W = 1: all
    W ranks drawn. Otherwise the reduction above: row 0 the reported rank, row 1 the slowest of
    the other W−1.
    """
    if model is None:
        return np.ones((1, steps))
    if explicit_ranks or world_size == 1:
        return model.draw(rng, (world_size, steps))
    own = model.draw(rng, (steps,))
    others = model.draw_max(rng, world_size - 1, steps)
    return np.stack([own, others])


def reduce_slowdowns(full: np.ndarray) -> np.ndarray:
    """From a full (W, steps) matrix, the two rows the reduction simulates (rank 0, max of rest)."""
    if full.shape[0] == 1:
        return full
    return np.stack([full[0], full[1:].max(axis=0)])
