"""Training recipes: loss, loss implementation, masking and optimizer defaults.

| recipe   | loss                       | defaults                                             |
|----------|----------------------------|------------------------------------------------------|
| clip     | softmax InfoNCE (Radford 2021) | logit scale init ln(1/0.07), clamp <= ln 100      |
| siglip   | pairwise sigmoid (Zhai 2023)   | t' = ln 10, b = -10; gather or ring implementation |
| eva-clip | CLIP loss + FLIP + LAMB (Sun 2023) | mask ratio 0.5, LAMB betas (0.9, 0.95)         |
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlscale.errors import ConfigError

RecipeName = Literal["clip", "siglip", "eva-clip"]
LossImpl = Literal["gather", "ring"]
Optimizer = Literal["adamw", "lamb", "adafactor"]
Precision = Literal["fp32", "bf16", "fp16"]

BYTES_PER_ELEMENT: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}


class RecipeSpec(BaseModel):
    """What is trained and how: the loss family, its implementation, FLIP ratio, optimizer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: RecipeName = "clip"
    loss_impl: LossImpl = "gather"
    mask_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    optimizer: Optimizer = "adamw"
    betas: tuple[float, float] = (0.9, 0.98)
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    init_logit_bias: float = 0.0

    @model_validator(mode="after")
    def _ring_is_sigmoid_only(self) -> RecipeSpec:
        if self.loss_impl == "ring" and self.name != "siglip":
            raise ConfigError(
                "loss_impl",
                f"'ring' is the chunked sigmoid loss; recipe '{self.name}' uses softmax. "
                "Use --loss-impl gather, or --recipe siglip",
            )
        return self

    @property
    def loss(self) -> Literal["softmax", "sigmoid"]:
        return "sigmoid" if self.name == "siglip" else "softmax"


def default_recipe(name: RecipeName, **overrides) -> RecipeSpec:
    """The recipe with its paper defaults; ``overrides`` replace any of them (None is ignored)."""
    base: dict = {"name": name}
    if name == "siglip":
        base |= {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}
    elif name == "eva-clip":
        base |= {"mask_ratio": 0.5, "optimizer": "lamb", "betas": (0.9, 0.95)}
    base |= {k: v for k, v in overrides.items() if v is not None}
    return RecipeSpec(**base)
