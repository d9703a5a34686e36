"""SigLIP's attention-pooling head ("map" pool, ``models.vision.MapHead``), with the image
tower's final norm over all tokens before it.

Notation: b local batch, S tokens, n = b·S, d width, h MLP width, H heads, hd = d / H.

Parameters: final norm(d); learned query (1, 1, d); q (d, d) (d,); kv (2d, d) (2d,);
out (d, d) (d,); norm(d); GELU MLP (h, d) (h,) (d, h) (d,) — all biased.

Forward per sample (one learned query over the S tokens, then x + mlp(norm(x))):
q 2d² + kv 4·S·d² + core 4·S·d + out 2d² + MLP 4·d·h FLOPs.

Saved: the last block's output n·d and the final norm's statistics, the normed tokens n·d,
the kv output 2·n·d; per sample q, o, the out-proj output and the norm output (4·d), the
logsumexp (H, fp32), the MLP's fc1 and GELU outputs (2·h) and the norm's statistics.
"""

from __future__ import annotations

from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import OpList, Phase, Saved, Shape, norm_saved, norm_shapes
from vlscale.specs.towers import TrunkSpec


def map_head_shapes(t: TrunkSpec) -> list[Shape]:
    """The head itself (``model.visual.head``), without the tower's final norm."""
    d, h = t.width, t.mlp_width
    attn: list[Shape] = [(1, 1, d), (d, d), (d,), (2 * d, d), (2 * d,), (d, d), (d,)]
    return [*attn, *norm_shapes(d, t), (h, d), (h,), (d, h), (d,)]


class AttentionPool(Layer, kind="attention_pool", role="head"):
    """Final norm + attention pooling of ``trunk``'s output, ``tokens`` tokens per sample."""

    trunk: TrunkSpec
    tokens: int

    def param_shapes(self) -> list[Shape]:
        return [*norm_shapes(self.trunk.width, self.trunk), *map_head_shapes(self.trunk)]

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        t, s, head = self.trunk, self.tokens, f"{self.name}.head"
        d, h = t.width, t.mlp_width
        ops.elementwise(f"{self.name}.norm", 2 * b * s * d, phase)
        ops.linear(f"{head}.q", b, d, d, True, phase)
        ops.linear(f"{head}.kv", b * s, 2 * d, d, True, phase)
        ops.attention(f"{head}.sdpa", b * t.heads, 1, s, t.head_dim, False, phase)
        ops.linear(f"{head}.out", b, d, d, True, phase)
        ops.elementwise(f"{head}.norm", 2 * b * d, phase)
        ops.linear(f"{head}.mlp.fc1", b, h, d, True, phase)
        ops.elementwise(f"{head}.mlp.gelu", 2 * b * h, phase)
        ops.linear(f"{head}.mlp.fc2", b, d, h, True, phase)
        ops.elementwise(f"{head}.residual", 3 * b * d, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        t, s, head = self.trunk, self.tokens, f"{self.name}.head"
        d, h = t.width, t.mlp_width
        ops.elementwise(f"{head}.residual.grad", 3 * b * d, "backward")
        ops.linear_backward(f"{head}.mlp.fc2", b, d, h, True, dx=True)
        ops.elementwise(f"{head}.mlp.gelu.grad", 3 * b * h, "backward")
        ops.linear_backward(f"{head}.mlp.fc1", b, h, d, True, dx=True)
        ops.elementwise(f"{head}.norm.grad", 3 * b * d, "backward", kernels=2)
        ops.linear_backward(f"{head}.out", b, d, d, True, dx=True)
        ops.attention(f"{head}.sdpa.grad", b * t.heads, 1, s, t.head_dim, False, "backward")
        ops.linear_backward(f"{head}.kv", b * s, 2 * d, d, True, dx=True)
        ops.linear_backward(f"{head}.q", b, d, d, True, dx=True)
        ops.elementwise(f"{self.name}.norm.grad", 3 * b * s * d, "backward", kernels=2)

    def saved(self, b: int) -> Saved:
        t = self.trunk
        d, n = t.width, b * self.tokens
        tokens = Saved(act=n * d) + norm_saved(n, d, t) + Saved(act=n * d + 2 * n * d)
        query = Saved(act=4 * b * d + 2 * b * t.mlp_width, fp32=b * t.heads)
        return tokens + query + norm_saved(b, d, t)
