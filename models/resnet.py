"""CLIP's ResNet image tower ("modified ResNet"), built from a ``ResNetTowerSpec``.

Layout (``vlscale.specs.towers``; Radford et al. 2021 section 2.4; OpenCLIP
``open_clip/modified_resnet.py`` computes the same function, ``models.openclip`` maps its keys)::

    images (B, 3, H, W) -> stem (three 3x3 convs, the first strided; AvgPool 2) -> (B, w, H/4, W/4)
    -> blocks: every bottleneck of the 4 stages, in order (a stride is an AvgPool, never a
       strided conv) -> (B, 32w, H/32, W/32)
    -> attention pool: mean token + position, one query attends over all tokens -> (B, embed_dim)

``blocks`` is one flat ``nn.ModuleList`` of all bottlenecks, as the ViT's ``blocks``: the trainer
checkpoints and shards ``tower.blocks[i]`` (one FSDP unit per bottleneck); the stem and the
attention pool belong to the tower's own unit.

Batch norm runs per rank, as in OpenCLIP (no SyncBatchNorm): each rank normalises with its own
local batch's statistics and keeps its own running statistics (the trainer averages them over the
ranks when it saves a checkpoint: ``trainer/batch_norm.py``).

The attention pool computes the query of the mean token only (as the original CLIP's
``F.multi_head_attention_forward(query=x[:1], ...)``); OpenCLIP's current module computes every
token's query and keeps token 0, which gives the same embedding for (L-1)/L more FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import fan_in_std
from vlscale.specs.towers import RESNET_EXPANSION, ResNetTowerSpec, check_patch_dropout


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that (1) runs with its weight and bias in the dtype of its running
    statistics, and (2) leaves those statistics alone while activation checkpointing recomputes
    a block during backward.

    (1) FSDP2's mixed precision casts parameters to bf16 but not buffers, and ``batch_norm``
    refuses bf16 weights with fp32 statistics (it accepts bf16 inputs with fp32 weights).
    (2) A recompute is a second forward of the same batch: without the guard every checkpointed
    batch norm would move its running statistics twice per step. Recompute runs inside the
    autograd engine, which is what ``_current_graph_task_id() != -1`` detects; it then runs the
    same op (checkpointing checks that the same tensors are saved) on copies of the statistics,
    which it updates and drops. Normalisation uses the batch statistics either way.

    ``zero_init``: the weight starts at 0 (the last norm of each bottleneck, as OpenCLIP), so a
    residual branch starts as nothing and each block as its shortcut.
    """

    frozen_stats = False  # --lock-image-freeze-bn-stats (trainer.locks): inference mode always

    def __init__(self, num_features: int, eps: float, zero_init: bool = False):
        self.zero_init = zero_init
        super().__init__(num_features, eps=eps)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.zero_init:
            nn.init.zeros_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.running_mean.dtype
        stats = (self.running_mean, self.running_var)
        training = self.training and not self.frozen_stats
        if training and torch._C._current_graph_task_id() != -1:  # recompute in backward
            stats = tuple(s.clone() for s in stats)
        elif training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(
            x,
            *stats,
            self.weight.to(dtype),
            self.bias.to(dtype),
            training=training,
            momentum=self.momentum,
            eps=self.eps,
        )


def conv_bn(c_in: int, c_out: int, k: int, eps: float, stride: int = 1, zero_init=False):
    """A bias-free k x k convolution ("same" padding) and its batch norm."""
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)
    return conv, BatchNorm2d(c_out, eps, zero_init=zero_init)


def downsampler(stride: int) -> nn.Module:
    """The anti-aliased stride: a stride x stride average pool (nothing at stride 1)."""
    return nn.AvgPool2d(stride) if stride > 1 else nn.Identity()


