"""The image tower's stem (``models.vision.VisionTower`` up to the first block): the patch
conv, [class token], [learned positions], [FLIP patch dropout], [ln_pre].

Notation: b local batch, p patch size, N patches, K = floor(N·(1 − r)) kept by FLIP
(``vlscale.specs.towers.kept_patches``), S = prefix + K tokens, d width, n = b·S.

Parameters: conv (d, 3, p, p) [+ (d,) with patch_bias]; [cls (1, 1, d)];
[positions (1, prefix + N, d)]; [ln_pre norm(d)].

Forward: the images are cast / unfolded (2·b·3·H·W elements), the p×p stride-p conv is a matmul
over the b·N patches (3p² -> d: 2·N·3p²·d FLOPs per sample, on all N patches whatever r),
positions are added, FLIP draws noise, argsorts and gathers K tokens, the class token is
concatenated and ln_pre normalises. Backward has no dX for the conv: pixels need no gradient,
so the stem's backward costs F, not 2F (as FlopCounterMode counts ``convolution_backward``).

Saved: the images (conv input) b·3·H·W; with FLIP (r > 0 and K < N) the argsort of the noise,
b·N int64 (the kept indices are a slice of it), and the pre-drop tokens b·N·d (gather saves its
input); with RoPE and FLIP the gathered cos and sin tables 2·b·K·hd (without dropping they are
buffers, not activations); [ln_pre: its input n·d + its statistics].
"""

from __future__ import annotations

from vlscale.costs.layers.base import Layer
from vlscale.costs.layers.primitives import OpList, Phase, Saved, Shape, norm_saved, norm_shapes
from vlscale.specs.towers import VisionTowerSpec


class PatchEmbed(Layer, kind="patch_embed", role="stem"):
    """The stem of image tower ``tower`` at FLIP drop ratio ``mask_ratio``."""

    tower: VisionTowerSpec
    mask_ratio: float = 0.0

    @property
    def drops(self) -> bool:
        """True when FLIP gathers a subset (``models.vision.VisionTower.drop_patches``)."""
        v = self.tower
        return self.mask_ratio > 0.0 and v.kept_patches(self.mask_ratio) < v.num_patches

    def param_shapes(self) -> list[Shape]:
        v = self.tower
        d = v.trunk.width
        shapes: list[Shape] = [(d, 3, v.patch_size, v.patch_size)]
        shapes += [(d,)] if v.patch_bias else []
        shapes += [(1, 1, d)] if v.class_token else []
        shapes += [(1, v.num_prefix_tokens + v.num_positions, d)] if v.learned_pos else []
        return shapes + (norm_shapes(d, v.trunk) if v.ln_pre else [])

    def forward_ops(self, ops: OpList, b: int, phase: Phase = "forward") -> None:
        v, name = self.tower, self.name
        d, n, s = v.trunk.width, v.num_patches, v.seq_len(self.mask_ratio)
        k = v.kept_patches(self.mask_ratio)
        ops.elementwise(f"{name}.images", b * 3 * v.pixels * 2, phase)  # cast / im2col
        conv = (b * n, d, 3 * v.patch_size**2)  # (m, n, k): the p×p stride-p conv as a matmul
        ops.linear(f"{name}.patch_embed", *conv, v.patch_bias, phase)
        if v.learned_pos:
            ops.elementwise(f"{name}.pos_add", 3 * b * n * d, phase)
        if self.drops:  # rand, argsort, gather (models.vision.drop_patches)
            ops.elementwise(f"{name}.patch_dropout", 4 * b * n + 2 * b * k * d, phase, kernels=3)
        if v.class_token:
            ops.elementwise(f"{name}.cls_cat", 2 * b * s * d, phase)
        if v.ln_pre:
            ops.elementwise(f"{name}.ln_pre", 2 * b * s * d, phase)

    def backward_ops(self, ops: OpList, b: int) -> None:
        v, name = self.tower, self.name
        d, n, s = v.trunk.width, v.num_patches, v.seq_len(self.mask_ratio)
        k = v.kept_patches(self.mask_ratio)
        if v.ln_pre:
            ops.elementwise(f"{name}.ln_pre.grad", 3 * b * s * d, "backward", kernels=2)
        if v.class_token:
            ops.elementwise(f"{name}.cls_cat.grad", 2 * b * s * d, "backward", kernels=2)
        if self.drops:  # scatter of the kept tokens' gradients into zeros
            scatter = b * n * d + 2 * b * k * d
            ops.elementwise(f"{name}.patch_dropout.grad", scatter, "backward", 2)
        if v.learned_pos:
            ops.elementwise(f"{name}.pos_add.grad", 2 * b * n * d, "backward")
        conv = (b * n, d, 3 * v.patch_size**2)
        ops.linear_backward(f"{name}.patch_embed", *conv, v.patch_bias, dx=False)

    def saved(self, b: int) -> Saved:
        v = self.tower
        d, n = v.trunk.width, b * v.seq_len(self.mask_ratio)
        saved = Saved(act=b * 3 * v.pixels)
        if self.drops:
            saved += Saved(act=b * v.num_patches * d, index=b * v.num_patches)
            if v.rope:
                saved += Saved(act=2 * b * v.kept_patches(self.mask_ratio) * v.trunk.head_dim)
        if v.ln_pre:
            saved += Saved(act=n * d) + norm_saved(n, d, v.trunk)
        return saved
