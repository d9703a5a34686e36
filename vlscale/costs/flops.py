"""Analytic FLOPs of the two towers and of the contrastive losses (torch-free, pure functions):
sums over a model's layers of their op lists (``vlscale.costs.layers``, where each layer's
matmuls are written down with their formulas).

Convention: 2 FLOPs per multiply-add, counting exactly what ``torch.utils.flop_counter.
FlopCounterMode`` counts — matrix multiplies (mm / addmm / bmm), convolutions and scaled-dot-
product attention (QKᵀ and AV). Elementwise work (norms, GELU / SiLU, softmax, RoPE rotation,
residual adds, bias adds, embedding lookups, patch gathers) is NOT counted, as the counter does
not. Tests hold these sums equal to FlopCounterMode on the meta-device torch model for every
preset (tests/test_flops.py) and to OpenCLIP's published profile (tests/published/).

Per sample, with d = width, h = mlp_width, S = tokens through the trunk, e = embed_dim:

    stem (conv p x p, 3 -> d, on all N patches)     2 · N · 3p² · d
    block  attention linears (q, k, v, out)          8 · S · d²
           attention core (QKᵀ and AV)               4 · S² · d
           mlp gelu (two matrices)                   4 · S · d · h
           mlp swiglu (three matrices)               6 · S · d · h
    head   "map" (1 query; q, kv, core, out, mlp)    2d² + 4·S·d² + 4·S·d + 2d² + 4·d·h
           "cls" / "mean" / text pools, embeddings   0
    proj   "linear" / "linear_bias"                  2 · d · e        ("none": 0)

CLIP's ResNet (``layers.resnet``): every convolution is an implicit GEMM, 2 · H_o·W_o · C_out ·
C_in·k² per sample; its attention pool computes the mean token's query only (q 2C², kv 4·L·C²,
attention 4·L·C, proj 2·C·e over L = grid² + 1 tokens of width C). It has no patches: r = 0.

FLIP patch dropout (Li et al. 2023) keeps K = floor(N (1 - r)) patch tokens
(``vlscale.specs.towers.kept_patches``), so S = prefix + K: the token-linear terms scale with S
(about 1 - r) and the attention core with S² (about (1 - r)²), while the stem still runs on all
N patches. ``flip_flop_ratio`` states the saving.

Training (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", section 2.1): backward
costs 2F (gradients w.r.t. inputs and weights) except where the input needs no gradient — the
patch stem, whose input is pixels, costs F in backward (weights only), as FlopCounterMode counts
``convolution_backward``. Activation checkpointing recomputes every block forward once more,
less the block's last matmul that torch's early-stopping checkpoint skips in a pre-norm block
(``block_recompute_flops``). Both come from the layers' backward and recompute op lists.

These are model FLOPs (the MFU convention of PaLM, Chowdhery et al. 2022, appendix B): a fused
flash-attention backward also recomputes QKᵀ, which FlopCounterMode counts on CUDA (5 instead
of 4 attention matmuls in backward); it is not added here. On CPU tensors the counter has no
formula for SDPA at all (``models.flop_counting`` registers one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from typing import Literal

from vlscale.costs.dtypes import FP32
from vlscale.costs.layers import (
    AttentionPool,
    ContrastiveLoss,
    Layer,
    OpList,
    Projection,
    TransformerBlock,
    model_layers,
    runs,
    tower_layers,
)
from vlscale.errors import ConfigError
from vlscale.specs.fields import check_mask_ratio
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import check_loss_impl
from vlscale.specs.towers import TextTowerSpec, TrunkSpec, VisionTowerSpec

LayerKind = Literal["stem", "block", "head", "proj"]


@dataclass(frozen=True)
class LayerFlops:
    """Forward FLOPs of one layer of a tower, per sample, split by how they scale.

    ``kind`` is the layer's role. ``attn_linear`` and ``mlp`` scale linearly with tokens,
    ``attn_core`` with tokens² (blocks only); ``other`` is a stem, pool, head or projection.
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


