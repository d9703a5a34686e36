"""OpenCLIP model configs (the JSON of ``open_clip/model_configs/*.json``) as ``ModelSpec``s.

Supported: OpenCLIP's native towers, i.e. ``vision_cfg`` of its ``VisionTransformer`` and
``text_cfg`` of its ``TextTransformer``. Field meanings and defaults are OpenCLIP's
(``open_clip/model.py``: ``CLIPVisionCfg`` / ``CLIPTextCfg``; ``open_clip/transformer.py``):

    vision: width, layers, head_width (64) -> heads = width / head_width,
            mlp_ratio (4.0) -> mlp_width = int(width * mlp_ratio), patch_size, image_size,
            a bias-free conv stem, class token, learned positions, ln_pre, "tok" pooling
            (ln_post on the class token), proj = x @ proj (no bias); LayerNorm eps 1e-5
    text:   width (512), heads (8), layers (12), mlp_ratio (4.0), context_length (77),
            vocab_size (49408), causal unless no_causal_mask, pool_type "argmax" (-> "eos") or
            "last", proj_bias (False), norm_kwargs.eps (1e-5)
    resnet: ``layers`` a list of 4 block counts -> ``ModifiedResNet`` (``ResNetTowerSpec``):
            width (64), image_size (224), head_width (64) -> heads = width * 32 / head_width;
            batch-norm eps 1e-5; ``patch_size`` (null in OpenCLIP's RN configs) is ignored

Anything else (timm or Hugging Face towers, QuickGELU, LayerScale, attentional
poolers, other pool types) is refused with a message naming the key: silently building a
different function would defeat the point of reading the config.
"""

from __future__ import annotations

import math
from typing import Any

from vlscale.errors import ConfigError, closest_key, from_validation_error, validate_as
from vlscale.specs.fields import MAX_DIM
from vlscale.specs.models import ModelSpec
from vlscale.specs.towers import ResNetTowerSpec, TextTowerSpec, TrunkSpec, VisionTowerSpec

OPENCLIP_LN_EPS = 1e-5  # torch's nn.LayerNorm default, which OpenCLIP's LayerNorm keeps

# keys that change the function in a way our towers do not implement
_UNSUPPORTED_VISION = (
    "timm_model_name",
    "hf_model_name",
    "ls_init_value",
    "attentional_pool",
    "final_ln_after_pool",
    "output_tokens",
    "no_ln_pre",
    "act_kwargs",
)
_UNSUPPORTED_TEXT = (
    "hf_model_name",
    "ls_init_value",
    "embed_cls",
    "pad_id",
    "output_tokens",
    "act_kwargs",
    "attn_mask",
)


# Every key OpenCLIP itself knows (open_clip/model.py: CLIP's arguments and the CLIPVisionCfg /
# CLIPTextCfg dataclasses; factory.py: custom_text and the other towers' sections). OpenCLIP
# builds the dataclasses with ``**cfg``, so it refuses any other key with a TypeError; so do we,
# naming the closest known key: a typo ("layerz") must not silently build the default 12 layers.
_OPENCLIP_TOP = (
    "embed_dim",
    "vision_cfg",
    "text_cfg",
    "quick_gelu",
    "init_logit_scale",
    "init_logit_bias",
    "nonscalar_logit_scale",
    "cast_dtype",
    "output_dict",
    "custom_text",
    "multimodal_cfg",
    "audio_cfg",
    "audio_naflex_cfg",
    "genlap_cfg",
    "genlip_cfg",
)
# keys of OpenCLIP's transformer blocks, in both towers' configs
_OPENCLIP_TRANSFORMER = (
    "output_tokens",
    "act_kwargs",
    "norm_kwargs",
    "block_type",
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
)
_OPENCLIP_VISION = (
    "layers",
    "width",
    "head_width",
    "mlp_ratio",
    "patch_size",
    "image_size",
    "image_seq_len",
    "in_chans",
    "ls_init_value",
    "patch_dropout",
    "attentional_pool",
    "attn_pooler_queries",
    "attn_pooler_heads",
    "no_ln_pre",
    "pos_embed_type",
    "final_ln_after_pool",
    "pool_type",
    *_OPENCLIP_TRANSFORMER,
    "timm_model_name",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_proj_bias",
    "timm_drop",
    "timm_drop_path",
    "timm_model_kwargs",
    "hf_model_name",
)
_OPENCLIP_TEXT = (
    "text_arch",
    "context_length",
    "variable_text",
    "vocab_size",
    "hf_tokenizer_name",
    "tokenizer_mode",
    "tokenizer_kwargs",
    "width",
    "heads",
    "layers",
    "mlp_ratio",
    "ls_init_value",
    "embed_cls",
    "pad_id",
    "bos_id",
    "eos_id",
    "tokenizer_type",
    "tiktoken_name",
    "no_causal_mask",
    "final_ln_after_pool",
    "pool_type",
    "proj_bias",
    "proj_type",
    *_OPENCLIP_TRANSFORMER,
    "attention_mode",
    "pos_embed",
    "rope_temperature",
    "mlp_type",
    "norm_type",
    "norm_eps",
    "attn_gated",
    "pre_norm",
    "norm_placement",
    "zero_init_residual",
    "reg_tokens",
    "value_residual",
    "attention_bias",
    "mlp_bias",
    "gate_bias",
    "hf_model_name",
    "hf_model_pretrained",
    "hf_proj_type",
    "hf_pooler_type",
    "hf_model_config",
    "attn_mask",
)


