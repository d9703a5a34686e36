"""What the CPU and CUDA probes assemble alike: the source line of every measured number, the
``origins`` of a compute profile, and the α–β fits of the collective timings.

Collectives are fitted to T = steps · α + bytes / B (``vlscale.calibrate.probe_fits``), once
over every collective together (the link) and once per collective (the profile's per-op terms).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from vlscale.calibrate.probe_fits import CommSample, fit_alpha_beta

COLLECTIVES = ("all_gather", "reduce_scatter", "all_reduce", "p2p")

# a collective row: (name, bytes of one rank's shard, steps, bytes moved, seconds)
CollectiveRow = tuple[str, int, int, int, float]


def probe_source(machine: str) -> str:
    """``measured by python -m trainer.probe on HOST (MACHINE), DATE``."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"measured by python -m trainer.probe on {socket.gethostname()} ({machine}), {stamp}"


def origins(measured: Sequence[str], assumed: Sequence[str] = ()) -> dict[str, str]:
    """A compute profile's ``origins``: each field named and where its value came from."""
    return {f: "measured" for f in measured} | {f: "assumed" for f in assumed}


def fit_link(rows: list[CollectiveRow]) -> tuple[float, float, float]:
    """(α s, bandwidth bytes/s, error) of every collective row together."""
    return fit_alpha_beta([CommSample(steps, moved, t) for *_, steps, moved, t in rows])


def fit_per_collective(rows: list[CollectiveRow]) -> dict[str, tuple[float, float, float]]:
    """(α s, bandwidth bytes/s, error) of each collective of ``COLLECTIVES`` on its own."""
    return {op: fit_link([r for r in rows if r[0] == op]) for op in COLLECTIVES}
