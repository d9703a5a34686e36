"""Zero-shot classification and image<->text retrieval for a two-tower model.

Zero-shot (Radford et al. 2021, "CLIP", Sec. 3.1.4, prompt ensembling)::

    w_c  = normalize( mean_k normalize(encode_text(template_k(class_c))) )     (C, d)
    pred = argmax_c  <normalize(encode_image(x)), w_c>                          top-1 accuracy

Retrieval R@1 over held-out pairs (image_i, caption_i)::

    i2t = mean_i [ group(argmax_j <img_i, txt_j>) == group(i) ]     and t2i symmetrically

``group`` says which pairs are interchangeable. By default two pairs share a group when their
caption token rows are identical: a caption cannot tell such images apart, so returning either
is a correct retrieval (synthetic data repeats captions). Pass ``groups=torch.arange(N)`` for
the strict "only the paired item counts" definition. Ties in argmax go to the lowest index
(``torch.argmax``), so a constant model scores exactly the share of the first class/group.

Distributed. ``encode_image`` / ``encode_text`` of an FSDP2 model are collectives (FSDP forward
methods all-gather the shards), so every rank must call them equally often with the same
shapes. Every rank holds the same deterministic held-out tensors; each encodes a contiguous,
equally sized slice (the last slice padded by repeating its final row), in the same number of
batches, and the embeddings are all-gathered. Metrics are therefore identical on all ranks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vlscale.errors import ConfigError

Encoder = Callable[[torch.Tensor], torch.Tensor]


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's (local shards of) parameters; DTensor ``.device`` is the local one."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def encode_sharded(
    encode: Encoder, inputs: torch.Tensor, *, batch_size: int, device: torch.device
) -> torch.Tensor:
    """``encode`` every row of ``inputs`` (N, ...) split over ranks -> (N, d) fp32 on every rank.

    Each rank takes rows [r*m, (r+1)*m) with m = ceil(N / W), pads to m rows, and makes exactly
    ceil(m / batch_size) calls, so FSDP's collectives line up across ranks.
    """
    if batch_size < 1:
        raise ConfigError("eval_batch_size", f"must be >= 1, got {batch_size}")
    n = inputs.shape[0]
    if n == 0:
        raise ConfigError("eval", "the held-out set is empty; give it at least one sample")
    rank, world = _rank_world()
    per_rank = -(-n // world)  # m = ceil(N / W)
    idx = torch.arange(rank * per_rank, (rank + 1) * per_rank).clamp(max=n - 1)  # (m,) padded
    local = inputs[idx]  # (m, ...)
    outs = [
        encode(local[i : i + batch_size].to(device)).float()  # (<=batch_size, d)
        for i in range(0, per_rank, batch_size)
    ]
    emb = torch.cat(outs)  # (m, d)
    if world > 1:
        parts = [torch.empty_like(emb) for _ in range(world)]
        dist.all_gather(parts, emb.contiguous())
        emb = torch.cat(parts)  # (W*m, d)
    return emb[:n].cpu()  # (N, d)


def class_embeddings(
    encode_text: Encoder, prompts: torch.Tensor, *, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Prompt tokens (C, K, L) -> (C, d): mean of K normalised prompt embeddings, renormalised."""
    if prompts.dim() != 3:
        raise ConfigError(
            "class_prompts",
            f"want token ids (classes, templates, length), got {tuple(prompts.shape)}",
        )
    c, k, _ = prompts.shape
    emb = encode_sharded(encode_text, prompts.flatten(0, 1), batch_size=batch_size, device=device)
    emb = F.normalize(emb, dim=-1).view(c, k, -1)  # (C, K, d)
    return F.normalize(emb.mean(dim=1), dim=-1)  # (C, d)


def zero_shot_accuracy(
    image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor
) -> float:
    """Top-1 accuracy of argmax_c <img_i, w_c>; image_emb (N, d), class_emb (C, d), labels (N,)."""
    logits = F.normalize(image_emb, dim=-1) @ F.normalize(class_emb, dim=-1).T  # (N, C)
    return (logits.argmax(dim=1) == labels.to(logits.device)).float().mean().item()


def recall_at_1(query: torch.Tensor, keys: torch.Tensor, groups: torch.Tensor) -> float:
    """Share of queries whose nearest key is in their group; query, keys (N, d), groups (N,)."""
    sims = F.normalize(query, dim=-1) @ F.normalize(keys, dim=-1).T  # (N, N)
    groups = groups.to(sims.device)
    return (groups[sims.argmax(dim=1)] == groups).float().mean().item()


def caption_groups(captions: torch.Tensor) -> torch.Tensor:
    """(N, L) token ids -> (N,) group ids, equal exactly when the token rows are equal."""
    return torch.unique(captions, dim=0, return_inverse=True)[1]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    *,
    images: torch.Tensor,
    labels: torch.Tensor,
    class_prompts: torch.Tensor,
    captions: torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    batch_size: int = 64,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Zero-shot top-1 and (with ``captions``) retrieval R@1 both ways; same dict on all ranks.

    images (N, 3, H, W); labels (N,) class ids into class_prompts (C, K, L); captions (N, L)
    paired with images row by row. The model is put in eval mode (no patch dropout) and its
    mode is restored afterwards.
    """
    n = images.shape[0]
    if labels.shape != (n,):
        raise ConfigError("labels", f"want shape ({n},) to match images, got {tuple(labels.shape)}")
    num_classes = class_prompts.shape[0]
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(
            "labels", f"class ids must lie in [0, {num_classes}); check the class list"
        )
    device = device if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    try:
        img = encode_sharded(model.encode_image, images, batch_size=batch_size, device=device)
        cls = class_embeddings(
            model.encode_text, class_prompts, batch_size=batch_size, device=device
        )
        out = {
            "zeroshot_top1": zero_shot_accuracy(img, cls, labels),
            "zeroshot_chance": 1.0 / num_classes,
            "eval_images": float(n),
            "eval_classes": float(num_classes),
        }
        if captions is not None:
            if captions.shape[0] != n:
                raise ConfigError(
                    "captions", f"want {n} captions, one per image, got {captions.shape[0]}"
                )
            txt = encode_sharded(model.encode_text, captions, batch_size=batch_size, device=device)
            g = caption_groups(captions) if groups is None else groups
            out["i2t_r1"] = recall_at_1(img, txt, g)
            out["t2i_r1"] = recall_at_1(txt, img, g)
    finally:
        model.train(was_training)
    return out


def build_class_prompts(
    classes: list[dict[str, str]] | list[str],
    templates: list[str],
    tokenize: Callable[[list[str]], torch.Tensor],
) -> torch.Tensor:
    """Token ids (C, K, L) of every template filled with every class.

    A class is a dict of fields (``{"color": "red", "shape": "circle"}`` for
    ``"a photo of a {color} {shape}"``) or a plain string (for ``"a photo of a {}"``).
    """
    if not classes or not templates:
        raise ConfigError("templates", "need at least one class and one prompt template")
    texts = []
    for c in classes:
        for t in templates:
            try:
                texts.append(t.format(**c) if isinstance(c, dict) else t.format(c))
            except (KeyError, IndexError) as exc:
                raise ConfigError(
                    "templates", f"template {t!r} needs field {exc} that class {c!r} lacks"
                ) from exc
    tokens = tokenize(texts)  # (C*K, L)
    return tokens.view(len(classes), len(templates), -1)
