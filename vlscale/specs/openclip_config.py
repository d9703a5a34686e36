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

from typing import Any

from vlscale.errors import ConfigError, from_validation_error, validate_as
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


def is_openclip_config(data: Any) -> bool:
    """True for a dict shaped like an OpenCLIP model config (it has ``vision_cfg``)."""
    return isinstance(data, dict) and "vision_cfg" in data and "embed_dim" in data


def spec_from_openclip_config(data: dict, name: str) -> ModelSpec:
    """The ``ModelSpec`` computing the same function as OpenCLIP's model for ``data``."""
    if data.get("quick_gelu"):
        raise ConfigError("model.quick_gelu", "QuickGELU is not supported; use GELU models")
    vcfg = _section(data, "vision_cfg")
    tcfg = _section(data, "text_cfg")
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
        twidth = int(tcfg.get("width", 512))
        text = TextTowerSpec(
            vocab_size=int(tcfg.get("vocab_size", 49408)),
            context_length=int(tcfg.get("context_length", 77)),
            trunk=TrunkSpec(
                width=twidth,
                depth=int(tcfg.get("layers", 12)),
                heads=int(tcfg.get("heads", 8)),
                mlp_width=int(twidth * float(tcfg.get("mlp_ratio", 4.0))),
                norm_eps=_eps(tcfg),
            ),
            causal=not tcfg.get("no_causal_mask", False),
            pool="eos" if text_pool == "argmax" else "last",
            proj="linear_bias" if tcfg.get("proj_bias", False) else "linear",
        )
        return ModelSpec(
            name=name,
            vision=vision,
            text=text,
            embed_dim=int(data["embed_dim"]),
            source="OpenCLIP model config",
        )
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        if hasattr(exc, "errors"):
            raise from_validation_error(exc, "model") from None
        raise ConfigError("model", f"bad OpenCLIP config value: {exc}") from None


def _vit(vcfg: dict) -> VisionTowerSpec:
    """OpenCLIP's ``VisionTransformer``."""
    vwidth = int(vcfg.get("width", 768))
    head_width = int(vcfg.get("head_width", 64))
    return VisionTowerSpec(
        image_size=_square(vcfg.get("image_size", 224), "image_size"),
        patch_size=_square(vcfg.get("patch_size", 16), "patch_size"),
        trunk=TrunkSpec(
            width=vwidth,
            depth=int(vcfg.get("layers", 12)),
            heads=max(1, vwidth // head_width),
            mlp_width=int(vwidth * float(vcfg.get("mlp_ratio", 4.0))),
            norm_eps=_eps(vcfg),
        ),
        patch_bias=False,
        ln_pre=True,
        pool="cls",
        proj="linear",
    )


def _resnet(vcfg: dict) -> ResNetTowerSpec:
    """OpenCLIP's ``ModifiedResNet`` (``vision_cfg.layers`` is a list); errors name the key."""
    fields = {
        "image_size": _square(vcfg.get("image_size", 224), "image_size"),
        "layers": vcfg["layers"],
        "width": vcfg.get("width", 64),
        "head_width": vcfg.get("head_width", 64),
    }
    return validate_as(ResNetTowerSpec, fields, "model.vision_cfg")


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


def _eps(section: dict) -> float:
    """``norm_kwargs.eps`` of a tower (SigLIP configs set 1e-6), else OpenCLIP's 1e-5."""
    return float((section.get("norm_kwargs") or {}).get("eps", OPENCLIP_LN_EPS))


def _square(value: Any, field: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ConfigError(f"model.vision_cfg.{field}", f"must be square, got {list(value)}")
        value = value[0]
    return int(value)
