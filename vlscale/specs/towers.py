"""Tower specifications: the exact architecture of an image or text encoder.

These classes are the single source of truth for shapes. ``models/`` builds torch modules from
them and ``vlscale.costs`` computes parameters, FLOPs and memory from them; tests hold the two
together for every preset. Every field below therefore has one precise meaning:

Transformer trunk (``TrunkSpec``), one pre-norm block, repeated ``depth`` times::

    x = x + attn(norm1(x))         attn: q, k, v = Linear(width, width) each (biases per
                                   ``qkv_bias``); scaled_dot_product_attention over ``heads``;
                                   [sub-LN: norm over width] ; out = Linear(width, width, bias)
    x = x + mlp(norm2(x))          gelu:   Linear(d, h) -> GELU -> Linear(h, d)
                                   swiglu: silu(Linear(d, h)) * Linear(d, h)
                                           -> [sub-LN: norm over h] -> Linear(h, d)
                                   (d = width, h = mlp_width)

``norm`` is LayerNorm (weight + bias) or RMSNorm (weight only) with epsilon ``norm_eps`` (every
norm of the tower: blocks, ln_pre, final norm, MAP head). OpenCLIP's own towers use torch's
1e-5 (``open_clip/transformer.py``: ``LayerNorm`` subclasses ``nn.LayerNorm``); timm's ViT and
EVA use 1e-6 (``timm/models/vision_transformer.py``: ``partial(nn.LayerNorm, eps=1e-6)``;
``timm/models/eva.py``: ``timm.layers.LayerNorm``), as do the SigLIP text towers
(``norm_kwargs: {eps: 1e-6}`` in ``open_clip/model_configs/*SigLIP*.json``). All MLP linears
carry a bias when ``mlp_bias``. Sub-LN (EVA-02, "Foundation Transformers", Wang et al. 2022)
adds the two bracketed norms.

``post_norm`` (EVA-CLIP-E, timm ``EvaBlockPostNorm``) normalises the branch output instead of
its input, same parameters and matmuls::

    x = x + norm1(attn(x))
    x = x + norm2(mlp(x))

Vision tower (``VisionTowerSpec``)::

    patches = Conv2d(3, width, patch_size, stride=patch_size, bias=patch_bias)  -> (B, N, width)
    [cls token prepended]  [+ learned absolute position embedding over cls + N positions]
    [patch dropout (FLIP), training mode only: keep floor((1 - r) * N) patch tokens per
     sample (at least one); cls always kept]
    [ln_pre]  blocks (2-D RoPE on patch tokens of q and k when ``rope``; positions are grid
              indices, scaled by rope_ref_grid / grid when ``rope_ref_grid`` is set, as timm's
              ``ref_feat_shape``)
    pool: "cls"  -> final norm on the cls token
          "map"  -> final norm on all tokens, then a multihead attention-pooling head (one learned
                    query; q = Linear(w, w), kv = Linear(w, 2w), out = Linear(w, w), then
                    x + mlp(norm(x)) with a GELU MLP of ``mlp_width``), all with biases
          "mean" -> mean over tokens, then final norm
    proj: "none" (width must equal embed_dim), "linear" (no bias), "linear_bias"

Text tower (``TextTowerSpec``)::

    Embedding(vocab_size, width) + learned position (context_length, width)
    blocks (causal mask when ``causal``)  ->  final norm  ->  pool one token:
    "eos" (position of the highest token id, as OpenCLIP's argmax) or "last"
    proj: "linear" (no bias), "linear_bias"

ResNet image tower (``ResNetTowerSpec``, CLIP's "modified ResNet", Radford et al. 2021 section
2.4; OpenCLIP ``open_clip/modified_resnet.py``), w = ``width``, every conv bias-free and followed
by batch norm (epsilon ``norm_eps``) and ReLU::

    stem:   3x3 conv 3 -> w/2, stride 2; 3x3 conv w/2 -> w/2; 3x3 conv w/2 -> w; AvgPool 2
    stages: i = 0..3, ``layers[i]`` bottlenecks of p = w * 2^i planes, 4p channels out:
            1x1 conv -> p; 3x3 conv p -> p; [AvgPool s]; 1x1 conv p -> 4p (no ReLU before the
            sum); residual = x, or [AvgPool s] -> 1x1 conv -> 4p -> BN when the shape changes;
            ReLU(sum). s = 2 in the first block of stages 1-3 (the stride is an average pool,
            never a strided conv: "anti-aliased" downsampling)
    pool:   the (image_size / 32)^2 grid of 32w features, their mean prepended as a token,
            + learned position (grid^2 + 1, 32w); multi-head attention (q, k, v, out Linears with
            bias, ``heads`` = 32w / head_width) of all tokens; the mean token's output
            projected by ``c_proj`` (Linear(32w, embed_dim), bias) is the embedding.

Batch-norm statistics are per rank, as in OpenCLIP (no SyncBatchNorm): each rank normalises by
its own local batch and keeps its own running statistics (used in eval mode); a checkpoint holds
their mean over the ranks (``trainer/batch_norm.py``).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
)

from vlscale.errors import ConfigError
from vlscale.specs.fields import Depth, Dim, check_mask_ratio

MlpKind = Literal["gelu", "swiglu"]
NormKind = Literal["layernorm", "rmsnorm"]
QkvBias = Literal["qkv", "qv", "none"]
ProjKind = Literal["none", "linear", "linear_bias"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrunkSpec(_Frozen):
    """A stack of pre-norm transformer blocks (see the module docstring for the exact layout)."""

    width: Dim = Field(description="model dimension d")
    depth: Depth = Field(description="number of blocks L")
    heads: Dim = Field(description="attention heads; width must be divisible by heads")
    mlp_width: Dim = Field(description="MLP hidden size (per branch for SwiGLU)")
    mlp_kind: MlpKind = "gelu"
    norm_kind: NormKind = "layernorm"
    sub_ln: bool = False
    qkv_bias: QkvBias = "qkv"
    proj_bias: bool = True
    mlp_bias: bool = True
    norm_eps: float = Field(default=1e-5, gt=0, lt=1, description="epsilon of every norm")
    post_norm: bool = Field(default=False, description="x + norm(f(x)) blocks (EVA-CLIP-E)")

    @field_validator("heads")
    @classmethod
    def _heads_divide_width(cls, heads: int, info: ValidationInfo) -> int:
        width = info.data.get("width")
        if width and heads > 0 and width % heads:
            raise ValueError(
                f"heads={heads} does not divide width={width}; "
                f"pick heads among the divisors of width (e.g. {_near_divisor(width, heads)})"
            )
        return heads

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


class VisionTowerSpec(_Frozen):
    """Image encoder: ViT (OpenAI / OpenCLIP / SigLIP) or EVA-ViT (RoPE, SwiGLU, sub-LN)."""

    kind: Literal["vit"] = Field(default="vit", exclude=True, description="tower family")
    image_size: Dim
    patch_size: Dim
    trunk: TrunkSpec
    patch_bias: bool = False
    class_token: bool = True
    learned_pos: bool = True
    rope: bool = False
    rope_ref_grid: Dim | None = Field(
        default=None,
        description="RoPE positions scaled by rope_ref_grid / grid (timm ref_feat_shape)",
    )
    ln_pre: bool = False
    pool: Literal["cls", "map", "mean"] = "cls"
    proj: ProjKind = "linear"

    @field_validator("patch_size")
    @classmethod
    def _patch_divides_image(cls, patch_size: int, info: ValidationInfo) -> int:
        image_size = info.data.get("image_size")
        if image_size and patch_size > 0 and image_size % patch_size:
            raise ValueError(
                f"patch_size={patch_size} does not divide image_size={image_size}; "
                "use an image size that is a multiple of the patch size"
            )
        return patch_size

    @field_validator("rope")
    @classmethod
    def _rope_head_dim(cls, rope: bool, info: ValidationInfo) -> bool:
        trunk = info.data.get("trunk")
        if rope and trunk is not None and trunk.head_dim % 4:
            raise ValueError(
                f"2-D RoPE needs head_dim divisible by 4, got {trunk.head_dim}; "
                "change width or heads"
            )
        return rope

    @field_validator("pool")
    @classmethod
    def _cls_pool_needs_token(cls, pool: str, info: ValidationInfo) -> str:
        if pool == "cls" and info.data.get("class_token") is False:
            raise ValueError("pool='cls' needs class_token=True; use pool='map' or 'mean'")
        return pool

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def num_positions(self) -> int:
        """Patch positions of the learned position embedding (the trained grid's)."""
        return self.grid**2

    @property
    def pixels(self) -> int:
        """Pixels per image the patches cover: N·p² (image_size² for a square grid)."""
        return self.num_patches * self.patch_size**2

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.class_token else 0

    def kept_patches(self, mask_ratio: float = 0.0) -> int:
        """Patch tokens kept by FLIP patch dropout: floor(N * (1 - r)), at least 1."""
        return kept_patches(self.num_patches, mask_ratio)

    def seq_len(self, mask_ratio: float = 0.0) -> int:
        """Tokens through the trunk: prefix tokens + kept patches."""
        return self.num_prefix_tokens + self.kept_patches(mask_ratio)

    def with_image_size(self, image_size: int) -> VisionTowerSpec:
        """The same tower at another resolution (validated: the patch size must divide it)."""
        return VisionTowerSpec.model_validate(self.model_dump() | {"image_size": image_size})


RESNET_EXPANSION = 4  # a bottleneck's output channels per plane
RESNET_REDUCTION = 32  # stem (2 x 2) and stages 1-3 (2 each): the grid is image_size / 32


class ResNetTowerSpec(_Frozen):
    """CLIP's modified ResNet image encoder (see the module docstring for the exact layout)."""

    kind: Literal["resnet"] = "resnet"
    image_size: int = Field(gt=0, description="pixels per side; a multiple of 32")
    layers: tuple[int, int, int, int] = Field(description="bottleneck blocks per stage")
    width: int = Field(gt=0, description="stem width w (64 x the multiplier); even")
    head_width: int = Field(default=64, gt=0, description="attention-pool head dimension")
    norm: Literal["batchnorm"] = "batchnorm"
    norm_eps: float = Field(default=1e-5, gt=0, lt=1, description="batch-norm epsilon")

    @field_validator("image_size")
    @classmethod
    def _image_divisible(cls, image_size: int) -> int:
        if image_size % RESNET_REDUCTION:
            raise ValueError(
                f"image_size={image_size} is not a multiple of {RESNET_REDUCTION} (a ResNet "
                f"halves it 5 times); use e.g. {max(1, round(image_size / 32)) * 32}"
            )
        return image_size

    @field_validator("layers")
    @classmethod
    def _blocks_positive(cls, layers: tuple[int, ...]) -> tuple[int, ...]:
        if any(n < 1 for n in layers):
            raise ValueError(f"every stage needs at least one block, got {list(layers)}")
        return layers

    @field_validator("width")
    @classmethod
    def _width_even(cls, width: int) -> int:
        if width % 2:
            raise ValueError(f"width={width} must be even (the stem's first convs have w/2)")
        return width

    @field_validator("head_width")
    @classmethod
    def _heads_divide(cls, head_width: int, info: ValidationInfo) -> int:
        width = info.data.get("width")
        if width and (width * RESNET_REDUCTION) % head_width:
            raise ValueError(
                f"head_width={head_width} does not divide the pooled width {width * 32}; "
                "pick a divisor (64 in CLIP)"
            )
        return head_width

    @property
    def feature_width(self) -> int:
        """Channels of the last stage, the attention pool's width: 32w."""
        return self.width * RESNET_REDUCTION

    @property
    def heads(self) -> int:
        """Attention-pool heads: 32w / head_width (OpenCLIP ``model.py``)."""
        return self.feature_width // self.head_width

    @property
    def grid(self) -> int:
        """Feature-map side at the attention pool."""
        return self.image_size // RESNET_REDUCTION

    @property
    def num_blocks(self) -> int:
        return sum(self.layers)

    def planes(self, stage: int) -> int:
        """Bottleneck planes of ``stage`` (0-3): w * 2^stage; its output is 4x that."""
        return self.width * 2**stage

    def with_image_size(self, image_size: int) -> ResNetTowerSpec:
        """The same tower at another resolution (validated: a multiple of 32)."""
        return ResNetTowerSpec.model_validate(self.model_dump() | {"image_size": image_size})


IMAGE_TOWER_KINDS = (("vit",), ("resnet",))  # union tags (as a location's first element)


def _tower_kind(value: Any) -> Any:
    """The union tag: ``kind`` when given; else a list of stage depths means a ResNet (a dump
    without defaults), anything else a ViT."""
    if isinstance(value, dict):
        if "kind" in value:
            return value["kind"]
        return "resnet" if isinstance(value.get("layers"), (list, tuple)) else "vit"
    return getattr(value, "kind", "vit")


ImageTowerSpec = Annotated[
    Annotated[VisionTowerSpec, Tag("vit")] | Annotated[ResNetTowerSpec, Tag("resnet")],
    Discriminator(_tower_kind),
]
"""An image tower: a ViT (no ``kind`` needed, for files written before ResNets) or a ResNet
(``kind: resnet``)."""


def check_patch_dropout(
    tower: VisionTowerSpec | ResNetTowerSpec, mask_ratio: float, name: str
) -> float:
    """``mask_ratio`` as a float if the tower can drop patches at that ratio; a ResNet has no
    patches, so any r > 0 is one ConfigError on ``mask_ratio``."""
    ratio = check_mask_ratio(mask_ratio)
    if ratio > 0 and tower.kind == "resnet":
        raise ConfigError(
            "mask_ratio",
            f"patch dropout has no meaning for a ResNet image tower ({name}); use 0 or a ViT",
        )
    return ratio


class TextTowerSpec(_Frozen):
    """Text encoder: causal (CLIP) or bidirectional (SigLIP) transformer over tokens."""

    vocab_size: Dim
    context_length: Dim
    trunk: TrunkSpec
    causal: bool = True
    pool: Literal["eos", "last"] = "eos"
    proj: ProjKind = "linear"


def kept_patches(num_patches: int, mask_ratio: float) -> int:
    """floor(N * (1 - r)) patches survive FLIP masking (at least one).

    The single home of this count (``models.vision``, ``vlscale.costs`` and the per-op model
    all call it). The expression is evaluated exactly as OpenCLIP
    (``open_clip/transformer.py``, ``PatchDropout``: ``max(1, int(num_tokens * keep_prob))``,
    ``keep_prob = 1 - prob``) and timm (``timm/layers/patch_dropout.py``:
    ``max(1, int(L * (1. - self.prob)))``) evaluate it, float rounding included:
    ViT-B-32 (N = 49) at r = 0.5 keeps 24.
    """
    check_mask_ratio(mask_ratio)
    return max(1, int(num_patches * (1.0 - mask_ratio)))


def _near_divisor(width: int, heads: int) -> int:
    """The divisor of ``width`` closest to ``heads`` (divisors found in pairs up to sqrt)."""
    divisors = set()
    for h in range(1, math.isqrt(width) + 1):
        if width % h == 0:
            divisors |= {h, width // h}
    return min(sorted(divisors), key=lambda h: abs(h - heads))