def _refuse_unknown(section: dict, known: Any, where: str) -> None:
    """One ConfigError for the first key OpenCLIP does not know, naming the closest known one."""
    for key in section:
        if key not in known:
            best = closest_key(str(key), known)
            hint = f"did you mean '{best}'? " if best else ""
            raise ConfigError(
                f"{where}.{key}",
                f"unknown key (OpenCLIP refuses it too); {hint}see open_clip/model.py",
            )


def is_openclip_config(data: Any) -> bool:
    """True for a dict shaped like an OpenCLIP model config (it has ``vision_cfg``)."""
    return isinstance(data, dict) and "vision_cfg" in data and "embed_dim" in data


def spec_from_openclip_config(data: dict, name: str) -> ModelSpec:
    """The ``ModelSpec`` computing the same function as OpenCLIP's model for ``data``."""
    if data.get("quick_gelu"):
        raise ConfigError("model.quick_gelu", "QuickGELU is not supported; use GELU models")
    _refuse_unknown(data, _OPENCLIP_TOP, "model")
    vcfg = _section(data, "vision_cfg")
    tcfg = _section(data, "text_cfg")
    _refuse_unknown(vcfg, _OPENCLIP_VISION, "model.vision_cfg")
    _refuse_unknown(tcfg, _OPENCLIP_TEXT, "model.text_cfg")
    _refuse(vcfg, _UNSUPPORTED_VISION, "model.vision_cfg")
    _refuse(tcfg, _UNSUPPORTED_TEXT, "model.text_cfg")
    resnet = isinstance(vcfg.get("layers", 12), (list, tuple))
    if resnet and len(vcfg["layers"]) != 4:
        raise ConfigError(
            "model.vision_cfg.layers", f"a ResNet has 4 stages, got {list(vcfg['layers'])}"
        )
    pool = vcfg.get("pool_type", "tok")
    if pool != "tok" and not resnet:
        raise ConfigError("model.vision_cfg.pool_type", f"'{pool}' is not supported; use 'tok'")
    text_pool = tcfg.get("pool_type", "argmax")
    if text_pool not in ("argmax", "last"):
        raise ConfigError(
            "model.text_cfg.pool_type", f"'{text_pool}' is not supported; use 'argmax' or 'last'"
        )
    try:
        vision = _resnet(vcfg) if resnet else _vit(vcfg)
        twidth = _whole(tcfg, "width", 512, "model.text_cfg")
        text = TextTowerSpec(
            vocab_size=_whole(tcfg, "vocab_size", 49408, "model.text_cfg"),
            context_length=_whole(tcfg, "context_length", 77, "model.text_cfg"),
            trunk=TrunkSpec(
                width=twidth,
                depth=_whole(tcfg, "layers", 12, "model.text_cfg"),
                heads=_whole(tcfg, "heads", 8, "model.text_cfg"),
                mlp_width=_mlp_width(twidth, tcfg, "model.text_cfg"),
                norm_eps=_eps(tcfg, "model.text_cfg"),
            ),
            causal=not tcfg.get("no_causal_mask", False),
            pool="eos" if text_pool == "argmax" else "last",
            proj="linear_bias" if tcfg.get("proj_bias", False) else "linear",
        )
        return ModelSpec(
            name=name,
            vision=vision,
            text=text,
            embed_dim=_whole(data, "embed_dim", None),
            source="OpenCLIP model config",
        )
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        if hasattr(exc, "errors"):
            raise from_validation_error(exc, "model") from None
        raise ConfigError("model", f"bad OpenCLIP config value: {exc}") from None


