"""Model presets, named as in OpenCLIP so that users can paste them.

Architectures follow OpenCLIP's model configs (``open_clip/model_configs/*.json``) and the timm
models they reference, down to the norm epsilon (1e-5 in OpenCLIP's own towers, 1e-6 in timm's
and in the SigLIP text towers), the RoPE layout (timm ``eva.py``: interleaved pairs, positions
scaled to the 16x16 pre-training grid) and the block type (EVA02-E-14-plus: post-norm, no
RoPE). The EVA-CLIP-8B/18B image towers follow the EVA-CLIP-18B paper (Sun et al. 2024,
Table 1: width, depth, heads, patch 14, RMSNorm, no QKV bias) with a GELU MLP of 5x width, which
is what reproduces the paper's parameter counts (7.5B / 17.5B). Published parameter and FLOP
figures for each preset are checked in ``tests/published/``.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path

from vlscale.config_files import read_mapping
from vlscale.errors import ConfigError, validate_as
from vlscale.specs.models import ModelSpec
from vlscale.specs.openclip_config import is_openclip_config, spec_from_openclip_config
from vlscale.specs.towers import MlpKind, NormKind, TextTowerSpec, TrunkSpec, VisionTowerSpec

OPENCLIP_VOCAB = 49408  # OpenAI CLIP BPE
SIGLIP_VOCAB = 32000  # SentencePiece used by the SigLIP checkpoints
BYTE_VOCAB = 260  # 256 bytes + pad, bos, eos, unk (trainer's byte-level tokenizer)


OPENCLIP_EPS = 1e-5  # open_clip/transformer.py: LayerNorm(nn.LayerNorm), torch's default eps
TIMM_EPS = 1e-6  # timm ViT partial(nn.LayerNorm, eps=1e-6); timm.layers.LayerNorm (EVA)
EVA_REF_GRID = 16  # timm eva.py eva02_*_clip: ref_feat_shape=(16, 16), i.e. 224 / 14


def _trunk(width, depth, heads, mlp_width, **kw) -> TrunkSpec:
    return TrunkSpec(width=width, depth=depth, heads=heads, mlp_width=mlp_width, **kw)


def openai_vit(image, patch, width, depth, heads, mlp_width) -> VisionTowerSpec:
    """OpenAI / OpenCLIP ViT: bias-free conv stem, cls token, ln_pre, cls pooling, linear proj."""
    return VisionTowerSpec(
        image_size=image,
        patch_size=patch,
        trunk=_trunk(width, depth, heads, mlp_width, norm_eps=OPENCLIP_EPS),
        patch_bias=False,
        ln_pre=True,
        pool="cls",
        proj="linear",
    )


def siglip_vit(image, patch, width, depth, heads, mlp_width) -> VisionTowerSpec:
    """timm SigLIP ViT: no cls token, attention-pooling (MAP) head, no projection."""
    return VisionTowerSpec(
        image_size=image,
        patch_size=patch,
        trunk=_trunk(width, depth, heads, mlp_width, norm_eps=TIMM_EPS),
        patch_bias=True,
        class_token=False,
        pool="map",
        proj="none",
    )


def eva_vit(
    image,
    patch,
    width,
    depth,
    heads,
    mlp_width,
    *,
    mlp_kind: MlpKind = "swiglu",
    sub_ln: bool = True,
    norm_kind: NormKind = "layernorm",
    qkv_bias="qv",
    rope: bool = True,
    rope_ref_grid: int | None = None,
    post_norm: bool = False,
) -> VisionTowerSpec:
    """EVA / EVA-02 ViT (timm ``eva02_*_clip``): 2-D RoPE + learned position, cls pooling.

    ``rope=False, post_norm=True`` is EVA-CLIP-E (timm ``eva02_enormous_patch14_clip_224``:
    ``use_post_norm=True`` and no ``use_rot_pos_emb``)."""
    return VisionTowerSpec(
        image_size=image,
        patch_size=patch,
        trunk=_trunk(
            width,
            depth,
            heads,
            mlp_width,
            mlp_kind=mlp_kind,
            sub_ln=sub_ln,
            norm_kind=norm_kind,
            qkv_bias=qkv_bias,
            norm_eps=TIMM_EPS,
            post_norm=post_norm,
        ),
        patch_bias=True,
        rope=rope,
        rope_ref_grid=rope_ref_grid if rope else None,
        pool="cls",
        proj="linear_bias",
    )


def openclip_text(width, depth, heads, *, vocab=OPENCLIP_VOCAB, context=77) -> TextTowerSpec:
    """OpenAI / OpenCLIP text transformer: causal, EOS pooling, bias-free projection."""
    return TextTowerSpec(
        vocab_size=vocab,
        context_length=context,
        trunk=_trunk(width, depth, heads, 4 * width, norm_eps=OPENCLIP_EPS),
        causal=True,
        pool="eos",
        proj="linear",
    )


def siglip_text(width, depth, heads, mlp_width, *, context, vocab=SIGLIP_VOCAB) -> TextTowerSpec:
    """SigLIP text transformer: bidirectional, last-token pooling, projection with bias."""
    return TextTowerSpec(
        vocab_size=vocab,
        context_length=context,
        trunk=_trunk(width, depth, heads, mlp_width, norm_eps=TIMM_EPS),
        causal=False,
        pool="last",
        proj="linear_bias",
    )


def _m(name, vision, text, embed_dim, source) -> ModelSpec:
    return ModelSpec(name=name, vision=vision, text=text, embed_dim=embed_dim, source=source)


_OC = "OpenCLIP model_configs/{}.json"


@cache
def _presets() -> dict[str, ModelSpec]:
    text_b = openclip_text(512, 12, 8)
    text_l = openclip_text(768, 12, 12)
    text_h = openclip_text(1024, 24, 16)
    text_big = openclip_text(1280, 32, 20)
    specs = [
        _m("ViT-B-32", openai_vit(224, 32, 768, 12, 12, 3072), text_b, 512, _OC.format("ViT-B-32")),
        _m("ViT-B-16", openai_vit(224, 16, 768, 12, 12, 3072), text_b, 512, _OC.format("ViT-B-16")),
        _m(
            "ViT-L-14",
            openai_vit(224, 14, 1024, 24, 16, 4096),
            text_l,
            768,
            _OC.format("ViT-L-14"),
        ),
        _m(
            "ViT-L-16",
            openai_vit(224, 16, 1024, 24, 16, 4096),
            text_l,
            768,
            _OC.format("ViT-L-16") + " (the FLIP paper's ViT-L/16)",
        ),
        _m(
            "ViT-L-14-336",
            openai_vit(336, 14, 1024, 24, 16, 4096),
            text_l,
            768,
            _OC.format("ViT-L-14-336"),
        ),
        _m(
            "ViT-H-14",
            openai_vit(224, 14, 1280, 32, 16, 5120),
            text_h,
            1024,
            _OC.format("ViT-H-14"),
        ),
        _m(
            "ViT-g-14",
            openai_vit(224, 14, 1408, 40, 16, 6144),
            text_h,
            1024,
            _OC.format("ViT-g-14"),
        ),
        _m(
            "ViT-bigG-14",
            openai_vit(224, 14, 1664, 48, 16, 8192),
            text_big,
            1280,
            _OC.format("ViT-bigG-14"),
        ),
        _m(
            "ViT-B-16-SigLIP",
            siglip_vit(224, 16, 768, 12, 12, 3072),
            siglip_text(768, 12, 12, 3072, context=64),
            768,
            _OC.format("ViT-B-16-SigLIP") + " (timm vit_base_patch16_siglip_224)",
        ),
        _m(
            "ViT-SO400M-14-SigLIP",
            siglip_vit(224, 14, 1152, 27, 16, 4304),
            siglip_text(1152, 27, 16, 4304, context=16),
            1152,
            _OC.format("ViT-SO400M-14-SigLIP") + " (timm vit_so400m_patch14_siglip_224)",
        ),
        _m(
            "EVA02-B-16",
            eva_vit(224, 16, 768, 12, 12, 2048, rope_ref_grid=EVA_REF_GRID),
            text_b,
            512,
            _OC.format("EVA02-B-16") + " (timm eva02_base_patch16_clip_224)",
        ),
        _m(
            "EVA02-L-14",
            eva_vit(224, 14, 1024, 24, 16, 2730, rope_ref_grid=EVA_REF_GRID),
            text_l,
            768,
            _OC.format("EVA02-L-14") + " (timm eva02_large_patch14_clip_224)",
        ),
        _m(
            "EVA02-E-14-plus",
            eva_vit(
                224,
                14,
                1792,
                64,
                16,
                15360,
                mlp_kind="gelu",
                sub_ln=False,
                rope=False,
                post_norm=True,
            ),
            text_big,
            1024,
            _OC.format("EVA02-E-14-plus") + " (timm eva02_enormous_patch14_clip_224)",
        ),
        _m(
            "EVA-CLIP-8B",
            eva_vit(
                224,
                14,
                4096,
                32,
                32,
                5 * 4096,
                mlp_kind="gelu",
                sub_ln=False,
                norm_kind="rmsnorm",
                qkv_bias="none",
            ),
            text_big,
            1280,
            "EVA-CLIP-18B paper (arXiv 2402.04252) Table 1; text tower of EVA02-CLIP-E/14+",
        ),
        _m(
            "EVA-CLIP-18B",
            eva_vit(
                224,
                14,
                5120,
                48,
                40,
                5 * 5120,
                mlp_kind="gelu",
                sub_ln=False,
                norm_kind="rmsnorm",
                qkv_bias="none",
            ),
            text_big,
            1024,
            "EVA-CLIP-18B paper (arXiv 2402.04252) Table 1; text tower of EVA02-CLIP-E/14+",
        ),
        # Tiny presets: small enough to build, count and train on a CPU in seconds.
        _m(
            "tiny-clip",
            openai_vit(32, 8, 64, 2, 4, 256),
            openclip_text(64, 2, 4, vocab=BYTE_VOCAB, context=32),
            32,
            "vlscale test preset",
        ),
        _m(
            "tiny-siglip",
            siglip_vit(32, 8, 64, 2, 4, 256),
            siglip_text(64, 2, 4, 256, vocab=BYTE_VOCAB, context=32),
            64,
            "vlscale test preset",
        ),
        _m(
            "tiny-eva",
            eva_vit(32, 8, 64, 2, 4, 172),
            openclip_text(64, 2, 4, vocab=BYTE_VOCAB, context=32),
            32,
            "vlscale test preset",
        ),
        _m(
            "small-clip",
            openai_vit(64, 8, 128, 4, 4, 512),
            openclip_text(128, 4, 4, vocab=BYTE_VOCAB, context=32),
            64,
            "vlscale CPU training preset",
        ),
        _m(
            "medium-clip",
            openai_vit(64, 8, 256, 6, 4, 1024),
            openclip_text(256, 6, 4, vocab=BYTE_VOCAB, context=32),
            128,
            "vlscale CPU calibration preset (~10 M parameters)",
        ),
    ]
    return {s.name: s for s in specs}


def list_models() -> list[str]:
    """Preset names in catalogue order."""
    return list(_presets())


def get_model(name: str) -> ModelSpec:
    """Look a preset up by name (case-insensitive); unknown names list the closest matches."""
    presets = _presets()
    if name in presets:
        return presets[name]
    by_lower = {k.lower(): k for k in presets}
    if name.lower() in by_lower:
        return presets[by_lower[name.lower()]]
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.4)
    hint = ", ".join(by_lower[c] for c in close) if close else ", ".join(presets)
    raise ConfigError("model", f"unknown model '{name}'; did you mean: {hint}? (`vlscale models`)")


MODEL_FILE_SUFFIXES = (".yaml", ".yml", ".json")


def resolve_model(name_or_path: str | ModelSpec) -> ModelSpec:
    """The one way every command turns ``--model`` into a ``ModelSpec``.

    Accepts a ``ModelSpec`` (returned as is), a preset name (case-insensitive), or a file:
    a YAML / JSON model spec in vlscale's own schema (what ``vlscale models show NAME --yaml``
    prints), or an OpenCLIP model-config JSON (``open_clip/model_configs/*.json``, native ViT and
    text tower; see ``vlscale.specs.openclip_config``). Errors are one ``ConfigError`` on the
    field ``model``.
    """
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    name = str(name_or_path)
    looks_like_file = name.lower().endswith(MODEL_FILE_SUFFIXES) or "/" in name
    if not looks_like_file:
        return get_model(name)
    return load_model_file(name)


def load_model_file(path: str) -> ModelSpec:
    """A ``ModelSpec`` from a vlscale model file or an OpenCLIP model config (``resolve_model``)."""
    file = Path(path)
    if not file.exists():
        raise ConfigError(
            "model", f"no such model file '{path}'; give a preset name (`vlscale models`) or a file"
        )
    data = read_mapping(file, "model", "a model file (YAML / JSON; `vlscale models show NAME`)")
    try:  # a schema error names the file too: "model.embed_dim: ... (in 'm.yaml')"
        if is_openclip_config(data):
            return spec_from_openclip_config(data, name=file.stem)
        return validate_as(ModelSpec, {"name": file.stem} | data, "model")
    except ConfigError as exc:
        message = str(exc)[len(exc.field) + 2 :]
        raise ConfigError(exc.field, f"{message} (in '{file}')") from None
