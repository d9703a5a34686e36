"""Run-record schema: what the trainer writes and what ``vlscale calibrate`` and
``vlscale validate`` read back (:func:`read_run`, through ``vlscale.calibrate.runs``).

A run file is JSON Lines. The first line is a :class:`RunHeader`; every later line is a
:class:`StepRecord`, an :class:`EvalRecord`, a :class:`CheckpointRecord`, a
:class:`ResumeRecord` or a :class:`ReferenceRecord`, told apart by ``kind``.
Lines are appended whole and flushed one at a time by rank 0, so a crashed run leaves a valid
prefix (a torn last line is reported by :func:`read_run`, never silently dropped).

Definitions (the trainer measures exactly these):

- ``step_time_s``: wall time of one optimizer step on rank 0, from asking the loader for the first
  micro-batch to the end of the optimizer step and logit-scale clamp, with a device synchronise
  on CUDA. It includes ``data_time_s`` and excludes evaluation, checkpointing and logging.
- ``data_time_s``: the part of the step spent waiting for batches (and copying them to the device).
- ``forward_s`` / ``loss_s`` / ``backward_s`` / ``optimizer_s``: only with phase timing on (each
  phase ends with a device synchronise, which itself slows the step slightly).
- ``samples_per_s`` = global_batch / step_time_s.
- ``mfu`` = flops_per_sample · global_batch / (step_time_s · world_size · peak_flops_per_device),
  with flops_per_sample the model FLOPs of ``vlscale.costs.flops.model_flops_per_sample`` (towers
  forward + backward at the step's mask ratio plus the loss matmuls; no recompute), the same
  numerator as ``vlscale plan``; null when no peak is known.
- ``peak_memory_bytes``: see ``RunHeader.memory_metric``; null when nothing honest is available.
- ``reference``: the fixed reference kernel's time (``trainer.probe.reference``) just before
  and just after the run, appended by the calibration campaign; a run's speed index is their
  mean over the profile's reference time (``vlscale.calibrate.noise``).
- ``warmup``: the first steps (compilation, allocator growth, caches) are marked, not dropped.

This module is torch-free: the trainer writes with it and ``vlscale.calibrate`` reads with it
(``vlscale plan`` itself never reads runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from vlscale.errors import ConfigError, from_validation_error
from vlscale.specs.fields import MaskRatio
from vlscale.specs.layout import RunLayout
from vlscale.specs.machine import MachineIdentity, ReferenceTime
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import Precision, RecipeSpec

SCHEMA_VERSION = 1

MemoryMetric = Literal["cuda_max_memory_allocated", "cpu_max_rss_delta", "none"]
"""What ``peak_memory_bytes`` means for a run:

- ``cuda_max_memory_allocated``: ``torch.cuda.max_memory_allocated`` of rank 0 over the step
  (the peak is reset before each step), i.e. tensors only, not the caching allocator's reserve.
- ``cpu_max_rss_delta``: growth of rank 0's process peak resident set size (``ru_maxrss``) since
  the header was written. It is a running maximum over the whole run, not per step, and includes
  everything the process holds (allocator caches, libraries loaded after start).
