"""The per-op table of a plan (``vlscale plan --ops``): why a step takes the time it takes.

Ops of one micro-step on one rank, grouped by what they are: the units' indices are folded
(``visual.blocks.*.mlp.fc1`` stands for that op in every image block), so a 24-block tower gives
one row per kind of op, with its launches, FLOPs, bytes, time and what bounds it (compute,
memory or per-launch overhead, by time).
"""

from __future__ import annotations

import re
from collections import defaultdict

from vlscale.costs.compute import OpTime

_INDEX = re.compile(r"\.(\d+)(?=\.|$)")
_BLOCK = re.compile(r"\.block\d+\.")


def op_pattern(name: str) -> str:
    """``text.blocks.3.attn.qkv.dx`` -> ``text.blocks.*.attn.qkv.dx`` (ring blocks likewise)."""
    return _BLOCK.sub(".block*.", _INDEX.sub(".*", name))


def op_rows(op_times: list[OpTime]) -> list[dict]:
    """Grouped rows, largest time first."""
    groups: dict[tuple[str, str], dict] = {}
    bound_time: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for t in op_times:
        key = (op_pattern(t.op.name), t.op.phase)
        row = groups.setdefault(
            key,
            {
                "op": key[0],
                "phase": key[1],
                "kind": t.op.kind,
                "launches": 0,
                "flops": 0.0,
                "bytes": 0.0,
                "compute_s": 0.0,
                "memory_s": 0.0,
                "overhead_s": 0.0,
                "time_s": 0.0,
            },
        )
        row["launches"] += t.op.kernels
        row["flops"] += t.op.flops
        row["bytes"] += t.op.bytes
        row["compute_s"] += t.compute_s
        row["memory_s"] += t.memory_s
        row["overhead_s"] += t.overhead_s
        row["time_s"] += t.time_s
        bound_time[key][t.bound] += t.time_s
    for key, row in groups.items():
        row["bound"] = max(bound_time[key].items(), key=lambda kv: kv[1])[0]
    return sorted(groups.values(), key=lambda r: -r["time_s"])


def bound_shares(op_times: list[OpTime]) -> dict[str, float]:
    """Fraction of op time per bound (compute / memory / overhead)."""
    total: dict[str, float] = defaultdict(float)
    for t in op_times:
        total[t.bound] += t.time_s
    s = sum(total.values()) or 1.0
    return {k: total.get(k, 0.0) / s for k in ("compute", "memory", "overhead")}
