"""A tower's output projection to the shared embedding (``proj``): "none", "linear" or
"linear_bias"; d width, e embed_dim, b local batch.

Parameters (e, d) [+ (e,)]; forward one (b, e, d) matmul, 2·d·e FLOPs per sample (the bias add
is fused, not counted); backward dX and dW [+ the bias reduction]. Saved: its input, b·d —
or b·S·d when the pooled row is a view of the tower's whole normed output (text "last" pool).
"""

from __future__ import annotations

from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import OpList, Phase, Saved, Shape


class Projection(Layer, kind="projection", role="proj"):
    """``proj`` from ``width`` to ``embed_dim``; its saved input has ``rows`` rows per sample."""

    proj: str
    width: int
    embed_dim: int
    rows: int = 1

    @property
    def _bias(self) -> bool:
        return self.proj == "linear_bias"

    def param_shapes(self) -> list[Shape]:
        if self.proj == "none":
            return []
        return [(self.embed_dim, self.width)] + ([(self.embed_dim,)] if self._bias else [])

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        if self.proj != "none":
            ops.linear(self.name, b, self.embed_dim, self.width, self._bias, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        if self.proj != "none":
            ops.linear_backward(self.name, b, self.embed_dim, self.width, self._bias, dx=True)

    def saved(self, b: int) -> Saved:
        return Saved(act=0 if self.proj == "none" else b * self.rows * self.width)
