"""SigLIP 2's decoder block and distillation head against torch: a module written here from the
shared contract (plain ``nn.Linear`` / ``nn.LayerNorm`` / SDPA, not ``models/``) has the
planner's parameter shapes in registration order, and FlopCounterMode counts the planner's
forward FLOPs. The trainer's own modules are held to the same numbers by the cross-check."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from models.flop_counting import count_flops  # noqa: E402
from vlscale.costs.layers import DecoderBlock, DistillHead, OpList  # noqa: E402


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int, memory_width: int | None = None):
        super().__init__()
        self.heads = heads
        if memory_width is None:
            self.qkv = nn.Linear(d, 3 * d)
        else:
            self.q = nn.Linear(d, d)
            self.kv = nn.Linear(memory_width, 2 * d)
        self.out = nn.Linear(d, d)

    def _split(self, x):  # (B, S, d) -> (B, H, S, hd)
        b, s, d = x.shape
        return x.view(b, s, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, memory=None):
        if memory is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, (k, v) = self.q(x), self.kv(memory).chunk(2, dim=-1)
        o = F.scaled_dot_product_attention(self._split(q), self._split(k), self._split(v))
        return self.out(o.transpose(1, 2).reshape(x.shape))


class _Block(nn.Module):
    """The contract's DecoderBlock: pre-norm self-attention, cross-attention, GELU MLP."""

    def __init__(self, d, h, heads, v):
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(d), _Attention(d, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(d), _Attention(d, heads, v)
        self.norm3 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d))

    def forward(self, x, memory):
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.mlp(self.norm3(x))


def _forward_flops(layer, b: int) -> float:
    ops = OpList("fp32", 4)
    layer.forward_ops(ops, b)
    return sum(o.flops for o in ops)


@pytest.mark.parametrize(
    "d, h, heads, length, s_v, v", [(32, 64, 4, 8, 12, 24), (16, 48, 2, 5, 9, 40)]
)
def test_decoder_block_matches_torch(d, h, heads, length, s_v, v):
    torch.manual_seed(0)
    block = _Block(d, h, heads, v)
    layer = DecoderBlock("decoder.blocks.0", d, h, heads, length, s_v, v)
    assert [tuple(p.shape) for p in block.parameters()] == layer.param_shapes()
    b = 3
    x, memory = torch.randn(b, length, d), torch.randn(b, s_v, v)
    flops, _ = count_flops(block, x, memory)
    assert flops == _forward_flops(layer, b)


def test_distill_head_matches_torch():
    v, hd, b, rows = 24, 16, 5, 1
    head = nn.Sequential(nn.LayerNorm(v), nn.Linear(v, hd), nn.GELU(), nn.Linear(hd, hd))
    layer = DistillHead("distill_head", v, hd, 7, rows)
    assert [tuple(p.shape) for p in head.parameters()] == layer.param_shapes()
    flops, _ = count_flops(head, torch.randn(b * rows, v))
    assert flops == _forward_flops(layer, b)
