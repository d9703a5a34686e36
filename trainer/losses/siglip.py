"""SigLIP's pairwise sigmoid loss (Zhai et al. 2023), two distributed implementations.

Global definition over B pairs, t = exp(t′), bias β, unit-norm x_i, y_j::

    z_ij = t · x_i · y_j + β,     ℓ_ij = +1 if i = j else −1
    L    = −(1/B) Σ_i Σ_j log σ(ℓ_ij · z_ij)

normalised by the number of images, as in the paper's pseudocode (``/ n``) and big_vision's
``mean_i(sum_j nll_ij)``. Over W ranks with b = B / W local pairs, rank r computes its b image
rows against all B texts and normalises by b::

    L_r = −(1/b) Σ_{i∈r} Σ_j log σ(ℓ_ij · z_ij),       mean_r L_r = L.

Gradient convention (same as ``clip_loss``): rank r's embeddings receive d(Σ_s L_s)/d(x_r, y_r)
= W · dL/d(x_r, y_r); t′ and β receive dL_r/d(t′, β); the DDP/FSDP average over ranks then yields
the gradients of L for every parameter.

* ``impl="gather"``: all-gather the texts with grad (one b × B logit block; backward is a
  reduce-scatter). Memory O(b·B).
* ``impl="ring"``: the chunked loss of ``trainer.losses.siglip_ring`` (W − 1 neighbour hops of the
  text block, analytic block gradients). Memory O(b² + b·d) whatever W is.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.losses.collectives import (
    all_gather_with_grad,
    group_rank_size,
    resolve_group,
    ring_group_for,
)
from trainer.losses.inputs import check_pair, check_scalar_param, compute_dtype
from trainer.losses.siglip_ring import sigmoid_nll_sum, sigmoid_ring_loss
from vlscale.errors import ConfigError

IMPLS = ("gather", "ring")


def siglip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    impl: str = "gather",
) -> torch.Tensor:
    """Local sigmoid loss L_r (see module doc).

    Args:
        image, text: (b, d) L2-normalised embeddings of this rank's pairs.
        logit_scale: shape-(1,) t′; the logits use t = exp(t′).
        logit_bias: shape-(1,) β.
        group: data-parallel group; None = WORLD if initialised, else single process.
        impl: "gather" (all-gather texts) or "ring" (chunked, memory independent of W).
    Returns:
        0-dim fp32 (float64 for float64 inputs) loss.
    """
    if impl not in IMPLS:
        raise ConfigError("loss_impl", f"unknown SigLIP loss implementation {impl!r}; use {IMPLS}")
    check_pair(image, text)
    check_scalar_param("logit_scale", logit_scale)
    check_scalar_param("logit_bias", logit_bias)
    dtype = compute_dtype(image)
    x = image.to(dtype)  # (b, d)
    y = text.to(dtype)  # (b, d)
    scale = logit_scale.to(dtype)
    bias = logit_bias.to(dtype)
    if impl == "ring":
        _, world = group_rank_size(group)
        ring = ring_group_for(group) if world > 1 else None
        return sigmoid_ring_loss(x, y, scale, bias, ring)
    return _gather_loss(x, y, scale, bias, group)


def _gather_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    group: dist.ProcessGroup | None,
) -> torch.Tensor:
    rank, _ = group_rank_size(group)
    b = x.shape[0]
    all_y = all_gather_with_grad(y, resolve_group(group))  # (B, d)
    # t folded into the small (b, d) operand; bias fused: one (b, B) buffer for the logits
    logits = torch.addmm(logit_bias, logit_scale.exp() * x, all_y.T)  # (b, B)
    return sigmoid_nll_sum(logits, positives_at=rank * b) / b  # own pairs at columns r·b + i
