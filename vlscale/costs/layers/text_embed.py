"""The text tower's embedding (``models.text``): token lookup plus learned positions.

b local batch, S = context length, m = b·S, d width, V vocabulary. Parameters: token embedding
(V, d), positions (S, d). Forward: the lookup writes m·d (reads as many), the position add reads
two and writes one; no FLOPs. Backward: the position gradient, then the embedding's: zero the
(V, d) gradient and scatter-add the m rows into it. Saved: the token ids, m int64.
"""

from __future__ import annotations

from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import OpList, Phase, Saved, Shape
from vlscale.specs.towers import TextTowerSpec


class TextEmbed(Layer, kind="text_embed", role="stem"):
    """Token and position embedding of text tower ``tower``."""

    tower: TextTowerSpec

    def param_shapes(self) -> list[Shape]:
        d = self.tower.trunk.width
        return [(self.tower.vocab_size, d), (self.tower.context_length, d)]

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        d, m = self.tower.trunk.width, b * self.tower.context_length
        ops.elementwise(f"{self.name}.token_embedding", 2 * m * d, phase)
        ops.elementwise(f"{self.name}.pos_add", 3 * m * d, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        d, m = self.tower.trunk.width, b * self.tower.context_length
        ops.elementwise(f"{self.name}.pos_add.grad", 2 * m * d, "backward")
        scatter = self.tower.vocab_size * d + 2 * m * d
        ops.elementwise(f"{self.name}.token_embedding.grad", scatter, "backward", 2)

    def saved(self, b: int) -> Saved:
        return Saved(index=b * self.tower.context_length)
