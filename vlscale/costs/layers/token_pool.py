"""Final norm and token pooling of a tower (``models.vision``, ``models.text``).

Notation: b local batch, S tokens, n = b·S, d width. Parameters: the final norm(d).

    image "cls"   pool x[:, 0] (a view), then norm over b rows; saves the last block's
                  output n·d and the norm's statistics over b rows
    image "mean"  mean over S (b·S·d + b·d), then norm; saves the pooled b·d and statistics
    text "eos"    norm over all n rows, then argmax of the token ids, arange, index (3 kernels);
                  saves the last block's output n·d, statistics over n rows and two index
                  vectors 2·b (int64)
    text "last"   norm over all n rows, then x[:, -1] (a view); saves n·d and statistics

No FLOPs (norms and gathers are elementwise). The projection after the pool saves its input:
``projection.Projection``.
"""

from __future__ import annotations

from typing import Literal

from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import OpList, Phase, Saved, Shape, norm_saved, norm_shapes
from vlscale.specs.towers import TrunkSpec


class _FinalNorm(Layer):
    """What the pools share: a trunk's output and its final norm's parameters."""

    trunk: TrunkSpec
    tokens: int

    def param_shapes(self) -> list[Shape]:
        return norm_shapes(self.trunk.width, self.trunk)


class TokenPool(_FinalNorm, kind="token_pool", role="head"):
    """The image tower's "cls" or "mean" pool."""

    pool: Literal["cls", "mean"] = "cls"

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        d, s = self.trunk.width, self.tokens
        if self.pool == "cls":
            ops.elementwise(f"{self.name}.norm", 2 * b * d, phase, kernels=2)
        else:
            ops.elementwise(f"{self.name}.mean", b * s * d + b * d, phase)
            ops.elementwise(f"{self.name}.norm", 2 * b * d, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        d, s = self.trunk.width, self.tokens
        if self.pool == "cls":
            ops.elementwise(f"{self.name}.norm.grad", b * s * d + 3 * b * d, "backward", 3)
        else:
            ops.elementwise(f"{self.name}.norm.grad", 3 * b * d, "backward", kernels=2)
            ops.elementwise(f"{self.name}.mean.grad", b * s * d + b * d, "backward")

    def saved(self, b: int) -> Saved:
        d = self.trunk.width
        pooled = b * self.tokens * d if self.pool == "cls" else b * d
        return Saved(act=pooled) + norm_saved(b, d, self.trunk)


class TextPool(_FinalNorm, kind="text_pool", role="head"):
    """The text tower's "eos" or "last" pool."""

    pool: Literal["eos", "last"] = "eos"

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        d, m = self.trunk.width, b * self.tokens
        ops.elementwise(f"{self.name}.norm", 2 * m * d, phase)
        ops.elementwise(f"{self.name}.pool", 2 * b * d + m, phase, kernels=3)

    def backward_ops(self, ops: OpList, b: int) -> None:
        d, m = self.trunk.width, b * self.tokens
        ops.elementwise(f"{self.name}.pool.grad", m * d + 2 * b * d, "backward", kernels=2)
        ops.elementwise(f"{self.name}.norm.grad", 3 * m * d, "backward", kernels=2)

    def saved(self, b: int) -> Saved:
        d, n = self.trunk.width, b * self.tokens
        saved = Saved(act=n * d) + norm_saved(n, d, self.trunk)
        return saved + Saved(index=2 * b if self.pool == "eos" else 0)
