"""Sweeps: the cartesian product of a grid of PlanConfig keys, planned one by one.

Grid file (YAML or TOML)::

    base: {model: ViT-L-14, device: H100, samples: 12.8e9}
    grid:
      devices: [64, 128, 256]
      recipe: [clip, siglip]
      loss_impl: [gather, ring]

Points are planned on all local cores by default, or on a Dask cluster (``scheduler``); see
``vlscale.plan.backends``. Points that fail validation (e.g. ``clip`` with ``ring``, a batch that
does not divide the devices, a model that does not fit) become rows with an ``error`` message
instead of stopping the sweep; every other row has the ``vlscale plan --json`` keys (nested dicts
flattened with '.').

Big grids: :class:`Grid` is lazy (its size is the product of the list lengths; points are made
as they are planned), a grid over ``max_points`` (default :data:`MAX_POINTS`) is refused before
any work, the first points are timed to say the size and an estimated time up front, and
:func:`write_sweep` streams rows, in grid order, into a temp file next to the output that is
renamed onto it at the end (CSV; Parquet is written at the end from the rows). SIGTERM removes
the temp file and exits with status 143; a full disk is one line naming the file.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlscale.errors import ConfigError, closest_key
from vlscale.plan.config import parse_count, read_config_file

MAX_POINTS = 1_000_000  # about a day on 16 cores at ~20 ms a point; --max-points raises it
HEAD_POINTS = 3  # planned first, in this process, to time a point before the rest start


@dataclass(frozen=True)
class Grid(Sequence):
    """The points of a grid file, made on demand: ``base`` updated by one combination of the
    ``values`` of ``keys`` (the last key varies fastest), then by ``overrides``."""

    base: dict[str, Any]
    keys: tuple[str, ...]
    values: tuple[tuple[Any, ...], ...]
    overrides: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return math.prod(len(v) for v in self.values)

    def _point(self, combo: Sequence[Any]) -> dict[str, Any]:
        return self.base | dict(zip(self.keys, combo, strict=True)) | self.overrides

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self._point(combo) for combo in itertools.product(*self.values))

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        combo = []
        for values in reversed(self.values):  # mixed radix, last key fastest
            index, digit = divmod(index, len(values))
            combo.append(values[digit])
        return self._point(combo[::-1])

    def values_of(self, key: str) -> set[Any]:
        """Every value ``key`` takes in some point (``None``: left to the planner's default)."""
        if key in self.overrides:
            return {self.overrides[key]}
        if key in self.keys:
            return set(self.values[self.keys.index(key)])
        return {self.base.get(key)}

    def with_overrides(self, overrides: dict[str, Any]) -> Grid:
        """The same grid with ``overrides`` set in every point (over the grid's own values)."""
        return Grid(self.base, self.keys, self.values, self.overrides | overrides)


def expand_grid(path: str | Path) -> Grid:
    """The grid file's points (a lazy :class:`Grid`; nothing is planned or materialised)."""
    data = read_config_file(path, field="grid")
    if not data:
        raise ConfigError("grid", f"{path} is empty; give 'base' (a plan) and 'grid' (lists)")
    unknown = sorted(set(data) - {"base", "grid"}, key=str)
    if unknown:
        best = closest_key(unknown[0], ("base", "grid"))
        hint = f"did you mean '{best}'? " if best else ""
        raise ConfigError(
            "grid", f"unknown top-level key '{unknown[0]}'; {hint}use 'base' and 'grid'"
        )
    base = data.get("base") or {}
    grid = data.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ConfigError("grid", "'base' and 'grid' must be mappings")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}", "must be a non-empty list of values")
    return Grid(dict(base), tuple(grid), tuple(tuple(v) for v in grid.values()))


def check_size(n: int, max_points: int = MAX_POINTS) -> None:
    """Refuse a grid of more than ``max_points`` points before any work (ConfigError)."""
    if n > max_points:
        raise ConfigError(
            "max_points",
            f"the grid has {n:,} points, more than the limit of {max_points:,}; shrink the grid "
            f"(or split it into several sweeps), or raise the limit with --max-points {n}",
        )


def _normalise(point: dict[str, Any]) -> dict[str, Any]:
    out = dict(point)
    if isinstance(out.get("samples"), float | str):
        out["samples"] = parse_count("samples", str(out["samples"]))
    return out


def plan_point(point: dict[str, Any]) -> dict[str, Any]:
    """One row: the point's keys, then the plan's JSON (flattened) or an ``error``."""
    from vlscale.plan.config import make_plan_config
    from vlscale.plan.planner import plan

    row: dict[str, Any] = {f"in.{k}": v for k, v in point.items()}
    try:
        result = plan(make_plan_config(_normalise(point))).to_json()
    except ConfigError as exc:
        return row | {"error": str(exc)}
    for key, value in result.items():
        if key == "phases":
            row |= _phase_columns(value)
        elif key == "siglip2":
            row |= {f"siglip2.{k}": _cell(v) for k, v in value.items()}
        elif isinstance(value, dict):
            row |= {f"{key}.{k}": v for k, v in value.items()}
        elif isinstance(value, list):
            row[key] = "; ".join(map(str, value))
        else:
            row[key] = value
    return row | {"error": None}


