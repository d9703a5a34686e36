"""``build_optimizer``: AdamW, LAMB or Adafactor over prepared parameter groups.

* ``adamw``: ``torch.optim.AdamW`` (Loshchilov & Hutter 2019, decoupled weight decay).
* ``lamb``: :class:`trainer.optim.lamb.Lamb` (You et al. 2020), trust ratio on global norms.
* ``adafactor``: ``torch.optim.Adafactor`` (Shazeer & Stern 2018; present in torch >= 2.5).
  Adafactor keeps, for every parameter of 2+ dims, only a row vector and a column vector of
  second-moment statistics (the mean of g^2 over columns and over rows); their outer product
  divided by the total stands in for the full ``v``. For an FSDP2 parameter sharded on dim 0 the
  row statistics are local to each rank, but the column statistics are sums over rows that live
  on *other* ranks: the exact optimizer needs one cross-rank reduction per parameter per step,
  and factoring each shard on its own would silently become a different optimizer. torch's
  Adafactor does neither for DTensors (its in-place norm on a partial placement fails), so
  ``adafactor`` is refused for sharded parameters with a ConfigError; it has no first moment,
  so ``betas`` do not apply and ``eps`` keeps torch's default pair.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.distributed.tensor import DTensor

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
    if not hasattr(torch.optim, "Adafactor"):
        raise ConfigError(
            "optimizer",
            f"torch {torch.__version__} has no torch.optim.Adafactor (added in 2.5); "
            "upgrade torch or use adamw / lamb",
        )
    sharded = any(isinstance(p, DTensor) for g in param_groups for p in g["params"])
    if sharded:
        raise ConfigError(
            "optimizer",
            "adafactor cannot step FSDP2-sharded (DTensor) parameters: its factored column "
            "statistics span shards (see trainer/optim/factory.py); use adamw or lamb, "
            "or train on one device",
        )
    return torch.optim.Adafactor(param_groups, **kwargs)
