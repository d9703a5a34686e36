"""Trainer configuration: one pydantic ``TrainConfig`` resolved from a YAML file plus CLI overrides.

Precedence: field defaults < recipe defaults (``vlscale.specs.recipes.default_recipe``) < YAML file
< command line. YAML keys are the option names with ``_`` or ``-`` (``global_batch`` or
``global-batch``). Everything is checked here, before any process group exists, so that a bad run
stops with one message naming the field and the fix (``vlscale.errors.ConfigError``, exit 2) and
nothing is written.

``TrainConfig`` = model + recipe + layout + training settings. The layout is a
:class:`~vlscale.specs.layout.RunLayout` held by the config (``cfg.layout``), never a copy of its
fields: its keys are written flat in the file and on the command line (``--sharding``,
``--shard-size``, ``--precision``, ...; the flags are generated from the layout's fields), or as
one ``layout:`` mapping (what a run header stores). ``devices`` and ``devices_per_node`` come from
torchrun (``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``) unless given; a given value that disagrees with
the launch is an error. The layout is resolved here (precision fp32 unless given; HSDP's shard
size the devices per node unless given).

One file for both halves (``vlscale.specs.run_file``): the planner's keys (``device: H100``,
``samples``, ``price_per_device_hour``, ...) are ignored and listed in one stderr line; a key that
neither half reads is refused with a did-you-mean.

This module must not import torch: ``--help`` and config errors stay instant.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vlscale.config_files import read_mapping
from vlscale.costs.locks import check_locks
from vlscale.errors import ConfigError, from_validation_error, validate_as
from vlscale.specs.fields import MAX_COUNT, Count, MaskRatio
from vlscale.specs.layout import RunLayout
from vlscale.specs.models import ModelSpec
from vlscale.specs.presets import resolve_model
from vlscale.specs.recipes import (
    LossImpl,
    Optimizer,
    RecipeName,
    RecipeSpec,
    default_recipe,
)
from vlscale.specs.run_file import key_name, split_keys

BUILTIN_DATA = ("shapes",)
LAYOUT_FIELDS = tuple(RunLayout.model_fields)
TRAINER_PRECISION = "fp32"  # the trainer's default (the planner's is the device's)
MAX_SEED = 2**63 - 1  # torch.manual_seed and torch.Generator take 64-bit seeds


def _not_bool(value: Any) -> Any:
    # pydantic reads `true` as 1: a count, a size or a rate is a number, never a bool
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def _seed(value: int) -> int:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"must be a whole number in 0..2**63-1 (64-bit generators), got {value}")
    return value


Whole = Annotated[int, BeforeValidator(_not_bool), Field(ge=0, le=MAX_COUNT)]
"""A count that may be 0 (intervals, warm-up steps, workers): never a bool, at most MAX_COUNT."""
Real = Annotated[float, BeforeValidator(_not_bool)]
"""A rate or size read as a float (bounds and finiteness on each field), never a bool."""
Seed = Annotated[int, BeforeValidator(_not_bool), AfterValidator(_seed)]


class TrainConfig(BaseModel):
    """Everything one training run needs. ``None`` means "the recipe's default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "tiny-clip"
    recipe: RecipeName = "clip"
    loss_impl: LossImpl | None = None
    mask_ratio: MaskRatio | None = None
    optimizer: Optimizer | None = None
    global_batch: Count = 32
    layout: RunLayout = Field(
        default_factory=RunLayout,
        validate_default=True,
        description="how a step is laid out on the ranks (resolved)",
    )
    steps: Count = 20
    data: str = "shapes"
    tokenizer: str = Field(default="byte", description="'byte' or a tokenizer.json path")
    out: str = "runs/latest"
    lr: Real = Field(default=5e-4, gt=0, allow_inf_nan=False)
    image_lr: Real | None = Field(default=None, gt=0, allow_inf_nan=False)
    text_lr: Real | None = Field(default=None, gt=0, allow_inf_nan=False)
    weight_decay: Real = Field(default=0.2, ge=0, allow_inf_nan=False)
    warmup_steps: Whole = 2
    grad_clip: Real | None = Field(
        default=1.0, ge=0, allow_inf_nan=False, description="0 or null: no clipping"
    )
    compile: bool = False
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    seed: Seed = 0
    eval_every: Whole = Field(default=0, description="0: no evaluation")
    ckpt_every: Whole = Field(default=0, description="0: no checkpoints")
    resume: bool | str = Field(
        default=False, description="True: newest valid checkpoint in OUT/ckpt; a path: that one"
    )
    phase_timing: bool = False
    profile_steps: str | None = Field(default=None, description="A:B, 1-based, inclusive")
    unmasked_final_steps: Whole = 0
    init_image_from: str | None = None
    init_from: str | None = None
    peak_flops: Real | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="per device, FLOP/s"
    )
    peak_from: str | None = Field(
        default=None, description="hardware file (python -m trainer.probe) with the peak"
    )
    timing_warmup: Whole = Field(default=2, description="first steps marked warmup")
    log_every: Count = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: Whole = 0
    # failing safely (output directory, checkpoint retention, non-finite steps, memory check)
    overwrite: bool = False
    keep_last: Count | None = Field(default=None, description="None: keep every checkpoint")
    skip_nonfinite: bool = False
    force: bool = False

    @model_validator(mode="before")
    @classmethod
    def _gather_layout(cls, data: Any) -> Any:
        """Flat layout keys (``sharding: hsdp``) join the ``layout`` mapping; flat keys win."""
        if not isinstance(data, dict) or not any(k in data for k in LAYOUT_FIELDS):
            return data
        rest, layout = split_layout(data)
        return rest | {"layout": layout}

    @field_validator("layout")
    @classmethod
    def _resolve_layout(cls, layout: RunLayout) -> RunLayout:
        """The layout as it runs: fp32 unless given, HSDP's shard size the node's ranks."""
        return layout.resolved(TRAINER_PRECISION, layout.devices_per_node or layout.devices)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        self.model_spec()  # unknown preset -> ConfigError("model", ...)
        self.recipe_spec()  # ring + softmax recipe -> message naming --loss-impl
        check_locks(self.model_spec(), self.layout)  # groups beyond the tower, BN on a ViT
        self._check_embeddings()
        self.check_batch()
        if self.profile_steps is not None:
            self.profile_range()
        if self.unmasked_final_steps > self.steps:
            raise ConfigError(
                "unmasked_final_steps",
                f"{self.unmasked_final_steps} > steps ({self.steps}); use at most --steps",
            )
        if self.data not in BUILTIN_DATA and not _data_exists(self.data):
            raise ConfigError(
                "data",
                f"no dataset at '{self.data}'; pass an existing CSV file or shard directory, "
                "or --data shapes for the built-in synthetic set",
            )
        if self.tokenizer != "byte" and not (
            self.tokenizer.endswith(".json") and Path(self.tokenizer).is_file()
        ):
            raise ConfigError(
                "tokenizer",
                f"'{self.tokenizer}' is neither 'byte' nor an existing tokenizer.json file; "
                "pass a Hugging Face tokenizer.json or use --tokenizer byte",
            )
        self._check_safety()
        if self.peak_from is not None and not Path(self.peak_from).is_file():
            raise ConfigError(
                "peak_from",
                f"no hardware file at '{self.peak_from}'; write one with python -m trainer.probe "
                "--out FILE, or pass --peak-flops",
            )
        for field in ("init_image_from", "init_from"):
            path = getattr(self, field)
            if path is not None and not Path(path).exists():
                raise ConfigError(
                    field,
                    f"no checkpoint at '{path}'; pass an existing checkpoint directory or an "
                    "OpenCLIP .pt/.bin/.safetensors file",
                )
        if self.init_from is not None and not _is_file_checkpoint(self.init_from):
            raise ConfigError(
                "init_from",
                "must be an OpenCLIP .pt/.bin/.safetensors file (use --resume for runs)",
            )
        return self

    def _check_embeddings(self) -> None:
        """--image-embeddings DIR: a directory trainer.embed wrote for this model's widths."""
        if not self.layout.precomputed_image:
            return
        from trainer.data.embeddings import check_embeddings

        spec = self.model_spec()
        check_embeddings(
            self.layout.image_embeddings,
            width=spec.embed_dim,
            context_length=spec.text.context_length,
            global_batch=self.global_batch,
        )
        for field in ("eval_every", "init_image_from"):
            if getattr(self, field):
                raise ConfigError(
                    field,
                    "needs the image tower, which --image-embeddings takes out of the step; "
                    "drop one of the two",
                )

    def _check_safety(self) -> None:
        """Mistakes that used to surface mid-run (or never): schedule, evaluation, --out."""
        if self.warmup_steps > self.steps:
            raise ConfigError(
                "warmup_steps",
                f"{self.warmup_steps} > steps ({self.steps}); use at most --steps warm-up steps",
            )
        if self.eval_every and self.data not in BUILTIN_DATA:
            raise ConfigError(
                "eval_every",
                f"evaluation is unavailable for --data {self.data} (zero-shot needs the class "
                "names of the built-in shapes set); drop --eval-every or train on --data shapes",
            )
        if self.resume and self.overwrite:
            raise ConfigError(
                "overwrite", "--overwrite discards the run that --resume continues; pick one"
            )
        if isinstance(self.resume, str) and not Path(self.resume).exists():
            raise ConfigError(
                "resume", f"no checkpoint at '{self.resume}'; pass OUT, OUT/ckpt or OUT/ckpt/step_N"
            )
        if not self.out.strip():
            raise ConfigError("out", "is empty; pass a directory path, e.g. --out runs/latest")
        out = Path(self.out)
        for p in (out, *out.parents):
            if p.exists() and not p.is_dir():
                where = "is a file" if p == out else f"lies under the file {p}"
                raise ConfigError("out", f"'{self.out}' {where}; pass a directory path")

    def model_spec(self) -> ModelSpec:
        """``--model``: a preset name or a model file (``vlscale.specs.presets.resolve_model``)."""
        return resolve_model(self.model)

    def recipe_spec(self) -> RecipeSpec:
        """The recipe with its paper defaults, overridden by loss_impl / mask_ratio / optimizer."""
        try:
            return default_recipe(
                self.recipe,
                loss_impl=self.loss_impl,
                mask_ratio=self.mask_ratio,
                optimizer=self.optimizer,
            )
        except ValidationError as exc:
            err = from_validation_error(exc)
            field = "loss_impl" if "ring" in str(err) else err.field
            raise ConfigError(field, str(err).split(": ", 1)[-1]) from None

    def profile_range(self) -> tuple[int, int]:
        """``A:B`` -> (A, B), 1-based inclusive, within the run."""
        text = self.profile_steps or ""
        parts = text.split(":")
        try:
            a, b = (int(p) for p in parts)
        except ValueError:
            raise ConfigError("profile_steps", f"'{text}' is not A:B; write e.g. 3:5") from None
        if not 1 <= a <= b <= self.steps:
            raise ConfigError(
                "profile_steps", f"{a}:{b} must satisfy 1 <= A <= B <= steps ({self.steps})"
            )
        return a, b

    def local_batch(self, world_size: int | None = None) -> int:
        """Samples per rank per micro-step: global_batch / (world_size * grad_accum); the world
        size is the layout's devices unless given."""
        world = self.layout.devices if world_size is None else world_size
        return self.global_batch // (world * self.layout.grad_accum)

    def flat_dump(self) -> dict[str, Any]:
        """The config as JSON values with the layout's fields flat (``sharding``, ``precision``,
        ...), as a run file writes them: what the run header's ``config`` and the run identity
        hold, and what ``--config`` reads back."""
        values = self.model_dump(mode="json")
        return values | values.pop("layout")

    def mask_ratio_at(self, step: int) -> float:
        """FLIP ratio of 1-based ``step``: the recipe's ratio, 0 in the unmasked final phase."""
        if step > self.steps - self.unmasked_final_steps:
            return 0.0
        return self.recipe_spec().mask_ratio

    def check_batch(self) -> None:
        """The global batch splits evenly over the ranks and micro-steps of the layout."""
        world, accum = self.layout.devices, self.layout.grad_accum
        per = world * accum
        if self.global_batch % per:
            lo = max(per, self.global_batch // per * per)
            raise ConfigError(
                "global_batch",
                f"{self.global_batch} is not divisible by world_size x grad_accum = "
                f"{world} x {accum} = {per}; use e.g. --global-batch {lo} or {lo + per}",
            )


def _is_file_checkpoint(path: str) -> bool:
    return Path(path).is_file() and Path(path).suffix in (".pt", ".pth", ".bin", ".safetensors")


def _data_exists(data: str) -> bool:
    """A path, a glob with matches, or a brace range of shards (checked by the loader)."""
    if "{" in data:
        return True
    if any(c in data for c in "*?["):
        return bool(glob.glob(data))
    return Path(data).exists()


# --- command line ---------------------------------------------------------------------------

_HELP = {
    "model": "model preset (OpenCLIP name, or tiny-clip / tiny-siglip / tiny-eva / small-clip), "
    "or a model file: a vlscale model spec (YAML/JSON) or an OpenCLIP model-config JSON",
    "recipe": "training recipe",
    "loss_impl": "siglip loss implementation (ring: chunked sigmoid loss)",
    "mask_ratio": "FLIP patch-drop ratio r in [0, 1) (eva-clip default 0.5)",
    "optimizer": "optimizer (recipe default: adamw, lamb for eva-clip)",
    "global_batch": "samples per optimizer step over all ranks",
    "steps": "optimizer steps; the warm-up + cosine schedule spans exactly these, so it is part "
    "of the run identity: --resume with another --steps is refused (start a new run to train "
    "longer)",
    "data": "'shapes' (synthetic) or a path to a CSV file / tar-shard directory",
    "tokenizer": "'byte' (byte-level, the default) or a Hugging Face tokenizer.json file",
    "out": "output directory (run.jsonl, traces, checkpoints)",
    "lr": "peak learning rate",
    "image_lr": "peak learning rate of the image tower (default --lr)",
    "text_lr": "peak learning rate of the text tower (default --lr)",
    "weight_decay": "decoupled weight decay (not on norms, biases, logit params)",
    "warmup_steps": "linear learning-rate warm-up steps, then cosine decay",
    "grad_clip": "clip the global gradient norm to this value (0: off)",
    "compile": "torch.compile each transformer block",
    "compile_backend": "torch.compile backend of --compile: inductor (generated kernels), or "
    "aot_eager / eager (graph capture only, eager kernels: quick, for testing the wiring)",
    "seed": "random seed (model init, data, FLIP masks)",
    "eval_every": "evaluate every N steps (0: off)",
    "ckpt_every": "write a checkpoint every N steps (0: off; a stop on SIGTERM / SIGINT still "
    "checkpoints its step)",
    "resume": "resume from the newest valid checkpoint in OUT/ckpt (a corrupt one is skipped, "
    "with a line saying so), or from the run / checkpoint directory given (--resume PATH); "
    "--steps, --global-batch, model and schedule must match the checkpoint's run",
    "phase_timing": "time forward / loss / backward / optimizer separately (syncs the device)",
    "profile_steps": "write a torch.profiler Chrome trace of steps A:B to OUT/trace_rank{r}.json",
    "unmasked_final_steps": "train the last N steps without patch dropping (EVA-CLIP/FLIP)",
    "init_image_from": "initialise the image tower from this checkpoint directory or OpenCLIP "
    "file (.pt/.bin/.safetensors)",
    "init_from": "initialise the whole model from an OpenCLIP file (.pt/.bin/.safetensors)",
    "peak_flops": "peak FLOP/s per device for MFU (default: device lookup / CPU measurement)",
    "peak_from": "take the peak FLOP/s for MFU from this device profile (a hardware file as "
    "python -m trainer.probe writes; a CPU's peak is shared by the ranks of the host)",
    "timing_warmup": "number of first steps marked warmup in the run record",
    "log_every": "print a log line every N steps (rank 0)",
    "device": "auto picks cuda when available",
    "num_workers": "data-loader worker processes",
    "overwrite": "start afresh in a non-empty --out: delete its run.jsonl, ckpt/ and traces first",
    "keep_last": "keep only the newest N checkpoints (default: all)",
    "skip_nonfinite": "skip (and count) a step whose loss or gradient norm is inf/NaN instead "
    "of stopping the run",
    "force": "start even when the memory estimate exceeds the device's (or host's) memory",
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage mistakes are one ``ConfigError`` (``error: --steps: invalid
    int value: 'abc'; see --help``, exit status 2) instead of argparse's usage block;
    ``--help`` still prints the full usage."""

    def error(self, message: str):  # type: ignore[override]
        m = re.match(r"argument (-[^/:\s]+)(?:/\S+)?: (.*)", message, re.S)
        if m:
            field, text = m.group(1), m.group(2)
        elif message.startswith("unrecognized arguments: "):
            extra = message.split(": ", 1)[1].split()
            field = next((a for a in extra if a.startswith("-")), extra[0]).split("=")[0]
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            close = difflib.get_close_matches(field, known, n=1)
            text = "unknown option" if field.startswith("-") else "unexpected argument"
            if close:
                text += f" (did you mean {close[0]}?)"
        elif message.startswith("the following arguments are required: "):
            field = message.split(": ", 1)[1].split(",")[0]
            text = "is required"
        else:
            field, text = "usage", message
        err = ConfigError(field, f"{' '.join(text.split())}; see --help")
        err.all_ranks = True  # every rank parses the same command line
        raise err


def build_parser() -> argparse.ArgumentParser:
    """Every TrainConfig field as ``--kebab-case``, the layout's fields included (generated from
    ``RunLayout``: help from each field's description); defaults are suppressed so that only
    what the user typed overrides the file."""
    parser = OneLineParser(
        prog="python -m trainer.train",
        description="Train a CLIP / SigLIP / EVA-CLIP two-tower model with FSDP2 "
        "(torchrun --nproc_per_node N -m trainer.train ...).",
        argument_default=argparse.SUPPRESS,
        epilog="Exit status: 0 done; 2 a mistake (one 'error: <field>: ...' line); 143 / 130 "
        "stopped by SIGTERM / SIGINT after finishing the step and checkpointing it (continue "
        "with --resume); a second signal ends the run at once.",
    )
    parser.add_argument("--config", help="YAML file with the same keys; the command line wins")
    for name, field in TrainConfig.model_fields.items():
        if name == "layout":
            add_layout_flags(parser)
            continue
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f"{_HELP[name]} (default: {field.default})"}
        choices = _literal_choices(field.annotation)
        if name == "resume":  # --resume (newest valid) or --resume PATH
            kwargs |= {"nargs": "?", "const": True, "metavar": "PATH"}
        elif field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices:
            kwargs["choices"] = choices
        elif name in _FLOAT_FIELDS:
            kwargs["type"] = float
        elif name in _INT_FIELDS:
            kwargs["type"] = int
        parser.add_argument(flag, dest=name, **kwargs)
    return parser


# what the trainer fills in for the layout's unresolved defaults (None in RunLayout)
_LAYOUT_DEFAULTS = {
    "devices": "torchrun's WORLD_SIZE, 1 without torchrun",
    "devices_per_node": "torchrun's LOCAL_WORLD_SIZE",
    "precision": TRAINER_PRECISION,
    "shard_size": "--devices-per-node",
}


def add_layout_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``RunLayout`` field: ``--sharding``, ``--shard-size``, ``--precision``,
    ``--checkpointing/--no-checkpointing``, ... with the field's description as help."""
    group = parser.add_argument_group("run layout (vlscale.specs.layout.RunLayout)")
    for name, field in RunLayout.model_fields.items():
        text, default = field.description or "", field.default
        if name in _LAYOUT_DEFAULTS:  # the trainer's default replaces the layout's "None: ..."
            text = re.sub(r" \(None: [^)]*\)", "", text)
            default = _LAYOUT_DEFAULTS[name]
        kwargs: dict[str, Any] = {"help": f"{text} (default: {default})"}
        kind = _base_type(field.annotation)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices := _literal_choices(field.annotation):
            kwargs["choices"] = choices
        else:
            kwargs["type"] = kind
        group.add_argument("--" + name.replace("_", "-"), dest=name, **kwargs)


def _base_type(annotation) -> Any:
    """``int`` for ``Count | None`` (Optional and Annotated stripped); bool, float, str alike."""
    from typing import Annotated, get_args, get_origin

    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        args = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) is not Literal and len(args) == 1:
            annotation = args[0]
            continue
        return annotation


def load_config(argv: list[str] | None = None, world_size: int | None = None) -> TrainConfig:
    """Parse ``argv`` (and ``--config``), validate, and check against ``world_size``.

    ``world_size`` defaults to torchrun's ``WORLD_SIZE`` (1 for a plain ``python -m``).
    """
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file is not None:
        values |= _read_yaml(config_file)
    values |= args
    values = with_launch(values, world_size or env_world_size(), env_local_world_size())
    try:
        cfg = TrainConfig(**values)
    except ValidationError as exc:
        cause = _config_error_inside(exc)
        raise cause or from_validation_error(exc) from None
    return cfg


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_world_size() -> int | None:
    """torchrun's ranks on this node; None without torchrun."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local else None


def split_layout(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` less the layout, and the layout as one mapping: a ``layout`` entry (mapping or
    ``RunLayout``) updated by the flat layout keys (``sharding``, ``shard_size``, ...)."""
    nested = values.get("layout")
    layout = nested.model_dump() if isinstance(nested, RunLayout) else dict(nested or {})
    layout |= {k: values[k] for k in LAYOUT_FIELDS if k in values}
    rest = {k: v for k, v in values.items() if k not in LAYOUT_FIELDS and k != "layout"}
    return rest, layout


def with_launch(values: dict[str, Any], world: int, local: int | None) -> dict[str, Any]:
    """``values`` with the layout's ``devices`` / ``devices_per_node`` taken from the launch
    when not given; a given one that disagrees with the launch is one ConfigError."""
    out, layout = split_layout(values)
    launch = {"devices": (world, "WORLD_SIZE")}
    if local is not None:  # torchrun says how many ranks run on this node
        launch["devices_per_node"] = (local, "LOCAL_WORLD_SIZE")
    for name, (ranks, where) in launch.items():
        given = layout.get(name)
        if given is None or isinstance(given, bool) or not str(given).isdigit():
            continue  # absent, or not a count: the layout's validation names it
        if int(given) != ranks:
            raise ConfigError(
                name,
                f"{given} but this launch has {ranks} rank{'s' * (ranks != 1)} (torchrun's "
                f"{where}); launch {given} ranks (torchrun --nnodes / --nproc-per-node), or "
                f"drop {name}: the trainer takes it from the launch",
            )
    layout.setdefault("devices", world)
    layout.setdefault("devices_per_node", min(local or world, world))
    return out | {"layout": validate_as(RunLayout, layout, "")}  # errors name the flag's field


def _read_yaml(path: str) -> dict[str, Any]:
    """The trainer's keys of the run file at ``path``. The planner's keys are ignored and listed
    in one stderr line (rank 0); a key of neither half is refused with a did-you-mean."""
    raw = read_mapping(path, "config", "a YAML file of trainer options (see --help)")
    own_keys = [f for f in TrainConfig.model_fields] + list(LAYOUT_FIELDS)
    device = next((k for k in raw if key_name(k) == "device"), None)
    if device is not None and raw[device] not in _literal_choices(
        TrainConfig.model_fields["device"].annotation
    ):
        own_keys.remove("device")  # ``device: H100`` names the planner's catalog device
    out, foreign, unknown = split_keys(raw, own_keys)
    for key in unknown:
        name = key_name(key)
        close = difflib.get_close_matches(name, own_keys, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see --help for the keys"
        raise ConfigError(f"config.{key}", f"unknown key in {path}; {hint}")
    if foreign and os.environ.get("RANK", "0") == "0":
        print(f"note: ignored planner keys: {', '.join(foreign)}", file=sys.stderr, flush=True)
    return out


def _config_error_inside(exc: ValidationError) -> ConfigError | None:
    """Validators raise ConfigError (a ValueError); pydantic wraps it. Recover the original."""
    for err in exc.errors():
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):
            return inner
    return None


def _literal_choices(annotation) -> list[str] | None:
    from typing import get_args, get_origin

    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    for a in args:
        if get_origin(a) is Literal:
            return list(get_args(a))
    return None


_FLOAT_FIELDS = {
    "mask_ratio",
    "lr",
    "image_lr",
    "text_lr",
    "weight_decay",
    "grad_clip",
    "peak_flops",
}
_INT_FIELDS = {
    "global_batch",
    "steps",
    "warmup_steps",
    "seed",
    "eval_every",
    "ckpt_every",
    "unmasked_final_steps",
    "timing_warmup",
    "log_every",
    "num_workers",
    "keep_last",
}
