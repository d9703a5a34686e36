"""A planning scenario: model, recipe, cluster, batch, run length and the knobs that change cost.

``PlanConfig`` is what ``vlscale plan`` / ``compare`` / ``sweep`` take, from flags or from a YAML
or TOML file with the same keys. The run layout (world size, sharding, shard size, precision,
checkpointing, accumulation) is one :class:`~vlscale.specs.layout.RunLayout`, written either as
a nested ``layout:`` mapping or as flat keys (``devices: 64``, ``sharding: hsdp``,
``shard_size: 8``), which are gathered into it. Omitted recipe knobs (mask ratio, optimizer) take
the recipe's paper defaults (``vlscale.specs.recipes.default_recipe``). Every error names the
field and the fix.

The embedded default scenario — what ``vlscale plan`` with no arguments plans — is OpenCLIP's
ViT-L-14 recipe size: 12.8B samples seen at a global batch of 32,768 on 256 H100s in bf16 FSDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vlscale.config_files import read_mapping
from vlscale.errors import ConfigError, validate_as
from vlscale.specs.fields import (
    ByteRate,
    Count,
    Dim,
    MaskRatio,
    NonNegativeFinite,
    PositiveFinite,
    Seed,
)
from vlscale.specs.layout import RunLayout
from vlscale.specs.recipes import LossImpl, Optimizer, RecipeName, RecipeSpec
from vlscale.specs.recipes import default_recipe as _default_recipe
from vlscale.specs.run_file import LAYOUT_KEYS, TRAINER_DEVICES, split_keys
from vlscale.specs.siglip2 import Siglip2Spec


class FailureConfig(BaseModel):
    """Failures over a whole run (``vlscale.costs.run``). ``None`` fields are estimated.

    Default per-device MTBF: Llama 3 (Dubey et al. 2024, section 3.3.4) saw 419 unexpected
    interruptions in 54 days on 16,384 H100s, i.e. 16,384 · 54 · 24 / 419 ≈ 50,700 device-hours.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    mtbf_device_h: PositiveFinite = 50_000.0
    checkpoint_write_s: PositiveFinite | None = None
    restart_s: NonNegativeFinite = 600.0
    checkpoint_interval_s: PositiveFinite | None = None
    checkpoint_write_bandwidth: ByteRate = Field(
        default=2.0e9, description="bytes/s per device to storage, to estimate the write"
    )


LAYOUT_FIELDS: tuple[str, ...] = tuple(RunLayout.model_fields)
"""Keys that a plan file or flag may give flat (``devices: 64``, ``sharding: hsdp``): they
belong to ``PlanConfig.layout``."""

DEFAULT_LAYOUT = RunLayout(devices=256)
"""The embedded scenario's layout: 256 ranks, FSDP, the device's 16-bit type."""


