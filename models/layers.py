"""Transformer building blocks, laid out exactly as ``vlscale.specs.towers`` documents.

One pre-norm block::

    x = x + attn(norm1(x))     q, k, v projections (fused weight, biases per ``qkv_bias``),
                               scaled_dot_product_attention, [sub-LN over width], out Linear
    x = x + mlp(norm2(x))      GELU MLP or SwiGLU ([sub-LN over mlp_width])

or, with ``trunk.post_norm`` (EVA-CLIP-E), ``x + norm1(attn(x))`` and ``x + norm2(mlp(x))``.

Parameter counts must equal ``vlscale.costs.params`` term by term (tests/test_params_match.py),
and the matmuls must be exactly those that ``vlscale.costs.flops`` counts (tests/test_flops.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlscale.specs.towers import TrunkSpec

# Std of embedding-like tensors that have no fan-in (token embeddings), as OpenCLIP.
DEFAULT_INIT_STD = 0.02


def fan_in_std(fan_in: int) -> float:
    """fan_in^-1/2: OpenCLIP's width^-1/2 scaling for projections, tokens and positions.

    A fixed 0.02 (BERT / timm) is fine at width 768 (768^-1/2 = 0.036) but far too small for the
    tiny CPU presets (64^-1/2 = 0.125): every image then embeds to nearly the same vector at
    init (mean cosine 0.9999 on tiny-clip) and contrastive training stalls at chance.
    """
    return fan_in**-0.5


RopeFn = Callable[[torch.Tensor], torch.Tensor]


def make_norm(n: int, trunk: TrunkSpec) -> nn.Module:
    """LayerNorm (weight + bias) or RMSNorm (weight only), per ``trunk.norm_kind``, with the
    tower's epsilon ``trunk.norm_eps`` (1e-5 OpenCLIP, 1e-6 timm / SigLIP)."""
    if trunk.norm_kind == "layernorm":
        return nn.LayerNorm(n, eps=trunk.norm_eps)
    return nn.RMSNorm(n, eps=trunk.norm_eps)


def residual_linear(in_f: int, out_f: int, bias: bool, depth: int) -> nn.Linear:
    """A Linear that writes into the residual stream: its init std is scaled by 1/sqrt(2·depth)
    (GPT-2 / OpenCLIP practice) so that the residual variance stays O(1) with depth."""
    lin = nn.Linear(in_f, out_f, bias=bias)
    lin.init_std = fan_in_std(in_f) / math.sqrt(2 * depth)
    return lin


class Attention(nn.Module):
    """Multi-head self-attention with a fused q/k/v weight.

    ``qkv_bias``: "qkv" -> the fused Linear has a bias (3d); "qv" -> separate ``q_bias`` and
    ``v_bias`` Parameters (2d, k has none, as EVA / BEiT); "none" -> no bias at all.
    """

    def __init__(self, trunk: TrunkSpec):
        super().__init__()
        d = trunk.width
        self.heads = trunk.heads
        self.head_dim = trunk.head_dim
        self.qkv = nn.Linear(d, 3 * d, bias=trunk.qkv_bias == "qkv")
        if trunk.qkv_bias == "qv":
            self.q_bias = nn.Parameter(torch.empty(d))
            self.v_bias = nn.Parameter(torch.empty(d))
        else:
            self.q_bias = self.v_bias = None
        self.sub_norm = make_norm(d, trunk) if trunk.sub_ln else nn.Identity()
        self.out = residual_linear(d, d, trunk.proj_bias, trunk.depth)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Only the parameters owned directly here; child Linears are set by ``init_weights``."""
        if self.q_bias is not None:
            nn.init.zeros_(self.q_bias)
            nn.init.zeros_(self.v_bias)

    def _qkv_bias(self) -> torch.Tensor | None:
        if self.q_bias is None:
            return self.qkv.bias
        # k has no bias: a zero block keeps the single fused matmul.
        return torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        rope: RopeFn | None = None,
    ) -> torch.Tensor:
        b, s, d = x.shape
        qkv = F.linear(x, self.qkv.weight, self._qkv_bias())  # (B, S, 3d)
        # (B, S, 3, H, hd) -> 3 x (B, H, S, hd)
        q, k, v = qkv.view(b, s, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            q, k = rope(q), rope(k)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, H, S, hd)
        o = o.transpose(1, 2).reshape(b, s, d)
        return self.out(self.sub_norm(o))


class Mlp(nn.Module):
    """Linear(d, h) -> GELU -> Linear(h, d)."""

    def __init__(self, width: int, hidden: int, bias: bool, depth: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden, bias=bias)
        self.fc2 = residual_linear(hidden, width, bias, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """silu(x W_g) * (x W_v) -> [sub-LN over h] -> Linear(h, d) (Shazeer 2020; EVA-02).

    Gate and value weights are fused into one Linear(d, 2h): same parameters, one matmul.
    """

    def __init__(self, trunk: TrunkSpec):
        super().__init__()
        d, h = trunk.width, trunk.mlp_width
        self.fc1 = nn.Linear(d, 2 * h, bias=trunk.mlp_bias)
        self.sub_norm = make_norm(h, trunk) if trunk.sub_ln else nn.Identity()
        self.fc2 = residual_linear(h, d, trunk.mlp_bias, trunk.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)  # 2 x (B, S, h)
        return self.fc2(self.sub_norm(F.silu(gate) * value))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); post-norm
    (``trunk.post_norm``): x + norm1(attn(x)), then x + norm2(mlp(x))."""

    def __init__(self, trunk: TrunkSpec):
        super().__init__()
        self.post_norm = trunk.post_norm
        self.norm1 = make_norm(trunk.width, trunk)
        self.attn = Attention(trunk)
        self.norm2 = make_norm(trunk.width, trunk)
        if trunk.mlp_kind == "gelu":
            self.mlp = Mlp(trunk.width, trunk.mlp_width, trunk.mlp_bias, trunk.depth)
        else:
            self.mlp = SwiGLU(trunk)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        rope: RopeFn | None = None,
    ) -> torch.Tensor:
        if self.post_norm:
            x = x + self.norm1(self.attn(x, causal=causal, rope=rope))
            return x + self.norm2(self.mlp(x))
        x = x + self.attn(self.norm1(x), causal=causal, rope=rope)
        return x + self.mlp(self.norm2(x))


def make_blocks(trunk: TrunkSpec) -> nn.ModuleList:
    """``trunk.depth`` blocks in an nn.ModuleList (the trainer wraps each one with FSDP2 / AC)."""
    return nn.ModuleList(Block(trunk) for _ in range(trunk.depth))


def make_proj(kind: str, width: int, embed_dim: int) -> nn.Module:
    """Output projection: "none" -> Identity, "linear" -> no bias, "linear_bias" -> with bias."""
    if kind == "none":
        return nn.Identity()
    return nn.Linear(width, embed_dim, bias=kind == "linear_bias")
