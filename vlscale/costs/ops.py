"""The op list of a training step: every kernel one rank runs, with its shape, FLOPs and bytes.

This is where the planner's compute comes from (``vlscale.costs.compute`` prices each op). An
:class:`Op` is one kind of kernel launched ``kernels`` times; its ``flops`` follow the counting
of ``vlscale.costs.flops`` (2 per multiply-add, matmuls / convolutions / attention only, as
``torch.utils.flop_counter.FlopCounterMode``) so that the forward ops of a unit sum EXACTLY to
that unit's ``LayerFlops.total`` times the batch (tests/test_ops.py holds them equal for every
preset and mask ratio). ``bytes`` is what the kernel reads plus writes from memory.

Notation per rank: b local batch, S tokens, m = b·S rows, d width, h MLP width, H heads,
hd = d / H, e embedding width, a bytes per activation element (2 for bf16 / fp16, 4 for fp32).

Forward of one pre-norm block (``models.layers.Block``)::

    norm1            elementwise        2·m·d·a
    qkv              matmul (m, 3d, d)  2·m·3d·d FLOPs,  (m·d + 3d·d + m·3d)·a bytes
    rope (EVA)       elementwise        q and k: 5 kernels each, 2·m·d·a per pass
    sdpa             attention          4·b·H·S²·hd FLOPs (a causal kernel executes about half),
                                        q, k, v read + o written: 4·m·d·a
    merge heads      copy               2·m·d·a        (o.transpose(1, 2).reshape)
    [sub-LN]         elementwise        2·m·d·a
    out              matmul (m, d, d)
    residual add     elementwise        3·m·d·a
    norm2, fc1 (m, h | 2h, d), GELU 2·m·h·a | SwiGLU silu + mul 5·m·h·a [+ sub-LN over h],
    fc2 (m, d, h), residual add

Backward follows autograd, op by op (not a blanket 2×): a linear's backward is two matmuls of
the forward's FLOPs each — dX = dY·W and dW = dYᵀ·X — plus a bias reduction; the patch stem has
no dX (pixels need no gradient); attention backward is one fused kernel of twice the forward's
FLOPs reading q, k, v, o, dO and writing dq, dk, dv; an elementwise op reads its input and the
incoming gradient and writes the outgoing one (3 passes where the forward made 2).
Activation checkpointing re-runs a block's forward in backward except its last matmul (fc2),
which torch's early-stopping checkpoint skips (``flops.block_recompute_flops``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from vlscale.specs.models import ModelSpec
from vlscale.specs.towers import TextTowerSpec, TrunkSpec, VisionTowerSpec

OpKind = Literal["matmul", "attention", "elementwise"]
Phase = Literal["forward", "backward", "recompute"]


@dataclass(frozen=True)
class Op:
    """``kernels`` launches of one kernel; flops / bytes are totals over those launches.

    ``shape`` = (batch, m, n, k) of one launch for matmuls (C[m, n] = A[m, k]·B[k, n], ``batch``
    independent products) and attention (batch·heads, query length, key length, head dim).
    ``exec_flops`` is what the kernel really executes (a causal attention kernel skips the
    masked half); ``flops`` is the model-FLOPs count (FlopCounterMode's, the MFU numerator).
    """

    name: str
    kind: OpKind
    phase: Phase
    flops: float = 0.0
    bytes: float = 0.0
    kernels: int = 1
    shape: tuple[int, int, int, int] | None = None
    exec_flops: float | None = None
    dtype: str = "fp32"
    # how the host launches it: "model" (inside the towers: module call, autograd, hooks),
    # "dtensor" (an op on DTensor parameters), "plain" (a bare tensor op, e.g. LAMB's loop)
    dispatch: Literal["model", "dtensor", "plain"] = "model"

    @property
    def executed_flops(self) -> float:
        return self.flops if self.exec_flops is None else self.exec_flops


@dataclass
class OpList:
    """Ops appended in execution order; small helpers for the recurring patterns."""

    dtype: str
    act_bytes: int
    ops: list[Op] = field(default_factory=list)

    def __iter__(self) -> Iterator[Op]:
        return iter(self.ops)

    def add(self, op: Op) -> None:
        self.ops.append(op)

    def linear(self, name: str, m: int, n: int, k: int, bias: bool, phase: Phase) -> None:
        """Y[m, n] = X[m, k]·W[n, k]ᵀ (+ bias): one matmul forward."""
        a = self.act_bytes
        self.add(
            Op(
                name,
                "matmul",
                phase,
                2.0 * m * n * k,
                (m * k + n * k + m * n) * a,
                1,
                (1, m, n, k),
                dtype=self.dtype,
            )
        )

    def linear_backward(self, name: str, m: int, n: int, k: int, bias: bool, dx: bool) -> None:
        """dX[m, k] = dY[m, n]·W (skipped for the stem) and dW[n, k] = dYᵀ·X; bias: Σ over m."""
        bytes_ = (m * n + n * k + m * k) * self.act_bytes  # read dY and one operand, write one
        grads = [(f"{name}.dx", (1, m, k, n))] if dx else []
        grads.append((f"{name}.dw", (1, n, k, m)))
        for op_name, shape in grads:
            self.add(
                Op(
                    op_name,
                    "matmul",
                    "backward",
                    2.0 * m * n * k,
                    bytes_,
                    1,
                    shape,
                    dtype=self.dtype,
                )
            )
        if bias:
            self.elementwise(f"{name}.db", m * n + n, "backward")

    def elementwise(self, name: str, elements: float, phase: Phase, kernels: int = 1) -> None:
        """A memory-bound kernel touching ``elements`` activation elements (reads + writes)."""
        self.add(
            Op(
                name,
                "elementwise",
                phase,
                0.0,
                elements * self.act_bytes,
                kernels,
                dtype=self.dtype,
            )
        )

    def attention(
        self, name: str, batch_heads: int, sq: int, sk: int, hd: int, causal: bool, phase: Phase
    ) -> None:
        """SDPA: QKᵀ and AV, 4·g·Sq·Sk·hd FLOPs forward, 8·g·Sq·Sk·hd backward (one kernel)."""
        scale = 2.0 if phase == "backward" else 1.0
        flops = scale * 4.0 * batch_heads * sq * sk * hd
        # a causal kernel skips the blocks above the diagonal: (S + 1) / (2S) of the work
        executed = flops * (sk + 1) / (2 * sk) if causal else flops
        io = (8 if phase == "backward" else 4) * batch_heads * sq * hd * self.act_bytes
        self.add(
            Op(
                name,
                "attention",
                phase,
                flops,
                io,
                1,
                (batch_heads, sq, sk, hd),
                executed,
                self.dtype,
            )
        )


# --------------------------------------------------------------------------- one block


def block_ops(
    ops: OpList,
    name: str,
    t: TrunkSpec,
    b: int,
    s: int,
    *,
    causal: bool,
    rope: bool,
    phase: Phase = "forward",
    early_stop: bool = False,
) -> None:
    """Forward (or recompute) ops of one pre-norm block over b·S tokens (module docstring)."""
    d, h, m = t.width, t.mlp_width, b * s
    fc1 = h if t.mlp_kind == "gelu" else 2 * h
    ops.elementwise(f"{name}.norm1", 2 * m * d, phase)
    ops.linear(f"{name}.attn.qkv", m, 3 * d, d, t.qkv_bias != "none", phase)
    if rope:  # q and k: u·cos + rotate_half(u)·sin, rotate_half = 4 slices + cat
        ops.elementwise(f"{name}.attn.rope", 2 * 5 * 2 * m * d, phase, kernels=2 * 5)
    ops.attention(f"{name}.attn.sdpa", b * t.heads, s, s, t.head_dim, causal, phase)
    ops.elementwise(f"{name}.attn.merge_heads", 2 * m * d, phase)
    if t.sub_ln:
        ops.elementwise(f"{name}.attn.sub_norm", 2 * m * d, phase)
    ops.linear(f"{name}.attn.out", m, d, d, t.proj_bias, phase)
    ops.elementwise(f"{name}.residual1", 3 * m * d, phase)
    ops.elementwise(f"{name}.norm2", 2 * m * d, phase)
    ops.linear(f"{name}.mlp.fc1", m, fc1, d, t.mlp_bias, phase)
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


def block_backward_ops(
    ops: OpList, name: str, t: TrunkSpec, b: int, s: int, *, causal: bool, rope: bool
) -> None:
    """Autograd's kernels for one block, in backward order."""
    d, h, m = t.width, t.mlp_width, b * s
    fc1 = h if t.mlp_kind == "gelu" else 2 * h
    ops.elementwise(f"{name}.residual2.grad", 3 * m * d, "backward")
    ops.linear_backward(f"{name}.mlp.fc2", m, d, h, t.mlp_bias, dx=True)
    if t.mlp_kind == "gelu":
        ops.elementwise(f"{name}.mlp.gelu.grad", 3 * m * h, "backward")
    else:
        if t.sub_ln:
            ops.elementwise(f"{name}.mlp.sub_norm.grad", 3 * m * h, "backward", kernels=2)
        ops.elementwise(f"{name}.mlp.swiglu.grad", 9 * m * h, "backward", kernels=4)
    ops.linear_backward(f"{name}.mlp.fc1", m, fc1, d, t.mlp_bias, dx=True)
    ops.elementwise(f"{name}.norm2.grad", 3 * m * d, "backward", kernels=2)
    ops.elementwise(f"{name}.residual1.grad", 3 * m * d, "backward")
    ops.linear_backward(f"{name}.attn.out", m, d, d, t.proj_bias, dx=True)
    if t.sub_ln:
        ops.elementwise(f"{name}.attn.sub_norm.grad", 3 * m * d, "backward", kernels=2)
    ops.elementwise(f"{name}.attn.merge_heads.grad", 2 * m * d, "backward")
    ops.attention(f"{name}.attn.sdpa.grad", b * t.heads, s, s, t.head_dim, causal, "backward")
    if rope:
        ops.elementwise(f"{name}.attn.rope.grad", 2 * 5 * 2 * m * d, "backward", kernels=2 * 5)
    ops.linear_backward(f"{name}.attn.qkv", m, 3 * d, d, t.qkv_bias != "none", dx=True)
    ops.elementwise(f"{name}.norm1.grad", 3 * m * d, "backward", kernels=2)


# --------------------------------------------------------------------------- tower units


def vision_stem_ops(ops: OpList, v: VisionTowerSpec, b: int, mask_ratio: float) -> None:
    """Patch conv (as a matmul over b·N patches), positions, FLIP gather, cls, ln_pre."""
    d, n, s = v.trunk.width, v.num_patches, v.seq_len(mask_ratio)
    k = v.kept_patches(mask_ratio)
    ops.elementwise("visual.images", b * 3 * v.image_size**2 * 2, "forward")  # cast / im2col
    patch_embed_ops(ops, v, b)
    if v.learned_pos:
        ops.elementwise("visual.pos_add", 3 * b * n * d, "forward")
    if mask_ratio > 0.0 and k < n:  # rand, argsort, gather (models.vision.drop_patches)
        ops.elementwise("visual.patch_dropout", 4 * b * n + 2 * b * k * d, "forward", kernels=3)
    if v.class_token:
        ops.elementwise("visual.cls_cat", 2 * b * s * d, "forward")
    if v.ln_pre:
        ops.elementwise("visual.ln_pre", 2 * b * s * d, "forward")


def patch_embed_ops(ops: OpList, v: VisionTowerSpec, b: int) -> None:
    """The patch stem: a p×p stride-p conv, i.e. a matmul over the b·N patches (3p² -> d)."""
    ops.linear(
        "visual.patch_embed",
        b * v.num_patches,
        v.trunk.width,
        3 * v.patch_size**2,
        v.patch_bias,
        "forward",
    )


def vision_stem_backward_ops(ops: OpList, v: VisionTowerSpec, b: int, mask_ratio: float) -> None:
    d, n, s = v.trunk.width, v.num_patches, v.seq_len(mask_ratio)
    k = v.kept_patches(mask_ratio)
    if v.ln_pre:
        ops.elementwise("visual.ln_pre.grad", 3 * b * s * d, "backward", kernels=2)
    if v.class_token:
        ops.elementwise("visual.cls_cat.grad", 2 * b * s * d, "backward", kernels=2)
    if mask_ratio > 0.0 and k < n:  # scatter of the kept tokens' gradients into zeros
        ops.elementwise("visual.patch_dropout.grad", b * n * d + 2 * b * k * d, "backward", 2)
    if v.learned_pos:
        ops.elementwise("visual.pos_add.grad", 2 * b * n * d, "backward")
    ops.linear_backward("visual.patch_embed", b * n, d, 3 * v.patch_size**2, v.patch_bias, dx=False)


def vision_head_ops(ops: OpList, v: VisionTowerSpec, embed_dim: int, b: int, s: int) -> None:
    """Final norm + pooling (cls / MAP head / mean) + projection, forward."""
    t, d = v.trunk, v.trunk.width
    if v.pool == "cls":
        ops.elementwise("visual.norm", 2 * b * d, "forward", kernels=2)
    elif v.pool == "mean":
        ops.elementwise("visual.mean", b * s * d + b * d, "forward")
        ops.elementwise("visual.norm", 2 * b * d, "forward")
    else:  # MAP: norm over all tokens, one learned query (models.vision.MapHead)
        ops.elementwise("visual.norm", 2 * b * s * d, "forward")
        map_head_ops(ops, t, b, s)
    proj_ops(ops, "visual.proj", v.proj, b, d, embed_dim)


def map_head_ops(ops: OpList, t: TrunkSpec, b: int, s: int) -> None:
    """SigLIP's attention-pooling head over S tokens, forward: q on the learned query, kv on
    the tokens, one-query SDPA, out, then x + mlp(norm(x)) with a GELU MLP (all biased)."""
    d = t.width
    ops.linear("visual.head.q", b, d, d, True, "forward")
    ops.linear("visual.head.kv", b * s, 2 * d, d, True, "forward")
    ops.attention("visual.head.sdpa", b * t.heads, 1, s, t.head_dim, False, "forward")
    ops.linear("visual.head.out", b, d, d, True, "forward")
    ops.elementwise("visual.head.norm", 2 * b * d, "forward")
    ops.linear("visual.head.mlp.fc1", b, t.mlp_width, d, True, "forward")
    ops.elementwise("visual.head.mlp.gelu", 2 * b * t.mlp_width, "forward")
    ops.linear("visual.head.mlp.fc2", b, d, t.mlp_width, True, "forward")
    ops.elementwise("visual.head.residual", 3 * b * d, "forward")


def proj_ops(ops: OpList, name: str, kind: str, b: int, width: int, embed_dim: int) -> None:
    """The output projection ("none": nothing; the bias add is fused in the linear)."""
    if kind != "none":
        ops.linear(name, b, embed_dim, width, kind == "linear_bias", "forward")


def vision_head_backward_ops(
    ops: OpList, v: VisionTowerSpec, embed_dim: int, b: int, s: int
) -> None:
    t, d = v.trunk, v.trunk.width
    if v.proj != "none":
        ops.linear_backward("visual.proj", b, embed_dim, d, v.proj == "linear_bias", dx=True)
    if v.pool == "cls":
        ops.elementwise("visual.norm.grad", b * s * d + 3 * b * d, "backward", kernels=3)
    elif v.pool == "mean":
        ops.elementwise("visual.norm.grad", 3 * b * d, "backward", kernels=2)
        ops.elementwise("visual.mean.grad", b * s * d + b * d, "backward")
    else:
        ops.elementwise("visual.head.residual.grad", 3 * b * d, "backward")
        ops.linear_backward("visual.head.mlp.fc2", b, d, t.mlp_width, True, dx=True)
        ops.elementwise("visual.head.mlp.gelu.grad", 3 * b * t.mlp_width, "backward")
        ops.linear_backward("visual.head.mlp.fc1", b, t.mlp_width, d, True, dx=True)
        ops.elementwise("visual.head.norm.grad", 3 * b * d, "backward", kernels=2)
        ops.linear_backward("visual.head.out", b, d, d, True, dx=True)
        ops.attention("visual.head.sdpa.grad", b * t.heads, 1, s, t.head_dim, False, "backward")
        ops.linear_backward("visual.head.kv", b * s, 2 * d, d, True, dx=True)
        ops.linear_backward("visual.head.q", b, d, d, True, dx=True)
        ops.elementwise("visual.norm.grad", 3 * b * s * d, "backward", kernels=2)


def text_embed_ops(ops: OpList, tx: TextTowerSpec, b: int) -> None:
    d, m = tx.trunk.width, b * tx.context_length
    ops.elementwise("text.token_embedding", 2 * m * d, "forward")
    ops.elementwise("text.pos_add", 3 * m * d, "forward")


def text_embed_backward_ops(ops: OpList, tx: TextTowerSpec, b: int) -> None:
    d, m = tx.trunk.width, b * tx.context_length
    ops.elementwise("text.pos_add.grad", 2 * m * d, "backward")
    # embedding backward: zero the (vocab, d) gradient, then scatter-add b·S rows into it
    ops.elementwise("text.token_embedding.grad", tx.vocab_size * d + 2 * m * d, "backward", 2)


def text_head_ops(ops: OpList, tx: TextTowerSpec, embed_dim: int, b: int) -> None:
    d, m = tx.trunk.width, b * tx.context_length
    ops.elementwise("text.norm", 2 * m * d, "forward")
    ops.elementwise("text.pool", 2 * b * d + m, "forward", kernels=3)  # argmax, arange, index
    proj_ops(ops, "text.proj", tx.proj, b, d, embed_dim)


def text_head_backward_ops(ops: OpList, tx: TextTowerSpec, embed_dim: int, b: int) -> None:
    d, m = tx.trunk.width, b * tx.context_length
    if tx.proj != "none":
        ops.linear_backward("text.proj", b, embed_dim, d, tx.proj == "linear_bias", dx=True)
    ops.elementwise("text.pool.grad", m * d + 2 * b * d, "backward", kernels=2)
    ops.elementwise("text.norm.grad", 3 * m * d, "backward", kernels=2)


# --------------------------------------------------------------------------- units


@dataclass(frozen=True)
class UnitOps:
    """One FSDP unit's ops: forward, and backward (AC recompute included when on)."""

    name: str
    forward: tuple[Op, ...]
    backward: tuple[Op, ...]


def _split(ops: OpList) -> tuple[tuple[Op, ...], tuple[Op, ...]]:
    fwd = tuple(o for o in ops if o.phase == "forward")
    return fwd, tuple(o for o in ops if o.phase != "forward")


def unit_ops(
    spec: ModelSpec,
    *,
    local_batch: int,
    mask_ratio: float,
    precision: str,
    checkpointing: bool,
) -> list[UnitOps]:
    """Every FSDP unit of the model in forward order (``trainer.parallelize``'s wrapping): the
    image tower's own unit (stem before the blocks, head and projection after), its blocks, then
    the text tower's unit and blocks."""
    a = 2 if precision in ("bf16", "fp16") else 4
    dtype = "fp32" if precision == "tf32" else precision
    v, tx, b, e = spec.vision, spec.text, local_batch, spec.embed_dim
    s_v, s_t = v.seq_len(mask_ratio), tx.context_length
    units: list[UnitOps] = []

    def new() -> OpList:
        return OpList(dtype, a)

    rest = new()
    vision_stem_ops(rest, v, b, mask_ratio)
    vision_head_ops(rest, v, e, b, s_v)
    vision_head_backward_ops(rest, v, e, b, s_v)
    vision_stem_backward_ops(rest, v, b, mask_ratio)
    units.append(UnitOps("visual", *_split(rest)))
    for i in range(v.trunk.depth):
        units.append(
            _block_unit(new(), f"visual.blocks.{i}", v.trunk, b, s_v, False, v.rope, checkpointing)
        )
    rest = new()
    text_embed_ops(rest, tx, b)
    text_head_ops(rest, tx, e, b)
    text_head_backward_ops(rest, tx, e, b)
    text_embed_backward_ops(rest, tx, b)
    units.append(UnitOps("text", *_split(rest)))
    for i in range(tx.trunk.depth):
        units.append(
            _block_unit(
                new(), f"text.blocks.{i}", tx.trunk, b, s_t, tx.causal, False, checkpointing
            )
        )
    return units


def _block_unit(
    ops: OpList,
    name: str,
    t: TrunkSpec,
    b: int,
    s: int,
    causal: bool,
    rope: bool,
    checkpointing: bool,
) -> UnitOps:
    block_ops(ops, name, t, b, s, causal=causal, rope=rope)
    if checkpointing:
        # torch's early-stopping checkpoint skips the last matmul, unless (post-norm) its output
        # feeds a saved norm (flops.block_recompute_flops)
        early = not t.post_norm
        block_ops(ops, name, t, b, s, causal=causal, rope=rope, phase="recompute", early_stop=early)
    block_backward_ops(ops, name, t, b, s, causal=causal, rope=rope)
    return UnitOps(name, *_split(ops))
