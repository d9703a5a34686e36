"""2-D rotary position embedding for patch tokens, laid out as timm's EVA.

EVA-02 (Fang et al. 2023, "EVA-02: A Visual Representation for Neon Genesis") rotates q and k of
the patch tokens: the first half of each head's dimensions by the patch's row position, the second
half by its column position. The layout is timm's (``timm/layers/pos_embed_sincos.py``,
``build_fourier_pos_embed`` / ``build_rotary_pos_embed`` / ``apply_rot_embed_cat``, used by
``timm/models/eva.py`` as ``RotaryEmbeddingCat(in_pixels=False, ref_feat_shape=...)``), so that an
EVA checkpoint loads as is, without permuting q / k rows:

- nb = head_dim / 4 frequencies per axis, theta_i = 1 / base^(i / nb), i = 0 .. nb-1;
- positions: grid indices p = 0 .. g-1, scaled to the pre-training grid when ``ref_grid`` is
  set: p / g * ref_grid (timm's ``ref_feat_shape``; 16 for the EVA02 CLIP towers, so 16/14 for
  EVA02-B-16 at 224 px);
- angles per patch: [row · theta, col · theta] (2·nb), each repeated twice in place
  (``repeat_interleave(2)``) so that dims (2j, 2j+1) form one rotated pair;
- rope(u) = u · cos + rot(u) · sin with rot((a, b) pairs) = (-b, a) pairs (interleaved).

With FLIP patch dropout, each kept token keeps the angle of its ORIGINAL grid position: the
tables are gathered by the kept indices, so attention over the kept subset equals attention of
those tokens in the full sequence restricted to them. Rotation is elementwise and costs no
matmul FLOPs.
"""

from __future__ import annotations

import torch
from torch import nn


class VisionRope(nn.Module):
    """cos / sin tables of shape (N, head_dim) for a ``grid`` x ``grid`` patch grid.

    The tables are non-persistent buffers: never checkpointed, recomputed by
    ``reset_parameters`` (so a model built on the meta device gets them after ``to_empty``).
    """

    def __init__(
        self, grid: int, head_dim: int, base: float = 10000.0, ref_grid: int | None = None
    ):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
        self.grid = grid
        self.head_dim = head_dim
        self.base = base
        self.ref_grid = ref_grid
        n = grid * grid
        self.register_buffer("cos", torch.empty(n, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(n, head_dim), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cos, sin = rope_tables(
            self.grid, self.head_dim, self.base, self.ref_grid, device=self.cos.device
        )
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    def rotation(self, ids_keep: torch.Tensor | None, prefix: int):
        """A function q -> rope(q) for (B, H, S, head_dim) tensors whose first ``prefix`` tokens
        (cls) are not rotated and whose patch tokens are the grid positions ``ids_keep`` (B, K),
        or all N positions in order when ``ids_keep`` is None."""
        if ids_keep is None:
            cos, sin = self.cos[None, None], self.sin[None, None]  # (1, 1, N, hd)
        else:
            cos, sin = self.cos[ids_keep][:, None], self.sin[ids_keep][:, None]  # (B, 1, K, hd)

        def apply(x: torch.Tensor) -> torch.Tensor:
            head, patches = x[:, :, :prefix], x[:, :, prefix:]
            c, s = cos.to(x.dtype), sin.to(x.dtype)
            rotated = patches * c + rotate_pairs(patches) * s
            return torch.cat([head, rotated], dim=2) if prefix else rotated

        return apply


def rope_positions(grid: int, ref_grid: int | None = None, device=None) -> torch.Tensor:
    """(grid,) positions along one axis: 0 .. grid-1, times ref_grid / grid when ``ref_grid``
    is set (computed as timm: ``x / f * r`` in float32)."""
    pos = torch.arange(grid, device=device, dtype=torch.int64).to(torch.float32)
    return pos / grid * ref_grid if ref_grid is not None else pos


def rope_tables(
    grid: int, head_dim: int, base: float = 10000.0, ref_grid: int | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, head_dim) cos and sin: row angles in the first half, column angles in the second,
    each angle repeated for the two dims of its interleaved pair (module docstring)."""
    nb = head_dim // 4  # frequencies per axis
    exponent = torch.arange(nb, device=device, dtype=torch.int64).to(torch.float32) / nb
    theta = 1.0 / (base**exponent)  # (nb,)
    pos = rope_positions(grid, ref_grid, device)
    rows = pos.repeat_interleave(grid)  # (N,) row position of patch n = n // grid
    cols = pos.repeat(grid)  # (N,) column position of patch n = n % grid
    ang = torch.cat([rows[:, None] * theta, cols[:, None] * theta], dim=-1)  # (N, 2·nb)
    ang = ang.repeat_interleave(2, dim=-1)  # (N, head_dim): pairs (2j, 2j+1) share an angle
    return ang.cos(), ang.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (a, b) -> (-b, a) along the last dim (timm ``rot``)."""
    a, b = x[..., 0::2], x[..., 1::2]
    return torch.stack([-b, a], dim=-1).reshape(x.shape)
