"""What a SigLIP 2 phase (``vlscale.specs.siglip2.Phase``) adds to SigLIP's step, as layers:
the extra passes, their parameters and their FLOPs (torch-free; Tschannen et al. 2025).

A phase's step is SigLIP's (both towers on the global view, the sigmoid loss) plus, for each
local sample, the passes of :func:`phase_passes`:

    pass          layers (module paths)                          samples per example  trains
    decoder       decoder (embed), decoder.blocks.i, decoder     ``passes``           yes
                  (norm, chunked vocabulary head + loss)
    local_views   visual (stem at l px), visual.blocks.i at S_l,  n_loc               yes
                  distill_head (on the mean token)
    masked_view   patch_mask_token, visual (stem), visual.blocks  1                   yes
                  at S_v, masked_head (on the K_m masked tokens)
    teacher       teacher.visual (stem), teacher.visual.blocks.i, 1                   no
                  teacher.distill_head, teacher.masked_head

The student's views run through the student's own FSDP units ("visual", "visual.blocks.i");
the heads and the mask token are top-level modules of the student, which ride with the image
tower's own unit as the root's parameters do (``vlscale.plan.workload_builder.unit_params``).
The decoder's units are "decoder" (embed, norm, head) and "decoder.blocks.i"; the teacher's
"teacher.visual" (stem and heads) and "teacher.visual.blocks.i", forward only.

The decoder cross-attends to the global view's normed tokens (the MAP head's input), so it adds
no vision work; the local views and the masked view skip the pool and the projection (their
heads read the normed tokens). NaFlex changes the global view's sequence length, not the layers
(``naflex_model``).

Cross-check with the trainer (FlopCounterMode on ``models/``): :func:`decoder_pass_flops`,
:func:`teacher_forward_flops`, :func:`phase_forward_flops`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from vlscale.costs.flops import forward_flops
from vlscale.costs.layers import Layer, OpList, PatchEmbed, TransformerBlock, is_unit
from vlscale.costs.layers.decoder import DecoderBlock, DecoderEmbed, DecoderHead
from vlscale.costs.layers.primitives import norm_shapes
from vlscale.costs.layers.siglip2_heads import DistillHead, MaskedHead, MaskToken
from vlscale.costs.params import layers_params, numel
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import RecipeSpec
from vlscale.specs.siglip2 import (
    DistillSpec,
    Phase,
    Siglip2Spec,
    decoder_depth,
    decoder_heads,
    decoder_mlp_width,
    decoder_width,
    local_image_size,
)
from vlscale.specs.towers import VisionTowerSpec

Layers = tuple[Layer, ...]


@dataclass(frozen=True)
class Pass:
    """One extra pass of a phase's step: its layers, the samples each example sends through it
    (``per_sample``) and whether it trains (forward + backward) or only runs forward."""

    name: str
    layers: Layers
    per_sample: int
    trains: bool


def decoder_layers(spec: ModelSpec, s2: Siglip2Spec) -> Layers:
    """The decoder's layers in forward order (``vlscale.costs.layers.decoder``)."""
    d, t = decoder_width(s2, spec.text), spec.text
    length, vocab = t.context_length, t.vocab_size
    embed = DecoderEmbed("decoder", vocab, d, length)
    v = spec.vision
    blocks = [
        DecoderBlock(
            f"decoder.blocks.{i}",
            d,
            decoder_mlp_width(s2, t),
            decoder_heads(s2, t),
            length,
            v.seq_len(),
            v.trunk.width,
        )
        for i in range(decoder_depth(s2, t))
    ]
    chunk = s2.decoder.loss_chunk_tokens if s2.decoder else length
    return (embed, *blocks, DecoderHead("decoder", d, vocab, length, chunk))


def _trunk(prefix: str, v: VisionTowerSpec, tokens: int) -> Layers:
    """Stem and blocks of the image tower ``v`` (no pool, no projection)."""
    t = v.trunk
    blocks = [
        TransformerBlock(f"{prefix}.blocks.{i}", t, tokens, causal=False, rope=v.rope)
        for i in range(t.depth)
    ]
    return (PatchEmbed(prefix, v), *blocks)


def masked_patches(spec: ModelSpec, s2: Siglip2Spec) -> int:
    """K_m = N − kept(mask_ratio): the patches TIPS replaces by the mask token."""
    v = spec.vision
    return v.num_patches - v.kept_patches(s2.masked.mask_ratio) if s2.masked else 0


