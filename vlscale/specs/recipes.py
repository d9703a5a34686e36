"""Training recipes: loss, loss implementation, masking and optimizer defaults.

| recipe   | loss                       | defaults                                             |
|----------|----------------------------|------------------------------------------------------|
| clip     | softmax InfoNCE (Radford 2021) | logit scale init ln(1/0.07), clamp <= ln 100      |
| siglip   | pairwise sigmoid (Zhai 2023)   | t' = ln 10, b = -10; gather or ring implementation |
| eva-clip | CLIP loss + FLIP + LAMB (Sun 2023) | mask ratio 0.5, LAMB betas (0.9, 0.95)         |
| siglip2  | SigLIP's sigmoid + LocCa decoder, SILC, TIPS, NaFlex (Tschannen 2025) | SigLIP's,  |
|          | plus the objectives and phases of ``vlscale.specs.siglip2``                          |
"""

from __future__ import annotations

import math
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, model_validator

from vlscale.errors import ConfigError
from vlscale.specs.fields import MaskRatio
from vlscale.specs.siglip2 import Siglip2Spec

RecipeName = Literal["clip", "siglip", "eva-clip", "siglip2"]
Loss = Literal["softmax", "sigmoid"]
LossImpl = Literal["gather", "ring"]
Optimizer = Literal["adamw", "lamb", "adafactor"]
Precision = Literal["fp32", "bf16", "fp16"]

BYTES_PER_ELEMENT: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2}
LOSSES: tuple[str, ...] = get_args(Loss)
LOSS_IMPLS: tuple[str, ...] = get_args(LossImpl)


SIGMOID_RECIPES: tuple[str, ...] = ("siglip", "siglip2")


def recipe_loss(name: RecipeName) -> Loss:
    """The loss a recipe trains with: SigLIP's (and SigLIP 2's) pairwise sigmoid, else CLIP's
    softmax."""
    return "sigmoid" if name in SIGMOID_RECIPES else "softmax"


def ring_problem(loss: str, impl: str) -> str | None:
    """Why ``impl`` cannot compute ``loss``, or None: the ring is the chunked *sigmoid* loss
    (each b×b block of pairs is independent); softmax normalises over the whole row of B
    logits, so CLIP / EVA-CLIP gather (``trainer.losses``). The one home of this rule."""
    if impl == "ring" and loss != "sigmoid":
        return (
            f"'ring' is the chunked sigmoid loss and the {loss} loss cannot use it; use "
            "loss_impl 'gather' (--loss-impl gather), or recipe 'siglip' (--recipe siglip)"
        )
    return None


def check_loss_impl(loss: str, impl: str) -> None:
    """One ConfigError naming the field for an unknown loss or implementation, or for a
    ring with the softmax loss (:func:`ring_problem`)."""
    if loss not in LOSSES:
        raise ConfigError("loss", f"unknown loss '{loss}'; use one of {LOSSES}")
    if impl not in LOSS_IMPLS:
        raise ConfigError("loss_impl", f"unknown loss_impl '{impl}'; use one of {LOSS_IMPLS}")
    problem = ring_problem(loss, impl)
    if problem:
        raise ConfigError("loss_impl", problem)


class RecipeSpec(BaseModel):
    """What is trained and how: the loss family, its implementation, FLIP ratio, optimizer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: RecipeName = "clip"
    loss_impl: LossImpl = "gather"
    mask_ratio: MaskRatio = 0.0
    optimizer: Optimizer = "adamw"
    betas: tuple[float, float] = (0.9, 0.98)
    init_logit_scale: float = math.log(1 / 0.07)
    max_logit_scale: float = math.log(100.0)
    init_logit_bias: float = 0.0
    siglip2: Siglip2Spec | None = None

    @model_validator(mode="after")
    def _ring_is_sigmoid_only(self) -> RecipeSpec:
        problem = ring_problem(self.loss, self.loss_impl)
        if problem:
            raise ConfigError("loss_impl", f"{problem} (recipe '{self.name}')")
        if self.name == "siglip2" and self.mask_ratio:
            raise ConfigError(
                "mask_ratio",
                f"FLIP patch dropping ({self.mask_ratio:g}) is not part of siglip2 (its masked "
                "prediction is siglip2.masked); drop --mask-ratio",
            )
        if self.siglip2 is not None and self.name != "siglip2":
            raise ConfigError(
                "siglip2",
                f"is SigLIP 2's objectives; recipe '{self.name}' has none: drop "
                "it, or set recipe 'siglip2' (--recipe siglip2)",
            )
        return self

    @property
    def objectives(self) -> Siglip2Spec | None:
        """SigLIP 2's added objectives and phases (``vlscale.specs.siglip2``), or None for the
        other recipes."""
        return self.siglip2 if self.name == "siglip2" else None

    @property
    def loss(self) -> Loss:
        return recipe_loss(self.name)


def default_recipe(name: RecipeName, **overrides) -> RecipeSpec:
    """The recipe with its paper defaults; ``overrides`` replace any of them (None is ignored)."""
    base: dict = {"name": name}
    if name in SIGMOID_RECIPES:
        base |= {"init_logit_scale": math.log(10.0), "init_logit_bias": -10.0}
    if name == "siglip2":
        base |= {"siglip2": Siglip2Spec()}
    elif name == "eva-clip":
        base |= {"mask_ratio": 0.5, "optimizer": "lamb", "betas": (0.9, 0.95)}
    base |= {k: v for k, v in overrides.items() if v is not None}
    return RecipeSpec(**base)
