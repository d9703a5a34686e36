"""The transformer block (``models.layers.Block``): pre-norm x + attn(norm1(x)), x +
mlp(norm2(x)), or post-norm x + norm1(attn(x)), x + norm2(mlp(x)) (EVA-CLIP-E).

Notation: b local batch, S tokens, n = m = b·S rows, d width, h MLP width, H heads,
hd = d / H, a bytes per activation element.

Parameters (the fused qkv and SwiGLU fc1 weights are single tensors, as ``models/`` allocates):

    norm(d); qkv (3d, d), biases (3d,) "qkv" | (d,) (d,) "qv" | none; [sub-LN norm(d)];
    out (d, d) [+ (d,) with proj_bias]; norm(d);
    gelu   fc1 (h, d) [+ (h,)], fc2 (d, h) [+ (d,)]                 (biases with mlp_bias)
    swiglu fc1 (2h, d) [+ (2h,)], [sub-LN norm(h)], fc2 (d, h) [+ (d,)]

so 2·norm(d) + 4d² + qkv biases + d·proj_bias + (2 or 3)·d·h + MLP biases + sub-LNs; the
ViT-B-32 block is 7,087,872 (``tests/test_params.py``).

Forward ops (FLOPs as FlopCounterMode counts them):

    norm1            elementwise        2·m·d·a
    qkv              matmul (m, 3d, d)  6·m·d² FLOPs,  (m·d + 3d·d + m·3d)·a bytes
    rope (EVA)       elementwise        q and k: 5 kernels each, 2·m·d·a per pass
    sdpa             attention          4·b·H·S²·hd = 4·b·S²·d FLOPs, q, k, v read + o written
    merge heads      copy               2·m·d·a        (o.transpose(1, 2).reshape)
    [sub-LN]         elementwise        2·m·d·a
    out              matmul (m, d, d)   2·m·d²
    residual add     elementwise        3·m·d·a
    norm2, fc1 (m, h | 2h, d), GELU 2·m·h·a | SwiGLU silu + mul 5·m·h·a [+ sub-LN over h],
    fc2 (m, d, h), residual add

per sample 8·S·d² (attention linears) + 4·S²·d (attention core) + (4 | 6)·S·d·h (MLP).
Causal text attention is counted in full: FlopCounterMode and OpenCLIP's profile both count
QKᵀ and AV whatever the mask.

Backward follows autograd op by op: each linear two matmuls of its forward FLOPs (dX, dW) and a
bias reduction, attention one fused kernel of twice its forward FLOPs, each elementwise op
three passes where the forward made two. Checkpointing re-runs the forward except the last
matmul (fc2) and residual: torch's non-reentrant checkpoint stops as soon as every saved tensor
is regenerated (``torch.utils.checkpoint.set_checkpoint_early_stop``), and the block output
feeds nothing saved — unless the block is post-norm, where it feeds norm2.

Saved for backward (elements; Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models", Sec. 4.1, counted tensor by tensor; SDPA saves q, k, v, o and the
per-row logsumexp, never the S² probabilities):

    attention   x, norm1 output, fused qkv output (3), o                      6·n·d
                logsumexp                                                     n·H   (fp32)
                [RoPE: rotated q and k, and the (b, S, d) copy of o]          3·n·d
                [sub-LN: its output]                                          n·d
    mlp         x1 = x + attn, norm2 output                                   2·n·d
                GELU: fc1 output, GELU output                                 2·n·h
                SwiGLU: fc1 output (gate | value), silu(gate), silu·value     4·n·h
                [sub-LN over h: its output]                                   n·h
    each norm   ``primitives.norm_saved``

A post-norm block saves the same counts (its norms' inputs and outputs trade places). Without
RoPE, q is a view of the fused qkv output laid out (b, S, H, hd), so o's reshape is a view;
RoPE's rotated q is a fresh (b, H, S, hd) tensor, so that reshape copies and the copy is saved.
"""

from __future__ import annotations

from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import OpList, Phase, Saved, Shape, norm_saved, norm_shapes
from vlscale.specs.towers import TrunkSpec

ROPE_KERNELS = 2 * 5  # q and k: u·cos + rotate_half(u)·sin, rotate_half = 4 slices + cat