class Stem(nn.Module):
    """3x3 conv 3 -> w/2 (stride 2), 3x3 conv w/2 -> w/2, 3x3 conv w/2 -> w, each with batch
    norm and ReLU; then a 2x2 average pool: (B, 3, H, W) -> (B, w, H/4, W/4)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, width // 2, 3, eps, stride=2)
        self.conv2, self.bn2 = conv_bn(width // 2, width // 2, 3, eps)
        self.conv3, self.bn3 = conv_bn(width // 2, width, 3, eps)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.pool(x)


class Shortcut(nn.Module):
    """The residual path when a block changes shape: [AvgPool s] -> 1x1 conv -> batch norm."""

    def __init__(self, c_in: int, c_out: int, stride: int, eps: float):
        super().__init__()
        self.pool = downsampler(stride)
        self.conv, self.bn = conv_bn(c_in, c_out, 1, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(self.pool(x)))


class Bottleneck(nn.Module):
    """1x1 conv -> p, 3x3 conv p -> p, [AvgPool s], 1x1 conv p -> 4p; each with batch norm,
    ReLU after the first two; out = ReLU(branch + shortcut)."""

    def __init__(self, c_in: int, planes: int, stride: int, eps: float):
        super().__init__()
        c_out = planes * RESNET_EXPANSION
        self.conv1, self.bn1 = conv_bn(c_in, planes, 1, eps)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, eps)
        self.pool = downsampler(stride)
        self.conv3, self.bn3 = conv_bn(planes, c_out, 1, eps, zero_init=True)
        reshape = stride > 1 or c_in != c_out
        self.downsample = Shortcut(c_in, c_out, stride, eps) if reshape else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.pool(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class AttentionPool(nn.Module):
    """Multi-head attention pooling of a (B, C, g, g) feature map into (B, embed_dim).

    Tokens: the g*g features with their mean prepended, plus a learned position (g*g + 1, C).
    The mean token's query (q = Linear(C, C)) attends over all tokens (k, v = Linear(C, 2C));
    its output goes through ``proj`` = Linear(C, embed_dim). All Linears have biases.
    """

    def __init__(self, spec: ResNetTowerSpec, embed_dim: int):
        super().__init__()
        c = spec.feature_width
        self.heads, self.head_dim = spec.heads, spec.head_width
        self.pos_embed = nn.Parameter(torch.empty(spec.grid**2 + 1, c))
        self.q = nn.Linear(c, c)
        self.kv = nn.Linear(c, 2 * c)
        self.proj = nn.Linear(c, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=fan_in_std(self.pos_embed.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (B, g*g, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.pos_embed  # (B, L, C)
        s = x.shape[1]
        q = self.q(x[:, :1]).view(b, 1, self.heads, self.head_dim).transpose(1, 2)  # (B,H,1,hd)
        k, v = self.kv(x).view(b, s, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(q, k, v)  # (B, H, 1, hd)
        return self.proj(o.transpose(1, 2).reshape(b, c))  # (B, embed_dim)


class ResNetTower(nn.Module):
    """CLIP's ResNet image tower: stem -> ``blocks`` (all bottlenecks) -> attention pool."""

    def __init__(self, spec: ResNetTowerSpec, embed_dim: int):
        super().__init__()
        self.spec = spec
        eps = spec.norm_eps
        self.stem = Stem(spec.width, eps)
        blocks, c_in = [], spec.width
        for stage, depth in enumerate(spec.layers):
            planes = spec.planes(stage)
            for j in range(depth):
                stride = 2 if stage > 0 and j == 0 else 1
                blocks.append(Bottleneck(c_in, planes, stride, eps))
                c_in = planes * RESNET_EXPANSION
        self.blocks = nn.ModuleList(blocks)
        self.pool = AttentionPool(spec, embed_dim)

    def forward(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, embed_dim) features (not normalised). ``mask_ratio`` must
        be 0 (a ResNet has no patches to drop); ``generator`` is unused."""
        check_patch_dropout(self.spec, mask_ratio, "ResNet")
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return self.pool(x)


def block_stage(spec: ResNetTowerSpec, index: int) -> tuple[int, int]:
    """(stage, position in stage) of the flat block ``index`` (OpenCLIP's ``layer{stage+1}.j``)."""
    for stage, depth in enumerate(spec.layers):
        if index < depth:
            return stage, index
        index -= depth
    raise IndexError(f"block {index} is beyond the tower's {spec.num_blocks} blocks")
