"""Activation memory: the bytes each tower keeps alive for backward, per device.

The model counts the tensors autograd saves (unique storages, parameters and buffers excluded)
when ``models/`` runs a forward pass, tensor by tensor, in the spirit of Korthikanti et al. 2022
("Reducing Activation Recomputation in Large Transformer Models", Sec. 4.1: sbh(34 + 5as/h)
bytes per layer). Unlike that textbook count, no attention matrix is stored: every backend that
``F.scaled_dot_product_attention`` picks here (flash on CUDA, flash-for-CPU on the CPU reference
path) saves q, k, v, the output and a per-row logsumexp, never the b·a·s² probabilities, and
there is no dropout. Notation: n = b·s tokens of one tower, d = width, h = mlp_width, a = heads,
p = bytes per activation element (``precision``); per-row statistics (norm mean/rstd, the
attention logsumexp) are counted in fp32 (4 bytes), token ids and FLIP indices in int64.

One pre-norm block (``models.layers.Block``) saves, in elements::

    attention   x (block input, saved by norm1)                              n·d
                norm1 output (qkv input)                                     n·d
                fused qkv output (q, k, v are views of it)                   3·n·d
                [RoPE: rotated q and k are new tensors]                      2·n·d
                attention output o                                           n·d
                logsumexp                                                    n·a   (fp32)
                [RoPE: the (b, s, d) reshape of o is a copy, see below]      n·d
                [sub-LN: its output, the out-proj input]                     n·d
    mlp         x1 = x + attn (saved by norm2), norm2 output                 2·n·d
                GELU: fc1 output (GELU input), GELU output                   2·n·h
                SwiGLU: fused fc1 output (gate | value), silu(gate),
                        silu(gate)·value                                     4·n·h
                [sub-LN over h: its output, the fc2 input]                   n·h
    each norm   LayerNorm: mean + rstd 2·n (fp32). RMSNorm (composite on the reference path:
                x·rstd is saved by the weight multiply): rstd n (fp32) + x·rstd n·width

A post-norm block (x + norm1(attn(x)), x + norm2(mlp(x))) saves the same counts: x (qkv input)
instead of norm1's input, the out-proj output (norm1 input) instead of norm1's output, x1 (fc1
input) and the fc2 output (norm2 input) instead of x1 and norm2's output.

so a plain ViT / CLIP block keeps 8·n·d + 2·n·h elements + 4n + a·n fp32 values; an EVA-02 block
(RoPE, SwiGLU, sub-LN) keeps 12·n·d + 5·n·h (+ statistics).

The attention output follows q's memory layout on the reference path: q as a permuted view of
the fused qkv output is laid out (b, s, a, hd), so the output's transpose + reshape to (b, s, d)
is a view; RoPE's rotated q is a fresh contiguous (b, a, s, hd) tensor, so that reshape copies
and the copy is saved by the next op (sub-LN or the out projection).

Outside the blocks (per tower):

    vision stem  images (conv input) b·3·H·W; [ln_pre: its input n·d + stats];
                 FLIP (r > 0 and K < N): the argsort of the per-sample noise, b·N int64 (the
                 kept indices are a slice of it), and the pre-drop tokens b·N·d (gather saves
                 its input); with RoPE also the gathered cos and sin tables, 2·b·K·head_dim
    vision pool  "cls": last block output n·d (x[:, 0] is a view) + stats, pooled b·d if proj
                 "mean": pooled b·d + stats, normed b·d if proj
                 "map": last block output n·d + stats, normed n·d, kv output 2·n·d, and per
                 sample q, o, out-proj output, norm output (4·d), logsumexp a, 2·h MLP, stats
    text stem    token ids b·s (int64, saved by the embedding)
    text pool    last block output n·d + stats; "eos": two index vectors 2·b (int64) and the
                 gathered b·d if proj; "last": the normed n·d (x[:, -1] is a view) if proj

Activation checkpointing (``torch.utils.checkpoint``, non-reentrant, one region per block):
each block keeps only its input (n·d); everything outside the blocks is kept as above; and
during backward one block at a time is recomputed, holding that block's saved tensors except
its input (already kept) and the RoPE tables (already counted). That recompute peak is reported
once (``"recompute"``), for the tower whose block is largest: the towers run backward one
after the other.

Validated against the torch model in fp32 on the CPU reference path
(``tests/test_activation_memory_torch.py``). Known differences on other paths: CUDA's fused
RMSNorm saves no x·rstd (this model over-counts n·width per RMSNorm there); in bf16 the RoPE
tables are cast per use (``models.rope``), adding 4·b·K·head_dim per block that is not counted.
Gradient buffers that live only during backward are not activations and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from vlscale.costs.dtypes import INDEX_BYTES, STAT_BYTES
from vlscale.errors import ConfigError
from vlscale.specs.fields import check_mask_ratio
from vlscale.specs.models import ModelSpec
from vlscale.specs.recipes import BYTES_PER_ELEMENT
from vlscale.specs.towers import TextTowerSpec, TrunkSpec, VisionTowerSpec


@dataclass(frozen=True)
class Saved:
    """Saved elements split by storage type: activations (``precision``), fp32, int64."""

    act: int = 0
    fp32: int = 0
    index: int = 0

    def __add__(self, other: Saved) -> Saved:
        return Saved(self.act + other.act, self.fp32 + other.fp32, self.index + other.index)

    def __mul__(self, k: int) -> Saved:
        return Saved(self.act * k, self.fp32 * k, self.index * k)

    def nbytes(self, act_bytes: int) -> int:
        return self.act * act_bytes + self.fp32 * STAT_BYTES + self.index * INDEX_BYTES


def norm_extra(tokens: int, width: int, t: TrunkSpec) -> Saved:
    """What a norm saves besides its input and output: LayerNorm mean + rstd (2 per row);
    RMSNorm (composite) rstd per row and the normalised x·rstd (``width`` per row)."""
    if t.norm_kind == "layernorm":
        return Saved(fp32=2 * tokens)
    return Saved(act=tokens * width, fp32=tokens)


def block_saved(t: TrunkSpec, tokens: int, rope: bool) -> Saved:
    """Everything one block saves for backward, its input included (module docstring)."""
    n, d, h = tokens, t.width, t.mlp_width
    # x, norm1 out, qkv (3), o; RoPE: rotated q, k and the reshape copy of o; sub-LN output
    attn_nd = 1 + 1 + 3 + 1 + (3 if rope else 0) + (1 if t.sub_ln else 0)
    attn = Saved(act=attn_nd * n * d, fp32=n * t.heads) + norm_extra(n, d, t)
    if t.sub_ln:
        attn += norm_extra(n, d, t)
    mlp = Saved(act=2 * n * d) + norm_extra(n, d, t)
    if t.mlp_kind == "gelu":
        mlp += Saved(act=2 * n * h)
    else:
        mlp += Saved(act=(4 + (1 if t.sub_ln else 0)) * n * h)
        if t.sub_ln:
            mlp += norm_extra(n, h, t)
    return attn + mlp


def rope_tables_saved(v: VisionTowerSpec, batch: int, mask_ratio: float) -> Saved:
    """Gathered cos/sin tables (b, K, head_dim) each, made per forward when FLIP drops tokens;
    without dropping the tables are module buffers (not activations)."""
    if not (v.rope and _drops(v, mask_ratio)):
        return Saved()
    return Saved(act=2 * batch * v.kept_patches(mask_ratio) * v.trunk.head_dim)


def vision_outside_blocks(v: VisionTowerSpec, batch: int, mask_ratio: float) -> Saved:
    """Stem, FLIP, ln_pre and pooling head of the image tower (module docstring)."""
    t, d = v.trunk, v.trunk.width
    n = batch * v.seq_len(mask_ratio)
    saved = Saved(act=batch * 3 * v.image_size**2)
    if _drops(v, mask_ratio):
        saved += Saved(act=batch * v.num_patches * d, index=batch * v.num_patches)
    saved += rope_tables_saved(v, batch, mask_ratio)
    if v.ln_pre:
        saved += Saved(act=n * d) + norm_extra(n, d, t)
    has_proj = v.proj != "none"
    if v.pool == "cls":
        saved += Saved(act=n * d) + norm_extra(batch, d, t)
        saved += Saved(act=batch * d if has_proj else 0)
    elif v.pool == "mean":
        saved += Saved(act=batch * d) + norm_extra(batch, d, t)
        saved += Saved(act=batch * d if has_proj else 0)
    else:  # "map": final norm over all tokens, then the attention-pooling head
        saved += Saved(act=n * d) + norm_extra(n, d, t) + Saved(act=n * d)
        saved += Saved(act=2 * n * d + 4 * batch * d + 2 * batch * t.mlp_width)
        saved += Saved(fp32=batch * t.heads) + norm_extra(batch, d, t)
        saved += Saved(act=batch * d if has_proj else 0)
    return saved


def text_outside_blocks(tx: TextTowerSpec, batch: int) -> Saved:
    """Token ids, final norm and pooling of the text tower (module docstring)."""
    t, d = tx.trunk, tx.trunk.width
    n = batch * tx.context_length
    saved = Saved(index=n) + Saved(act=n * d) + norm_extra(n, d, t)
    has_proj = tx.proj != "none"
    if tx.pool == "eos":
        saved += Saved(index=2 * batch, act=batch * d if has_proj else 0)
    elif has_proj:
        saved += Saved(act=n * d)
    return saved


@dataclass(frozen=True)
class TowerActivations:
    """One tower's saved bytes: ``kept`` stays until backward, ``recompute`` is the extra
    peak of re-running one checkpointed block (0 without checkpointing)."""

    kept: int
    recompute: int


def vision_activations(
    v: VisionTowerSpec, batch: int, act_bytes: int, checkpointing: bool, mask_ratio: float
) -> TowerActivations:
    tokens = batch * v.seq_len(mask_ratio)
    outside = vision_outside_blocks(v, batch, mask_ratio)
    block = block_saved(v.trunk, tokens, v.rope)
    return _tower(v.trunk, tokens, outside, block, act_bytes, checkpointing)


def text_activations(
    tx: TextTowerSpec, batch: int, act_bytes: int, checkpointing: bool
) -> TowerActivations:
    tokens = batch * tx.context_length
    outside = text_outside_blocks(tx, batch)
    block = block_saved(tx.trunk, tokens, rope=False)
    return _tower(tx.trunk, tokens, outside, block, act_bytes, checkpointing)


def activation_bytes(
    spec: ModelSpec,
    local_batch: int,
    precision: str = "bf16",
    checkpointing: bool = False,
    mask_ratio: float = 0.0,
) -> dict[str, int]:
    """Activation bytes per device: ``{"image", "text", "recompute"}``; their sum is the total.

    ``image`` / ``text``: what each tower keeps for backward (all blocks' saved tensors, or
    only the block inputs with ``checkpointing``); ``recompute``: the largest single-block
    recompute peak over both towers (0 without checkpointing). ``mask_ratio`` is FLIP's patch
    drop ratio r, shortening the image sequence to prefix + floor(N·(1 - r)) tokens.
    """
    if precision not in BYTES_PER_ELEMENT:
        raise ConfigError(
            "precision", f"unknown precision '{precision}'; use one of {list(BYTES_PER_ELEMENT)}"
        )
    check_mask_ratio(mask_ratio)
    if local_batch < 1:
        raise ConfigError("local_batch", f"must be >= 1, got {local_batch}")
    act_bytes = BYTES_PER_ELEMENT[precision]
    image = vision_activations(spec.vision, local_batch, act_bytes, checkpointing, mask_ratio)
    text = text_activations(spec.text, local_batch, act_bytes, checkpointing)
    return {
        "image": image.kept,
        "text": text.kept,
        "recompute": max(image.recompute, text.recompute),
    }


def _tower(
    t: TrunkSpec,
    tokens: int,
    outside: Saved,
    block: Saved,
    act_bytes: int,
    checkpointing: bool,
) -> TowerActivations:
    if not checkpointing:
        return TowerActivations(kept=(outside + block * t.depth).nbytes(act_bytes), recompute=0)
    block_input = Saved(act=tokens * t.width)
    kept = outside + block_input * t.depth
    # the recomputed block re-saves its input, which is already kept (the RoPE tables are
    # counted outside the blocks, never in ``block``)
    recompute = (block.nbytes(act_bytes)) - block_input.nbytes(act_bytes)
    return TowerActivations(kept=kept.nbytes(act_bytes), recompute=recompute)


def _drops(v: VisionTowerSpec, mask_ratio: float) -> bool:
    """True when FLIP actually gathers a subset (``models.vision.VisionTower.drop_patches``)."""
    return mask_ratio > 0.0 and v.kept_patches(mask_ratio) < v.num_patches
