"""SigLIP 2's self-distillation heads (SILC, TIPS; Tschannen et al. 2025, section 2.3) and the
TIPS mask token, as layers.

Notation: b samples (views), S tokens of the view through the vision trunk, v vision width,
r rows per sample through the head (1: the mean token of a view, ``distill_head``; K_m: the
masked patches, ``masked_head``), n = b·r, hd the head width.

Parameters (each head): norm (v,) (v,); fc1 (hd, v) (hd,); fc2 (hd, hd) (hd,).
The mask token: ``patch_mask_token`` (v,).

Forward: with ``pre_norm`` the vision tower's final norm over the view's S tokens (2·b·S·v,
its weights are the tower's: ``visual.norm``) and the mean over tokens or the gather of the
masked positions (b·S·v + n·v); then norm, fc1, GELU, fc2 and the distillation cross-entropy
(softmax of the teacher, log-softmax of the student: 4·n·hd). FLOPs per sample
2·r·v·hd + 2·r·hd². The teacher's heads run the same forward without the loss (its targets
are the student's) and save nothing.

Saved: the normed tokens b·S·v and the norm's statistics (with ``pre_norm``); the head's norm
input and output 2·n·v, its statistics 2·n (fp32), fc1 and GELU outputs 2·n·hd, fc2 output
(the logits) n·hd.

The mask token replaces the masked patches' embeddings (``torch.where`` over b·N·v: read two,
write one) and saves the b·N boolean mask (not counted).
"""

from __future__ import annotations

from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import OpList, Phase, Saved, Shape


class _ViewHead(Layer):
    """LN, Linear v → hd, GELU, Linear hd → hd on ``rows`` rows per sample of a view of
    ``tokens`` tokens (module docstring). An FSDP unit of its own (``trainer.parallelize.
    head_units``): gathered only in the pass that runs it, never before self-distillation."""

    own_unit = True

    width: int
    head_dim: int
    tokens: int
    rows: int
    pre_norm: bool = True
    loss: bool = True

    def param_shapes(self) -> list[Shape]:
        v, hd = self.width, self.head_dim
        return [(v,), (v,), (hd, v), (hd,), (hd, hd), (hd,)]

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        name, v, hd, n = self.name, self.width, self.head_dim, b * self.rows
        if self.pre_norm:
            ops.elementwise(f"{name}.tokens_norm", 2 * b * self.tokens * v, phase)
            ops.elementwise(f"{name}.select", b * self.tokens * v + n * v, phase)
        ops.elementwise(f"{name}.norm", 2 * n * v, phase)
        ops.linear(f"{name}.fc1", n, hd, v, True, phase)
        ops.elementwise(f"{name}.gelu", 2 * n * hd, phase)
        ops.linear(f"{name}.fc2", n, hd, hd, True, phase)
        if self.loss:
            ops.elementwise(f"{name}.distill_loss", 4 * n * hd, phase, kernels=3)

    def backward_ops(self, ops: OpList, b: int) -> None:
        name, v, hd, n = self.name, self.width, self.head_dim, b * self.rows
        ops.elementwise(f"{name}.distill_loss.grad", 3 * n * hd, "backward", kernels=2)
        ops.linear_backward(f"{name}.fc2", n, hd, hd, True, dx=True)
        ops.elementwise(f"{name}.gelu.grad", 3 * n * hd, "backward")
        ops.linear_backward(f"{name}.fc1", n, hd, v, True, dx=True)
        ops.elementwise(f"{name}.norm.grad", 3 * n * v, "backward", kernels=2)
        if self.pre_norm:
            ops.elementwise(f"{name}.select.grad", b * self.tokens * v + n * v, "backward")
            ops.elementwise(f"{name}.tokens_norm.grad", 3 * b * self.tokens * v, "backward", 2)

    def saved(self, b: int) -> Saved:
        v, hd, n = self.width, self.head_dim, b * self.rows
        head = Saved(act=2 * n * v + 3 * n * hd, fp32=2 * n)
        if not self.pre_norm:
            return head
        s = b * self.tokens
        return head + Saved(act=s * v, fp32=2 * s)


class DistillHead(_ViewHead, kind="distill_head", role="head"):
    """SILC's head on the mean token of each view (rows = 1)."""


class MaskedHead(_ViewHead, kind="masked_head", role="head"):
    """TIPS's head on each masked patch's token (rows = K_m)."""


class MaskToken(Layer, kind="mask_token", role="stem"):
    """``patch_mask_token``: replaces ``patches`` of the ``tokens`` patch embeddings per sample
    (``patches`` = N, all positions are selected from, the mask picks K_m)."""

    width: int
    patches: int

    def param_shapes(self) -> list[Shape]:
        return [(self.width,)]

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        ops.elementwise(f"{self.name}.where", 3 * b * self.patches * self.width, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        # the gradient through where, and its sum over the masked rows into the token's
        ops.elementwise(f"{self.name}.where.grad", 4 * b * self.patches * self.width, "backward")

    def saved(self, b: int) -> Saved:
        return Saved()
