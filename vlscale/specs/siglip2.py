"""SigLIP 2's added objectives and its phases, as data (Tschannen et al. 2025, arXiv 2502.14786).

SigLIP 2 keeps SigLIP's pairwise sigmoid loss and stacks objectives on it in stages (paper
sections 2.1-2.5). Each objective is a sub-spec here; ``None`` turns it off. With every one off
the recipe is SigLIP, exactly (the planner's property tests hold that).

- **decoder** (LocCa, 2.2), the whole run: ``passes`` decoder passes per example
  (captioning, referring expression, grounded captioning) over the text length,
  cross-attending to the vision trunk's tokens before the MAP head; ``parallel_fraction`` of
  them predict the caption in parallel; the vocabulary loss is chunked.
- **distill** (SILC, 2.3), from ``distill_start`` (80 %): an EMA teacher (forward only) sees
  the global view; the student sees ``local_views`` local crops at ``local_image_size``; a
  separate head on each.
- **masked** (TIPS, 2.3), from ``distill_start``: one more student pass over the global view
  with ``mask_ratio`` of its patch embeddings replaced by a mask token, matched per patch to
  the teacher's tokens.
- **naflex** (2.4.2), from ``naflex_start`` (90 %): aspect kept, sequence length drawn per
  batch from ``lengths``, batch halved at ``halve_batch_at``; no distillation or masked
  prediction in that phase.

Decoder (the shape the planner's layer objects and ``models/`` both build):
token embedding (vocab × w_d) + learned positions (L × w_d); ``depth`` pre-LN blocks of
causal self-attention (w_d, ``heads``), cross-attention (queries w_d; keys and values projected
from the vision width w_v to w_d), MLP (w_d → ``mlp_width`` → w_d, GELU); final LN; an untied
vocabulary projection w_d → vocab with bias, whose logits are computed ``loss_chunk_tokens``
tokens at a time (cross-entropy), so that no (B·L × vocab) tensor ever exists. Defaults derive
from the text tower: depth = text depth // 2 (the paper: "half the text encoder's layers"),
width, heads, MLP width and vocabulary as the text tower's, L its context length.

Distillation head: LN, Linear w_v → ``head_dim``, GELU, Linear ``head_dim`` → ``head_dim``
applied to the pooled (mean) tokens of each view (the student's local views and the teacher's
global view); the masked-prediction head is the same shape applied to every token.

Paper defaults where the paper states them (2 phases at 80 % and 90 %, 8 local views, 50 %
masking, 3 decoder tasks, half parallel prediction); the rest is marked *assumed* below and is
a parameter. A phase's share of the run is a share of the examples seen.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlscale.errors import ConfigError
from vlscale.specs.fields import Count, Depth, Dim, MaskRatio, Real

Fraction = Annotated[Real, Field(ge=0.0, le=1.0)]
"""A share of the run (of the examples seen), in [0, 1]."""

LossWeight = Annotated[Real, Field(ge=0.0, le=1e3)]

PAPER_NAFLEX_LENGTHS: tuple[int, ...] = (128, 256, 576, 784, 1024)
"""NaFlex's sequence lengths, drawn uniformly per batch (section 2.4.2)."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DecoderSpec(_Frozen):
    """The LocCa decoder (section 2.2). ``None`` shape fields derive from the text tower."""

    depth: Depth | None = Field(default=None, description="None: text depth // 2 (paper)")
    width: Dim | None = Field(default=None, description="None: the text tower's width")
    heads: Dim | None = Field(default=None, description="None: the text tower's heads")
    mlp_width: Dim | None = Field(default=None, description="None: the text tower's")
    passes: Count = Field(default=3, le=16, description="decoder tasks per example (paper: 3)")
    parallel_fraction: Fraction = Field(
        default=0.5, description="share of passes predicting the caption in parallel (paper)"
    )
    loss_chunk_tokens: Count = Field(
        default=1024, description="tokens per vocabulary-logit chunk (assumed)"
    )
    weight: LossWeight = Field(default=1.0, description="loss weight (paper: equal to sigmoid)")


