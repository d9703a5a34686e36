"""Analytic FLOPs of the two towers and of the contrastive losses (torch-free, pure functions).

The numbers are summed from the op lists of ``vlscale.costs.ops`` (the one place where a layer's
matmuls are written down); the formulas below say what those lists add up to.

Convention: 2 FLOPs per multiply-add, counting exactly what ``torch.utils.flop_counter.
FlopCounterMode`` counts — matrix multiplies (mm / addmm / bmm), convolutions and scaled-dot-
product attention (QK^T and AV). Elementwise work (norms, GELU / SiLU, softmax, RoPE rotation,
residual adds, bias adds, embedding lookups, patch gathers) is NOT counted, as the counter does
not. Tests hold these formulas equal to FlopCounterMode on the meta-device torch model for every
preset (tests/test_flops.py) and to OpenCLIP's published profile (tests/published/).

Per sample, with d = width, h = mlp_width, S = tokens through the trunk, e = embed_dim:

    stem (conv p x p, 3 -> d, on all N patches)     2 · N · 3p² · d
    block  attention linears (q, k, v, out)          8 · S · d²
           attention core (QK^T and AV)              4 · S² · d
           mlp gelu (two matrices)                   4 · S · d · h
           mlp swiglu (three matrices)               6 · S · d · h
    head   "map" (1 query; q, kv, core, out, mlp)    2d² + 4·S·d² + 4·S·d + 2d² + 4·d·h
           "cls" / "mean"                            0
    proj   "linear" / "linear_bias"                  2 · d · e        ("none": 0)

Causal text attention is counted in full (4 S² d): FlopCounterMode and OpenCLIP's profile both
count the full QK^T / AV whatever the mask (a causal kernel may skip about half of that work).

FLIP patch dropout (Li et al. 2023) keeps K = floor(N (1 - r)) patch tokens
(``vlscale.specs.towers.kept_patches``), so S = prefix + K: the token-linear terms scale with S
(about 1 - r) and the attention core with S² (about (1 - r)²), while the stem still runs on all
N patches. ``flip_flop_ratio`` states the saving.

Training (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1): backward
costs 2F (gradients w.r.t. inputs and weights) except where the input needs no gradient — the
patch stem, whose input is pixels, costs F in backward (weights only), as FlopCounterMode counts
``convolution_backward``. Activation checkpointing recomputes every block forward once more,
less the block's last matmul that torch's early-stopping checkpoint skips in a pre-norm block
(``block_recompute_flops``).

These are model FLOPs (the MFU convention of PaLM, Chowdhery et al. 2022, appendix B): fused
flash-attention backward kernels also recompute QK^T, and FlopCounterMode counts that on CUDA
(5 instead of 4 attention matmuls in backward); it is not added here. On CPU tensors the counter
has no formula for SDPA at all (``models.flop_counting`` registers one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vlscale.costs.dtypes import FP32
from vlscale.costs.ops import OpList, block_ops, map_head_ops, patch_embed_ops, proj_ops
from vlscale.errors import ConfigError
from vlscale.specs.fields import check_mask_ratio
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import check_loss_impl
from vlscale.specs.towers import TextTowerSpec, TrunkSpec, VisionTowerSpec

LayerKind = Literal["stem", "block", "head", "proj"]


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs of one layer of a tower, per sample, split by how they scale.

    ``attn_linear`` and ``mlp`` scale linearly with tokens, ``attn_core`` with tokens²;
    ``other`` is the stem conv, the pooling head or the projection.
    """

    name: str
    kind: LayerKind
    attn_linear: float = 0.0
    attn_core: float = 0.0
    mlp: float = 0.0
    other: float = 0.0

    @property
    def linear(self) -> float:
        """Everything except the attention core (scales with tokens, or is fixed)."""
        return self.attn_linear + self.mlp + self.other

    @property
    def total(self) -> float:
        return self.attn_linear + self.attn_core + self.mlp + self.other


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs per sample: image tower, text tower and their sum."""

    image: float
    text: float
    total: float


@dataclass(frozen=True)
class FlipRatio:
    """Image-tower FLOPs with patch dropout divided by FLOPs without it (each term)."""

    linear: float  # token-linear work (attention linears + MLP): about S_r / S_0
    attention: float  # attention core: (S_r / S_0)²
    total: float  # the whole tower, stem and head included


def _op_flops(build, predicate=lambda op: True) -> float:
    """FLOPs of the ops ``build(ops)`` appends (one sample) that satisfy ``predicate``."""
    ops = OpList("fp32", FP32)
    build(ops)
    return sum(op.flops for op in ops if predicate(op))


def block_flops(t: TrunkSpec, tokens: int, name: str = "block") -> LayerFlops:
    """One transformer block over ``tokens`` tokens: 8Sd² + 4S²d + (4 or 6)·S·d·h, summed from
    its op list (``vlscale.costs.ops.block_ops``, one sample)."""

    def build(ops: OpList) -> None:
        block_ops(ops, name, t, 1, tokens, causal=False, rope=False)

    return LayerFlops(
        name=name,
        kind="block",
        attn_linear=_op_flops(build, lambda o: o.kind == "matmul" and ".attn." in o.name),
        attn_core=_op_flops(build, lambda o: o.kind == "attention"),
        mlp=_op_flops(build, lambda o: o.kind == "matmul" and ".mlp." in o.name),
    )


def map_head_flops(t: TrunkSpec, tokens: int) -> float:
    """Attention-pooling head, one learned query over S tokens:
    q 2d² + kv 4Sd² + core 4Sd + out 2d² + GELU mlp 4dh (``ops.map_head_ops``)."""
    return _op_flops(lambda ops: map_head_ops(ops, t, 1, tokens))


def proj_flops(kind: str, width: int, embed_dim: int) -> float:
    """2·d·e for a linear projection (bias adds are elementwise, not counted)."""
    return _op_flops(lambda ops: proj_ops(ops, "proj", kind, 1, width, embed_dim))


def vision_layer_flops(
    v: VisionTowerSpec, embed_dim: int, mask_ratio: float = 0.0
) -> list[LayerFlops]:
    """Per-layer forward FLOPs of the image tower for one sample: stem, blocks, head, proj."""
    check_mask_ratio(mask_ratio)
    t = v.trunk
    d = t.width
    s = v.seq_len(mask_ratio)
    layers = [LayerFlops("stem", "stem", other=_op_flops(lambda ops: patch_embed_ops(ops, v, 1)))]
    layers += [block_flops(t, s, f"block.{i}") for i in range(t.depth)]
    if v.pool == "map":
        layers.append(LayerFlops("head", "head", other=map_head_flops(t, s)))
    layers.append(LayerFlops("proj", "proj", other=proj_flops(v.proj, d, embed_dim)))
    return layers


def text_layer_flops(tx: TextTowerSpec, embed_dim: int) -> list[LayerFlops]:
    """Per-layer forward FLOPs of the text tower for one sample at full context length
    (the embedding lookup is not a matmul: 0)."""
    t = tx.trunk
    layers = [block_flops(t, tx.context_length, f"block.{i}") for i in range(t.depth)]
    layers.append(LayerFlops("proj", "proj", other=proj_flops(tx.proj, t.width, embed_dim)))
    return layers


def vision_forward_flops(v: VisionTowerSpec, embed_dim: int, mask_ratio: float = 0.0) -> float:
    """Image-tower forward FLOPs per sample (sum of ``vision_layer_flops``)."""
    return sum(layer.total for layer in vision_layer_flops(v, embed_dim, mask_ratio))


def text_forward_flops(t: TextTowerSpec, embed_dim: int) -> float:
    """Text-tower forward FLOPs per sample (sum of ``text_layer_flops``)."""
    return sum(layer.total for layer in text_layer_flops(t, embed_dim))


def forward_flops(
    spec: ModelSpec, mask_ratio: float = 0.0, image_size: int | None = None
) -> FlopCount:
    """Forward FLOPs per sample (one image and one text) of the two towers, excluding the loss."""
    if image_size is not None:
        spec = spec.with_image_size(image_size)
    image = vision_forward_flops(spec.vision, spec.embed_dim, mask_ratio)
    text = text_forward_flops(spec.text, spec.embed_dim)
    return FlopCount(image=image, text=text, total=image + text)


def flip_flop_ratio(v: VisionTowerSpec, embed_dim: int, mask_ratio: float) -> FlipRatio:
    """How much FLIP patch dropout leaves of the image tower's forward FLOPs.

    Token-linear terms fall to S_r / S_0 and the attention core to (S_r / S_0)², where
    S = prefix + floor(N (1 - r)); the stem is unchanged (it runs before the drop).
    """
    full = vision_layer_flops(v, embed_dim, 0.0)
    masked = vision_layer_flops(v, embed_dim, mask_ratio)

    def summed(layers: list[LayerFlops], attr: str) -> float:
        return sum(getattr(x, attr) for x in layers if x.kind == "block")

    lin = (summed(masked, "attn_linear") + summed(masked, "mlp")) / (
        summed(full, "attn_linear") + summed(full, "mlp")
    )
    att = summed(masked, "attn_core") / summed(full, "attn_core")
    tot = sum(x.total for x in masked) / sum(x.total for x in full)
    return FlipRatio(linear=lin, attention=att, total=tot)


def block_recompute_flops(t: TrunkSpec, tokens: int, early_stop: bool = True) -> float:
    """FLOPs that activation checkpointing re-runs for one block in backward.

    torch's non-reentrant checkpoint (``use_reentrant=False``, what FSDP2's checkpoint wrapper
    uses) stops recomputing as soon as every tensor saved for backward is regenerated
    (``torch.utils.checkpoint.set_checkpoint_early_stop``, on by default). The block's last
    matmul — the MLP output projection, 2·S·h·d — only produces the block output, which nothing
    saves, so it is skipped. In a post-norm block (``t.post_norm``) that output feeds norm2,
    which saves it, so nothing is skipped. Reentrant checkpointing (``early_stop=False``)
    re-runs the whole block. Measured equal to FlopCounterMode (tests/test_flops.py).
    """
    full = block_flops(t, tokens).total
    if not early_stop or t.post_norm:
        return full
    return full - 2.0 * tokens * t.mlp_width * t.width


def train_flops_per_sample(
    spec: ModelSpec, mask_ratio: float = 0.0, recompute: bool = False, early_stop: bool = True
) -> float:
    """Forward + backward FLOPs of both towers per sample (loss excluded, see ``loss_flops``).

    3F in general; the patch stem's backward is F, not 2F, because pixels need no gradient.
    ``recompute`` (activation checkpointing of every block) adds ``block_recompute_flops`` per
    block: a block forward less its last matmul with torch's default early stop.
    """
    vision = vision_layer_flops(spec.vision, spec.embed_dim, mask_ratio)
    text = text_layer_flops(spec.text, spec.embed_dim)
    total = 0.0
    for layer in vision + text:
        backward = layer.total if layer.kind == "stem" else 2.0 * layer.total
        total += layer.total + backward
    if recompute:
        v, tx = spec.vision, spec.text
        total += v.trunk.depth * block_recompute_flops(v.trunk, v.seq_len(mask_ratio), early_stop)
        total += tx.trunk.depth * block_recompute_flops(tx.trunk, tx.context_length, early_stop)
    return total


def loss_flops(
    loss: Literal["softmax", "sigmoid"],
    impl: Literal["gather", "ring"],
    local_batch: int,
    world_size: int,
    embed_dim: int,
    recompute_logits: bool = False,
) -> float:
    """Logit-matmul FLOPs of the contrastive loss per device per step, forward + backward.

    b = local_batch, B = b · world_size, d = embed_dim. Each logit block X Yᵀ costs 2·b·B·d
    forward and 4·b·B·d backward (gradients for both operands):

    - softmax (CLIP, "local loss", OpenCLIP ``ClipLoss``): image->text AND text->image logits,
      each b×B against the gathered embeddings: 2 blocks -> 4bBd + 8bBd = 12·b·B·d.
    - sigmoid "gather" (SigLIP): one b×B block against the gathered texts: 6·b·B·d.
    - sigmoid "ring" (chunked SigLIP): W blocks of b×b as text chunks hop around the ring,
      the same total 6·b·B·d; ``recompute_logits`` (block logits recomputed in backward to keep
      memory O(b²)) adds the forward again: 8·b·B·d.

    Softmax / sigmoid / log terms are elementwise and not counted (as FlopCounterMode).
    """
    check_loss_impl(loss, impl)
    for field, value in (
        ("local_batch", local_batch),
        ("world_size", world_size),
        ("embed_dim", embed_dim),
    ):
        if value < 1:
            raise ConfigError(field, f"must be a positive integer, got {value}")
    # summed from the loss's op list (vlscale.costs.step_ops.loss_ops): 2bBd per logit matmul
    # forward, twice that backward, [the ring's recomputed logits once more]
    from vlscale.costs.step_ops import loss_ops

    fwd, bwd = loss_ops(loss, impl, local_batch, world_size, embed_dim)
    return sum(o.flops for o in fwd + bwd if recompute_logits or o.phase != "recompute")


def model_flops_per_sample(
    spec: ModelSpec,
    *,
    mask_ratio: float,
    loss: Literal["softmax", "sigmoid"],
    loss_impl: Literal["gather", "ring"],
    local_batch: int,
    world_size: int,
) -> float:
    """Model FLOPs of one training sample: both towers forward + backward, plus its share of
    the loss matmuls — no activation recompute and no recomputed logits.

    This is the numerator of MFU (PaLM's convention, Chowdhery et al. 2022, appendix B) for the
    planner and the trainer alike: ``train_flops_per_sample(spec, r)`` +
    ``loss_flops(loss, impl, b, W, e) / b``, with b the local (micro-)batch the loss sees.
    """
    towers = train_flops_per_sample(spec, mask_ratio)
    per_step = loss_flops(loss, loss_impl, local_batch, world_size, spec.embed_dim)
    return towers + per_step / local_batch