class PlanConfig(BaseModel):
    """Everything that decides the cost of a run (see the module docstring): the model, the
    recipe, the run layout (``vlscale.specs.layout.RunLayout``), the cluster and the run."""

    FLAT_KEYS: ClassVar[tuple[str, ...]] = LAYOUT_FIELDS  # accepted flat, kept in `layout`

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "ViT-L-14"
    recipe: RecipeName = "clip"
    loss_impl: LossImpl = "gather"
    mask_ratio: MaskRatio | None = None
    optimizer: Optimizer | None = None
    siglip2: Siglip2Spec | None = Field(
        default=None, description="SigLIP 2's objectives and phases; None: the paper's"
    )
    image_size: Dim | None = None
    context_length: Dim | None = Field(default=None, description="text tokens override")

    layout: RunLayout = Field(
        default=DEFAULT_LAYOUT, description="ranks, sharding, precision, AC, accumulation"
    )

    device: str = "H100"
    num_slices: Count = 1
    slice_shape: str | tuple[int, ...] | None = Field(
        default=None, description="TPU slice torus, e.g. '4x4x8' (validated with the cluster)"
    )
    hardware_file: str | None = None

    global_batch: Count = 32_768
    samples: Count = 12_800_000_000
    grad_clip: bool = Field(default=True, description="clip the global gradient norm")

    utilisation: float | None = Field(
        default=None, gt=0.0, le=1.0, description="fraction of peak FLOP/s; None: per-op model"
    )
    framework_efficiency: float | None = Field(
        default=None, gt=0.0, le=1.0, description="overrides the device kind's calibrated γ"
    )
    stack: str | None = Field(
        default=None,
        description="software stack profile (vlscale stacks); None: the project's own trainer",
    )
    compute_efficiency_scale: float = Field(
        default=1.0, gt=0.0, le=10.0, description="compute roofline times / this (uncertainty)"
    )
    comm_efficiency_scale: float = Field(
        default=1.0, gt=0.0, le=10.0, description="collective times / this (uncertainty draws)"
    )
    price_per_device_hour: NonNegativeFinite | None = None
    decode_samples_per_s_per_device: PositiveFinite | None = Field(
        default=None, description="input pipeline throughput; None: never stalls"
    )
    straggler_sigma: float = Field(default=0.0, ge=0.0, le=2.0)
    sim_steps: Count = Field(default=1, le=1000)
    seed: Seed = 0
    failures: FailureConfig = FailureConfig()

    @model_validator(mode="before")
    @classmethod
    def _gather_layout(cls, data: Any) -> Any:
        """Flat layout keys (``devices``, ``sharding``, ``shard_size``, ...) and a nested
        ``layout:`` mapping make one RunLayout: the embedded defaults, then the mapping, then
        the flat keys (so a flag given flat wins over a file's ``layout:``)."""
        if not isinstance(data, dict):
            return data
        flat = {k: data[k] for k in LAYOUT_FIELDS if k in data}
        nested = data.get("layout")
        if not flat and (nested is None or isinstance(nested, RunLayout)):
            return data
        if isinstance(nested, RunLayout):
            nested = nested.model_dump()
        elif nested is not None and not isinstance(nested, dict):
            raise ConfigError(
                "layout", f"must be a mapping of {list(LAYOUT_FIELDS)}, got {nested!r}"
            )
        merged = DEFAULT_LAYOUT.model_dump(exclude_defaults=True) | (nested or {}) | flat
        rest = {k: v for k, v in data.items() if k not in LAYOUT_FIELDS}
        return rest | {"layout": validate_as(RunLayout, merged, "")}

    @field_validator("stack")
    @classmethod
    def _known_stack(cls, value: str | None) -> str | None:
        if value is not None:
            from vlscale.specs.stacks import get_stack

            get_stack(value)  # a ConfigError naming the stacks
        return value

    @model_validator(mode="after")
    def _check(self) -> PlanConfig:
        # ConfigError (a ValueError) names the field; errors.from_validation_error keeps it
        self.layout.check_batch(self.global_batch)
        self.recipe_spec()  # ring with a softmax recipe (a ConfigError on loss_impl) etc.
        return self

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False):
        """pydantic's copy; an ``update`` with layout keys given flat (``sharding``,
        ``devices``, ``shard_size``, ...) or a new ``layout`` is validated as a whole config,
        so that they reach the layout (a plain copy would set them beside it, unchecked)."""
        if update and any(k in LAYOUT_FIELDS or k == "layout" for k in update):
            return validate_as(PlanConfig, self.model_dump() | dict(update), "")
        return super().model_copy(update=update, deep=deep)

    @property
    def devices(self) -> int:
        """The world size (``layout.devices``)."""
        return self.layout.devices

    @property
    def local_batch(self) -> int:
        """Samples per rank per optimizer step (all micro-steps)."""
        return self.layout.local_batch(self.global_batch)

    @property
    def micro_batch(self) -> int:
        """Samples per rank per micro-step (what one forward / backward sees)."""
        return self.layout.micro_batch(self.global_batch)

    def recipe_spec(self) -> RecipeSpec:
        """The recipe with its paper defaults, overridden by the fields given here."""
        return _default_recipe(
            self.recipe,
            loss_impl=self.loss_impl,
            mask_ratio=self.mask_ratio,
            optimizer=self.optimizer,
            siglip2=self.siglip2,
        )


def make_plan_config(data: dict[str, Any] | PlanConfig | None = None, **overrides) -> PlanConfig:
    """Validate a mapping (e.g. a parsed file) plus overrides into a PlanConfig (ConfigError)."""
    if isinstance(data, PlanConfig):
        data = data.model_dump()
    merged = dict(data or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    if given.get("sharding", "hsdp") != "hsdp" and "shard_size" not in given:
        # `--sharding fsdp` over a file's HSDP layout: its shard size goes with it
        merged.pop("shard_size", None)
        if isinstance(merged.get("layout"), dict):
            merged["layout"] = {k: v for k, v in merged["layout"].items() if k != "shard_size"}
    return validate_as(PlanConfig, merged | given, "")


def planner_part(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A run file as the planner reads it (``vlscale.specs.run_file``): (its planner keys, the
    trainer keys it ignores). Two shared keys mean different things to the trainer: its
    ``device`` auto / cpu / cuda is not a catalog device (ignored), and its ``grad_clip`` is a
    max norm (None: off), which the planner reads as whether clipping runs."""
    data = dict(data)
    trainer_only = []
    if data.get("device") in TRAINER_DEVICES:
        del data["device"]
        trainer_only.append("device")
    clip = data.get("grad_clip", True)
    if clip is None or (isinstance(clip, int | float) and not isinstance(clip, bool)):
        data["grad_clip"] = clip is not None and clip > 0
    own, ignored, unknown = split_keys(
        data, set(PlanConfig.model_fields) | LAYOUT_KEYS | {"layout"}
    )
    # a key neither half reads stays, so that PlanConfig refuses it by name (closest key)
    kept = own | {key: data[key] for key in unknown}
    return kept, sorted(ignored + trainer_only)


def parse_count(field: str, text: str | None) -> int | None:
    """'12.8e9' / '12_800_000_000' / '12800000000' -> int; names the field when it is not."""
    if text is None:
        return None
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise ConfigError(field, f"'{text}' is not a number; write e.g. 12.8e9") from None
    if not value.is_integer() or value <= 0:
        raise ConfigError(field, f"'{text}' must be a positive whole number, e.g. 12.8e9")
    return int(value)


def read_config_file(path: str | Path, field: str = "config") -> dict[str, Any]:
    """Parse a YAML (.yaml/.yml) or TOML (.toml) plan mapping (``vlscale.config_files``)."""
    return read_mapping(path, field, "a YAML (.yaml) or TOML (.toml) plan file")