class DistillSpec(_Frozen):
    """SILC self-distillation (section 2.3): EMA teacher on the global view, local crops."""

    local_views: Count = Field(default=8, le=64, description="student local crops (paper: 8)")
    local_image_size: Dim | None = Field(
        default=None,
        description="None: 3/7 of the image size, rounded down to whole patches, at least one "
        "patch (96 px at 224, DINO's and SILC's local crop; assumed)",
    )
    head_dim: Dim = Field(default=1024, description="distillation head width (assumed)")
    ema_decay: Annotated[Real, Field(ge=0.0, lt=1.0)] = Field(
        default=0.999, description="teacher EMA momentum, fixed (SILC; value assumed)"
    )
    weight: LossWeight = Field(default=1.0, description="loss weight (paper scales by size)")


class MaskedSpec(_Frozen):
    """TIPS masked prediction (section 2.3): masked student view matched per patch."""

    mask_ratio: MaskRatio = Field(default=0.5, description="patches replaced (paper: 50 %)")
    weight: LossWeight = Field(default=0.25, description="loss weight (paper scales by size)")


class NaflexSpec(_Frozen):
    """NaFlex (section 2.4.2): native aspect ratio, sequence length drawn per batch."""

    lengths: tuple[Dim, ...] = PAPER_NAFLEX_LENGTHS
    halve_batch_at: Dim = Field(default=1024, description="length from which the batch halves")

    @model_validator(mode="after")
    def _ascending(self) -> NaflexSpec:
        if not self.lengths or list(self.lengths) != sorted(set(self.lengths)):
            raise ConfigError(
                "naflex.lengths",
                f"must be distinct and ascending, got {list(self.lengths)}; e.g. "
                f"{list(PAPER_NAFLEX_LENGTHS)}",
            )
        return self

    def batch_scale(self, length: int) -> float:
        """Batch at ``length`` over the nominal batch: 1/2 from ``halve_batch_at`` on."""
        return 0.5 if length >= self.halve_batch_at else 1.0

    def batch_at(self, batch: int, length: int) -> int:
        """The (micro-)batch of ``batch`` samples at ``length``: batch · batch_scale(length)
        rounded, at least 1 (the one rule the planner's step, FLOPs and memory follow)."""
        return max(1, round(batch * self.batch_scale(length)))


class Phase(_Frozen):
    """One stage of the run: its share of the examples and the objectives on in it."""

    name: str
    start_fraction: Fraction
    end_fraction: Fraction
    decoder: bool
    distill: bool
    masked: bool
    naflex: bool


# Every phase a SigLIP 2 run can have, in run order (a run leaves out those it does not use).
PHASE_NAMES = ("base", "self-distillation", "naflex")


class Siglip2Spec(_Frozen):
    """SigLIP 2's objectives (``None``: off) and when each switches on (shares of the run)."""

    decoder: DecoderSpec | None = DecoderSpec()
    distill: DistillSpec | None = DistillSpec()
    masked: MaskedSpec | None = MaskedSpec()
    naflex: NaflexSpec | None = NaflexSpec()
    distill_start: Fraction = Field(
        default=0.8, description="when distillation and masked prediction start (paper: 80 %)"
    )
    naflex_start: Fraction = Field(default=0.9, description="when NaFlex starts (paper: 90 %)")

    @model_validator(mode="after")
    def _ordered(self) -> Siglip2Spec:
        if self.naflex is not None and self.naflex_start < self.distill_start:
            raise ConfigError(
                "siglip2.naflex_start",
                f"{self.naflex_start:g} comes before distill_start {self.distill_start:g}; "
                "the phases run in order: set naflex_start >= distill_start (paper: 0.8, 0.9)",
            )
        return self

    def phases(self) -> tuple[Phase, ...]:
        """The run's stages in order; empty ones (zero share) are left out. Distillation and
        masked prediction are on from ``distill_start`` until NaFlex starts (NaFlex runs
        without them, section 2.4.2); NaFlex from ``naflex_start`` to the end."""
        distill_on = self.distill is not None or self.masked is not None
        end = self.naflex_start if self.naflex is not None else 1.0
        cuts = [0.0]
        if distill_on:
            cuts.append(min(self.distill_start, end))
        cuts.append(end)
        if self.naflex is not None:
            cuts.append(1.0)
        base, distillation, naflex = PHASE_NAMES
        names = [base] + ([distillation] if distill_on else [])
        names += [naflex] if self.naflex is not None else []
        phases = []
        for name, start, stop in zip(names, cuts[:-1], cuts[1:], strict=True):
            if stop <= start:
                continue
            extra = name == distillation
            phases.append(
                Phase(
                    name=name,
                    start_fraction=start,
                    end_fraction=stop,
                    decoder=self.decoder is not None,
                    distill=extra and self.distill is not None,
                    masked=extra and self.masked is not None,
                    naflex=name == naflex,
                )
            )
        return tuple(phases)

    @property
    def objectives_off(self) -> bool:
        """Every added objective off: the run is SigLIP's."""
        return all(x is None for x in (self.decoder, self.distill, self.masked, self.naflex))


