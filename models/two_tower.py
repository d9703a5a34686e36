"""The contrastive two-tower model and ``build_model``.

``TwoTower`` owns ``visual`` (image tower: ``VisionTower`` or ``ResNetTower``), ``text`` (text
tower) and two shape-(1,) parameters, ``logit_scale`` (log temperature; CLIP init ln(1/0.07))
and ``logit_bias`` (SigLIP's b; unused by the softmax loss). Shape (1,) rather than () so that
FSDP2 can shard them along dim 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.init import init_weights
from models.resnet import ResNetTower
from models.text import TextTower
from models.vision import VisionTower
from vlscale.specs.models import ModelSpec

DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


class PrecomputedImage(nn.Module):
    """The image tower's place when its embeddings are precomputed (``--image-embeddings``):
    the "images" it is given are the tower's features (B, embed_dim) already; no parameters,
    no blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList()

    def forward(self, features: torch.Tensor, mask_ratio: float = 0.0, generator=None):
        return features


class TwoTower(nn.Module):
    def __init__(
        self,
        spec: ModelSpec,
        init_logit_scale: float = DEFAULT_LOGIT_SCALE,
        init_logit_bias: float = 0.0,
    ):
        super().__init__()
        self.spec = spec
        image_tower = ResNetTower if spec.vision.kind == "resnet" else VisionTower
        self.visual = image_tower(spec.vision, spec.embed_dim)
        self.text = TextTower(spec.text, spec.embed_dim)
        self.init_logit_scale = float(init_logit_scale)
        self.init_logit_bias = float(init_logit_bias)
        self.logit_scale = nn.Parameter(torch.empty(1))
        self.logit_bias = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.logit_scale.fill_(self.init_logit_scale)
            self.logit_bias.fill_(self.init_logit_bias)

    def drop_image_tower(self) -> None:
        """Precomputed image embeddings: the image tower leaves the model (and the step)."""
        self.visual = PrecomputedImage()

    def encode_image(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embed_dim); L2-normalised in fp32 unless ``normalize=False``.
        A ResNet tower takes ``mask_ratio`` 0 only (``ModelSpec.check_mask_ratio``)."""
        self.spec.check_mask_ratio(mask_ratio)
        x = self.visual(images, mask_ratio=mask_ratio, generator=generator)
        return F.normalize(x.float(), dim=-1) if normalize else x

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, S) token ids -> (B, embed_dim); L2-normalised in fp32 unless ``normalize=False``."""
        x = self.text(tokens)
        return F.normalize(x.float(), dim=-1) if normalize else x

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both embeddings, L2-normalised, fp32: ((B, embed_dim), (B, embed_dim))."""
        img = self.encode_image(images, mask_ratio=mask_ratio, generator=generator)
        return img, self.encode_text(tokens)


def build_model(
    spec: ModelSpec,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    init_logit_scale: float = DEFAULT_LOGIT_SCALE,
    init_logit_bias: float = 0.0,
) -> TwoTower:
    """Build the torch model for ``spec`` directly on ``device``.

    On "meta" nothing is allocated (for counting, or for FSDP2: shard, ``to_empty``, then
    ``init_weights``); on a real device the weights are initialised. ``dtype`` casts parameters
    and buffers after init (None keeps fp32).
    """
    with torch.device(device):
        model = TwoTower(spec, init_logit_scale, init_logit_bias)
    if torch.device(device).type != "meta":
        init_weights(model)
    if dtype is not None:
        model = model.to(dtype)
    return model