# A SigLIP 2 phase's columns: ``phase.<name>.<field>``, one group per phase the recipe can have
# (vlscale.specs.siglip2.PHASE_NAMES); a NaFlex phase's per-length plans stay in `vlscale plan`.
PHASE_FIELDS = (
    "start_fraction",
    "end_fraction",
    "objectives",
    "step_time_s",
    "samples_per_step",
    "samples_per_s",
    "memory_per_device_bytes",
    "model_flops_per_step",
    "fits",
    "wall_time_h",
    "cost_usd",
)


def siglip2_columns() -> list[str]:
    """The columns only a ``siglip2`` plan fills, in the order :func:`plan_point` writes them."""
    from vlscale.specs.siglip2 import PHASE_NAMES, Siglip2Spec

    spec = [f"siglip2.{k}" for k in Siglip2Spec.model_fields]
    phases = [f"phase.{name}.{f}" for name in PHASE_NAMES for f in PHASE_FIELDS]
    return [*spec, *phases, "binding_phase"]


def _phase_columns(phases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        f"phase.{phase['name']}.{f}": "+".join(phase[f]) if f == "objectives" else phase[f]
        for phase in phases
        for f in PHASE_FIELDS
    }


def _cell(value: Any) -> Any:
    """A nested spec (a SigLIP 2 objective's settings) as JSON, so a CSV reader can parse it."""
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else value


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def iter_rows(
    points: Sequence[dict[str, Any]],
    *,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Rows of ``points`` in grid order, chunk by chunk as they finish.

    The first :data:`HEAD_POINTS` are planned here and timed; ``notify`` gets one line with
    the size and the estimated time before the rest go to the backend."""
    from vlscale.plan.backends import iter_map, worker_count

    n = len(points)
    n_workers = worker_count(workers, scheduler)
    it = iter(points)
    rest = n - min(n, HEAD_POINTS)
    # set up the backend first (a bad option or an unreachable scheduler fails before any work);
    # it reads the points after the head, lazily, once iterated
    chunks = (
        iter_map(plan_point, it, rest, progress=progress, workers=workers, scheduler=scheduler)
        if rest
        else iter(())
    )
    head_rows, times = [], []
    for point in itertools.islice(it, HEAD_POINTS):
        start = time.perf_counter()
        head_rows.append(plan_point(point))
        times.append(time.perf_counter() - start)
    # a small grid whose every point failed ends in one error line, with no note before it
    failed_whole = not rest and all(row.get("error") for row in head_rows)
    if notify is not None and not failed_whole:
        # the first point pays for imports and caches: time the others when there are some
        per_point = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else sum(times)
        where = f"on {n_workers} processes" if n_workers else "of work for the Dask workers"
        est = (
            f"; estimated {_duration(per_point * rest / (n_workers or 1))} more {where} "
            f"({per_point * 1e3:.0f} ms a point, from the first {len(times)})"
            if rest
            else ""
        )
        notify(f"sweep: {n:,} points{est}")
    if head_rows:
        yield head_rows
    yield from chunks


class _Columns:
    """The column order of a sweep's rows: the point's keys (``in.*``), the plan's keys (from
    the first planned row), any ``optional`` column that row lacks, then ``error``. Rows before
    the first planned one are held. ``optional`` are the columns only some plans fill (SigLIP
    2's phases, when the grid plans it beside another recipe); other rows leave them empty."""

    def __init__(self, optional: Sequence[str] = ()) -> None:
        self.names: list[str] | None = None
        self.optional = list(optional)
        self.held: list[dict[str, Any]] = []
        self.extra_warned = False

    def add(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows that can be written now (in order)."""
        if self.names is None:
            self.held += rows
            planned = next((r for r in self.held if r.get("error") is None), None)
            if planned is None:
                return []
            inputs = [k for k in self.held[0] if k.startswith("in.")]
            inputs += [k for k in planned if k.startswith("in.") and k not in inputs]
            self.names = inputs + [k for k in planned if not k.startswith("in.") and k != "error"]
            self.names += [k for k in self.optional if k not in self.names]
            self.names.append("error")
            rows, self.held = self.held, []
        return rows

    def conform(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``rows`` with only the known columns. Every plan of a grid has the same keys, but
        for the optional ones, so nothing is dropped in practice; if a row ever has more, say so
        once rather than fail at the end."""
        names = set(self.names or ())
        extra = {k for row in rows for k in row if k not in names}
        if extra and not self.extra_warned:
            self.extra_warned = True
            print(f"warning: sweep: columns {sorted(extra)} are not written", file=sys.stderr)
        return [{k: v for k, v in row.items() if k in names} for row in rows] if extra else rows

    def finish(self) -> list[dict[str, Any]]:
        """What is still held (only error rows: nothing was planned)."""
        if self.names is None:
            first = self.held[0] if self.held else {}
            self.names = [k for k in first if k.startswith("in.")] + ["error"]
        rows, self.held = self.held, []
        return rows


@dataclass
class SweepSummary:
    points: int
    planned: int
    first_error: str | None


def write_sweep(
    points: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    progress: bool = True,
    workers: int | None = None,
    scheduler: str | None = None,
    notify: Callable[[str], None] | None = None,
    on_chunk: Callable[[Path, int], None] | None = None,
) -> SweepSummary:
    """Plan ``points`` and write one row each to ``out`` (.csv streamed, or .parquet).

    Rows go to a temp file next to ``out`` as their chunk finishes (``on_chunk(temp, rows so
    far)`` after each) and the file is renamed onto ``out`` at the end; when no point could be
    planned, nothing is written (ConfigError on ``grid``) and ``out`` is untouched."""
    from vlscale.paths import atomic_path

    out = Path(out)
    parquet = out.suffix.lower() == ".parquet"
    if parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(
                "out", "writing .parquet needs pyarrow (pip install pyarrow); or use .csv"
            ) from None
    columns = _Columns(siglip2_columns() if _may_plan(points, "siglip2") else ())
    count = planned = 0
    first_error: str | None = None
    kept: list[dict[str, Any]] = []  # Parquet only: written at the end
    with _stop_on_sigterm(out), atomic_path(out, field="out") as tmp, ExitStack() as files:
        fh = None if parquet else files.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
        writer: csv.DictWriter | None = None

        def emit(rows: list[dict[str, Any]]) -> None:
            nonlocal writer
            if fh is None:
                kept.extend(rows)
                return
            if writer is None and rows:
                writer = csv.DictWriter(fh, columns.names, lineterminator="\n")
                writer.writeheader()
            if writer is not None:
                writer.writerows(columns.conform(rows))
                fh.flush()

        chunks = iter_rows(
            points, progress=progress, workers=workers, scheduler=scheduler, notify=notify
        )
        for rows in chunks:
            count += len(rows)
            for row in rows:
                if row.get("error") is None:
                    planned += 1
                elif first_error is None:
                    first_error = row["error"]
            emit(columns.add(rows))
            if on_chunk is not None:
                on_chunk(tmp, count)
        if planned == 0:  # a typo'd key or an impossible grid, not a result: write nothing
            first = first_error or "the grid has no points"
            raise ConfigError("grid", f"no configuration could be planned; the first says: {first}")
        emit(columns.finish())
        if fh is None:
            import pandas as pd

            pd.DataFrame(kept, columns=columns.names).to_parquet(tmp, index=False)
    return SweepSummary(count, planned, first_error)


def _may_plan(points: Sequence[dict[str, Any]], recipe: str) -> bool:
    """Whether some point plans ``recipe`` (a Grid answers without making its points)."""
    if isinstance(points, Grid):
        return recipe in points.values_of("recipe")
    return any(p.get("recipe") == recipe for p in points)


class SweepStopped(SystemExit):
    """SIGTERM during a sweep: raised in the main thread, so that the temp file is removed on the
    way out (``vlscale.paths.atomic_path``); exits with 128 + 15 as a killed process would."""


@contextmanager
def _stop_on_sigterm(out: Path) -> Iterator[None]:
    """While the block runs, SIGTERM (what Slurm and Kubernetes send before they kill) stops the
    sweep cleanly: the temp file is removed, ``out`` is untouched, one line says so."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set in the main thread
        return

    def stop(signum, frame):
        raise SweepStopped(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except SweepStopped:
        print(f"sweep: stopped by SIGTERM; '{out}' not written", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_sweep(
    points: Sequence[dict[str, Any]],
    progress: bool = True,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
):
    """Plan every point and return a pandas DataFrame, one row per point in grid order.

    Backends (``vlscale.plan.backends``): ``scheduler`` given -> a Dask cluster at that address;
    otherwise a process pool of ``workers`` (default: every local core), or in this process when
    ``workers == 1`` or there are too few points to pay for a pool. The rows are the same
    whatever the backend: each point is planned by ``plan_point`` alone, and results are put
    back in grid order. The progress bar goes to stderr (stdout stays for the summary). The
    columns are in the order :func:`write_sweep` writes them.
    """
    import pandas as pd

    columns = _Columns()
    rows: list[dict[str, Any]] = []
    for chunk in iter_rows(points, progress=progress, workers=workers, scheduler=scheduler):
        rows += columns.add(chunk)
    rows += columns.finish()
    return pd.DataFrame(rows, columns=columns.names)
