"""``build_optimizer``: AdamW, LAMB or Adafactor over prepared parameter groups.

* ``adamw``: ``torch.optim.AdamW`` (Loshchilov & Hutter 2019, decoupled weight decay).
* ``lamb``: :class:`trainer.optim.lamb.Lamb` (You et al. 2020), trust ratio on global norms.
* ``adafactor``: :class:`trainer.optim.adafactor.Adafactor` (Shazeer & Stern 2018), the
  algorithm and defaults of ``torch.optim.Adafactor`` (equal to it on plain tensors), made
  FSDP2-aware: for a parameter sharded on dim 0 its factored second-moment statistics, RMS and
  update clipping are those of the whole (global) tensor, at the price of two small all-reduces
  per step (see that module). It has no first moment, so ``betas`` do not apply, and ``eps``
  keeps Adafactor's own pair (``eps1`` from the dtype, ``eps2 = 1e-3``) rather than Adam's.
"""

from __future__ import annotations

from typing import Literal

import torch

from trainer.optim.adafactor import Adafactor
from trainer.optim.lamb import Lamb
from vlscale.errors import ConfigError

OptimizerName = Literal["adamw", "lamb", "adafactor"]
OPTIMIZERS = ("adamw", "lamb", "adafactor")


def build_optimizer(
    name: str,
    param_groups: list[dict],
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    **kwargs,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``param_groups`` (each group carries ``lr``/``weight_decay``).

    ``kwargs`` go to the optimizer's constructor (e.g. ``trust_clip`` for LAMB, ``fused`` for
    AdamW).
    """
    if name not in OPTIMIZERS:
        raise ConfigError("optimizer", f"unknown optimizer {name!r}; use one of {OPTIMIZERS}")
    # torch fills optimizer defaults into the group dicts it is given; copy so that the caller's
    # groups stay reusable (e.g. for a second optimizer) and carry no other optimizer's keys.
    param_groups = [dict(g) for g in param_groups]
    if name == "adamw":
        return torch.optim.AdamW(param_groups, betas=tuple(betas), eps=eps, **kwargs)
    if name == "lamb":
        return Lamb(param_groups, betas=tuple(betas), eps=eps, **kwargs)
    return Adafactor(param_groups, **kwargs)
