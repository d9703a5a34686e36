"""Bytes the contrastive loss holds on one rank: saved for backward, and what its backward
allocates on top at its peak (``trainer.losses``, measured with saved-tensor hooks and the
allocator in tests/test_activation_memory_torch.py and tests/trainer/test_loss_memory.py).

Used by ``vlscale.costs.memory`` (the ``loss_buffers`` category) and by the loss layer
(``vlscale.costs.layers.loss``); a module of its own so that neither imports the other.
"""

from __future__ import annotations

from typing import NamedTuple

from vlscale.costs.dtypes import LOSS_BYTES
from vlscale.errors import ConfigError
from vlscale.specs.recipes import check_loss_impl


class LossBuffers(NamedTuple):
    """The loss's bytes in two parts: ``saved`` (kept from forward until backward) and
    ``backward`` (what backward allocates on top of them at its peak)."""

    saved: int
    backward: int


def loss_buffer_parts(
    loss: str, impl: str, local_batch: int, world_size: int, embed_dim: int
) -> LossBuffers:
    """Bytes of the contrastive loss (fp32 throughout, ``trainer.losses``), split into what it
    saves for backward and what its backward allocates on top at its peak.

    b = local batch, B = b·W, e = embed_dim; in 4-byte elements. Saved for backward (measured
    with saved-tensor hooks at W = 1, 2, 4: tests/test_activation_memory_torch,
    tests/trainer/test_loss_memory):

        all variants    per ``F.normalize``: its input b·e, the norms and the clamped norms 2·b;
                        both sides 2·(b·e + 2·b)
        softmax-gather  x and y, the scaled copies t·x, t·y (4·b·e); the gathered images and
                        texts 2·B·e (when W > 1; at W = 1 they are x and y); per direction the
                        log-softmax output b×B (2·b·B); the int64 labels (2·b)
        sigmoid-gather  x and t·x (2·b·e); the gathered texts B·e (at W = 1: y, b·e); the
                        logits z (b·B) kept by softplus; the negated positive logits (b)
        sigmoid-ring    x and y only (2·b·e): the ring's autograd Function saves nothing else

    Backward, on top of the saved tensors:

        softmax-gather  the two b×B logit gradients 2·b·B
        sigmoid-gather  the b×B logit gradient b·B
        sigmoid-ring    the live set of ``trainer.losses.siglip_ring``'s backward, derived
                        from its code and measured at W = 1, 2, 4 (tests/trainer/
                        test_loss_memory). At block k it holds t·x and dx (2·b·e); for k ≥ 1
                        the current text block (not y itself), the accumulator just sent and
                        the one being received (3·b·e); for k < W − 1 the next block being
                        received (b·e): n = 2, 5, 6 blocks of b·e at W = 1, 2, ≥ 3 at the
                        busiest block. Three moments compete for the peak:

                          z and G = σ(z) − 1 both live (G is formed in place)   2·b² + n·b·e
                          z freed, G and the new contribution Gᵀ·x live         b² + (n+1)·b·e
                          G freed, the next accumulator hop posted (W > 1): the
                          new accumulator and its receive buffer on top         (n+2)·b·e

                        The peak is the largest: 2·b² + n·b·e when b ≥ e, (n+2)·b·e when
                        b ≤ e (W > 1). It does not depend on W once W ≥ 3.

    One-element tensors (scale, bias, their exp and gradients) are not counted.
    """
    check_loss_impl(loss, impl)
    if local_batch < 1:
        raise ConfigError("local_batch", f"must be >= 1, got {local_batch}")
    if world_size < 1:
        raise ConfigError("world_size", f"must be >= 1, got {world_size}")
    b, e = local_batch, embed_dim
    big_b = b * world_size
    gathered = big_b * e if world_size > 1 else 0  # at W = 1 the "gathered" tensor is the input
    normalised = 2 * (b * e + 2 * b)
    if loss == "softmax":
        saved = 4 * b * e + 2 * gathered + 2 * b * big_b + 2 * b
        backward = 2 * b * big_b
    elif impl == "gather":
        saved = 2 * b * e + (gathered if world_size > 1 else b * e) + b * big_b + b
        backward = b * big_b
    else:
        saved = 2 * b * e
        n = 2 + (3 if world_size > 1 else 0) + (1 if world_size > 2 else 0)
        moments = [2 * b * b + n * b * e, b * b + (n + 1) * b * e]
        if world_size > 1:
            moments.append((n + 2) * b * e)
        backward = max(moments)
    return LossBuffers(LOSS_BYTES * (normalised + saved), LOSS_BYTES * backward)


def loss_buffer_bytes(
    loss: str, impl: str, local_batch: int, world_size: int, embed_dim: int
) -> int:
    """Bytes held by the contrastive loss at its peak: saved for backward plus what backward
    allocates on top (:func:`loss_buffer_parts`, which states every term)."""
    return sum(loss_buffer_parts(loss, impl, local_batch, world_size, embed_dim))
