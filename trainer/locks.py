"""Freeze locked towers (``--lock-image``, ``--lock-text``) on the model, before wrapping.

The groups and their meaning are ``vlscale.costs.locks``' (OpenCLIP's ``lock_image_tower`` /
``lock_text_tower``), here over the torch modules of ``models/``::

    ViT    [patch_embed, cls_token, pos_embed, ln_pre], blocks[0] .. blocks[d-2],
           [blocks[d-1], norm, head], [proj]
    text   [token_embedding, pos_embed], blocks[0] .. blocks[d-2], [blocks[d-1], norm], [proj]
    ResNet the whole tower or nothing

A locked parameter gets ``requires_grad=False`` on the meta model, so that FSDP2's
``fully_shard`` sees it frozen: it gets no gradient, no reduce-scatter, and the optimizer
(``trainer.optim.param_groups`` skips it) keeps no state or master copy for it. Its forward
saves no activations without any ``no_grad``: neither its inputs (images, token ids) nor its
parameters require grad, so autograd records nothing until the first trainable layer.
``--lock-image-freeze-bn-stats`` keeps the image tower's batch norms in inference mode
(running statistics used and never updated) whatever ``model.train()`` says.
"""

from __future__ import annotations

from torch import nn

from vlscale.specs.layout import RunLayout


def tower_groups(tower: nn.Module) -> list[list[nn.Module | nn.Parameter]]:
    """OpenCLIP's layer groups of a ViT or text tower, first to last (module docstring)."""
    names = ("patch_embed", "cls_token", "pos_embed", "ln_pre", "token_embedding")
    stem = [getattr(tower, n) for n in names if getattr(tower, n, None) is not None]
    blocks = list(tower.blocks)
    last = [blocks[-1], tower.norm] + ([tower.head] if getattr(tower, "head", None) else [])
    groups = [stem, *([b] for b in blocks[:-1]), last]
    if any(True for _ in tower.proj.parameters()):
        groups.append([tower.proj])
    return groups


def _set_trainable(members, trainable: bool) -> None:
    for m in members:
        for p in [m] if isinstance(m, nn.Parameter) else m.parameters():
            p.requires_grad_(trainable)


def lock_tower(tower: nn.Module, unlocked: int = 0) -> None:
    """Freeze ``tower``, then unlock its last ``unlocked`` groups."""
    tower.requires_grad_(False)
    if unlocked:
        for group in tower_groups(tower)[-unlocked:]:
            _set_trainable(group, True)


def freeze_batch_norm_stats(tower: nn.Module) -> None:
    """Every batch norm of ``tower`` normalises with its running statistics and keeps them."""
    for module in tower.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.frozen_stats = True


def apply_locks(model: nn.Module, layout: RunLayout) -> None:
    """The layout's locks on ``model`` (``model.visual``, ``model.text``)."""
    if layout.lock_image:
        lock_tower(model.visual, layout.lock_image_unlocked_groups)
        if layout.lock_image_freeze_bn_stats:
            freeze_batch_norm_stats(model.visual)
    if layout.lock_text:
        lock_tower(model.text, layout.lock_text_unlocked_layers)


def is_frozen(module: nn.Module) -> bool:
    """Whether every parameter of ``module`` is locked (and there is at least one)."""
    params = list(module.parameters())
    return bool(params) and not any(p.requires_grad for p in params)
