"""Two-tower model specification."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlscale.specs.fields import Dim
from vlscale.specs.towers import TextTowerSpec, VisionTowerSpec


class ModelSpec(BaseModel):
    """A contrastive two-tower model: image tower, text tower, shared embedding size.

    The torch model also owns two shape-(1,) parameters, ``logit_scale`` and ``logit_bias``
    (the bias is used by the sigmoid loss only), counted in ``LOGIT_PARAMS``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    vision: VisionTowerSpec
    text: TextTowerSpec
    embed_dim: Dim
    source: str = Field(default="", description="where the architecture comes from")

    @model_validator(mode="after")
    def _proj_none_needs_equal_width(self) -> ModelSpec:
        for tower_name, tower in (("vision", self.vision), ("text", self.text)):
            if tower.proj == "none" and tower.trunk.width != self.embed_dim:
                raise ValueError(
                    f"{tower_name}.proj='none' needs {tower_name} width ({tower.trunk.width}) == "
                    f"embed_dim ({self.embed_dim}); set proj='linear' or change embed_dim"
                )
        return self

    def with_image_size(self, image_size: int) -> ModelSpec:
        return self.model_copy(update={"vision": self.vision.with_image_size(image_size)})

    def with_context_length(self, context_length: int) -> ModelSpec:
        """The same model with captions cut or padded to ``context_length`` tokens."""
        text = TextTowerSpec.model_validate(
            self.text.model_dump() | {"context_length": context_length}
        )
        return self.model_copy(update={"text": text})


LOGIT_PARAMS = 2  # logit_scale and logit_bias, one element each