def head_layers(spec: ModelSpec, s2: Siglip2Spec, phase: Phase | None = None) -> Layers:
    """The student's heads at the global view and the mask token (``param_shapes`` order of the
    top-level modules): those the spec has, or with ``phase`` those that train in it."""
    v = spec.vision
    w, s, out = v.trunk.width, v.seq_len(), []
    distill = s2.distill is not None and (phase is None or phase.distill)
    masked = s2.masked is not None and (phase is None or phase.masked)
    if distill:
        out.append(DistillHead("distill_head", w, head_dim(s2), s, 1))
    if masked:
        hd, k = head_dim(s2), masked_patches(spec, s2)
        out += [
            MaskedHead("masked_head", w, hd, s, k),
            MaskToken("patch_mask_token", w, v.num_patches),
        ]
    return tuple(out)


def added_layers(spec: ModelSpec, s2: Siglip2Spec, phase: Phase | None = None) -> Layers:
    """The student's added layers (decoder, heads, mask token): all the spec has, or with
    ``phase`` those that train in it."""
    decoder = s2.decoder is not None and (phase is None or phase.decoder)
    return (*(decoder_layers(spec, s2) if decoder else ()), *head_layers(spec, s2, phase))


def head_dim(s2: Siglip2Spec) -> int:
    """The distillation head width, which the masked head shares: the distillation spec's, or
    without one ``DistillSpec``'s default."""
    return (s2.distill or DistillSpec()).head_dim


@cache
def phase_passes(spec: ModelSpec, s2: Siglip2Spec, phase: Phase) -> tuple[Pass, ...]:
    """The passes ``phase`` adds to SigLIP's step (module docstring), in forward order."""
    v, out = spec.vision, []
    w, hd = v.trunk.width, head_dim(s2)
    if (phase.distill or phase.masked) and not phase.naflex:
        teacher = list(_trunk("teacher.visual", v, v.seq_len()))
        if phase.distill:
            teacher.append(DistillHead("teacher.distill_head", w, hd, v.seq_len(), 1, True, False))
        if phase.masked:
            k, pre = masked_patches(spec, s2), not phase.distill
            teacher.append(MaskedHead("teacher.masked_head", w, hd, v.seq_len(), k, pre, False))
        out.append(Pass("teacher", tuple(teacher), 1, trains=False))
    if phase.distill:
        local = v.with_image_size(local_image_size(s2, v))
        head = DistillHead("distill_head", w, hd, local.seq_len(), 1)
        layers = (*_trunk("visual", local, local.seq_len()), head)
        out.append(Pass("local_views", layers, s2.distill.local_views, True))
    if phase.masked:
        k = masked_patches(spec, s2)
        layers = (
            MaskToken("patch_mask_token", w, v.num_patches),
            *_trunk("visual", v, v.seq_len()),
        )
        head = MaskedHead("masked_head", w, hd, v.seq_len(), k)
        out.append(Pass("masked_view", (*layers, head), 1, True))
    if phase.decoder:
        out.append(Pass("decoder", decoder_layers(spec, s2), s2.decoder.passes, True))
    return tuple(out)


def student_extra_params(
    spec: ModelSpec, s2: Siglip2Spec, phase: Phase | None = None
) -> dict[str, int]:
    """Parameters SigLIP 2 adds to the student, by FSDP unit: the mask token rides with
    "visual", each head is a unit of its own ("distill_head", "masked_head"); the decoder's
    embedding and head are "decoder", its blocks "decoder.blocks.i". With ``phase``, only
    those that train in it: a head is counted (in memory, gathers and the optimizer) in the
    phases it is used in, so that an objective costs nothing outside its phases (idle before,
    never gathered: the trainer's heads are units of their own too)."""
    layers = added_layers(spec, s2, phase)
    image = [x for x in layers if not x.name.startswith("decoder")]
    out = {"visual": layers_params(x for x in image if not is_unit(x))}
    out |= {x.unit_name: x.params() for x in image if is_unit(x)}  # the heads
    decoder = [x for x in layers if x.name.startswith("decoder")]
    if decoder:
        out["decoder"] = sum(x.params() for x in decoder if x.role != "block")
        out |= {x.name: x.params() for x in decoder if x.role == "block"}
    return out


def teacher_unit_params(spec: ModelSpec, s2: Siglip2Spec, phase: Phase) -> dict[str, int]:
    """The teacher's parameters by FSDP unit (its image tower as the student's with its final
    norm, less pool and projection; each head a unit of its own); empty outside the
    self-distillation phase."""
    teacher = next((p for p in phase_passes(spec, s2, phase) if p.name == "teacher"), None)
    if teacher is None:
        return {}
    v = spec.vision
    blocks = {x.name: x.params() for x in teacher.layers if x.role == "block"}
    stem = PatchEmbed("teacher.visual", v).params()
    norm = numel(norm_shapes(v.trunk.width, v.trunk))  # its final norm: the heads' tokens
    heads = {x.unit_name: x.params() for x in teacher.layers if x.role == "head"}
    return {"teacher.visual": stem + norm} | blocks | heads


