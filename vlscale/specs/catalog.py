"""The hardware catalog: the devices of ``vlscale/specs/data/*.yaml``, looked up by name.

Names match whatever their spelling (:func:`device_key`: case, '-', '_' and spaces ignored), by
the device's name or any of its aliases. :func:`get_device` is the strict lookup (a ConfigError
with close names when unknown); :func:`catalog_name` the quiet one (None when unknown);
:func:`find_device` finds the catalog device named inside a longer description such as
``torch.cuda.get_device_name``'s "NVIDIA H100 80GB HBM3".
"""

from __future__ import annotations

import difflib
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from vlscale.errors import ConfigError
from vlscale.specs.device import DeviceSpec, spec_error

DATA_DIR = Path(__file__).parent / "data"
CATALOG_FILES = ("gpus.yaml", "tpus.yaml")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser when built with it


def device_key(name: str) -> str:
    """Lookup key: case-insensitive, ignoring '-', '_' and spaces ("A100-80GB" == "a100 80gb")."""
    return re.sub(r"[\s_\-]", "", name.lower())


@cache
def catalog_devices() -> dict[str, DeviceSpec]:
    """Every catalog device by its name, in file order (GPUs first, then TPUs)."""
    devices: dict[str, DeviceSpec] = {}
    for fname in CATALOG_FILES:
        entries = yaml.load((DATA_DIR / fname).read_text(), Loader=_LOADER)
        for spec in _parse_devices(entries, fname):
            devices[spec.name] = spec
    return devices


def _parse_devices(entries: Any, where: str) -> list[DeviceSpec]:
    if not isinstance(entries, list):
        raise ConfigError(where, "expected a list of devices")
    out = []
    for i, entry in enumerate(entries):
        try:
            out.append(DeviceSpec.model_validate(entry))
        except ValidationError as exc:
            raise spec_error(exc, f"{where}[{i}]") from None
    return out


@cache
def _index() -> dict[str, str]:
    index: dict[str, str] = {}
    for spec in catalog_devices().values():
        for alias in (spec.name, *spec.aliases):
            index[device_key(alias)] = spec.name
    return index


def list_devices() -> list[str]:
    """Catalog device names (GPUs first, then TPUs)."""
    return list(catalog_devices())


def catalog_name(name: str) -> str | None:
    """The catalog's name for ``name`` (a name or alias, any spelling), or None."""
    return _index().get(device_key(name))


def find_device(description: str) -> str | None:
    """The catalog device named inside ``description``, or None when none is.

    Names and aliases are compared by :func:`device_key`; the catalog entry whose name or alias
    is the longest substring of the description wins, so "NVIDIA A100-SXM4-80GB" finds
    "A100-80GB" (alias "A100-SXM4-80GB") rather than "A100-40GB" (alias "A100"), and an exact
    name finds itself.
    """
    key = device_key(description)
    best: tuple[int, str] | None = None
    for name in list_devices():
        spec = get_device(name)
        for alias in (spec.name, *spec.aliases):
            k = device_key(alias)
            if k and k in key and (best is None or len(k) > best[0]):
                best = (len(k), spec.name)
    return None if best is None else best[1]


def get_device(name: str, extra: dict[str, DeviceSpec] | None = None) -> DeviceSpec:
    """Look a device up by name or alias, case-insensitively; ``extra`` adds user devices."""
    pool = {device_key(n): s for n, s in (extra or {}).items()}
    if device_key(name) in pool:
        return pool[device_key(name)]
    index = _index()
    if device_key(name) in index:
        return catalog_devices()[index[device_key(name)]]
    names = list_devices() + list(extra or {})
    close = difflib.get_close_matches(
        device_key(name), [device_key(n) for n in names], n=3, cutoff=0.4
    )
    hint = [n for n in names if device_key(n) in close] or names
    raise ConfigError(
        "device",
        f"unknown device '{name}'; did you mean: {', '.join(hint)}? "
        "(add your own with a hardware file: vlscale.specs.hardware.load_hardware_file)",
    )
