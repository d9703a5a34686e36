"""Torch modules built from ``vlscale.specs`` (the architecture contract lives in
``vlscale/specs/towers.py``). No distributed code here: the trainer shards ``.visual.blocks`` and
``.text.blocks`` with FSDP2 and checkpoints them per block (a ResNet tower's ``blocks`` are its
bottlenecks)."""

from models.init import init_weights
from models.layers import Attention, Block, Mlp, SwiGLU
from models.resnet import ResNetTower
from models.text import TextTower
from models.two_tower import TwoTower, build_model
from models.vision import MapHead, VisionTower

__all__ = [
    "Attention",
    "Block",
    "MapHead",
    "Mlp",
    "ResNetTower",
    "SwiGLU",
    "TextTower",
    "TwoTower",
    "VisionTower",
    "build_model",
    "init_weights",
]
