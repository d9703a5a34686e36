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

The command line and the YAML file are read into a ``TrainConfig`` by ``trainer.cli_args``
(``load_config``). Neither module imports torch: ``--help`` and config errors stay instant.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vlscale.costs.locks import check_locks
from vlscale.errors import ConfigError, from_validation_error
from vlscale.specs.fields import Count, MaskRatio, Real, Seed, Whole
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
from vlscale.specs.siglip2 import Siglip2Spec

BUILTIN_DATA = ("shapes",)
LAYOUT_FIELDS = tuple(RunLayout.model_fields)
TRAINER_PRECISION = "fp32"  # the trainer's default (the planner's is the device's)


class TrainConfig(BaseModel):
    """Everything one training run needs. ``None`` means "the recipe's default"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "tiny-clip"
    recipe: RecipeName = "clip"
    loss_impl: LossImpl | None = None
    mask_ratio: MaskRatio | None = None
    optimizer: Optimizer | None = None
    siglip2: Siglip2Spec | None = None  # SigLIP 2's objectives; None: the recipe's defaults
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

    @model_validator(mode="before")
    @classmethod
    def _siglip2_without_naflex(cls, data: Any) -> Any:
        """The trainer's SigLIP 2 is NaFlex-off unless the mapping names ``naflex`` (NaFlex is
        planned, not trained: ``check_siglip2``); ``--recipe siglip2`` alone then runs, and
        the run header's recipe records the spec as it ran."""
        if not isinstance(data, dict):
            return data
        s2 = data.get("siglip2")
        if s2 is None and data.get("recipe") == "siglip2":
            return data | {"siglip2": {"naflex": None}}
        if isinstance(s2, dict) and "naflex" not in s2:
            return data | {"siglip2": s2 | {"naflex": None}}
        return data

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
        check_siglip2(self)
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
                siglip2=self.siglip2,
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


def check_siglip2(cfg: TrainConfig) -> None:
    """What the trainer cannot run of SigLIP 2 (``vlscale.specs.siglip2``), one ConfigError
    each: objectives that need a ViT's tokens on a ResNet tower, or on precomputed image
    embeddings; self-distillation with a (partly) locked image tower (the teacher is an EMA of
    a trained tower) or a RoPE tower (local views at another grid); FLIP patch dropping;
    the towers' own limits (``check_against_towers``); NaFlex (planned, not trained)."""
    from vlscale.specs.siglip2 import check_against_towers

    s2 = cfg.recipe_spec().objectives
    if s2 is None:
        return
    spec, layout = cfg.model_spec(), cfg.layout
    needs_tokens = {"decoder": s2.decoder, "distill": s2.distill, "masked": s2.masked}
    for name, sub in needs_tokens.items():
        if sub is None:
            continue
        if spec.vision.kind == "resnet":
            raise ConfigError(
                f"siglip2.{name}",
                f"needs a ViT image tower's tokens; {spec.name}'s is a ResNet: set {name}: null "
                "(--siglip2 '{" + name + ": null}') or pick a ViT model",
            )
        if layout.precomputed_image:
            raise ConfigError(
                f"siglip2.{name}",
                "needs the image tower, which --image-embeddings takes out of the step; set "
                f"{name}: null or drop --image-embeddings",
            )
    distilled = s2.distill is not None or s2.masked is not None
    if distilled and layout.lock_image:
        raise ConfigError(
            "siglip2.distill",
            "self-distillation trains the image tower against its own EMA, which a locked image "
            "tower cannot do; set distill: null and masked: null, or drop --lock-image",
        )
    if s2.distill is not None and spec.vision.rope:
        raise ConfigError(
            "siglip2.distill",
            f"local views need position embeddings at another grid; {spec.name}'s RoPE tower "
            "has none here: set distill: null",
        )
    if spec.vision.kind == "resnet" and s2.naflex is not None:
        raise ConfigError("siglip2.naflex", "needs a ViT image tower; set naflex: null")
    check_against_towers(s2, spec.vision, spec.text)
    if s2.naflex is not None:
        raise ConfigError(
            "siglip2.naflex",
            "NaFlex is planned but not trained by this trainer (no variable-length image "
            "batches); set --siglip2 '{naflex: null}'",
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


def split_layout(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``values`` less the layout, and the layout as one mapping: a ``layout`` entry (mapping or
    ``RunLayout``) updated by the flat layout keys (``sharding``, ``shard_size``, ...)."""
    nested = values.get("layout")
    layout = nested.model_dump() if isinstance(nested, RunLayout) else dict(nested or {})
    layout |= {k: values[k] for k in LAYOUT_FIELDS if k in values}
    rest = {k: v for k, v in values.items() if k not in LAYOUT_FIELDS and k != "layout"}
    return rest, layout