- ``none``: not measured; ``peak_memory_bytes`` is null.
"""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunHeader(_Record):
    """First line of a run file: everything needed to reproduce or model the run."""

    kind: Literal["header"] = "header"
    schema_version: int = SCHEMA_VERSION
    start_time: str = Field(description="ISO 8601, UTC")
    host: str
    torch_version: str
    backend: Literal["gloo", "nccl"]
    device_type: Literal["cpu", "cuda"]
    device_name: str
    world_size: int = Field(gt=0)
    dtype: Precision
    model: ModelSpec
    recipe: RecipeSpec
    global_batch: int = Field(gt=0)
    local_batch: int = Field(gt=0, description="per rank per micro-step")
    grad_accum: int = Field(gt=0)
    sharding: Literal["fsdp", "ddp", "hsdp"]
    layout: RunLayout | None = Field(
        default=None,
        description="the run layout as it ran (vlscale.specs.layout); None: a trainer before it, "
        "whose layout is read from the flat fields below",
    )
    wrapped: bool | None = Field(
        default=None,
        description="FSDP2 / replicate applied (False: one fp32 rank runs the plain module, "
        "RunLayout.wrapped); None: a trainer before that rule, always wrapped",
    )
    activation_checkpointing: bool
    peak_flops_per_device: float | None = Field(default=None, ge=0)
    peak_flops_source: Literal["option", "lookup", "measured", "none"] = "none"
    memory_metric: MemoryMetric = "none"
    device_key: str | None = Field(
        default=None, description="hardware-catalog name of the device (None: not in it, e.g. CPU)"
    )
    devices_per_node: int | None = Field(default=None, gt=0, description="ranks per host")
    config: dict[str, Any] = Field(description="the full resolved trainer configuration")
    # run identity (trainer.identity); defaults keep records of older trainers readable
    run_id: str | None = Field(default=None, description="random id, kept by every resume")
    config_hash: str | None = Field(default=None, description="SHA-256 of the identity fields")
    seed: int | None = None
    machine: MachineIdentity | None = Field(
        default=None, description="the host's CPU (and GPU) identity; None: an older trainer"
    )


class StepRecord(_Record):
    """One optimizer step (all micro-steps of gradient accumulation together)."""

    kind: Literal["step"] = "step"
    step: int = Field(ge=1)
    samples_seen: int = Field(ge=0)
    warmup: bool
    mask_ratio: MaskRatio
    step_time_s: float = Field(gt=0)
    data_time_s: float = Field(ge=0)
    forward_s: float | None = None
    loss_s: float | None = None
    backward_s: float | None = None
    optimizer_s: float | None = None
    loss: float
    grad_norm: float | None = None
    lr: float
    logit_scale: float
    logit_bias: float
    peak_memory_bytes: int | None = None
    samples_per_s: float = Field(gt=0)
    flops_per_sample: float = Field(ge=0)
    mfu: float | None = None
    # --skip-nonfinite (trainer.step); defaults keep records of older trainers readable
    skipped_nonfinite: bool = Field(default=False, description="not applied: inf/NaN")
    nonfinite_skips: int = Field(default=0, ge=0, description="steps skipped so far")
    # recipe siglip2: the phase of Siglip2Spec.phases() the step ran in; None for the others
    # and for records of older trainers, so step time and memory compare per phase
    phase: str | None = None


class EvalRecord(_Record):
    """Evaluation after ``step``; its time is not part of any step time."""

    kind: Literal["eval"] = "eval"
    step: int = Field(ge=0)
    time_s: float = Field(ge=0)
    metrics: dict[str, float]


class CheckpointRecord(_Record):
    """A checkpoint written after ``step``; its time is not part of any step time."""

    kind: Literal["checkpoint"] = "checkpoint"
    step: int = Field(ge=0)
    time_s: float = Field(ge=0)
    path: str


class ResumeRecord(_Record):
    """The run resumed from the checkpoint at ``path`` (written after ``step``); ``passed_over``
    lists newer checkpoints that failed verification ("step_N: why")."""

    kind: Literal["resume"] = "resume"
    step: int = Field(ge=0)
    path: str
    passed_over: list[str] = []


class ReferenceRecord(_Record):
    """The reference kernel timed on the host right ``before`` or ``after`` the run (by the
    calibration campaign, outside the trainer's processes); not part of any step."""

    kind: Literal["reference"] = "reference"
    when: Literal["before", "after"]
    time: ReferenceTime


BodyRecord = Annotated[
    StepRecord | EvalRecord | CheckpointRecord | ResumeRecord | ReferenceRecord,
    Field(discriminator="kind"),
]
_BODY = TypeAdapter(BodyRecord)


class Run(BaseModel):
    """A whole run file, validated."""

    header: RunHeader
    steps: list[StepRecord] = []
    evals: list[EvalRecord] = []
    checkpoints: list[CheckpointRecord] = []
    resumes: list[ResumeRecord] = []
    references: list[ReferenceRecord] = []

    def timed_steps(self) -> list[StepRecord]:
        """Steps that are not marked warm-up (what step-time statistics should use)."""
        return [s for s in self.steps if not s.warmup]


def read_run(path: str | Path) -> Run:
    """Read and validate a run file; a bad line raises one ConfigError whose field names the
    file, the line and the key: ``runs/a.jsonl:1: start_time: Field required``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("run", f"no run file at {path}; pass the run.jsonl the trainer wrote")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            str(path),
            f"not a UTF-8 text file (byte {exc.start}); pass the run.jsonl the trainer wrote",
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read it ({exc.strerror}); check it") from None
    if "\x00" in text:
        raise ConfigError(
            str(path), "a binary file (it holds NUL bytes); pass the run.jsonl the trainer wrote"
        )
    lines = [(n, ln) for n, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not lines:
        raise ConfigError("run", f"{path} is empty; the run wrote no header")
    header = _parse(path, *lines[0], RunHeader.model_validate, RunHeader)
    if header.schema_version != SCHEMA_VERSION:
        raise ConfigError(
            f"{path}:{lines[0][0]}: schema_version",
            f"schema {header.schema_version}, this vlscale reads {SCHEMA_VERSION}; "
            "re-run the trainer or use a matching vlscale",
        )
    run = Run(header=header)
    for number, line in lines[1:]:
        record = _parse(path, number, line, _BODY.validate_python)
        kinds = {"step": run.steps, "eval": run.evals, "checkpoint": run.checkpoints}
        kinds |= {"resume": run.resumes, "reference": run.references}
        kinds[record.kind].append(record)
    return run


def _parse(path: Path, number: int, line: str, validate, model: type | None = None):
    """One line validated; errors name the file, the line and the key (with ``model``, an
    unknown key names the closest known one)."""
    where = f"{path}:{number}"
    try:
        return validate(json.loads(line))
    except json.JSONDecodeError as exc:
        raise ConfigError(where, f"line {number} is not JSON ({exc.msg}); truncate it") from None
    except RecursionError:
        raise ConfigError(where, f"line {number} nests too deeply; truncate it") from None
    except ValidationError as exc:
        err = from_validation_error(exc, model=model)
        raise ConfigError(f"{where}: {err.field}", str(err)[len(err.field) + 2 :]) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ConfigError(
            where, f"line {number} is not a run record ({_first_line(exc)})"
        ) from None


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
