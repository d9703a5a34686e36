"""2-D rotary position embedding for patch tokens (EVA-02 style).

EVA-02 (Fang et al. 2023, "EVA-02: A Visual Representation for Neon Genesis") rotates q and k of
the patch tokens: the first half of each head's dimensions by the patch's row index, the second
half by its column index. Within each half of size m = head_dim / 2 the usual RoPE (Su et al.
2021) applies with m / 2 frequencies theta_i = base^(-2i / m), in the "rotate half" pairing::

    rope(u) = u * cos(p * theta) + rotate_half(u) * sin(p * theta),  rotate_half([a, b]) = [-b, a]

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

    def __init__(self, grid: int, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
        self.grid = grid
        self.head_dim = head_dim
        self.base = base
        n = grid * grid
        self.register_buffer("cos", torch.empty(n, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(n, head_dim), persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cos, sin = rope_tables(self.grid, self.head_dim, self.base, device=self.cos.device)
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
            rotated = patches * c + rotate_half_pairs(patches) * s
            return torch.cat([head, rotated], dim=2) if prefix else rotated

        return apply


def rope_tables(
    grid: int, head_dim: int, base: float = 10000.0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, head_dim) cos and sin: row angles in the first half, column angles in the second."""
    m = head_dim // 2  # dims per axis
    theta = base ** (-torch.arange(0, m, 2, device=device, dtype=torch.float32) / m)  # (m/2,)
    pos = torch.arange(grid, device=device, dtype=torch.float32)
    rows = pos.repeat_interleave(grid)  # (N,) row index of patch n = n // grid
    cols = pos.repeat(grid)  # (N,) column index of patch n = n % grid
    ang_r = rows[:, None] * theta[None]  # (N, m/2)
    ang_c = cols[:, None] * theta[None]  # (N, m/2)
    # each axis half is [a, b] with the same angles on a and b (rotate-half pairing)
    ang = torch.cat([ang_r, ang_r, ang_c, ang_c], dim=-1)  # (N, head_dim)
    return ang.cos(), ang.sin()


def rotate_half_pairs(x: torch.Tensor) -> torch.Tensor:
    """Per axis half [a, b] -> [-b, a]; x is (..., head_dim) with head_dim = 4 quarters."""
    a_r, b_r, a_c, b_c = x.chunk(4, dim=-1)
    return torch.cat([-b_r, a_r, -b_c, a_c], dim=-1)
