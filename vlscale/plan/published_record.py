"""The published record (``vlscale/plan/data/published_runs.yaml``): load, plan, fit, hold out.

Each entry is a published training run (its source, the figure as stated, and how derived
numbers were derived). This module turns an entry into a ``PlanConfig`` and plans its published
metric (``wall_time_h`` or ``samples_per_s``) at a given framework efficiency γ:

- ``solve_gamma``: the γ that reproduces one run (fixed-point iteration on the metric's ratio,
  which is close to proportional to γ when compute dominates; bisection would take ~14 plans);
- ``fit_groups``: γ per (device kind, stack) = the geometric mean of the γ solved from the
  group's ``calibration`` runs; leave-one-out: each calibration run predicted with the γ of the
  others in its group; ``sigma`` = RMS of the group's leave-one-out log residuals.

Checkpointing: an entry that states it is planned so; one that does not is planned "as a user
would": without, and with it only when the run does not fit otherwise. Plans are cached.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from vlscale.plan.config import PlanConfig, make_plan_config
from vlscale.specs.stacks import device_kind

DATA_FILE = Path(__file__).parent / "data" / "published_runs.yaml"
METRICS = ("wall_time_h", "samples_per_s")
SPLITS = ("calibration", "prediction", "not_plannable")
RUN_KEYS = ("model", "recipe", "device", "devices", "metric", "stack", "split")
_PLAN_KEYS = ("model", "recipe", "device", "devices", "global_batch", "samples", "sharding")
_OPTIONAL_PLAN_KEYS = (
    "context_length",
    "mask_ratio",
    "image_size",
    "devices_per_node",
    "lock_image",
    "lock_image_unlocked_groups",
    "lock_text",
    "image_embeddings",
)
MODELS = Path(__file__).resolve().parents[1] / "specs" / "data" / "published_models"
"""Models of published runs that are no presets: ``model: NAME`` names ``MODELS/NAME.yaml``."""


@dataclass(frozen=True, eq=False)  # hashed by identity: the plan cache's key
class RecordRun:
    id: str
    source: str
    source_title: str
    url: str
    where: str
    quote: str
    model: str
    recipe: str
    device: str
    devices: int
    metric: str
    stack: str
    split: str
    global_batch: int | None = None
    samples: int | None = None
    published: float | None = None
    precision: str | None = None
    checkpointing: bool | None = None
    sharding: str = "ddp"
    derived: str | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return device_kind(self.device)

    @property
    def group(self) -> tuple[str, str]:
        return (self.kind, self.stack)

    def config(self, checkpointing: bool = False) -> PlanConfig:
        data = {k: getattr(self, k) for k in _PLAN_KEYS}
        model_file = MODELS / f"{self.model}.yaml"
        if model_file.is_file():
            data["model"] = str(model_file)
        data |= {k: v for k, v in self.extra.items() if k in _OPTIONAL_PLAN_KEYS}
        if self.precision is not None:
            data["precision"] = self.precision
        ckpt = self.checkpointing if self.checkpointing is not None else checkpointing
        return make_plan_config(data, checkpointing=ckpt, stack=self.stack)


def _check(entry: dict, sources: dict) -> None:
    missing = [k for k in ("id", "source", "where", "quote", *RUN_KEYS) if k not in entry]
    if missing:
        raise ValueError(f"published run {entry.get('id', '?')}: missing {missing}")
    if entry["source"] not in sources:
        raise ValueError(f"published run {entry['id']}: unknown source {entry['source']}")
    if entry["split"] not in SPLITS or entry["metric"] not in METRICS:
        raise ValueError(f"published run {entry['id']}: bad split or metric")
    if entry["split"] == "not_plannable":
        if not entry.get("reason"):
            raise ValueError(f"published run {entry['id']}: not_plannable needs a reason")
    elif any(entry.get(k) is None for k in ("published", "samples", "global_batch")):
        raise ValueError(f"published run {entry['id']}: needs published, samples and global_batch")


@cache
def load_record(path: Path = DATA_FILE) -> tuple[RecordRun, ...]:
    """Every run of the data file, the source's ``defaults`` filled in, checked."""
    data = yaml.safe_load(Path(path).read_text())
    sources = data["sources"]
    runs, seen = [], set()
    for raw in data["runs"]:
        entry = dict(sources.get(raw.get("source"), {}).get("defaults", {})) | raw
        _check(entry, sources)
        if entry["id"] in seen:
            raise ValueError(f"published run {entry['id']}: duplicate id")
        seen.add(entry["id"])
        src = sources[entry["source"]]
        known = set(RecordRun.__dataclass_fields__) - {"source_title", "url", "extra"}
        runs.append(
            RecordRun(
                **{k: entry[k] for k in known if k in entry},
                source_title=src["title"],
                url=src["url"],
                extra={k: v for k, v in entry.items() if k not in known},
            )
        )
    return tuple(runs)