def pass_forward_flops(p: Pass) -> float:
    """Forward FLOPs of one pass per example (``per_sample`` samples through its layers)."""
    return p.per_sample * _layers_flops(p.layers, ("forward",))


def pass_model_flops(p: Pass) -> float:
    """Model FLOPs of one pass per example: forward + backward of a training pass (no
    recompute, no recomputed logits), the forward of the teacher."""
    phases = ("forward", "backward") if p.trains else ("forward",)
    return p.per_sample * _layers_flops(p.layers, phases)


@cache
def _layers_flops(layers: Layers, phases: tuple[str, ...]) -> float:
    ops = OpList("fp32", 4)
    for layer in layers:
        if "forward" in phases:
            layer.forward_ops(ops, 1)
        if "backward" in phases:
            layer.backward_ops(ops, 1)
    return sum(o.flops for o in ops if o.phase != "recompute")


def _objectives(recipe: RecipeSpec) -> Siglip2Spec:
    s2 = recipe.objectives
    if s2 is None:
        raise ValueError(f"recipe '{recipe.name}' has no SigLIP 2 objectives")
    return s2


def decoder_pass_flops(spec: ModelSpec, recipe: RecipeSpec, phase: Phase, b: int) -> float:
    """Forward FLOPs of ONE decoder pass over b samples (0 when the phase has no decoder):
    Σ_blocks [2·L·d·3d + 4·L²·d + 2·L·d² + 2·L·d² + 2·S_v·v·2d + 4·L·S_v·d + 2·L·d² +
    4·L·d·h] + 2·L·d·V, times b."""
    s2 = _objectives(recipe)
    if not phase.decoder:
        return 0.0
    return b * _layers_flops(decoder_layers(naflex_model(spec, phase), s2), ("forward",))


def teacher_forward_flops(spec: ModelSpec, recipe: RecipeSpec, phase: Phase, b: int) -> float:
    """Forward FLOPs of the EMA teacher over b samples (0 outside self-distillation): its image
    trunk on the global view and its heads."""
    s2 = _objectives(recipe)
    teacher = [p for p in phase_passes(spec, s2, phase) if p.name == "teacher"]
    return b * sum(pass_forward_flops(p) for p in teacher)


def phase_forward_flops(
    spec: ModelSpec,
    recipe: RecipeSpec,
    phase: Phase,
    b: int,
    world_size: int = 1,
    length: int | None = None,
) -> float:
    """Forward FLOPs of the whole step on b local samples (of ``world_size`` ranks): both towers
    on the global view, the sigmoid loss's logits (2·b·B·e), and every pass of the phase.
    A NaFlex phase at sequence ``length`` (patches); without one, the mean over its lengths of
    the forward at each length's batch (b·batch_scale, at least 1)."""
    s2 = _objectives(recipe)
    if phase.naflex and length is None:
        lengths = s2.naflex.lengths
        return sum(
            phase_forward_flops(spec, recipe, phase, s2.naflex.batch_at(b, n), world_size, n)
            for n in lengths
        ) / len(lengths)
    model = naflex_model(spec, phase, length)
    towers = forward_flops(model, recipe.mask_ratio).total  # the global view (FLIP's r)
    loss = 2.0 * b * (b * world_size) * spec.embed_dim  # the b×B logits (ring or gather)
    passes = sum(pass_forward_flops(p) for p in phase_passes(model, s2, phase))
    return b * (towers + passes) + loss


def phase_model_flops_per_sample(spec: ModelSpec, s2: Siglip2Spec, phase: Phase) -> float:
    """Model FLOPs the phase's passes add per example (``pass_model_flops`` summed)."""
    return sum(pass_model_flops(p) for p in phase_passes(spec, s2, phase))


def naflex_model(spec: ModelSpec, phase: Phase | None, length: int | None = None) -> ModelSpec:
    """The model with its image tower at ``length`` patches (a NaFlex phase), else ``spec``."""
    if phase is None or not phase.naflex or length is None:
        return spec
    return spec.model_copy(update={"vision": naflex_tower(spec.vision, length)})


@cache
def naflex_tower(v: VisionTowerSpec, patches: int) -> VisionTowerSpec:
    """``v`` at ``patches`` patches of native aspect ratio (:class:`NaflexTower`)."""
    return NaflexTower.model_validate(v.model_dump() | {"patches": patches})


class NaflexTower(VisionTowerSpec):
    """An image tower at ``patches`` patches, not a square grid (NaFlex keeps the aspect ratio):
    the trunk runs prefix + ``patches`` tokens on patches·p² pixels; the learned positions keep
    the trained grid's shape (NaFlex resizes them, ``positions``)."""

    patches: int

    @property
    def num_patches(self) -> int:
        return self.patches