def _vit(vcfg: dict) -> VisionTowerSpec:
    """OpenCLIP's ``VisionTransformer``; errors name the ``vision_cfg`` key."""
    where = "model.vision_cfg"
    vwidth = _whole(vcfg, "width", 768, where)
    head_width = _whole(vcfg, "head_width", 64, where)
    return VisionTowerSpec(
        image_size=_square(vcfg.get("image_size", 224), "image_size"),
        patch_size=_square(vcfg.get("patch_size", 16), "patch_size"),
        trunk=TrunkSpec(
            width=vwidth,
            depth=_whole(vcfg, "layers", 12, where),
            heads=max(1, vwidth // head_width),
            mlp_width=_mlp_width(vwidth, vcfg, where),
            norm_eps=_eps(vcfg, where),
        ),
        patch_bias=False,
        ln_pre=True,
        pool="cls",
        proj="linear",
    )


def _resnet(vcfg: dict) -> ResNetTowerSpec:
    """OpenCLIP's ``ModifiedResNet`` (``vision_cfg.layers`` is a list); errors name the key."""
    where = "model.vision_cfg"
    fields = {
        "image_size": _square(vcfg.get("image_size", 224), "image_size"),
        "layers": vcfg["layers"],
        "width": _whole(vcfg, "width", 64, where),
        "head_width": _whole(vcfg, "head_width", 64, where),
    }
    return validate_as(ResNetTowerSpec, fields, where)


def _whole(section: dict, key: str, default: int | None, where: str = "model") -> int:
    """``section[key]`` as a model dimension: a whole number (never a bool, never 12.5) that
    :data:`vlscale.specs.fields.Dim` then bounds; one ConfigError naming the key otherwise."""
    value = section.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{key}", f"must be a whole number, got {value!r}")
    if not 1 <= value <= MAX_DIM:
        raise ConfigError(
            f"model.{key}", f"must be a whole number from 1 to {MAX_DIM}, got {value}"
        )
    return value


def _mlp_width(width: int, section: dict, where: str) -> int:
    """OpenCLIP's ``int(width * mlp_ratio)`` with ``mlp_ratio`` a finite positive number."""
    ratio = section.get("mlp_ratio", 4.0)
    if isinstance(ratio, bool) or not isinstance(ratio, int | float):
        raise ConfigError(f"{where}.mlp_ratio", f"must be a number, got {ratio!r}")
    if not (0 < ratio <= MAX_DIM and math.isfinite(ratio)):
        raise ConfigError(f"{where}.mlp_ratio", f"must be a positive number, got {ratio}")
    return int(width * float(ratio))


def _section(data: dict, key: str) -> dict:
    section = data.get(key, {})
    if not isinstance(section, dict):
        raise ConfigError(f"model.{key}", "must be a JSON object")
    return section


def _refuse(section: dict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if section.get(key) not in (None, False, {}, ""):
            raise ConfigError(
                f"{where}.{key}",
                "is not supported by vlscale's towers (native OpenCLIP ViT + text tower only); "
                "remove it or use a vlscale model spec",
            )


def _eps(section: dict, where: str) -> float:
    """``norm_kwargs.eps`` of a tower (SigLIP configs set 1e-6), else OpenCLIP's 1e-5."""
    kwargs = section.get("norm_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{where}.norm_kwargs", 'must be a JSON object, e.g. {"eps": 1e-6}')
    eps = kwargs.get("eps", OPENCLIP_LN_EPS)
    if isinstance(eps, bool) or not isinstance(eps, int | float):
        raise ConfigError(f"{where}.norm_kwargs.eps", f"must be a number, got {eps!r}")
    return float(eps)


def _square(value: Any, field: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"model.vision_cfg.{field}", f"must be square, got {list(value)}")
        value = value[0]
    return _whole({field: value}, field, None, "model.vision_cfg")