def sources_of(path: Path = DATA_FILE) -> dict[str, dict]:
    return yaml.safe_load(Path(path).read_text())["sources"]


@cache
def _plan_metric(run: RecordRun, gamma: float | None, checkpointing: bool) -> tuple[float, bool]:
    from vlscale.plan.planner import plan

    config = run.config(checkpointing)
    if gamma is not None:
        config = config.model_copy(update={"framework_efficiency": gamma})
    result = plan(config)
    value = result.wall_time_h if run.metric == "wall_time_h" else result.samples_per_s
    return float(value), bool(result.fits)


def predict(run: RecordRun, gamma: float | None = None) -> float:
    """The run's metric as planned with γ (None: its stack's stored γ); checkpointing as stated,
    else only when the run does not fit without it."""
    value, fits = _plan_metric(run, gamma, False)
    if not fits and run.checkpointing is None:
        value, _ = _plan_metric(run, gamma, True)
    return value


def relative_error(run: RecordRun, predicted: float) -> float:
    """(predicted − published) / published, signed."""
    return (predicted - run.published) / run.published


def solve_factor(
    metric_at: Callable[[float], float],
    target: float,
    *,
    time_like: bool,
    start: float = 0.4,
    iters: int = 8,
    tol: float = 1e-4,
) -> float:
    """The γ in (0, 1] with ``metric_at(γ) == target``, by fixed-point iteration on the ratio
    (module docstring): γ ← γ / (metric_at(γ) / target), the ratio inverted for a time
    (``time_like``: more γ, less time). Also used for trainer runs
    (``vlscale.calibrate.stack_profile``)."""
    gamma = start
    for _ in range(iters):
        ratio = metric_at(round(gamma, 6)) / target
        if time_like:
            ratio = 1.0 / ratio  # a slower plan (more hours) needs a larger γ
        new = min(1.0, max(1e-3, gamma / ratio))
        if abs(new - gamma) <= tol * gamma:
            return round(new, 6)
        gamma = new
    return round(gamma, 6)


def solve_gamma(run: RecordRun, start: float = 0.4, iters: int = 8, tol: float = 1e-4) -> float:
    """The γ in (0, 1] that reproduces ``run.published`` (module docstring)."""
    return solve_factor(
        lambda g: predict(run, g),
        run.published,
        time_like=run.metric == "wall_time_h",
        start=start,
        iters=iters,
        tol=tol,
    )


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def leave_one_out(
    solved: dict[str, float], metric_at: Callable[[str, float], float], target: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Each member predicted with the geometric mean of the others' solved γ: (that γ, the log
    residual log(metric_at(id, γ) / target[id])) per id; empty for fewer than two members."""
    loo_gamma, residual = {}, {}
    if len(solved) > 1:
        for rid in solved:
            loo_gamma[rid] = round(geomean([g for o, g in solved.items() if o != rid]), 6)
            residual[rid] = math.log(metric_at(rid, loo_gamma[rid]) / target[rid])
    return loo_gamma, residual


@dataclass(frozen=True)
class GroupFit:
    kind: str
    stack: str
    gamma: float
    runs: tuple[str, ...]
    solved: dict[str, float]
    loo_gamma: dict[str, float]
    loo_log_residual: dict[str, float]

    @property
    def sigma(self) -> float | None:
        """RMS of the leave-one-out log residuals (None with fewer than two runs)."""
        r = list(self.loo_log_residual.values())
        return math.sqrt(sum(x * x for x in r) / len(r)) if r else None


def fit_group(runs: list[RecordRun]) -> GroupFit:
    """γ of one (device kind, stack) group and its leave-one-out predictions."""
    solved = {r.id: solve_gamma(r) for r in runs}
    by_id = {r.id: r for r in runs}
    loo_gamma, residual = leave_one_out(
        solved, lambda rid, g: predict(by_id[rid], g), {r.id: r.published for r in runs}
    )
    kind, stack = runs[0].group
    return GroupFit(
        kind,
        stack,
        round(geomean(list(solved.values())), 6),
        tuple(solved),
        solved,
        loo_gamma,
        residual,
    )


def calibration_groups(record=None) -> dict[tuple[str, str], list[RecordRun]]:
    groups: dict[tuple[str, str], list[RecordRun]] = {}
    for run in record or load_record():
        if run.split == "calibration":
            groups.setdefault(run.group, []).append(run)
    return groups


@cache
def fit_groups() -> dict[tuple[str, str], GroupFit]:
    """Every (device kind, stack) group of the record's calibration runs, fitted."""
    return {g: fit_group(runs) for g, runs in calibration_groups().items()}