def check_against_towers(spec: Siglip2Spec, vision, text) -> None:
    """Refuse shapes the towers do not allow (one ConfigError naming the field): a decoder
    wider or deeper than the text tower, heads that do not divide its width, a local crop
    larger than the image or not whole patches, NaFlex lengths not multiples of the patch
    grid's side (image_size // patch_size: the aspect-preserving resize lays out whole rows)."""
    if spec.decoder is not None:
        d = spec.decoder
        t = text.trunk
        if d.width is not None and d.width > t.width:
            raise ConfigError(
                "siglip2.decoder.width",
                f"{d.width} is wider than the text tower ({t.width}); the decoder shares the "
                f"text tower's vocabulary and width: use at most {t.width}",
            )
        if d.depth is not None and d.depth > t.depth:
            raise ConfigError(
                "siglip2.decoder.depth",
                f"{d.depth} is deeper than the text tower ({t.depth}); paper: {t.depth // 2}",
            )
        width, heads = decoder_width(spec, text), decoder_heads(spec, text)
        if width % heads:
            raise ConfigError("siglip2.decoder.heads", f"{heads} heads do not divide width {width}")
    if spec.distill is not None and getattr(vision, "patch_size", None) is None:
        raise ConfigError(
            "siglip2.distill", "local crops need a ViT image tower; set distill: null"
        )
    if spec.distill is not None:
        size = spec.distill.local_image_size
        if size is not None and (size % vision.patch_size or size > vision.image_size):
            raise ConfigError(
                "siglip2.distill.local_image_size",
                f"{size} must be a multiple of the patch size {vision.patch_size} and at most "
                f"the image size {vision.image_size}; e.g. {local_image_size(spec, vision)}",
            )
    if spec.naflex is not None:
        side = vision.image_size // vision.patch_size
        bad = [n for n in spec.naflex.lengths if n % side]
        if bad:
            raise ConfigError(
                "siglip2.naflex.lengths",
                f"{bad} are not multiples of the patch grid's side {side} "
                f"({vision.image_size} / {vision.patch_size}); e.g. "
                f"{[side * k for k in (8, 16, 36, 49, 64)]}",
            )


def decoder_depth(spec: Siglip2Spec, text) -> int:
    d = spec.decoder
    return d.depth if d and d.depth is not None else max(1, text.trunk.depth // 2)


def decoder_width(spec: Siglip2Spec, text) -> int:
    d = spec.decoder
    return d.width if d and d.width is not None else text.trunk.width


def decoder_heads(spec: Siglip2Spec, text) -> int:
    d = spec.decoder
    return d.heads if d and d.heads is not None else text.trunk.heads


def decoder_mlp_width(spec: Siglip2Spec, text) -> int:
    d = spec.decoder
    return d.mlp_width if d and d.mlp_width is not None else text.trunk.mlp_width


def local_image_size(spec: Siglip2Spec, vision) -> int:
    """The local crop's side in pixels: the spec's, else 3/7 of the image (96 at 224) rounded
    down to whole patches, at least one patch."""
    d = spec.distill
    if d is not None and d.local_image_size is not None:
        return d.local_image_size
    p = vision.patch_size
    return max(p, (vision.image_size * 3 // 7) // p * p)
