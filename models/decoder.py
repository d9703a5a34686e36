"""SigLIP 2's LocCa caption decoder (Tschannen et al. 2025, section 2.2; Wan et al. 2024, LocCa).

Module tree (registration order = the planner's ``param_shapes()`` order, the shared contract of
``vlscale/specs/siglip2.py``); every Linear has a bias, every norm is a LayerNorm with the text
trunk's epsilon::

    token_embed   Embedding(V, d)
    pos_embed     (1, L, d)
    parallel_token (d,)            the input at every position of a parallel pass
    blocks        DecoderBlock x depth
    norm          LN(d)
    head          Linear(d -> V)

A block (pre-norm): x += self_attn(norm1 x) (causal for a teacher-forced pass, full for a
parallel one); x += cross_attn(norm2 x, memory); x += mlp(norm3 x). The memory is the vision
trunk's normed tokens before pooling, (B, S_v, v); keys and values are projected v -> 2d.

Forward FLOPs per pass and sample (2 per multiply-add, attention counted in full also when
causal, as ``FlopCounterMode`` counts ``scaled_dot_product_attention``)::

    Σ_blocks [6·L·d² + 4·L²·d + 2·L·d²          (self)
              + 2·L·d² + 4·S_v·v·d + 4·L·S_v·d + 2·L·d²   (cross)
              + 4·L·d·h]                         (mlp)
    + 2·L·d·V                                    (head)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import DEFAULT_INIT_STD, fan_in_std, residual_linear


class SelfAttention(nn.Module):
    """qkv Linear(d -> 3d), SDPA under an optional (B, 1, L, L) boolean mask, out Linear."""

    def __init__(self, d: int, heads: int, depth: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = residual_linear(d, d, True, depth)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, d = x.shape
        hd = d // self.heads
        # (B, L, 3, H, hd) -> 3 x (B, H, L, hd)
        q, k, v = self.qkv(x).view(b, s, 3, self.heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, hd)
        return self.out(o.transpose(1, 2).reshape(b, s, d))


class CrossAttention(nn.Module):
    """q Linear(d -> d) on the text, kv Linear(v -> 2d) on the image memory, out Linear."""

    def __init__(self, d: int, v: int, heads: int, depth: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(v, 2 * d)
        self.out = residual_linear(d, d, True, depth)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        m, hd = memory.shape[1], d // self.heads
        q = self.q(x).view(b, s, self.heads, hd).transpose(1, 2)  # (B, H, L, hd)
        # (B, S_v, 2, H, hd) -> 2 x (B, H, S_v, hd)
        k, v = self.kv(memory).view(b, m, 2, self.heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, L, hd)
        return self.out(o.transpose(1, 2).reshape(b, s, d))


class DecoderMlp(nn.Module):
    def __init__(self, d: int, h: int, depth: int):
        super().__init__()
        self.fc1 = nn.Linear(d, h)
        self.fc2 = residual_linear(h, d, True, depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class DecoderBlock(nn.Module):
    """Pre-norm: self-attention (masked), cross-attention to the image memory, GELU MLP."""

    def __init__(self, d: int, heads: int, h: int, v: int, eps: float, depth: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.self_attn = SelfAttention(d, heads, depth)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.cross_attn = CrossAttention(d, v, heads, depth)
        self.norm3 = nn.LayerNorm(d, eps=eps)
        self.mlp = DecoderMlp(d, h, depth)

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm1(x), mask)
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.mlp(self.norm3(x))


class Decoder(nn.Module):
    """The LocCa decoder; ``forward`` runs one pass (and its caption loss, see there)."""

    def __init__(
        self,
        *,
        vocab: int,
        context: int,
        width: int,
        depth: int,
        heads: int,
        mlp_width: int,
        vision_width: int,
        eps: float,
    ):
        super().__init__()
        d = width
        self.token_embed = nn.Embedding(vocab, d)
        self.pos_embed = nn.Parameter(torch.empty(1, context, d))
        self.parallel_token = nn.Parameter(torch.empty(d))
        self.blocks = nn.ModuleList(
            DecoderBlock(d, heads, mlp_width, vision_width, eps, depth) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(d, eps=eps)
        self.head = nn.Linear(d, vocab)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.pos_embed, std=DEFAULT_INIT_STD)
        nn.init.trunc_normal_(self.parallel_token, std=fan_in_std(self.parallel_token.shape[-1]))

    def hidden(
        self, tokens: torch.Tensor, memory: torch.Tensor, parallel: torch.Tensor
    ) -> torch.Tensor:
        """Normed hidden states (B, L, d) of one pass.

        tokens: (B, L) caption rows ([bos, ..., eos, pad...]); the teacher-forced input at
        position i is token i, and it predicts token i + 1. parallel: (B,) bool, True where the
        example's pass predicts in parallel: every input is ``parallel_token`` and attention is
        full; otherwise attention is causal."""
        s = tokens.shape[1]
        x = self.token_embed(tokens)  # (B, L, d)
        x = torch.where(parallel[:, None, None], self.parallel_token.to(x.dtype), x)
        x = x + self.pos_embed[:, :s]
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()  # (L, L)
        mask = causal | parallel[:, None, None, None]  # (B, 1, L, L): True = may attend
        for block in self.blocks:
            x = block(x, memory, mask)
        return self.norm(x)

    def forward(
        self,
        tokens: torch.Tensor,
        memory: torch.Tensor,
        parallel: torch.Tensor,
        loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One pass. ``loss(hidden, head.weight, head.bias)`` -> its caption loss, computed
        inside this forward so that under FSDP the head is gathered while it runs (the trainer
        passes ``trainer.losses.siglip2``'s chunked cross-entropy); without ``loss`` the logits
        (B, L, V) (tests, small inputs)."""
        h = self.hidden(tokens, memory, parallel)  # (B, L, d)
        if loss is None:
            return self.head(h)  # (B, L, V)
        return loss(h, self.head.weight, self.head.bias)
