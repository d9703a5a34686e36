"""CLIP's symmetric softmax InfoNCE loss, distributed as the "local loss" (Radford et al. 2021).

Global definition over a batch of B pairs, with s = exp(logit_scale) and unit-norm x_i, y_j::

    z_ij   = s · x_i · y_j                                   (B × B)
    L      = ½ [ mean_i CE(z_i·, i) + mean_j CE(z_·j, j) ]

Distributed over W ranks with b = B / W local pairs each (rank r owns rows r·b … r·b + b − 1):
both embedding sets are all-gathered WITH grad, rank r forms only its b rows in each direction,

    L_r = ½ [ mean_{i∈r} CE(s · x_i Yᵀ, i) + mean_{j∈r} CE(s · y_j Xᵀ, j) ]      (two b × B blocks)

so that mean_r L_r = L. Gradient convention: autograd turns each gather into a reduce-scatter
(sum), so rank r's embeddings receive d(Σ_s L_s)/dx_r = W · dL/dx_r, and its ``logit_scale``
receives dL_r/ds'. When DDP / FSDP average parameter gradients over the W ranks, every parameter
gradient equals that of the global loss L. The clamp of ``logit_scale`` to ln 100 is applied by
the trainer to the parameter, not here.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from trainer.losses.collectives import all_gather_with_grad, group_rank_size
from trainer.losses.inputs import check_pair, check_scalar_param, compute_dtype


def clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Local-rows CLIP loss: the mean over this rank's b rows, both directions (see module doc).

    Args:
        image, text: (b, d) L2-normalised embeddings of this rank's pairs.
        logit_scale: shape-(1,) log temperature s'; the logits use exp(s').
        group: the data-parallel process group; None = WORLD if initialised, else single process.
    Returns:
        0-dim fp32 (float64 for float64 inputs) loss.
    """
    check_pair(image, text)
    check_scalar_param("logit_scale", logit_scale)
    rank, _ = group_rank_size(group)
    dtype = compute_dtype(image)
    x = image.to(dtype)  # (b, d)
    y = text.to(dtype)  # (b, d)
    scale = logit_scale.to(dtype).exp().reshape(())  # ()
    all_x = all_gather_with_grad(x, group)  # (B, d)
    all_y = all_gather_with_grad(y, group)  # (B, d)
    b = x.shape[0]
    labels = rank * b + torch.arange(b, device=x.device)  # (b,) global column of each positive
    # scale folded into the small (b, d) operand: no second (b, B) buffer per direction
    logits_image = (scale * x) @ all_y.T  # (b, B): local images vs all texts
    logits_text = (scale * y) @ all_x.T  # (b, B): local texts vs all images
    return 0.5 * (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels))
