"""Layer objects: one class per layer kind (parameter shapes, forward and backward ops, saved
tensors) and a model's list of them (``base`` says how; ``towers`` builds the list)."""

from vlscale.costs.layers.attention_pool import AttentionPool, map_head_shapes
from vlscale.costs.layers.base import LAYER_KINDS, Layer, is_unit, runs
from vlscale.costs.layers.block import TransformerBlock
from vlscale.costs.layers.decoder import DecoderBlock, DecoderEmbed, DecoderHead
from vlscale.costs.layers.loss import ContrastiveLoss, RingLossOps, loss_ops, ring_loss_ops
from vlscale.costs.layers.patch_embed import PatchEmbed
from vlscale.costs.layers.primitives import Op, OpList, Saved, Shape
from vlscale.costs.layers.projection import Projection
from vlscale.costs.layers.resnet import ResNetAttentionPool, ResNetBottleneck, ResNetStem
from vlscale.costs.layers.siglip2_heads import DistillHead, MaskedHead, MaskToken
from vlscale.costs.layers.text_embed import TextEmbed
from vlscale.costs.layers.token_pool import TextPool, TokenPool
from vlscale.costs.layers.towers import Layers, ModelLayers, model_layers, tower_layers

__all__ = [
    "LAYER_KINDS",
    "AttentionPool",
    "ContrastiveLoss",
    "DecoderBlock",
    "DecoderEmbed",
    "DecoderHead",
    "DistillHead",
    "Layer",
    "Layers",
    "MaskToken",
    "MaskedHead",
    "ModelLayers",
    "Op",
    "OpList",
    "PatchEmbed",
    "Projection",
    "ResNetAttentionPool",
    "ResNetBottleneck",
    "ResNetStem",
    "RingLossOps",
    "Saved",
    "Shape",
    "TextEmbed",
    "TextPool",
    "TokenPool",
    "TransformerBlock",
    "is_unit",
    "loss_ops",
    "map_head_shapes",
    "model_layers",
    "ring_loss_ops",
    "runs",
    "tower_layers",
]
