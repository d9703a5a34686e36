"""A model's layers from its spec: one builder per kind of tower, and ``model_layers``.

    image (ViT / EVA-ViT)   PatchEmbed, TransformerBlock × L, AttentionPool ("map") or
                            TokenPool ("cls" / "mean"), Projection
    image (ResNet)          ResNetStem, ResNetBottleneck × Σ layers, ResNetAttentionPool
                            (the pool projects to embed_dim itself: no Projection)
    text                    TextEmbed, TransformerBlock × L (causal or not), TextPool,
                            Projection
    root                    ContrastiveLoss (logit_scale, logit_bias and the loss's ops)

The order is ``models/``'s forward order and its parameter registration order; layers are
named by their module path ("visual.blocks.3", "text.proj"), the tower's own FSDP unit being
"visual" or "text". A new kind of tower spec registers its own builder, as the ResNet does::

    @tower_layers.register
    def _(tower: ResNetTowerSpec, embed_dim: int, mask_ratio: float = 0.0) -> Layers: ...
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, singledispatch

from vlscale.costs.layers.attention_pool import AttentionPool
from vlscale.costs.layers.base import LAYER_KINDS, Layer
from vlscale.costs.layers.block import TransformerBlock
from vlscale.costs.layers.loss import ContrastiveLoss
from vlscale.costs.layers.patch_embed import PatchEmbed
from vlscale.costs.layers.projection import Projection
from vlscale.costs.layers.resnet import ResNetAttentionPool, ResNetBottleneck, ResNetStem
from vlscale.costs.layers.text_embed import TextEmbed
from vlscale.costs.layers.token_pool import TextPool, TokenPool
from vlscale.errors import ConfigError
from vlscale.specs.fields import check_mask_ratio
from vlscale.specs.models import ModelSpec
from vlscale.specs.towers import (
    RESNET_EXPANSION,
    ResNetTowerSpec,
    TextTowerSpec,
    VisionTowerSpec,
    check_patch_dropout,
)

Layers = tuple[Layer, ...]


@singledispatch
def tower_layers(tower, embed_dim: int, mask_ratio: float = 0.0) -> Layers:
    """The layers of ``tower`` in forward order (one builder per tower spec type)."""
    kind = type(tower).__name__.removesuffix("TowerSpec")
    raise ConfigError(
        "model",
        f"costs for {kind} towers: not yet modelled (no layer builder registered with "
        "@tower_layers.register); use a ViT preset for the planner",
    )


@tower_layers.register
@cache
def _vit(tower: VisionTowerSpec, embed_dim: int, mask_ratio: float = 0.0) -> Layers:
    check_mask_ratio(mask_ratio)
    t, s = tower.trunk, tower.seq_len(mask_ratio)
    blocks = [
        TransformerBlock(f"visual.blocks.{i}", t, s, causal=False, rope=tower.rope)
        for i in range(t.depth)
    ]
    if tower.pool == "map":
        pool: Layer = AttentionPool("visual", t, s)
    else:
        pool = TokenPool("visual", t, s, pool=tower.pool)
    proj = Projection("visual.proj", tower.proj, t.width, embed_dim)
    return (PatchEmbed("visual", tower, mask_ratio), *blocks, pool, proj)


@tower_layers.register
@cache
def _resnet(tower: ResNetTowerSpec, embed_dim: int, mask_ratio: float = 0.0) -> Layers:
    """Stem, every bottleneck of the four stages in order (``models.resnet.ResNetTower.blocks``;
    the first block of stages 1-3 strides by 2), attention pool. No patches: r must be 0."""
    check_patch_dropout(tower, mask_ratio, f"RN width {tower.width}")
    blocks: list[Layer] = []
    c_in, side = tower.width, tower.image_size // 4
    for stage, depth in enumerate(tower.layers):
        for j in range(depth):
            stride = 2 if stage > 0 and j == 0 else 1
            last = len(blocks) == tower.num_blocks - 1
            name = f"visual.blocks.{len(blocks)}"
            blocks.append(ResNetBottleneck(name, c_in, tower.planes(stage), stride, side, last))
            c_in, side = tower.planes(stage) * RESNET_EXPANSION, side // stride
    pool = ResNetAttentionPool("visual", tower.grid, tower.feature_width, tower.heads, embed_dim)
    return (ResNetStem("visual", tower.image_size, tower.width), *blocks, pool)


@tower_layers.register
@cache
def _text(tower: TextTowerSpec, embed_dim: int, mask_ratio: float = 0.0) -> Layers:
    """Text has no patch dropout: ``mask_ratio`` is not used."""
    t, s = tower.trunk, tower.context_length
    blocks = [
        TransformerBlock(f"text.blocks.{i}", t, s, causal=tower.causal) for i in range(t.depth)
    ]
    rows = 1 if tower.pool == "eos" else s  # x[:, -1] of the normed tokens is a view
    proj = Projection("text.proj", tower.proj, t.width, embed_dim, rows=rows)
    return (TextEmbed("text", tower), *blocks, TextPool("text", t, s, pool=tower.pool), proj)


@dataclass(frozen=True)
class ModelLayers:
    """A two-tower model as layers: ``image``, ``text`` and the root's ``loss``."""

    image: Layers
    text: Layers
    loss: ContrastiveLoss

    @property
    def towers(self) -> tuple[tuple[str, Layers], ...]:
        """(FSDP unit name, layers) of each tower, in forward order."""
        return (("visual", self.image), ("text", self.text))

    def __iter__(self) -> Iterator[Layer]:
        return iter((*self.image, *self.text, self.loss))


@cache
def model_layers(
    spec: ModelSpec,
    mask_ratio: float = 0.0,
    loss: str = "softmax",
    loss_impl: str = "gather",
    world_size: int = 1,
) -> ModelLayers:
    """Every layer of ``spec`` at FLIP drop ratio ``mask_ratio``; the loss layer's ops depend on
    the recipe's loss and the world size, its parameters do not. A ResNet refuses r > 0."""
    spec.check_mask_ratio(mask_ratio)
    layers = ModelLayers(
        image=tower_layers(spec.vision, spec.embed_dim, mask_ratio),
        text=tower_layers(spec.text, spec.embed_dim, mask_ratio),
        loss=ContrastiveLoss("loss", spec.embed_dim, loss, loss_impl, world_size),
    )
    unknown = {type(x).__name__ for x in layers if LAYER_KINDS.get(x.kind) is not type(x)}
    if unknown:
        raise TypeError(
            f"layer classes that name no kind (class X(Layer, kind=...)): {sorted(unknown)}"
        )
    return layers
