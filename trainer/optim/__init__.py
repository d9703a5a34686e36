"""Optimizers for the trainer: parameter groups, AdamW / LAMB / Adafactor, warmup+cosine lr."""

from trainer.optim.adafactor import Adafactor
from trainer.optim.factory import OPTIMIZERS, build_optimizer
from trainer.optim.lamb import Lamb
from trainer.optim.param_groups import build_param_groups
from trainer.optim.schedule import WarmupCosine, build_scheduler

__all__ = [
    "OPTIMIZERS",
    "Adafactor",
    "Lamb",
    "WarmupCosine",
    "build_optimizer",
    "build_param_groups",
    "build_scheduler",
]
