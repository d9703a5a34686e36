"""Discrete-event (simpy) simulation of a training step, from a :class:`Workload` of durations.

Entry points: :func:`simulate` (the simpy timeline: events, per-step breakdown, p50/p95, Chrome
trace) and :func:`critical_path` (the analytic step time with no stragglers and no data stalls).
"""

from vlscale.sim.critical_path import CriticalPath, critical_path, critical_path_time
from vlscale.sim.engine import simulate
from vlscale.sim.result import BREAKDOWN_COLUMNS, SimResult
from vlscale.sim.stragglers import StragglerModel
from vlscale.sim.workload import (
    ClipGatherLoss,
    InputPipeline,
    SiglipGatherLoss,
    SiglipRingLoss,
    Unit,
    Workload,
    make_workload,
)

__all__ = [
    "BREAKDOWN_COLUMNS",
    "ClipGatherLoss",
    "CriticalPath",
    "InputPipeline",
    "SiglipGatherLoss",
    "SiglipRingLoss",
    "SimResult",
    "StragglerModel",
    "Unit",
    "Workload",
    "critical_path",
    "critical_path_time",
    "make_workload",
    "simulate",
]
