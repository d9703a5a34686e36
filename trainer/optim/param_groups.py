"""Parameter groups: per-tower learning rates, no weight decay where decay is harmful.

Rule (OpenCLIP ``main.py`` / timm ``param_groups_weight_decay``, extended by name for the
token-like parameters of ``models/``): a parameter gets **no** weight decay when it

* has fewer than 2 dimensions (biases, norm weights, ``logit_scale`` / ``logit_bias`` of shape
  (1,), EVA's ``q_bias`` / ``v_bias``), or
* belongs to an ``nn.Embedding`` or a norm module (LayerNorm / RMSNorm / GroupNorm), or
* is named like a learned token or position table: ``cls_token``, ``pos_embed``, ``query`` (MAP
  head probe), ``positional_embedding``, ``class_embedding``, ``token_embedding``, ...

Tower: names starting with ``visual.`` use ``image_lr``, ``text.`` use ``text_lr``; everything else
(``logit_scale``, ``logit_bias``) uses ``lr``. The shape tests use ``ndim``, which a DTensor
reports for the *global* tensor, so the grouping is the same before and after ``fully_shard``.
"""

from __future__ import annotations

from torch import nn

from vlscale.errors import ConfigError

NO_DECAY_NAMES = frozenset(
    {
        "cls_token",
        "class_embedding",
        "pos_embed",
        "positional_embedding",
        "position_embedding",
        "token_embedding",
        "query",
        "mask_token",
        "reg_token",
        "logit_scale",
        "logit_bias",
    }
)
_NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
TOWERS = ("visual", "text", "other")


def _no_decay_param_names(model: nn.Module) -> set[str]:
    """Names of parameters owned by embedding or norm modules."""
    out: set[str] = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, (nn.Embedding, *_NORM_TYPES)):
            for p_name, _ in mod.named_parameters(recurse=False):
                out.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return out


def wants_decay(name: str, param: nn.Parameter, module_no_decay: set[str] = frozenset()) -> bool:
    """True when ``name`` should be weight-decayed (see the module docstring)."""
    if param.ndim < 2 or name in module_no_decay:
        return False
    parts = name.split(".")
    leaf = parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1]
    return parts[-1] not in NO_DECAY_NAMES and leaf not in NO_DECAY_NAMES


def tower_of(name: str) -> str:
    """``visual`` / ``text`` / ``other`` from a parameter's qualified name."""
    head = name.split(".", 1)[0]
    return head if head in ("visual", "text") else "other"


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    image_lr: float | None = None,
    text_lr: float | None = None,
) -> list[dict]:
    """Up to six groups (tower x decay) with keys ``params``, ``lr``, ``weight_decay``, ``name``.

    Empty groups are left out; frozen parameters (``requires_grad=False``) are skipped.
    """
    for field, value in (("lr", lr), ("image_lr", image_lr), ("text_lr", text_lr)):
        if value is not None and not value > 0:
            raise ConfigError(field, f"learning rate must be > 0, got {value}")
    if weight_decay < 0:
        raise ConfigError("weight_decay", f"must be >= 0, got {weight_decay}")
    tower_lr = {
        "visual": lr if image_lr is None else image_lr,
        "text": lr if text_lr is None else text_lr,
        "other": lr,
    }
    module_no_decay = _no_decay_param_names(model)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (tower_of(name), wants_decay(name, param, module_no_decay))
        buckets.setdefault(key, []).append(param)
    groups = []
    for tower in TOWERS:
        for decay in (True, False):
            params = buckets.get((tower, decay))
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": tower_lr[tower],
                        "weight_decay": weight_decay if decay else 0.0,
                        "name": f"{tower}.{'decay' if decay else 'no_decay'}",
                    }
                )
    if not groups:
        raise ConfigError("model", "has no trainable parameters; unfreeze at least one tower")
    return groups
