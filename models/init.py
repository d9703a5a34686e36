"""Weight initialisation that works after ``to_empty()`` (meta-device build, then materialise).

Every parameter and buffer of the towers is (re)set here, so a model built on the meta device,
sharded, and materialised with ``to_empty`` gets the same distribution as one built directly:

- Linear / Conv2d weights: truncated normal, std fan_in^-1/2 as OpenCLIP's width^-1/2
  (``init_std`` attribute overrides it: residual out-projections use fan_in^-1/2 / sqrt(2·depth));
  biases zero.
- LayerNorm / RMSNorm: their own ``reset_parameters`` (ones, zeros).
- Embedding: normal, std 0.02 (OpenCLIP's token embedding init).
- Our own modules (towers, attention, MAP head, RoPE tables, TwoTower logit parameters):
  their ``reset_parameters``, which touches only the tensors they own directly.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import DEFAULT_INIT_STD, fan_in_std


@torch.no_grad()
def init_weights(module: nn.Module) -> nn.Module:
    """Initialise ``module`` and all its submodules in place; returns it."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()  # in_features, or in_channels * k * k
            std = getattr(m, "init_std", fan_in_std(fan_in))
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=DEFAULT_INIT_STD)
        elif hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return module
