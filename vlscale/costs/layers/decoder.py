"""SigLIP 2's LocCa decoder (``models.decoder.Decoder``; Tschannen et al. 2025, section 2.2) as
layers: its embedding, its blocks and its chunked vocabulary head with the caption loss.

Notation: b samples through the decoder (the local batch times the passes per example),
L text length, m = b·L rows, d decoder width, h its MLP width, H heads, hd = d / H,
S_v vision tokens (the memory), v vision width, nm = b·S_v, V vocabulary, c tokens per logit
chunk. Every linear has a bias; every norm is a LayerNorm (weight + bias).

Parameters (registration order of the torch modules):

    decoder         token_embed (V, d), pos_embed (1, L, d), parallel_token (d,)
    decoder.blocks  norm1; self_attn.qkv (3d, d) (3d,); self_attn.out (d, d) (d,); norm2;
                    cross_attn.q (d, d) (d,); cross_attn.kv (2d, v) (2d,);
                    cross_attn.out (d, d) (d,); norm3; mlp.fc1 (h, d) (h,); mlp.fc2 (d, h) (d,)
                    = 6d + 6d² + 2·v·d + 8d + 2·d·h + h + d
    decoder         norm (d,) (d,); head (V, d) (V,)

Forward FLOPs per sample (2 per multiply-add, attention counted in full even when causal, as
FlopCounterMode counts; the contract shared with ``models/``):

    block   2·L·d·3d + 4·L²·d + 2·L·d²                      self-attention
            2·L·d² + 2·S_v·v·2d + 4·L·S_v·d + 2·L·d²        cross-attention (q, kv, core, out)
            4·L·d·h                                         MLP
    head    2·L·d·V                                         the vocabulary logits

Backward: every linear dX and dW (twice its forward), each attention one fused kernel of twice
its FLOPs. The kv projection's dX is the vision tower's gradient (the memory trains).

The vocabulary head computes its logits ``c`` rows at a time and keeps none for backward: the
backward recomputes each chunk's logits (phase "recompute", hardware FLOPs, not model FLOPs)
before its gradient, so at most one chunk's logits (c·V, and their fp32 softmax) ever exist.

Saved (elements; as ``layers.block``, SDPA keeps q, k, v, o and a per-row logsumexp):

    self-attention   x, norm1 out, qkv out (3), o                  6·m·d, logsumexp m·H (fp32)
    cross-attention  x1, norm2 out, q out, o                       4·m·d, logsumexp m·H (fp32)
                     k, v                                          2·nm·d
    mlp              x2, norm3 out, fc1 out, GELU out              2·m·d + 2·m·h
    each LayerNorm   mean and rstd                                 2 per row (fp32)
    head             norm in, norm out, the targets (int64), the per-row logsumexp (fp32),
                     and one chunk's logits c·V (compute dtype) with their fp32 softmax c·V

The memory (the vision tower's normed tokens) is the MAP head's input, already saved there.
"""

from __future__ import annotations

from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import Op, OpList, Phase, Saved, Shape


def _ln(n: int) -> list[Shape]:
    return [(n,), (n,)]


