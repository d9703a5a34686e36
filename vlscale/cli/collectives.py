"""``vlscale collectives``: what nccl-tests would print, predicted, to hold against a real run.

Sizes follow nccl-tests (doc/PERFORMANCE.md): SIZE is the buffer it reports as "size" — the
all-reduce buffer, the gathered output per rank of an all-gather, the input per rank of a
reduce-scatter (both p · shard). algbw = SIZE / time; busbw = algbw · 2(n−1)/n for all-reduce and
algbw · (n−1)/n for all-gather and reduce-scatter. Suffixes K, M, G, T (and KiB...) are powers of
1024 as in nccl-tests' ``-b 8M``; KB, MB, GB are powers of 1000.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from vlscale.cli.app import emit_json, handles_bad_input, print_table
from vlscale.cli.options import (
    HwOpt,
    JsonOpt,
    PerNodeOpt,
    ShapeOpt,
    SlicesOpt,
)
from vlscale.errors import ConfigError
from vlscale.specs.fields import MAX_BYTES

# required here (no embedded scenario), unlike the planner's --device / --devices
DeviceOpt = Annotated[str | None, typer.Option("--device", help="e.g. H100, TPUv5p (required)")]
DevicesOpt = Annotated[int | None, typer.Option("--devices", help="number of devices (required)")]
OPS = ("all_reduce", "all_gather", "reduce_scatter")
# nccl-tests' busbw factor per op (doc/PERFORMANCE.md)
BUS_FACTOR = {
    "all_reduce": lambda n: 2 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
}
DEFAULT_SIZES = [2**k for k in range(10, 34, 2)]  # 1 KiB .. 8 GiB, x4 (nccl-tests -f 4)
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_UNITS |= {f"{u}ib": v for u, v in _UNITS.items() if u not in ("", "b")}
_UNITS |= {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text: str) -> float:
    """'8M' -> 8 * 2**20, '1e9' -> 1e9, '2GiB' -> 2 * 2**30, '1GB' -> 1e9.

    Whole bytes only, from 1 to 2**60: '0.5' is refused like '0'."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if not match or match.group(2) not in _UNITS:
        raise ConfigError("bytes", f"'{text}' is not a size; write e.g. 8M, 1GiB, 1e9 or 1GB")
    try:
        value = float(match.group(1)) * _UNITS[match.group(2)]
    except ValueError:  # '1.2.3'
        raise ConfigError(
            "bytes", f"'{text}' is not a size; write e.g. 8M, 1GiB, 1e9 or 1GB"
        ) from None
    if not 1 <= value <= MAX_BYTES or not value.is_integer():
        raise ConfigError(
            "bytes",
            f"'{text}' must be a whole number of bytes from 1 to 2**60 (1 EiB), e.g. 8M or 1e9",
        )
    return value


def predict(op: str, size: float, group, algorithm: str = "auto") -> dict[str, Any]:
    """One nccl-tests row: the collective of ``size`` (nccl-tests' meaning) on ``group``;
    ``algorithm`` forces one as NCCL_ALGO does."""
    from vlscale.costs.collectives import all_gather, all_reduce, reduce_scatter

    n = group.size
    if op == "all_reduce":
        result = all_reduce(size, group, algorithm)
    else:
        gather = all_gather if op == "all_gather" else reduce_scatter
        result = gather(size / n, group, algorithm)
    algbw = size / result.time_s if result.time_s > 0 else 0.0
    return {
        "op": op,
        "bytes": size,
        "devices": n,
        "algorithm": result.algorithm,
        "time_s": result.time_s,
        "algorithm_bandwidth_Bps": algbw,
        "bus_bandwidth_Bps": algbw * BUS_FACTOR[op](n),
    }


@handles_bad_input
def collectives_cmd(
    device: DeviceOpt = None,
    devices: DevicesOpt = None,
    devices_per_node: PerNodeOpt = None,
    num_slices: SlicesOpt = None,
    slice_shape: ShapeOpt = None,
    hardware_file: HwOpt = None,
    op: Annotated[
        str | None,
        typer.Option("--op", help="all_reduce | all_gather | reduce_scatter (default: all three)"),
    ] = None,
    size: Annotated[
        str | None,
        typer.Option("--bytes", help="nccl-tests 'size', e.g. 1G (default: 1K..8G, x4)"),
    ] = None,
    as_json: JsonOpt = False,
):
    """Predicted time, algbw and busbw per collective and size, as nccl-tests prints them."""
    from vlscale.costs.topology import make_group
    from vlscale.specs.hardware import load_hardware_file, make_cluster

    if device is None or devices is None:
        raise ConfigError("device", "give --device and --devices, e.g. --device H100 --devices 16")
    if op is not None and op not in OPS:
        raise ConfigError("op", f"'{op}' is not one of {', '.join(OPS)}")
    sizes = [parse_size(size)] if size is not None else DEFAULT_SIZES
    extra = dict(load_hardware_file(hardware_file).devices) if hardware_file else None
    cluster = make_cluster(
        device,
        devices,
        devices_per_node=devices_per_node,
        slice_shape=slice_shape,
        num_slices=num_slices or 1,
        extra_devices=extra,
    )
    group = make_group(cluster)
    rows = [predict(o, s, group) for o in ([op] if op else OPS) for s in sizes]
    if as_json:
        emit_json(rows[0] if op is not None and size is not None else rows)
        return
    print_table(
        f"{cluster.name}: predicted collectives (nccl-tests sizes and bandwidths; GB = 1e9 B)",
        ["op", "size (B)", "algorithm", "time (us)", "algbw (GB/s)", "busbw (GB/s)"],
        [
            [
                r["op"],
                f"{r['bytes']:.0f}",
                r["algorithm"],
                f"{r['time_s'] * 1e6:,.1f}",
                f"{r['algorithm_bandwidth_Bps'] / 1e9:,.2f}",
                f"{r['bus_bandwidth_Bps'] / 1e9:,.2f}",
            ]
            for r in rows
        ],
    )
