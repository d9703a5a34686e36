"""Image tower: ViT / SigLIP ViT / EVA-ViT built from a ``VisionTowerSpec``.

Layout (``vlscale.specs.towers``)::

    images (B, 3, H, W) -> Conv2d stem -> (B, N, d) [+ pos] -> [FLIP: keep K of N per sample]
    -> [cls] -> [ln_pre] -> blocks (2-D RoPE on patch q/k) -> pool -> proj -> (B, embed_dim)

FLIP patch dropout (Li et al. 2023, "Scaling Language-Image Pre-training via Masking"): in
training mode only (as OpenCLIP's and timm's ``PatchDropout``; in eval mode ``mask_ratio`` is
ignored and every patch is kept), each sample keeps K = spec.kept_patches(r) = floor(N·(1-r))
patch tokens chosen by its own random permutation, drawn on the input's device (no host sync, no
host->device copy). The position embedding is added before
dropping, and RoPE uses the kept tokens' original grid positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import Mlp, fan_in_std, make_blocks, make_norm, make_proj
from models.rope import VisionRope
from vlscale.specs.fields import check_mask_ratio
from vlscale.specs.towers import TrunkSpec, VisionTowerSpec


class MapHead(nn.Module):
    """Multihead attention pooling (SigLIP "MAP" head, timm ``AttentionPoolLatent``).

    One learned query attends over all tokens: q = Linear(d, d) on the query, kv = Linear(d, 2d)
    on the tokens, out = Linear(d, d); then x + mlp(norm(x)) with a GELU MLP. All biased.
    """

    def __init__(self, trunk: TrunkSpec):
        super().__init__()
        d = trunk.width
        self.heads, self.head_dim = trunk.heads, trunk.head_dim
        self.query = nn.Parameter(torch.empty(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.norm = make_norm(d, trunk)
        self.mlp = Mlp(d, trunk.mlp_width, bias=True, depth=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.query, std=fan_in_std(self.query.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        # the query goes through q per sample (as timm), so q costs 2d^2 FLOPs per sample
        q = self.q(self.query.expand(b, 1, d))  # (B, 1, d)
        q = q.view(b, 1, self.heads, self.head_dim).transpose(1, 2)  # (B, H, 1, hd)
        k, v = self.kv(x).view(b, s, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, hd)
        o = self.out(o.transpose(1, 2).reshape(b, 1, d))  # (B, 1, d)
        o = o + self.mlp(self.norm(o))
        return o[:, 0]  # (B, d)


class VisionTower(nn.Module):
    def __init__(self, spec: VisionTowerSpec, embed_dim: int):
        super().__init__()
        self.spec = spec
        t = spec.trunk
        d = t.width
        self.patch_embed = nn.Conv2d(
            3, d, spec.patch_size, stride=spec.patch_size, bias=spec.patch_bias
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, d)) if spec.class_token else None
        n_pos = spec.num_prefix_tokens + spec.num_patches
        self.pos_embed = nn.Parameter(torch.empty(1, n_pos, d)) if spec.learned_pos else None
        self.rope = (
            VisionRope(spec.grid, t.head_dim, ref_grid=spec.rope_ref_grid) if spec.rope else None
        )
        self.ln_pre = make_norm(d, t) if spec.ln_pre else nn.Identity()
        self.blocks = make_blocks(t)
        self.norm = make_norm(d, t)
        self.head = MapHead(t) if spec.pool == "map" else None
        self.proj = make_proj(spec.proj, d, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=fan_in_std(self.cls_token.shape[-1]))
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=fan_in_std(self.pos_embed.shape[-1]))

    def forward(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        *,
        patch_mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
        tokens: str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) images -> (B, embed_dim) features (not normalised).

        SigLIP 2 (``models.siglip2``) also asks for the trunk's normed tokens before pooling,
        ``norm(x)`` of shape (B, S, d): ``tokens="only"`` returns them alone (no pooling head),
        ``tokens="both"`` returns (features, tokens). ``patch_mask`` (B, N) bool replaces the
        marked patch embeddings by ``mask_token`` (d,) after the position embedding, before the
        class token (TIPS). Images of another square size than the spec's run on the learned
        position embedding resized bilinearly to their grid (SILC's local views)."""
        spec = self.spec
        check_mask_ratio(mask_ratio)
        prefix = spec.num_prefix_tokens
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, d)
        if self.pos_embed is not None:
            x = x + self.patch_positions(images.shape[-1] // spec.patch_size)
        if patch_mask is not None:
            x = torch.where(patch_mask[:, :, None], mask_token.to(x.dtype), x)  # (B, N, d)
        x, ids_keep = self.drop_patches(x, mask_ratio, generator)  # (B, K, d), (B, K) | None
        if self.cls_token is not None:
            cls = self.cls_token
            if self.pos_embed is not None:
                cls = cls + self.pos_embed[:, :prefix]
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + K, d)
        x = self.ln_pre(x)
        rope = self.rope.rotation(ids_keep, prefix) if self.rope is not None else None
        for block in self.blocks:
            x = block(x, rope=rope)
        if tokens is None:
            return self.proj(self.pool(x))
        normed = self.norm(x)  # (B, S, d): what the SigLIP 2 objectives read
        if tokens == "only":
            return normed
        return self.proj(self.pool(x)), normed

    def patch_positions(self, side: int) -> torch.Tensor:
        """The patches' learned position embedding (1, N, d) for a ``side`` x ``side`` grid:
        the spec's own, or bilinearly resized to another grid (local views; as timm's
        ``resample_abs_pos_embed``)."""
        pos = self.pos_embed[:, self.spec.num_prefix_tokens :]  # (1, N, d)
        grid = self.spec.image_size // self.spec.patch_size
        if side == grid:
            return pos
        d = pos.shape[-1]
        square = pos.reshape(1, grid, grid, d).permute(0, 3, 1, 2)  # (1, d, g, g)
        resized = F.interpolate(square, size=(side, side), mode="bilinear", align_corners=False)
        return resized.permute(0, 2, 3, 1).reshape(1, side * side, d)  # (1, side², d)

    def drop_patches(
        self, x: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Keep ``spec.kept_patches(mask_ratio)`` tokens of (B, N, d) per sample, at random.

        Returns the kept tokens (B, K, d) and their grid indices (B, K), or (x, None) when
        nothing is dropped (the identity path: no random draw, no gather): in eval mode, at
        ratio 0, or when K = N.
        """
        b, n, d = x.shape
        k = self.spec.kept_patches(mask_ratio)
        if not self.training or mask_ratio == 0.0 or k >= n:
            return x, None
        # a random permutation per sample, drawn where x lives
        noise = torch.rand(b, n, device=x.device, generator=generator)  # (B, N)
        ids_keep = noise.argsort(dim=1)[:, :k]  # (B, K)
        kept = torch.gather(x, 1, ids_keep[:, :, None].expand(b, k, d))  # (B, K, d)
        return kept, ids_keep

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, d) -> (B, d) per ``spec.pool``."""
        if self.spec.pool == "cls":
            return self.norm(x[:, 0])
        if self.spec.pool == "map":
            return self.head(self.norm(x))
        return self.norm(x.mean(dim=1))
