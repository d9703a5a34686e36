"""Parameter counts from specs, exactly as the torch modules in ``models/`` allocate them.

Formulas (d = width, h = mlp_width, L = depth; layout in ``vlscale.specs.towers``):

    norm(n)            = 2n (LayerNorm: weight + bias) or n (RMSNorm)
    attention          = 3d^2 + qkv biases (3d "qkv", 2d "qv", 0 "none")
                         + d^2 + d·proj_bias + [sub-LN: norm(d)]
    mlp  gelu          = 2dh + (h + d)·mlp_bias
         swiglu        = 3dh + (2h + d)·mlp_bias + [sub-LN: norm(h)]
    block              = norm(d) + attention + norm(d) + mlp

The same formulas give the published OpenCLIP counts (``tests/published``), e.g. the ViT-B-32
image tower: 3·32²·768 + 768 + 50·768 + 2·768 + 12·7,087,872 + 2·768 + 768·512 = 87,849,216.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlscale.specs.models import LOGIT_PARAMS, ModelSpec
from vlscale.specs.towers import TextTowerSpec, TrunkSpec, VisionTowerSpec


def norm_params(n: int, trunk: TrunkSpec) -> int:
    """LayerNorm has weight and bias (2n); RMSNorm has a weight only (n)."""
    return 2 * n if trunk.norm_kind == "layernorm" else n


def attention_params(t: TrunkSpec) -> int:
    """q, k, v and out projections, their biases, and the optional sub-LN before the out proj."""
    d = t.width
    qkv_bias = {"qkv": 3 * d, "qv": 2 * d, "none": 0}[t.qkv_bias]
    out = d * d + (d if t.proj_bias else 0)
    sub = norm_params(d, t) if t.sub_ln else 0
    return 3 * d * d + qkv_bias + out + sub


def mlp_params(t: TrunkSpec) -> int:
    """GELU MLP: two matrices; SwiGLU: gate, value and out matrices (+ sub-LN over h)."""
    d, h = t.width, t.mlp_width
    if t.mlp_kind == "gelu":
        return 2 * d * h + ((h + d) if t.mlp_bias else 0)
    sub = norm_params(h, t) if t.sub_ln else 0
    return 3 * d * h + ((2 * h + d) if t.mlp_bias else 0) + sub


def block_params(t: TrunkSpec) -> int:
    return 2 * norm_params(t.width, t) + attention_params(t) + mlp_params(t)


def trunk_params(t: TrunkSpec) -> int:
    return t.depth * block_params(t)


def map_head_params(t: TrunkSpec) -> int:
    """Attention-pooling head: learned query d, q (d->d), kv (d->2d), out (d->d), all biased,
    then a LayerNorm and a GELU MLP with biases."""
    d, h = t.width, t.mlp_width
    attn = d + (d * d + d) + (2 * d * d + 2 * d) + (d * d + d)
    return attn + norm_params(d, t) + 2 * d * h + h + d


def proj_params(kind: str, width: int, embed_dim: int) -> int:
    if kind == "none":
        return 0
    return width * embed_dim + (embed_dim if kind == "linear_bias" else 0)


def vision_params(v: VisionTowerSpec, embed_dim: int) -> int:
    """All parameters of the image tower (patch stem, tokens, positions, trunk, pooling, proj)."""
    t = v.trunk
    d = t.width
    stem = 3 * v.patch_size**2 * d + (d if v.patch_bias else 0)
    cls = d if v.class_token else 0
    pos = (v.num_prefix_tokens + v.num_patches) * d if v.learned_pos else 0
    ln_pre = norm_params(d, t) if v.ln_pre else 0
    final_norm = norm_params(d, t)
    head = map_head_params(t) if v.pool == "map" else 0
    return (
        stem
        + cls
        + pos
        + ln_pre
        + trunk_params(t)
        + final_norm
        + head
        + proj_params(v.proj, d, embed_dim)
    )


def text_params(tx: TextTowerSpec, embed_dim: int) -> int:
    """Token and position embeddings, trunk, final norm and projection."""
    t = tx.trunk
    d = t.width
    embed = tx.vocab_size * d + tx.context_length * d
    return embed + trunk_params(t) + norm_params(d, t) + proj_params(tx.proj, d, embed_dim)


@dataclass(frozen=True)
class ParamCount:
    image: int
    text: int
    total: int


def count_params(spec: ModelSpec) -> ParamCount:
    """Image, text and total parameters (total adds logit_scale and logit_bias)."""
    image = vision_params(spec.vision, spec.embed_dim)
    text = text_params(spec.text, spec.embed_dim)
    return ParamCount(image=image, text=text, total=image + text + LOGIT_PARAMS)