def _sample_ops(layer: Layer, build: str, early_stop: bool = True) -> OpList:
    """One sample's ``build`` ops ("forward", "backward" or "recompute") of ``layer``."""
    ops = OpList("fp32", FP32)
    if build == "forward":
        layer.forward_ops(ops, 1)
    elif build == "backward":
        layer.backward_ops(ops, 1)
    else:
        layer.recompute_ops(ops, 1, early_stop)
    return ops


def layer_flops(layer: Layer) -> LayerFlops:
    """Forward FLOPs of one layer per sample, split by how they scale (blocks: by op)."""
    return replace(_forward_split(layer), name=layer.name)


@cache
def _forward_split(layer: Layer) -> LayerFlops:
    ops = list(_sample_ops(layer, "forward"))
    if layer.role != "block":
        return LayerFlops(layer.name, layer.role, other=sum(o.flops for o in ops))

    def summed(kind: str, part: str = "") -> float:
        return sum(o.flops for o in ops if o.kind == kind and part in o.name)

    attn_linear, mlp = summed("matmul", ".attn."), summed("matmul", ".mlp.")
    core = summed("attention")
    other = sum(o.flops for o in ops) - attn_linear - mlp - core
    return LayerFlops(layer.name, "block", attn_linear, core, mlp, other)


@cache
def layer_train_flops(layer: Layer, recompute: bool = False, early_stop: bool = True) -> float:
    """Forward + backward (+ checkpoint recompute of a block) FLOPs of one layer per sample."""
    phases = ["forward", "backward"] + (
        ["recompute"] if recompute and layer.role == "block" else []
    )
    return sum(op.flops for phase in phases for op in _sample_ops(layer, phase, early_stop))


def layers_forward_flops(layers: Iterable[Layer]) -> float:
    """Forward FLOPs per sample of a list of layers: Σ of their forward ops' FLOPs."""
    return sum(count * _forward_split(layer).total for layer, count in runs(layers))


def layers_train_flops(
    layers: Iterable[Layer], recompute: bool = False, early_stop: bool = True
) -> float:
    """Forward + backward (+ block recompute) FLOPs per sample of a list of layers."""
    return sum(
        count * layer_train_flops(layer, recompute, early_stop) for layer, count in runs(layers)
    )


def block_flops(t: TrunkSpec, tokens: int, name: str = "block") -> LayerFlops:
    """One transformer block over ``tokens`` tokens: 8Sd² + 4S²d + (4 or 6)·S·d·h."""
    return layer_flops(TransformerBlock(name, t, tokens))


def map_head_flops(t: TrunkSpec, tokens: int) -> float:
    """Attention-pooling head, one learned query over S tokens:
    q 2d² + kv 4Sd² + core 4Sd + out 2d² + GELU mlp 4dh."""
    return layer_flops(AttentionPool("visual", t, tokens)).total


def proj_flops(kind: str, width: int, embed_dim: int) -> float:
    """2·d·e for a linear projection (bias adds are elementwise, not counted)."""
    return layer_flops(Projection("proj", kind, width, embed_dim)).total


def vision_layer_flops(
    v: VisionTowerSpec, embed_dim: int, mask_ratio: float = 0.0
) -> list[LayerFlops]:
    """Per-layer forward FLOPs of the image tower for one sample: stem, blocks, pool, proj."""
    check_mask_ratio(mask_ratio)
    return [layer_flops(layer) for layer in tower_layers(v, embed_dim, mask_ratio)]


def text_layer_flops(tx: TextTowerSpec, embed_dim: int) -> list[LayerFlops]:
    """Per-layer forward FLOPs of the text tower for one sample at full context length
    (the embedding lookup and the pool are not matmuls: 0)."""
    return [layer_flops(layer) for layer in tower_layers(tx, embed_dim)]


def vision_forward_flops(v: VisionTowerSpec, embed_dim: int, mask_ratio: float = 0.0) -> float:
    """Image-tower forward FLOPs per sample (sum of ``vision_layer_flops``)."""
    return layers_forward_flops(tower_layers(v, embed_dim, mask_ratio))


