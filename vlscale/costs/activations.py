"""Activation memory: the bytes each tower keeps alive for backward, per device — a sum over
the tower's layers (``vlscale.costs.layers``: each layer's ``saved`` lists its tensors with
their formulas).

The count follows the tensors autograd saves (unique storages, parameters and buffers
excluded) when ``models/`` runs a forward pass, in the spirit of Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models", Sec. 4.1: sbh(34 + 5as/h)
bytes per layer), but with no attention matrix: every SDPA backend used here saves q, k, v, the
output and a per-row logsumexp, never the b·a·s² probabilities, and there is no dropout.
Per-row statistics are fp32, token ids and FLIP indices int64 (``vlscale.costs.dtypes``).

Per tower, with L blocks of saved tensors B each and the other layers O:

    no checkpointing    kept = O + L·B
    checkpointing       kept = O + L·x, x = a block's input (b·S·d);
                        recompute = B − x, one block re-run at a time in backward

and ``recompute`` is reported once, for the larger tower: the towers run backward one after
the other.

Validated tensor by tensor against the torch model in fp32 on the CPU reference path
(``tests/test_activation_memory_torch.py``). Known differences on other paths: CUDA's fused
RMSNorm saves no x·rstd (over-counted here by n·width per RMSNorm); in bf16 the RoPE tables are
cast per use (``models.rope``), adding 4·b·K·head_dim per block that is not counted. Gradient
buffers that live only during backward are not activations and are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from vlscale.costs.layers import Layer, model_layers, runs, tower_layers
from vlscale.errors import ConfigError
from vlscale.specs.fields import check_mask_ratio
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import BYTES_PER_ELEMENT
from vlscale.specs.towers import ResNetTowerSpec, TextTowerSpec, VisionTowerSpec


@dataclass(frozen=True)
class TowerActivations:
    """One tower's saved bytes: ``kept`` stays until backward, ``recompute`` is the extra
    peak of re-running one checkpointed block (0 without checkpointing)."""

    kept: int
    recompute: int


def layers_activations(
    layers: Iterable[Layer],
    batch: int,
    act_bytes: int,
    checkpointing: bool,
    trainable: frozenset[tuple[str, str]] | None = None,
) -> TowerActivations:
    """Σ of what the layers keep; the largest single-block recompute peak. With ``trainable``
    (locked towers, ``vlscale.costs.locks``) the other layers keep nothing: no input or
    parameter of theirs requires grad, so autograd records none of their ops."""
    if trainable is not None:
        layers = [x for x in layers if (x.name, x.kind) in trainable]
    kept = peak = 0
    for layer, count in runs(layers):
        kept += count * layer.kept(batch, checkpointing).nbytes(act_bytes)
        peak = max(peak, layer.recompute_saved(batch, checkpointing).nbytes(act_bytes))
    return TowerActivations(kept=kept, recompute=peak)


def vision_activations(
    v: VisionTowerSpec | ResNetTowerSpec,
    batch: int,
    act_bytes: int,
    checkpointing: bool,
    mask_ratio: float,
) -> TowerActivations:
    """The image tower's layers at FLIP drop ratio ``mask_ratio`` (the proj's width does not
    change what it saves, so embed_dim is taken as the tower's width: a ViT's trunk width, a
    ResNet's pooled width)."""
    width = v.feature_width if v.kind == "resnet" else v.trunk.width
    return layers_activations(tower_layers(v, width, mask_ratio), batch, act_bytes, checkpointing)


def text_activations(
    tx: TextTowerSpec, batch: int, act_bytes: int, checkpointing: bool
) -> TowerActivations:
    """The text tower's layers at its full context length."""
    return layers_activations(tower_layers(tx, tx.trunk.width), batch, act_bytes, checkpointing)


def activation_bytes(
    spec: ModelSpec,
    local_batch: int,
    precision: str = "bf16",
    checkpointing: bool = False,
    mask_ratio: float = 0.0,
    trainable: frozenset[tuple[str, str]] | None = None,
) -> dict[str, int]:
    """Activation bytes per device: ``{"image", "text", "recompute"}``; their sum is the total.

    ``image`` / ``text``: what each tower keeps for backward (all blocks' saved tensors, or
    only the block inputs with ``checkpointing``); ``recompute``: the largest single-block
    recompute peak over both towers (0 without checkpointing). ``mask_ratio`` is FLIP's patch
    drop ratio r, shortening the image sequence to prefix + floor(N·(1 - r)) tokens. The loss's
    saved tensors are memory's ``loss_buffers``, not counted here. ``trainable``: with locked
    towers, the layers that train (``vlscale.costs.locks.trainable_layers``).
    """
    if precision not in BYTES_PER_ELEMENT:
        raise ConfigError(
            "precision", f"unknown precision '{precision}'; use one of {list(BYTES_PER_ELEMENT)}"
        )
    check_mask_ratio(mask_ratio)
    if local_batch < 1:
        raise ConfigError("local_batch", f"must be >= 1, got {local_batch}")
    act_bytes = BYTES_PER_ELEMENT[precision]
    layers = model_layers(spec, mask_ratio)
    image = layers_activations(layers.image, local_batch, act_bytes, checkpointing, trainable)
    text = layers_activations(layers.text, local_batch, act_bytes, checkpointing, trainable)
    return {
        "image": image.kept,
        "text": text.kept,
        "recompute": max(image.recompute, text.recompute),
    }
