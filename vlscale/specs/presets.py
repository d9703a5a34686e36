"""Model presets, named as in OpenCLIP so that users can paste them: a loader over
``vlscale/specs/data/models.yaml``.

Each preset there is a model file in vlscale's own schema, shortened by tower families (named
defaults, e.g. ``openai_vit``) and shared text towers; the file's header explains both, and each
entry names the OpenCLIP config it mirrors and its source. Architectures follow OpenCLIP's
``model_configs/*.json`` and the timm models they reference, down to the norm epsilon and the
RoPE layout (timm ``eva.py``); ``tests/test_openclip.py`` holds them to OpenCLIP's state-dict
names and shapes and ``tests/published/`` to published parameter and FLOP counts.

Presets are built one at a time, on first use, and cached: ``vlscale params ViT-L-14`` validates
one model, not twenty.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from vlscale.errors import ConfigError, validate_as
from vlscale.specs.models import ModelSpec
from vlscale.specs.towers import ResNetTowerSpec, TextTowerSpec, VisionTowerSpec

PRESETS_FILE = Path(__file__).parent / "data" / "models.yaml"
BYTE_VOCAB = 260  # 256 bytes + pad, bos, eos, unk (trainer's byte-level tokenizer)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@cache
def _data() -> dict[str, Any]:
    data = yaml.load(PRESETS_FILE.read_text(), Loader=_LOADER)
    data["presets"] = {entry["name"]: entry for entry in data["presets"]}
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; nested mappings (``trunk``) merge key by key."""
    out = dict(base)
    for key, value in over.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merge(base[key], value) if nested else value
    return out


def _expand(fields: dict[str, Any]) -> dict[str, Any]:
    """A tower's fields with its family's defaults filled in (``family`` itself removed)."""
    fields = dict(fields)
    family = fields.pop("family", None)
    if family is None:
        return fields
    families = _data()["families"]
    if family not in families:
        raise ConfigError(
            "model.family", f"unknown tower family '{family}'; one of {list(families)}"
        )
    return _merge(families[family], fields)


def vision_tower(fields: dict[str, Any]) -> VisionTowerSpec | ResNetTowerSpec:
    """A vision tower from named fields, ``family`` (e.g. ``"eva_vit"``) giving the defaults;
    ``kind: resnet`` makes it CLIP's ResNet."""
    if fields.get("kind") == "resnet":
        return validate_as(ResNetTowerSpec, fields, "model.vision")
    return validate_as(VisionTowerSpec, _expand(fields), "model.vision")


def text_tower(fields: dict[str, Any] | str) -> TextTowerSpec:
    """A text tower from named fields (with ``family``) or the name of a shared text tower."""
    if isinstance(fields, str):
        fields = _data()["text_towers"][fields]
    return validate_as(TextTowerSpec, _expand(fields), "model.text")


@cache
def _preset(name: str) -> ModelSpec:
    entry = dict(_data()["presets"][name])
    entry.pop("openclip_config", None)
    vision, text = vision_tower(entry.pop("vision")), text_tower(entry.pop("text"))
    return validate_as(ModelSpec, entry | {"vision": vision, "text": text}, f"model {name}")


def list_models(kind: str | None = None) -> list[str]:
    """Preset names in catalogue order; ``kind`` ("vit" or "resnet") keeps those whose image
    tower is of that kind."""
    presets = _data()["presets"]
    return [
        name
        for name, entry in presets.items()
        if kind is None or entry["vision"].get("kind", "vit") == kind
    ]


def openclip_config_name(name: str) -> str | None:
    """The ``open_clip/model_configs/`` file that preset ``name`` mirrors (None when none)."""
    return _data()["presets"][get_model(name).name].get("openclip_config")


def get_model(name: str) -> ModelSpec:
    """Look a preset up by name (case-insensitive); unknown names list the closest matches."""
    presets = list(_data()["presets"])
    if name in presets:
        return _preset(name)
    by_lower = {k.lower(): k for k in presets}
    if name.lower() in by_lower:
        return _preset(by_lower[name.lower()])
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
    from vlscale.config_files import read_mapping  # deferred: presets alone need neither
    from vlscale.specs.openclip_config import is_openclip_config, spec_from_openclip_config

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
