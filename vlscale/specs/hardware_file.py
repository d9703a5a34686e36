"""User hardware files: devices and clusters read from (and written to) YAML or TOML.

A hardware file adds devices to the catalog's (``vlscale.specs.catalog``) -- typically a catalog
device with measured efficiencies (``base:`` + ``measured:``) or a profile that
``vlscale calibrate`` / the trainer's probe wrote -- and names clusters of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from vlscale.errors import ConfigError, closest_key
from vlscale.paths import atomic_write_text
from vlscale.specs.catalog import catalog_devices as _catalog
from vlscale.specs.catalog import catalog_name, device_key, get_device
from vlscale.specs.cluster import ClusterSpec
from vlscale.specs.device import DeviceSpec, FrozenSpec, spec_error


class HardwareFile(FrozenSpec):
    """What a user hardware file defines: devices and clusters, by name."""

    devices: dict[str, DeviceSpec] = Field(default_factory=dict)
    clusters: dict[str, ClusterSpec] = Field(default_factory=dict)


def load_hardware_file(path: str | os.PathLike) -> HardwareFile:
    """Read devices and clusters from a YAML or TOML file (one clear ConfigError if bad).

    Layout (YAML; TOML uses ``[[devices]]`` / ``[[clusters]]`` tables)::

        devices:
          - base: H100                 # optional: start from a catalog (or earlier) device
            name: h100-measured
            measured: {matmul_efficiency: 0.62, source: "measured 2025-01-02",
                       links: {nvlink: {alpha_s: 2.0e-6, efficiency: 0.8}}}
        clusters:
          - {name: lab, device: h100-measured, num_devices: 16}
          - {name: pod, device: TPUv5e, num_devices: 512, num_slices: 2}
    """
    path = Path(path)
    field = f"hardware_file {path.name}"
    data = _read_mapping(path, field)
    unknown = sorted(set(data) - {"devices", "clusters"}, key=str)
    if unknown:
        best = closest_key(unknown[0], ("devices", "clusters"))
        hint = f"; did you mean '{best}'?" if best else ""
        raise ConfigError(
            field,
            f"unknown top-level key '{unknown[0]}'{hint} (the keys are 'devices' and 'clusters')",
        )
    devices: dict[str, DeviceSpec] = {}
    for i, entry in enumerate(_entries(data, "devices", field)):
        spec = _device_entry(entry, devices, f"{field}: devices[{i}]")
        # a catalog name would shadow the catalog's device without a word
        if catalog_name(spec.name) is not None:
            raise ConfigError(
                f"{field}: devices[{i}].name",
                f"'{spec.name}' is a catalog device; give yours another name (e.g. "
                f"{spec.name}-measured) and start from the catalog's with base: {spec.name}",
            )
        same = [n for n in devices if device_key(n) == device_key(spec.name)]
        if same:
            raise ConfigError(
                f"{field}: devices[{i}].name",
                f"'{spec.name}' names a device defined earlier in the file ('{same[0]}'); "
                "give each device its own name",
            )
        devices[spec.name] = spec
    clusters: dict[str, ClusterSpec] = {}
    for i, entry in enumerate(_entries(data, "clusters", field)):
        where = f"{field}: clusters[{i}]"
        entry = dict(entry)
        if not isinstance(entry.get("device"), str) or not entry.get("name"):
            raise ConfigError(where, "each cluster needs a 'name' and a 'device' name")
        entry["device"] = _with_field(get_device, where)(entry["device"], devices)
        if entry["name"] in clusters:
            raise ConfigError(
                f"{where}.name",
                f"'{entry['name']}' names a cluster defined earlier in the file; "
                "give each cluster its own name",
            )
        try:
            clusters[entry["name"]] = ClusterSpec.model_validate(entry)
        except ValidationError as exc:
            raise spec_error(exc, where, ClusterSpec) from None
    return HardwareFile(devices=devices, clusters=clusters)


def dump_hardware_file(path: str | os.PathLike, devices=(), clusters=()) -> None:
    """Write devices and clusters as a YAML hardware file, atomically (``vlscale.paths``).

    Cluster devices that are not catalog entries are written too, so the file loads alone."""
    devs = {d.name: d for d in devices}
    for c in clusters:
        if _catalog().get(c.device.name) != c.device:
            devs.setdefault(c.device.name, c.device)
    doc: dict[str, Any] = {}
    if devs:
        doc["devices"] = [d.model_dump(mode="json", exclude_none=True) for d in devs.values()]
    if clusters:
        doc["clusters"] = [
            c.model_dump(mode="json", exclude_none=True) | {"device": c.device.name}
            for c in clusters
        ]
    atomic_write_text(Path(path), yaml.safe_dump(doc, sort_keys=False))


def _read_mapping(path: Path, field: str) -> dict:
    """The file's mapping (``vlscale.config_files.read_mapping``), YAML or TOML only."""
    from vlscale.config_files import read_mapping

    if path.suffix not in (".yaml", ".yml", ".toml") and not path.is_dir():
        raise ConfigError(field, f"unknown extension '{path.suffix}'; use .yaml, .yml or .toml")
    data = read_mapping(path, field, "a YAML or TOML hardware file")
    if not data:
        raise ConfigError(field, "expected a mapping with 'devices' and/or 'clusters'")
    return data


def _entries(data: dict, key: str, field: str) -> list[dict]:
    entries = data.get(key, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(f"{field}: {key}", "expected a list of mappings")
    return entries


def _device_entry(entry: dict, known: dict[str, DeviceSpec], where: str) -> DeviceSpec:
    entry = dict(entry)
    base_name = entry.pop("base", None)
    if base_name is not None:
        parent = _with_field(get_device, where)(str(base_name), known)
        base = parent.model_dump()
        if entry.get("name", base["name"]) != base["name"]:
            base["aliases"] = ()  # the catalog's aliases belong to the catalog device
        # same silicon: the catalog's op-level defaults and γ still apply (vlscale.plan)
        base["derived_from"] = parent.derived_from or parent.name
        entry = _deep_merge(base, entry)
    try:
        return DeviceSpec.model_validate(entry)
    except ValidationError as exc:
        raise spec_error(exc, where, DeviceSpec) from None


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _with_field(fn, where: str):
    """Re-raise a ConfigError from ``fn`` with ``where`` in front, so the file position shows."""

    def call(*args):
        try:
            return fn(*args)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc.field}", str(exc)[len(exc.field) + 2 :]) from None

    return call