class TransformerBlock(Layer, kind="transformer_block", role="block"):
    """One block of ``trunk`` over ``tokens`` tokens per sample."""

    trunk: TrunkSpec
    tokens: int
    causal: bool = False
    rope: bool = False

    @property
    def _fc1(self) -> int:
        return self.trunk.mlp_width * (1 if self.trunk.mlp_kind == "gelu" else 2)

    def param_shapes(self) -> list[Shape]:
        t = self.trunk
        d, h = t.width, t.mlp_width
        attn: list[Shape] = [(3 * d, d)]
        attn += {"qkv": [(3 * d,)], "qv": [(d,), (d,)], "none": []}[t.qkv_bias]
        attn += norm_shapes(d, t) if t.sub_ln else []
        attn += [(d, d)] + ([(d,)] if t.proj_bias else [])
        mlp: list[Shape] = [(self._fc1, d)] + ([(self._fc1,)] if t.mlp_bias else [])
        mlp += norm_shapes(h, t) if (t.sub_ln and t.mlp_kind == "swiglu") else []
        mlp += [(d, h)] + ([(d,)] if t.mlp_bias else [])
        return [*norm_shapes(d, t), *attn, *norm_shapes(d, t), *mlp]

    def forward_ops(
        self, ops: OpList, b: int, phase: Phase = "forward", early_stop: bool = False
    ) -> None:
        t, name, s = self.trunk, self.name, self.tokens
        d, h, m = t.width, t.mlp_width, b * s
        ops.elementwise(f"{name}.norm1", 2 * m * d, phase)
        ops.linear(f"{name}.attn.qkv", m, 3 * d, d, t.qkv_bias != "none", phase)
        if self.rope:
            ops.elementwise(f"{name}.attn.rope", 2 * 5 * 2 * m * d, phase, kernels=ROPE_KERNELS)
        ops.attention(f"{name}.attn.sdpa", b * t.heads, s, s, t.head_dim, self.causal, phase)
        ops.elementwise(f"{name}.attn.merge_heads", 2 * m * d, phase)
        if t.sub_ln:
            ops.elementwise(f"{name}.attn.sub_norm", 2 * m * d, phase)
        ops.linear(f"{name}.attn.out", m, d, d, t.proj_bias, phase)
        ops.elementwise(f"{name}.residual1", 3 * m * d, phase)
        ops.elementwise(f"{name}.norm2", 2 * m * d, phase)
        ops.linear(f"{name}.mlp.fc1", m, self._fc1, d, t.mlp_bias, phase)
        if t.mlp_kind == "gelu":
            ops.elementwise(f"{name}.mlp.gelu", 2 * m * h, phase)
        else:
            ops.elementwise(f"{name}.mlp.swiglu", 5 * m * h, phase, kernels=2)
            if t.sub_ln:
                ops.elementwise(f"{name}.mlp.sub_norm", 2 * m * h, phase)
        if early_stop:
            return  # torch's checkpoint stops before the block's last matmul and residual
        ops.linear(f"{name}.mlp.fc2", m, d, h, t.mlp_bias, phase)
        ops.elementwise(f"{name}.residual2", 3 * m * d, phase)

    def recompute_ops(self, ops: OpList, b: int, early_stop: bool = True) -> None:
        """The forward again, less fc2 and the residual with torch's early stop (pre-norm)."""
        stop = early_stop and not self.trunk.post_norm
        self.forward_ops(ops, b, "recompute", early_stop=stop)

    def backward_ops(self, ops: OpList, b: int) -> None:
        t, name, s = self.trunk, self.name, self.tokens
        d, h, m = t.width, t.mlp_width, b * s
        ops.elementwise(f"{name}.residual2.grad", 3 * m * d, "backward")
        ops.linear_backward(f"{name}.mlp.fc2", m, d, h, t.mlp_bias, dx=True)
        if t.mlp_kind == "gelu":
            ops.elementwise(f"{name}.mlp.gelu.grad", 3 * m * h, "backward")
        else:
            if t.sub_ln:
                ops.elementwise(f"{name}.mlp.sub_norm.grad", 3 * m * h, "backward", kernels=2)
            ops.elementwise(f"{name}.mlp.swiglu.grad", 9 * m * h, "backward", kernels=4)
        ops.linear_backward(f"{name}.mlp.fc1", m, self._fc1, d, t.mlp_bias, dx=True)
        ops.elementwise(f"{name}.norm2.grad", 3 * m * d, "backward", kernels=2)
        ops.elementwise(f"{name}.residual1.grad", 3 * m * d, "backward")
        ops.linear_backward(f"{name}.attn.out", m, d, d, t.proj_bias, dx=True)
        if t.sub_ln:
            ops.elementwise(f"{name}.attn.sub_norm.grad", 3 * m * d, "backward", kernels=2)
        ops.elementwise(f"{name}.attn.merge_heads.grad", 2 * m * d, "backward")
        g = b * t.heads
        ops.attention(f"{name}.attn.sdpa.grad", g, s, s, t.head_dim, self.causal, "backward")
        if self.rope:
            rope = 2 * 5 * 2 * m * d
            ops.elementwise(f"{name}.attn.rope.grad", rope, "backward", kernels=ROPE_KERNELS)
        ops.linear_backward(f"{name}.attn.qkv", m, 3 * d, d, t.qkv_bias != "none", dx=True)
        ops.elementwise(f"{name}.norm1.grad", 3 * m * d, "backward", kernels=2)

    def saved(self, b: int) -> Saved:
        t = self.trunk
        n, d, h = b * self.tokens, t.width, t.mlp_width
        # (n, d) tensors: x, norm1 out, qkv (3), o; RoPE: rotated q, k and o's copy; sub-LN out
        attn_nd = 6 + (3 if self.rope else 0) + (1 if t.sub_ln else 0)
        attn = Saved(act=attn_nd * n * d, fp32=n * t.heads) + norm_saved(n, d, t)
        if t.sub_ln:
            attn += norm_saved(n, d, t)
        mlp = Saved(act=2 * n * d) + norm_saved(n, d, t)  # x1 = x + attn, norm2 out
        if t.mlp_kind == "gelu":  # (n, h): fc1 out, GELU out
            return attn + mlp + Saved(act=2 * n * h)
        # (n, h): fc1 out (gate | value, 2), silu(gate), silu(gate)·value; sub-LN out
        mlp += Saved(act=(4 + (1 if t.sub_ln else 0)) * n * h)
        if t.sub_ln:
            mlp += norm_saved(n, h, t)
        return attn + mlp

    def checkpoint_saved(self, b: int) -> Saved:
        """The block input, b·S·d (the RoPE tables live outside the blocks)."""
        return Saved(act=b * self.tokens * self.trunk.width)
