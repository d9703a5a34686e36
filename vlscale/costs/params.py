"""Parameter tensors and counts from specs, exactly as the torch modules in ``models/`` allocate
them. The shapes are the one place the architecture's parameters are written down; every count
is the sum of their products, and the memory model (sharding, Adafactor's factored statistics)
reads the same shapes.

Shapes (d = width, h = mlp_width, L = depth, e = embed_dim; layout in ``vlscale.specs.towers``;
the fused qkv and SwiGLU fc1 weights are single tensors, as ``models/`` allocates them):

    norm(n)            (n,) (n,) for LayerNorm (weight, bias); (n,) for RMSNorm
    attention          qkv (3d, d); biases (3d,) "qkv", (d,) (d,) "qv", none "none";
                       [sub-LN: norm(d)]; out (d, d) [+ (d,) with proj_bias]
    mlp  gelu          fc1 (h, d) [+ (h,)]; fc2 (d, h) [+ (d,)]        (biases with mlp_bias)
         swiglu        fc1 (2h, d) [+ (2h,)]; [sub-LN: norm(h)]; fc2 (d, h) [+ (d,)]
    block              norm(d), attention, norm(d), mlp                 (L of them)
    image tower        patch conv (d, 3, p, p) [+ (d,)]; [cls (1, 1, d)]; [positions
                       (1, prefix + N, d)]; [ln_pre norm(d)]; blocks; final norm(d);
                       ["map" head: query (1, 1, d), q (d, d) (d,), kv (2d, d) (2d,),
                       out (d, d) (d,), norm(d), mlp (h, d) (h,) (d, h) (d,)]; proj (e, d) [+ (e,)]
    text tower         token embedding (vocab, d), positions (context, d), blocks, final
                       norm(d), proj (e, d) [+ (e,)]
    root               logit_scale (1,), logit_bias (1,)

Summed, a block is 2·norm(d) + 4d² + qkv biases + d·proj_bias + (2 or 3)·d·h + MLP biases
+ sub-LNs. The same counts give the published OpenCLIP numbers (``tests/published``), e.g. the
ViT-B-32 image tower: 3·32²·768 + 768 + 50·768 + 2·768 + 12·7,087,872 + 2·768 + 768·512 =
87,849,216. ``tests/test_params_match.py`` holds them equal to the torch modules' ``numel``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from vlscale.specs.models import LOGIT_PARAMS, ModelSpec
from vlscale.specs.towers import TextTowerSpec, TrunkSpec, VisionTowerSpec

Shape = tuple[int, ...]


# --- shapes ----------------------------------------------------------------------------------


def parameter_shapes(spec: ModelSpec) -> list[Shape]:
    """Shapes of every parameter tensor of the model: image tower, text tower, then the root's
    logit_scale and logit_bias (``tests/test_activation_memory_torch.py`` checks the list)."""
    towers = [*vision_shapes(spec.vision, spec.embed_dim), *text_shapes(spec.text, spec.embed_dim)]
    return towers + [(1,)] * LOGIT_PARAMS


@cache
def vision_shapes(v: VisionTowerSpec, embed_dim: int) -> tuple[Shape, ...]:
    """The image tower's tensors: patch stem, tokens, positions, blocks, norms, head, proj."""
    t = v.trunk
    d = t.width
    shapes: list[Shape] = [(d, 3, v.patch_size, v.patch_size)]
    shapes += [(d,)] if v.patch_bias else []
    shapes += [(1, 1, d)] if v.class_token else []
    shapes += [(1, v.num_prefix_tokens + v.num_patches, d)] if v.learned_pos else []
    shapes += norm_shapes(d, t) if v.ln_pre else []
    shapes += block_shapes(t) * t.depth
    shapes += norm_shapes(d, t)
    shapes += map_head_shapes(t) if v.pool == "map" else []
    return tuple(shapes + proj_shapes(v.proj, d, embed_dim))


@cache
def text_shapes(tx: TextTowerSpec, embed_dim: int) -> tuple[Shape, ...]:
    """The text tower's tensors: token and position embeddings, blocks, final norm, proj."""
    t = tx.trunk
    d = t.width
    shapes = [(tx.vocab_size, d), (tx.context_length, d), *block_shapes(t) * t.depth]
    shapes += norm_shapes(d, t)
    return tuple(shapes + proj_shapes(tx.proj, d, embed_dim))


def block_shapes(t: TrunkSpec) -> list[Shape]:
    """One transformer block: norm, attention (fused qkv, biases, [sub-LN], out), norm, MLP."""
    d, h = t.width, t.mlp_width
    attn: list[Shape] = [(3 * d, d)]
    attn += {"qkv": [(3 * d,)], "qv": [(d,), (d,)], "none": []}[t.qkv_bias]
    attn += norm_shapes(d, t) if t.sub_ln else []
    attn += [(d, d)] + ([(d,)] if t.proj_bias else [])
    fc1 = h if t.mlp_kind == "gelu" else 2 * h
    mlp: list[Shape] = [(fc1, d)] + ([(fc1,)] if t.mlp_bias else [])
    mlp += norm_shapes(h, t) if (t.sub_ln and t.mlp_kind == "swiglu") else []
    mlp += [(d, h)] + ([(d,)] if t.mlp_bias else [])
    return [*norm_shapes(d, t), *attn, *norm_shapes(d, t), *mlp]


def map_head_shapes(t: TrunkSpec) -> list[Shape]:
    """Attention-pooling head: learned query, q (d->d), kv (d->2d), out (d->d), all biased,
    then a norm and a GELU MLP with biases."""
    d, h = t.width, t.mlp_width
    attn: list[Shape] = [(1, 1, d), (d, d), (d,), (2 * d, d), (2 * d,), (d, d), (d,)]
    return [*attn, *norm_shapes(d, t), (h, d), (h,), (d, h), (d,)]


def norm_shapes(n: int, t: TrunkSpec) -> list[Shape]:
    """LayerNorm has a weight and a bias; RMSNorm a weight only."""
    return [(n,), (n,)] if t.norm_kind == "layernorm" else [(n,)]


def proj_shapes(kind: str, width: int, embed_dim: int) -> list[Shape]:
    """The tower's output projection to the shared embedding (none, linear, linear with bias)."""
    if kind == "none":
        return []
    return [(embed_dim, width)] + ([(embed_dim,)] if kind == "linear_bias" else [])


# --- counts ----------------------------------------------------------------------------------


def numel(shapes) -> int:
    """Elements of all ``shapes``: Σ Π dims."""
    return sum(math.prod(shape) for shape in shapes)


@cache
def block_params(t: TrunkSpec) -> int:
    return numel(block_shapes(t))


def map_head_params(t: TrunkSpec) -> int:
    return numel(map_head_shapes(t))


@cache
def vision_params(v: VisionTowerSpec, embed_dim: int) -> int:
    """All parameters of the image tower (patch stem, tokens, positions, trunk, pooling, proj)."""
    return numel(vision_shapes(v, embed_dim))


@cache
def text_params(tx: TextTowerSpec, embed_dim: int) -> int:
    """Token and position embeddings, trunk, final norm and projection."""
    return numel(text_shapes(tx, embed_dim))


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
