"""A planning scenario: model, recipe, cluster, batch, run length and the knobs that change cost.

``PlanConfig`` is what ``vlscale plan`` / ``compare`` / ``sweep`` take, from flags or from a YAML
or TOML file with the same keys. Omitted recipe knobs (mask ratio, optimizer) take the recipe's
paper defaults (``vlscale.specs.recipes.default_recipe``). Every error names the field and the fix.

The embedded default scenario — what ``vlscale plan`` with no arguments plans — is OpenCLIP's
ViT-L-14 recipe size: 12.8B samples seen at a global batch of 32,768 on 256 H100s in bf16 FSDP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

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
from vlscale.specs.recipes import LossImpl, Optimizer, Precision, RecipeName, RecipeSpec
from vlscale.specs.recipes import default_recipe as _default_recipe


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


class PlanConfig(BaseModel):
    """Everything that decides the cost of a run (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "ViT-L-14"
    recipe: RecipeName = "clip"
    loss_impl: LossImpl = "gather"
    mask_ratio: MaskRatio | None = None
    optimizer: Optimizer | None = None
    image_size: Dim | None = None
    context_length: Dim | None = Field(default=None, description="text tokens override")

    device: str = "H100"
    devices: Count = 256
    devices_per_node: Count | None = None
    num_slices: Count = 1
    slice_shape: str | tuple[int, ...] | None = Field(
        default=None, description="TPU slice torus, e.g. '4x4x8' (validated with the cluster)"
    )
    hardware_file: str | None = None

    global_batch: Count = 32_768
    samples: Count = 12_800_000_000
    precision: Precision | None = Field(
        default=None, description="None: the device's 16-bit type (bf16, or fp16 on V100)"
    )
    sharding: Literal["fsdp", "ddp"] = "fsdp"
    wrap_one_rank: bool = Field(
        default=False,
        description="wrap even one fp32 rank in FSDP / replicate, as trainers before "
        "trainer.parallelize.needs_wrapping did (their run records); False: it runs the plain "
        "module",
    )
    reshard_after_forward: bool = True
    checkpointing: bool = False

    grad_accum: Count = Field(default=1, description="micro-steps per optimizer step")
    grad_clip: bool = Field(default=True, description="clip the global gradient norm")

    utilisation: float | None = Field(
        default=None, gt=0.0, le=1.0, description="fraction of peak FLOP/s; None: per-op model"
    )
    framework_efficiency: float | None = Field(
        default=None, gt=0.0, le=1.0, description="overrides the device kind's calibrated γ"
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

    @field_validator("samples", "global_batch", "devices", "grad_accum", mode="before")
    @classmethod
    def _counts_are_not_booleans(cls, value: Any) -> Any:
        # pydantic would read `samples: true` as 1 sample; a count is a number
        if isinstance(value, bool):
            raise ValueError(f"must be a whole number, not {str(value).lower()}")
        return value

    @model_validator(mode="after")
    def _check(self) -> PlanConfig:
        # ConfigError (a ValueError) names the field; errors.from_validation_error keeps it
        if self.global_batch % self.devices:
            raise ConfigError(
                "global_batch",
                f"{self.global_batch} is not divisible by devices={self.devices}; "
                f"use a multiple of {self.devices}, e.g. "
                f"{max(1, round(self.global_batch / self.devices)) * self.devices}",
            )
        if (self.global_batch // self.devices) % self.grad_accum:
            raise ConfigError(
                "grad_accum",
                f"the local batch {self.global_batch // self.devices} is not divisible by "
                f"grad_accum={self.grad_accum}; use a grad_accum that divides it",
            )
        self.recipe_spec()  # ring with a softmax recipe (a ConfigError on loss_impl) etc.
        return self

    @property
    def local_batch(self) -> int:
        """Samples per rank per optimizer step (all micro-steps)."""
        return self.global_batch // self.devices

    @property
    def micro_batch(self) -> int:
        """Samples per rank per micro-step (what one forward / backward sees)."""
        return self.local_batch // self.grad_accum

    def recipe_spec(self) -> RecipeSpec:
        """The recipe with its paper defaults, overridden by the fields given here."""
        return _default_recipe(
            self.recipe,
            loss_impl=self.loss_impl,
            mask_ratio=self.mask_ratio,
            optimizer=self.optimizer,
        )


def make_plan_config(data: dict[str, Any] | PlanConfig | None = None, **overrides) -> PlanConfig:
    """Validate a mapping (e.g. a parsed file) plus overrides into a PlanConfig (ConfigError)."""
    if isinstance(data, PlanConfig):
        data = data.model_dump()
    merged = dict(data or {})
    merged |= {k: v for k, v in overrides.items() if v is not None}
    return validate_as(PlanConfig, merged, "")


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