def text_forward_flops(t: TextTowerSpec, embed_dim: int) -> float:
    """Text-tower forward FLOPs per sample (sum of ``text_layer_flops``)."""
    return layers_forward_flops(tower_layers(t, embed_dim))


def forward_flops(
    spec: ModelSpec, mask_ratio: float = 0.0, image_size: int | None = None
) -> FlopCount:
    """Forward FLOPs per sample (one image and one text) of the two towers, excluding the loss."""
    if image_size is not None:
        spec = spec.with_image_size(image_size)
    spec.check_mask_ratio(mask_ratio)  # names the model when its tower cannot drop patches
    image = vision_forward_flops(spec.vision, spec.embed_dim, mask_ratio)
    text = text_forward_flops(spec.text, spec.embed_dim)
    return FlopCount(image=image, text=text, total=image + text)


def flip_flop_ratio(v: VisionTowerSpec, embed_dim: int, mask_ratio: float) -> FlipRatio:
    """How much FLIP patch dropout leaves of the image tower's forward FLOPs.

    Token-linear terms fall to S_r / S_0 and the attention core to (S_r / S_0)², where
    S = prefix + floor(N (1 - r)); the stem is unchanged (it runs before the drop). At r = 0
    every ratio is 1 (also for a ResNet, which has no token-linear or attention terms).
    """
    if check_mask_ratio(mask_ratio) == 0.0:
        return FlipRatio(linear=1.0, attention=1.0, total=1.0)
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
    ops = _sample_ops(TransformerBlock("block", t, tokens), "recompute", early_stop)
    return sum(op.flops for op in ops)


def train_flops_per_sample(
    spec: ModelSpec,
    mask_ratio: float = 0.0,
    recompute: bool = False,
    early_stop: bool = True,
    trainable: frozenset[tuple[str, str]] | None = None,
) -> float:
    """Forward + backward FLOPs of both towers per sample (loss excluded, see ``loss_flops``).

    3F in general; the patch stem's backward is F, not 2F, because pixels need no gradient.
    ``recompute`` (activation checkpointing of every block) adds ``block_recompute_flops`` per
    block: a block forward less its last matmul with torch's default early stop.
    ``trainable`` (locked towers, ``vlscale.costs.locks.trainable_layers``): the other layers
    run their forward only (F).
    """
    layers = (*model_layers(spec, mask_ratio).image, *model_layers(spec, mask_ratio).text)
    if trainable is None:
        return layers_train_flops(layers, recompute, early_stop)
    trained = [x for x in layers if (x.name, x.kind) in trainable]
    locked = [x for x in layers if (x.name, x.kind) not in trainable]
    return layers_train_flops(trained, recompute, early_stop) + layers_forward_flops(locked)


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
    layer = ContrastiveLoss("loss", embed_dim, loss, impl, world_size)
    ops = OpList("fp32", FP32)
    layer.forward_ops(ops, local_batch)
    layer.backward_ops(ops, local_batch)
    return sum(o.flops for o in ops if recompute_logits or o.phase != "recompute")


def model_flops_per_sample(
    spec: ModelSpec,
    *,
    mask_ratio: float,
    loss: Literal["softmax", "sigmoid"],
    loss_impl: Literal["gather", "ring"],
    local_batch: int,
    world_size: int,
    trainable: frozenset[tuple[str, str]] | None = None,
) -> float:
    """Model FLOPs of one training sample: both towers forward + backward, plus its share of
    the loss matmuls — no activation recompute and no recomputed logits. Locked layers (not in
    ``trainable``, see :func:`train_flops_per_sample`) count their forward only.

    This is the numerator of MFU (PaLM's convention, Chowdhery et al. 2022, appendix B) for the
    planner and the trainer alike: ``train_flops_per_sample(spec, r)`` +
    ``loss_flops(loss, impl, b, W, e) / b``, with b the local (micro-)batch the loss sees.
    """
    towers = train_flops_per_sample(spec, mask_ratio, trainable=trainable)
    per_step = loss_flops(loss, loss_impl, local_batch, world_size, spec.embed_dim)
    return towers + per_step / local_batch
