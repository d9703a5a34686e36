"""Bytes a software stack holds on top of what this project's trainer holds (torch-free).

The per-layer activation count (``vlscale.costs.activations``) follows this project's trainer:
SDPA never saves the b·H·S² attention probabilities, and the CLIP loss computes the local b×B
logits. Another stack (``vlscale.specs.stacks``) may differ in two ways:

- ``attention: math`` (e.g. ``nn.MultiheadAttention`` of 2021–22): every block saves its
  softmax probabilities, b·H·S² elements in the activation dtype, for backward; backward adds
  one block's gradient of them (another b·H·S²) at its peak. With activation checkpointing only
  the block being recomputed holds them: one block's worth, twice.
- ``loss: global`` (OpenCLIP's CLIP loss without ``--local-loss``): every rank forms the full
  B×B logits both ways instead of b×B: in fp32, 2·(B − b)·B more elements saved (the two
  log-softmax outputs) and 2·(B − b)·B more in backward (their gradients). Softmax recipes only.

Time is not priced here: a stack's γ (fitted on its own published runs) holds its speed.
"""

from __future__ import annotations

from vlscale.costs.dtypes import LOSS_BYTES
from vlscale.costs.layers import runs, tower_layers
from vlscale.costs.layers.block import TransformerBlock
from vlscale.specs.recipes import BYTES_PER_ELEMENT


def attention_score_bytes(
    spec, batch: int, precision: str, checkpointing: bool, mask_ratio: float = 0.0
) -> int:
    """What math attention saves on top of SDPA (module docstring), both towers."""
    act = BYTES_PER_ELEMENT[precision]
    kept = peak = 0
    for tower in (spec.vision, spec.text):
        for layer, count in runs(tower_layers(tower, spec.embed_dim, mask_ratio)):
            if isinstance(layer, TransformerBlock):
                one = batch * layer.trunk.heads * layer.tokens**2 * act
                kept += 0 if checkpointing else count * one
                peak = max(peak, one)
    return kept + (peak if checkpointing else 0) + peak


def global_logit_bytes(loss: str, local_batch: int, world_size: int) -> int:
    """OpenCLIP's full B×B logits over the local b×B (module docstring); 0 for sigmoid."""
    if loss != "softmax":
        return 0
    b, big_b = local_batch, local_batch * world_size
    return 4 * (big_b - b) * big_b * LOSS_BYTES
