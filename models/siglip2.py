"""SigLIP 2's student additions and its EMA teacher (Tschannen et al. 2025, arXiv 2502.14786).

The student is the two-tower model plus, at the top level and in this order (the shared
contract of ``vlscale/specs/siglip2.py``; an objective that is off adds nothing):

- ``decoder``: the LocCa caption decoder (``models.decoder``), cross-attending to the image
  trunk's normed tokens of the global view before pooling, (B, S_v, v);
- ``distill_head`` (SILC) and ``masked_head`` (TIPS): LN(v), Linear(v -> hd), GELU,
  Linear(hd -> hd); distill_head reads the mean over tokens of each local view, masked_head
  the masked positions' tokens of the masked view;
- ``patch_mask_token`` (v,): replaces the masked patches' embeddings (after the position
  embedding, before a class token) in the masked view, which runs all S_v tokens.

The teacher (never seen by the optimizer) holds EMA copies of ``visual``, ``distill_head`` and
``masked_head`` and sees the global view, unmasked, at full resolution: its distill_head on the
mean of its normed tokens (B rows) and its masked_head on the student's masked positions
(B·K_m rows). The trainer creates it as a copy of the student when the self-distillation phase
starts and moves it by θ_t <- m·θ_t + (1 - m)·θ_s after every optimizer step
(``trainer.siglip2``).

Every norm is a LayerNorm with the text trunk's epsilon; every Linear has a bias.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.decoder import Decoder
from models.init import init_weights
from models.layers import fan_in_std
from models.two_tower import DEFAULT_LOGIT_SCALE, TwoTower
from models.vision import VisionTower
from vlscale.specs.models import ModelSpec
from vlscale.specs.siglip2 import (
    DistillSpec,
    Siglip2Spec,
    decoder_depth,
    decoder_heads,
    decoder_mlp_width,
    decoder_width,
)


def head_dim(s2: Siglip2Spec) -> int:
    """hd of both heads: ``distill.head_dim`` (its default when distillation is off)."""
    return (s2.distill or DistillSpec()).head_dim


class ProjectionHead(nn.Module):
    """SILC / TIPS head: LN(v) -> Linear(v, hd) -> GELU -> Linear(hd, hd)."""

    def __init__(self, width: int, head_dim: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.fc1 = nn.Linear(width, head_dim)
        self.fc2 = nn.Linear(head_dim, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


@dataclass
class Siglip2Inputs:
    """What one micro-step's added objectives need besides images and tokens (per rank).

    passes: one (b,) bool per decoder pass (True: that example's pass predicts in parallel);
    caption_loss: ``(hidden, head_weight, head_bias) -> loss`` over the P·b rows of every pass
    (``trainer.losses.siglip2``);
    local_images: (b·n_loc, 3, l, l), example-major; mask_ids: (b, K_m) masked patch indices."""

    passes: list[torch.Tensor] | None = None
    caption_loss: Callable | None = None
    local_images: torch.Tensor | None = None
    mask_ids: torch.Tensor | None = None


def masked_rows(tokens: torch.Tensor, mask_ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, S, v) normed tokens at the masked patches (B, K_m) -> (B·K_m, v); patch i sits at
    sequence position prefix + i (class token first)."""
    b, k = mask_ids.shape
    idx = (mask_ids + prefix)[:, :, None].expand(b, k, tokens.shape[-1])  # (B, K_m, v)
    return torch.gather(tokens, 1, idx).reshape(b * k, -1)


def patch_mask_of(mask_ids: torch.Tensor, num_patches: int) -> torch.Tensor:
    """(B, K_m) indices -> (B, N) bool, True at the masked patches."""
    mask = torch.zeros(mask_ids.shape[0], num_patches, dtype=torch.bool, device=mask_ids.device)
    return mask.scatter_(1, mask_ids, True)


class Siglip2Model(TwoTower):
    """The SigLIP 2 student: ``TwoTower`` plus the added objectives' modules (module doc)."""

    def __init__(
        self,
        spec: ModelSpec,
        s2: Siglip2Spec,
        init_logit_scale: float = DEFAULT_LOGIT_SCALE,
        init_logit_bias: float = 0.0,
    ):
        super().__init__(spec, init_logit_scale, init_logit_bias)
        self.s2 = s2
        v, text = spec.vision.trunk.width, spec.text
        eps = text.trunk.norm_eps
        self.decoder = None
        if s2.decoder is not None:
            self.decoder = Decoder(
                vocab=text.vocab_size,
                context=text.context_length,
                width=decoder_width(s2, text),
                depth=decoder_depth(s2, text),
                heads=decoder_heads(s2, text),
                mlp_width=decoder_mlp_width(s2, text),
                vision_width=v,
                eps=eps,
            )
        self.distill_head = ProjectionHead(v, head_dim(s2), eps) if s2.distill is not None else None
        self.masked_head = ProjectionHead(v, head_dim(s2), eps) if s2.masked is not None else None
        self.patch_mask_token = nn.Parameter(torch.empty(v)) if s2.masked is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        token = getattr(self, "patch_mask_token", None)
        if token is not None:
            nn.init.trunc_normal_(token, std=fan_in_std(token.shape[-1]))

    def forward(
        self,
        images: torch.Tensor,
        tokens: torch.Tensor,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        extra: Siglip2Inputs | None = None,
    ):
        """Without ``extra``: the two embeddings, as ``TwoTower``. With it: a dict of
        ``image``, ``text`` (b, embed_dim) normalised fp32, ``caption`` (the caption loss
        of every decoder pass at once: their mean), ``local`` (b·n_loc, hd) distill_head
        outputs, ``masked`` (b·K_m, hd)."""
        if extra is None:
            return super().forward(images, tokens, mask_ratio=mask_ratio, generator=generator)
        out: dict = {}
        if extra.passes:
            feats, memory = self.visual(images, tokens="both")  # (b, e), (b, S_v, v)
            p = len(extra.passes)
            # every pass in one call, pass-major (P·b rows): under FSDP the decoder's units are
            # gathered once per step, not once per pass (the planner's decoder at b·P samples)
            out["caption"] = self.decoder(
                tokens.repeat(p, 1),  # (P·b, L)
                memory.repeat(p, 1, 1),  # (P·b, S_v, v)
                torch.cat(extra.passes),  # (P·b,)
                extra.caption_loss,
            )
        else:
            feats = self.visual(images)
        out["image"] = F.normalize(feats.float(), dim=-1)
        out["text"] = self.encode_text(tokens)
        if extra.local_images is not None:
            local = self.visual(extra.local_images, tokens="only")  # (b·n_loc, S_l, v)
            out["local"] = self.distill_head(local.mean(dim=1))  # (b·n_loc, hd)
        if extra.mask_ids is not None:
            vis = self.visual.spec
            mask = patch_mask_of(extra.mask_ids, vis.num_patches)  # (b, N)
            seen = self.visual(
                images, patch_mask=mask, mask_token=self.patch_mask_token, tokens="only"
            )  # (b, S_v, v)
            rows = masked_rows(seen, extra.mask_ids, vis.num_prefix_tokens)  # (b·K_m, v)
            out["masked"] = self.masked_head(rows)  # (b·K_m, hd)
        return out


class Teacher(nn.Module):
    """EMA copies of the student's ``visual``, ``distill_head`` and ``masked_head``."""

    def __init__(self, spec: ModelSpec, s2: Siglip2Spec):
        super().__init__()
        v, eps = spec.vision.trunk.width, spec.text.trunk.norm_eps
        hd = head_dim(s2)
        self.visual = VisionTower(spec.vision, spec.embed_dim)
        # the teacher never pools: its normed tokens feed its heads only, so it holds (and
        # averages) no attention-pool head or projection (vlscale.costs.siglip2's teacher)
        self.visual.head, self.visual.proj = None, nn.Identity()
        self.distill_head = ProjectionHead(v, hd, eps) if s2.distill is not None else None
        self.masked_head = ProjectionHead(v, hd, eps) if s2.masked is not None else None

    @torch.no_grad()
    def forward(
        self, images: torch.Tensor, mask_ids: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Global view, unmasked: ``global`` (b, hd) distill_head on the mean of its normed
        tokens; ``masked`` (b·K_m, hd) masked_head at the student's masked positions."""
        tokens = self.visual(images, tokens="only")  # (b, S_v, v)
        out = {}
        if self.distill_head is not None:
            out["global"] = self.distill_head(tokens.mean(dim=1))
        if self.masked_head is not None and mask_ids is not None:
            prefix = self.visual.spec.num_prefix_tokens
            out["masked"] = self.masked_head(masked_rows(tokens, mask_ids, prefix))
        return out


def build_siglip2_model(
    spec: ModelSpec,
    s2: Siglip2Spec,
    *,
    device: str | torch.device = "cpu",
    init_logit_scale: float = DEFAULT_LOGIT_SCALE,
    init_logit_bias: float = 0.0,
) -> Siglip2Model:
    """The student on ``device`` (on "meta": nothing allocated, ``init_weights`` later)."""
    with torch.device(device):
        model = Siglip2Model(spec, s2, init_logit_scale, init_logit_bias)
    if torch.device(device).type != "meta":
        init_weights(model)
    return model


def build_teacher(spec: ModelSpec, s2: Siglip2Spec, *, device="meta") -> Teacher:
    """The teacher's modules on ``device`` (the trainer copies the student into them)."""
    with torch.device(device):
        teacher = Teacher(spec, s2)
    teacher.requires_grad_(False)
    return teacher
