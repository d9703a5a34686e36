"""Start a run from an OpenCLIP checkpoint file: ``--init-from FILE`` (the whole model) and
``--init-image-from FILE`` (the image tower only, the EVA-CLIP two-stage recipe).

Every rank reads the file (``.pt`` / ``.bin`` with ``torch.load(weights_only=True)``, or
``.safetensors``), maps OpenCLIP's names and layouts onto ours (``models.openclip``), and hands
full tensors to ``set_model_state_dict(full_state_dict=True)``, which keeps each rank's FSDP2
shard (or the whole tensor under DDP / a plain module). Nothing is loaded unless every expected
key is there with the right shape: a mismatch is one ``ConfigError`` listing the keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from models.openclip import convert_from_openclip, load_state_dict_file
from vlscale.errors import ConfigError

OPENCLIP_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


def is_openclip_file(path: str | os.PathLike) -> bool:
    """A checkpoint file (as opposed to a DCP run / checkpoint directory)."""
    p = Path(path)
    return p.is_file() and p.suffix in OPENCLIP_SUFFIXES


def load_openclip_weights(
    model: torch.nn.Module, path: str | os.PathLike, *, field: str, prefix: str = ""
) -> list[str]:
    """Load OpenCLIP weights from ``path`` into ``model`` (a ``TwoTower``, sharded or not).

    With ``prefix`` (``"visual."``) only our parameters under it are loaded, from the file's
    keys that map onto them; the rest of the file is ignored and the rest of the model keeps its
    initialisation. Returns our names loaded.
    """
    spec = model.spec  # TwoTower's; FSDP2 / per-block compile keep the root's attributes
    theirs = load_state_dict_file(path, field)
    ours = convert_from_openclip(theirs, spec, field, only=prefix or None)
    check_weights(ours, path, field)
    with torch.no_grad():
        set_model_state_dict(
            model, ours, options=StateDictOptions(full_state_dict=True, strict=False)
        )
    return sorted(ours)


def check_weights(state: dict[str, torch.Tensor], path: str | os.PathLike, field: str) -> None:
    """Refuse weights that would train silently wrong: a tensor that is not floating point
    (copying int64 into float parameters casts it without a word) or one holding NaN / inf
    (which would surface as a non-finite loss at step 1, blaming the learning rate)."""
    for name, tensor in sorted(state.items()):
        if not tensor.is_floating_point():
            raise ConfigError(
                field,
                f"{path}: {name} holds {str(tensor.dtype).removeprefix('torch.')} values, not "
                "floating-point weights; pass an OpenCLIP checkpoint of float tensors",
            )
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ConfigError(
                field,
                f"{path}: {name} holds {bad} NaN or infinite value(s) of {tensor.numel()}; the "
                "file is corrupt or from a diverged run: pass another checkpoint",
            )
