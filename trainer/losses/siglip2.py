"""SigLIP 2's losses (Tschannen et al. 2025, arXiv 2502.14786, sections 2.2-2.3).

Per rank, on its b examples (every term a mean over rows of equal count on every rank, so the
mean over ranks that FSDP's gradient averaging takes is the global batch's loss)::

    L = L_sigmoid                                     SigLIP's loss (ring or gather, unchanged)
      + w_dec  · mean_passes CE_caption               LocCa decoder, each pass
      + w_dist · mean_{b·n_loc} H(t_i, s_iv)          SILC, teacher global view vs local views
      + w_mask · mean_{b·K_m}  H(t_ik, s_ik)          TIPS, per masked patch

with H(t, s) = −Σ_c softmax(t / 0.04)_c · log_softmax(s / 0.1)_c (DINO's teacher and student
temperatures, Caron et al. 2021; assumed: SILC and TIPS follow DINO), no centering.

CE_caption of one pass: per example the mean token cross-entropy over its non-pad targets
(target i is token i + 1 of the row; pads ignored), then the mean over the examples. The passes
run as one batch of P·b rows, so the mean over all rows is the mean over passes. The
vocabulary logits are computed ``loss_chunk_tokens`` rows of the flattened (b·L, d) hidden
states at a time, each chunk under ``torch.utils.checkpoint`` (non-reentrant): its (chunk, V)
logits are dropped after forward and recomputed in backward, so no (b·L, V) tensor is kept.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.losses.siglip import siglip_loss

TEACHER_TEMPERATURE = 0.04  # DINO (Caron et al. 2021), assumed for SILC / TIPS
STUDENT_TEMPERATURE = 0.1


def caption_targets(tokens: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, L) rows -> targets (b, L) (row shifted left by one, pad last) and per-target
    weights (b, L) fp32: 1 / (non-pad targets of the example) where the target is no pad."""
    targets = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], pad_id)], dim=1)
    real = (targets != pad_id).float()  # (b, L)
    return targets, real / real.sum(dim=1, keepdim=True).clamp(min=1.0)


def _chunk_ce(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    targets: torch.Tensor,
    w: torch.Tensor,
) -> torch.Tensor:
    """Σ_rows w · CE of one chunk: h (c, d), targets (c,), w (c,) -> 0-dim fp32."""
    logits = F.linear(h, weight, bias).float()  # (c, V)
    return (F.cross_entropy(logits, targets, reduction="none") * w).sum()


def caption_loss(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    tokens: torch.Tensor,
    pad_id: int,
    chunk_tokens: int,
) -> torch.Tensor:
    """One pass's caption loss (module doc): h (b, L, d) normed hidden states, head weight
    (V, d) and bias (V,), tokens (b, L). Chunks of ``chunk_tokens`` rows of (b·L, d)."""
    b, s, d = h.shape
    targets, w = caption_targets(tokens, pad_id)
    flat_h, flat_t, flat_w = h.reshape(b * s, d), targets.reshape(-1), w.reshape(-1)
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, b * s, chunk_tokens):
        j = min(i + chunk_tokens, b * s)
        total = total + checkpoint(
            _chunk_ce, flat_h[i:j], weight, bias, flat_t[i:j], flat_w[i:j], use_reentrant=False
        )
    return total / b


def make_caption_loss(tokens: torch.Tensor, pad_id: int, chunk_tokens: int) -> Callable:
    """``(hidden, head_weight, head_bias) -> loss`` for ``models.decoder.Decoder.forward``."""
    return lambda h, weight, bias: caption_loss(h, weight, bias, tokens, pad_id, chunk_tokens)


def distill_ce(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """mean_rows H(t, s), teacher and student (R, hd); the teacher carries no gradient."""
    t = F.softmax(teacher.detach().float() / TEACHER_TEMPERATURE, dim=-1)  # (R, hd)
    log_s = F.log_softmax(student.float() / STUDENT_TEMPERATURE, dim=-1)  # (R, hd)
    return -(t * log_s).sum(dim=-1).mean()


def siglip2_loss(
    out: dict,
    teacher: dict | None,
    s2,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    group: dist.ProcessGroup | None,
    impl: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The total of the module doc from the student's outputs ``out`` (``Siglip2Model``) and
    the teacher's (``Teacher``; None outside self-distillation). Returns (total, parts) with
    parts the unweighted terms as floats, for the records."""
    total = siglip_loss(out["image"], out["text"], logit_scale, logit_bias, group, impl=impl)
    parts = {"sigmoid": total.detach()}
    if "caption" in out:
        caption = out["caption"]  # every pass at once: P·b rows of b each, so their mean
        parts["caption"] = caption.detach()
        total = total + s2.decoder.weight * caption
    if "local" in out:
        n_loc = out["local"].shape[0] // teacher["global"].shape[0]
        targets = teacher["global"].repeat_interleave(n_loc, dim=0)  # (b·n_loc, hd)
        distill = distill_ce(targets, out["local"])
        parts["distill"] = distill.detach()
        total = total + s2.distill.weight * distill
    if "masked" in out:
        masked = distill_ce(teacher["masked"], out["masked"])
        parts["masked"] = masked.detach()
        total = total + s2.masked.weight * masked
    return total, parts