class DecoderEmbed(Layer, kind="decoder_embed", role="stem"):
    """Token embedding, learned positions and the parallel-prediction token of the decoder."""

    vocab: int
    width: int
    length: int

    def param_shapes(self) -> list[Shape]:
        d = self.width
        return [(self.vocab, d), (1, self.length, d), (d,)]

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        # a parallel pass broadcasts parallel_token instead of the lookup: the same bytes
        m, d = b * self.length, self.width
        ops.elementwise(f"{self.name}.token_embed", 2 * m * d, phase)
        ops.elementwise(f"{self.name}.pos_add", 3 * m * d, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        m, d = b * self.length, self.width
        ops.elementwise(f"{self.name}.pos_add.grad", 2 * m * d, "backward")
        scatter = self.vocab * d + 2 * m * d
        ops.elementwise(f"{self.name}.token_embed.grad", scatter, "backward", 2)

    def saved(self, b: int) -> Saved:
        return Saved(index=b * self.length)


class DecoderBlock(Layer, kind="decoder_block", role="block"):
    """One decoder block: self-attention over L tokens, cross-attention to S_v vision tokens of
    width ``memory_width``, GELU MLP (module docstring)."""

    width: int
    mlp_width: int
    heads: int
    length: int
    memory_tokens: int
    memory_width: int

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def param_shapes(self) -> list[Shape]:
        d, h, v = self.width, self.mlp_width, self.memory_width
        self_attn: list[Shape] = [(3 * d, d), (3 * d,), (d, d), (d,)]
        cross: list[Shape] = [(d, d), (d,), (2 * d, v), (2 * d,), (d, d), (d,)]
        mlp: list[Shape] = [(h, d), (h,), (d, h), (d,)]
        return [*_ln(d), *self_attn, *_ln(d), *cross, *_ln(d), *mlp]

    def _projections(self, ops: OpList, b: int, i: int, phase: Phase) -> None:
        """Attention ``i``'s input projections: self-attention's fused qkv (i = 1), or
        cross-attention's q from the text rows and kv from the memory rows (i = 2)."""
        n, d, m = self.name, self.width, b * self.length
        if i == 1:
            ops.linear(f"{n}.self_attn.qkv", m, 3 * d, d, True, phase)
        else:
            ops.linear(f"{n}.cross_attn.q", m, d, d, True, phase)
            ops.linear(
                f"{n}.cross_attn.kv", b * self.memory_tokens, 2 * d, self.memory_width, True, phase
            )

    def _attention(self, ops: OpList, b: int, i: int, phase: Phase) -> None:
        """Pre-norm attention ``i`` (1 self, 2 cross) and its residual, forward."""
        n, d, m = self.name, self.width, b * self.length
        part, keys = ("self_attn", self.length) if i == 1 else ("cross_attn", self.memory_tokens)
        ops.elementwise(f"{n}.norm{i}", 2 * m * d, phase)
        self._projections(ops, b, i, phase)
        # counted as a full kernel: half the passes predict in parallel (no causal mask)
        ops.attention(
            f"{n}.{part}.sdpa", b * self.heads, self.length, keys, self.head_dim, False, phase
        )
        ops.elementwise(f"{n}.{part}.merge_heads", 2 * m * d, phase)
        ops.linear(f"{n}.{part}.out", m, d, d, True, phase)
        ops.elementwise(f"{n}.residual{i}", 3 * m * d, phase)

    def _attention_backward(self, ops: OpList, b: int, i: int) -> None:
        n, d, m = self.name, self.width, b * self.length
        part, keys = ("self_attn", self.length) if i == 1 else ("cross_attn", self.memory_tokens)
        ops.elementwise(f"{n}.residual{i}.grad", 3 * m * d, "backward")
        ops.linear_backward(f"{n}.{part}.out", m, d, d, True, dx=True)
        ops.elementwise(f"{n}.{part}.merge_heads.grad", 2 * m * d, "backward")
        g, hd = b * self.heads, self.head_dim
        ops.attention(f"{n}.{part}.sdpa.grad", g, self.length, keys, hd, False, "backward")
        if i == 1:
            ops.linear_backward(f"{n}.self_attn.qkv", m, 3 * d, d, True, dx=True)
        else:
            rows, v = b * self.memory_tokens, self.memory_width
            ops.linear_backward(f"{n}.cross_attn.kv", rows, 2 * d, v, True, dx=True)
            ops.linear_backward(f"{n}.cross_attn.q", m, d, d, True, dx=True)
        ops.elementwise(f"{n}.norm{i}.grad", 3 * m * d, "backward", kernels=2)

    def forward_ops(
        self, ops: OpList, b: int, phase: Phase = "forward", early_stop: bool = False
    ) -> None:
        n, d, h, m = self.name, self.width, self.mlp_width, b * self.length
        self._attention(ops, b, 1, phase)
        self._attention(ops, b, 2, phase)
        ops.elementwise(f"{n}.norm3", 2 * m * d, phase)
        ops.linear(f"{n}.mlp.fc1", m, h, d, True, phase)
        ops.elementwise(f"{n}.mlp.gelu", 2 * m * h, phase)
        if early_stop:
            return  # torch's checkpoint stops before the last matmul and residual (pre-norm)
        ops.linear(f"{n}.mlp.fc2", m, d, h, True, phase)
        ops.elementwise(f"{n}.residual3", 3 * m * d, phase)

    def recompute_ops(self, ops: OpList, b: int, early_stop: bool = True) -> None:
        self.forward_ops(ops, b, "recompute", early_stop=early_stop)

    def backward_ops(self, ops: OpList, b: int) -> None:
        n, d, h, m = self.name, self.width, self.mlp_width, b * self.length
        ops.elementwise(f"{n}.residual3.grad", 3 * m * d, "backward")
        ops.linear_backward(f"{n}.mlp.fc2", m, d, h, True, dx=True)
        ops.elementwise(f"{n}.mlp.gelu.grad", 3 * m * h, "backward")
        ops.linear_backward(f"{n}.mlp.fc1", m, h, d, True, dx=True)
        ops.elementwise(f"{n}.norm3.grad", 3 * m * d, "backward", kernels=2)
        self._attention_backward(ops, b, 2)
        self._attention_backward(ops, b, 1)

    def saved(self, b: int) -> Saved:
        m, d, h = b * self.length, self.width, self.mlp_width
        nm = b * self.memory_tokens
        stats = Saved(fp32=3 * 2 * m)  # three LayerNorms: mean and rstd per row
        lse = Saved(fp32=2 * m * self.heads)  # self- and cross-attention logsumexp
        acts = (6 + 4 + 2) * m * d + 2 * nm * d + 2 * m * h
        return Saved(act=acts) + stats + lse

    def checkpoint_saved(self, b: int) -> Saved:
        """The block input, b·L·d (the memory is the vision tower's, alive anyway)."""
        return Saved(act=b * self.length * self.width)


class DecoderHead(Layer, kind="decoder_head", role="head"):
    """Final norm, the vocabulary projection and the caption cross-entropy, ``chunk`` tokens of
    logits at a time (module docstring)."""

    width: int
    vocab: int
    length: int
    chunk: int

    def param_shapes(self) -> list[Shape]:
        return [*_ln(self.width), (self.vocab, self.width), (self.vocab,)]

    def _chunks(self, b: int) -> list[tuple[int, int]]:
        """(rows, how many chunks of that many rows) over the b·L tokens."""
        m = b * self.length
        full, rest = divmod(m, self.chunk)
        return [(r, k) for r, k in ((self.chunk, full), (rest, 1)) if r and k]

    def _logits(self, ops: OpList, rows: int, k: int, name: str, phase: Phase) -> None:
        d, v, a = self.width, self.vocab, ops.act_bytes
        flops, bytes_ = 2.0 * rows * v * d * k, (rows * d + v * d + rows * v) * a * k
        shape = (1, rows, v, d)
        ops.add(Op(name, "matmul", phase, flops, bytes_, k, shape, dtype=ops.dtype))

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        n, d, v = self.name, self.width, self.vocab
        ops.elementwise(f"{n}.norm", 2 * b * self.length * d, phase)
        for rows, k in self._chunks(b):
            self._logits(ops, rows, k, f"{n}.head", phase)
            # log-softmax and the target's term, per chunk (the bias add is fused)
            ops.elementwise(f"{n}.cross_entropy", k * (2 * rows * v + rows), phase, 2 * k)

    def backward_ops(self, ops: OpList, b: int) -> None:
        n, d, v = self.name, self.width, self.vocab
        for rows, k in self._chunks(b):
            self._logits(ops, rows, k, f"{n}.head.recompute", "recompute")
            ops.elementwise(f"{n}.cross_entropy.grad", k * 3 * rows * v, "backward", 2 * k)
            for _ in range(k):  # dX (rows, d) and dW (V, d) per chunk; the bias gradient
                ops.linear_backward(f"{n}.head", rows, v, d, True, dx=True)
        ops.elementwise(f"{n}.norm.grad", 3 * b * self.length * d, "backward", kernels=2)

    def saved(self, b: int) -> Saved:
        m, d = b * self.length, self.width
        c = min(self.chunk, m)
        return Saved(act=2 * m * d + c * self.vocab, fp32=2 * m + m + c * self.vocab, index=m)
