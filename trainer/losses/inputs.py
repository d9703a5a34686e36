"""Input checks and the compute dtype shared by the contrastive losses.

Logits and losses are computed in fp32 whatever the embedding dtype (bf16 logits lose the
small differences the softmax / sigmoid is sensitive to); float64 inputs stay float64 so tests
can compare against references at 1e-6 and tighter.
"""

from __future__ import annotations

import torch

from vlscale.errors import ConfigError


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs (tests), float32 for everything else."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_pair(image: torch.Tensor, text: torch.Tensor) -> None:
    """Both embeddings are (b, d) with the same b and d on every rank."""
    if image.dim() != 2 or text.dim() != 2:
        raise ConfigError(
            "embeddings",
            f"expected (batch, dim) image and text embeddings, got {tuple(image.shape)} and "
            f"{tuple(text.shape)}; flatten or pool the tower outputs before the loss",
        )
    if image.shape != text.shape:
        raise ConfigError(
            "embeddings",
            f"image {tuple(image.shape)} and text {tuple(text.shape)} embeddings differ; both "
            "towers must project to the same embed_dim and see the same local batch",
        )


def check_scalar_param(name: str, p: torch.Tensor | None) -> None:
    """``logit_scale`` / ``logit_bias`` are one-element tensors (shape-(1,) parameters)."""
    if p is None or p.numel() != 1:
        shape = None if p is None else tuple(p.shape)
        raise ConfigError(name, f"expected a one-element tensor (shape (1,)), got {shape}")
