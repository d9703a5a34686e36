"""Torch-free specifications shared by the planner and the trainer (pydantic v2)."""

from vlscale.specs.models import ModelSpec
from vlscale.specs.presets import get_model, list_models
from vlscale.specs.towers import ResNetTowerSpec, TextTowerSpec, TrunkSpec, VisionTowerSpec

__all__ = [
    "ModelSpec",
    "ResNetTowerSpec",
    "TextTowerSpec",
    "TrunkSpec",
    "VisionTowerSpec",
    "get_model",
    "list_models",
]
