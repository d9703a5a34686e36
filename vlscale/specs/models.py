"""Two-tower model specification."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlscale.specs.fields import Dim
from vlscale.specs.towers import (
    IMAGE_TOWER_KINDS,
    ImageTowerSpec,
    TextTowerSpec,
    check_patch_dropout,
)


class ModelSpec(BaseModel):
    """A contrastive two-tower model: image tower, text tower, shared embedding size.

    The image tower is a ViT (``VisionTowerSpec``) or CLIP's ResNet (``ResNetTowerSpec``,
    ``vision.kind == "resnet"``); code that needs a ViT checks ``vision.kind``.

    The torch model also owns two shape-(1,) parameters, ``logit_scale`` and ``logit_bias``
    (the bias is used by the sigmoid loss only), counted in ``LOGIT_PARAMS``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    vision: ImageTowerSpec
    text: TextTowerSpec
    embed_dim: Dim
    source: str = Field(default="", description="where the architecture comes from")

    @field_validator("vision", mode="wrap")
    @classmethod
    def _untagged_errors(cls, value, handler):
        # errors name the field as written ("vision.trunk.heads"), not the union member's tag
        try:
            return handler(value)
        except ValidationError as exc:
            errors = [
                e | {"loc": e["loc"][1:]} if e["loc"][:1] in IMAGE_TOWER_KINDS else e
                for e in exc.errors()
            ]
            raise ValidationError.from_exception_data(exc.title, errors) from None

    @model_validator(mode="after")
    def _proj_none_needs_equal_width(self) -> ModelSpec:
        # a ResNet's attention pool always projects (c_proj): nothing to check
        towers = [("vision", self.vision)] if self.vision.kind == "vit" else []
        for tower_name, tower in (*towers, ("text", self.text)):
            if tower.proj == "none" and tower.trunk.width != self.embed_dim:
                raise ValueError(
                    f"{tower_name}.proj='none' needs {tower_name} width ({tower.trunk.width}) == "
                    f"embed_dim ({self.embed_dim}); set proj='linear' or change embed_dim"
                )
        return self

    def check_mask_ratio(self, mask_ratio: float) -> float:
        """``mask_ratio`` as a float if this model's image tower can drop patches at that ratio
        (any ratio for a ViT; only 0 for a ResNet); else one ConfigError on ``mask_ratio``."""
        return check_patch_dropout(self.vision, mask_ratio, self.name)

    def with_image_size(self, image_size: int) -> ModelSpec:
        return self.model_copy(update={"vision": self.vision.with_image_size(image_size)})

    def with_context_length(self, context_length: int) -> ModelSpec:
        """The same model with captions cut or padded to ``context_length`` tokens."""
        text = TextTowerSpec.model_validate(
            self.text.model_dump() | {"context_length": context_length}
        )
        return self.model_copy(update={"text": text})


LOGIT_PARAMS = 2  # logit_scale and logit_bias, one element each
