"""Clusters: ``num_devices`` devices of one kind, and how they are joined.

GPUs are grouped into NVLink nodes of ``devices_per_node`` joined by NICs; TPU chips into
``num_slices`` slices of ``slice_shape`` (torus dims, ``vlscale.specs.torus``) joined by the
data-center network (DCN); CPU ranks share one host.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError, field_validator, model_validator

from vlscale.specs.catalog import get_device
from vlscale.specs.device import DeviceSpec, FrozenSpec, spec_error
from vlscale.specs.fields import Count
from vlscale.specs.torus import (
    check_slice_shape,
    default_slice_shape,
    format_dims,
    parse_slice_shape,
    torus_wraparound,
)


class ClusterSpec(FrozenSpec):
    """``num_devices`` devices: GPU nodes over NICs, or TPU slices (torus) over DCN.

    GPU: ``devices_per_node`` defaults to the device's node size (or ``num_devices`` when that
    is smaller, a partial node). TPU: ``slice_shape`` defaults to a compact torus shape for
    ``num_devices / num_slices`` chips (:func:`default_slice_shape`).
    """

    name: str = ""
    device: DeviceSpec
    num_devices: Count
    devices_per_node: Count | None = None
    slice_shape: tuple[Count, ...] | None = None
    num_slices: Count = 1

    @field_validator("slice_shape", mode="before")
    @classmethod
    def _shape_from_text(cls, value: Any) -> Any:
        return parse_slice_shape(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> ClusterSpec:
        if self.device.kind in ("gpu", "cpu"):
            _check_gpu_cluster(self)
        else:
            _check_tpu_cluster(self)
        return self

    @property
    def node_size(self) -> int:
        """GPUs per node (NVLink domain) / TPU chips per host."""
        size = self.devices_per_node or self.device.devices_per_node
        return min(size, self.num_devices)

    @property
    def num_nodes(self) -> int:
        return self.num_devices // self.node_size

    @property
    def slice_size(self) -> int:
        """Devices per ICI/NVLink island: a TPU slice, or a GPU node."""
        return self.num_devices // self.num_slices if self.device.kind == "tpu" else self.node_size

    @property
    def slice_dims(self) -> tuple[int, ...]:
        """TPU slice torus dims (empty for GPUs)."""
        if self.device.kind != "tpu":
            return ()
        return self.slice_shape or default_slice_shape(self.device, self.slice_size)

    @property
    def wraparound(self) -> tuple[bool, ...]:
        """Per slice axis: does it have wraparound links (a ring rather than a line)?"""
        return torus_wraparound(self.device.ici, self.slice_dims) if self.device.ici else ()

    @property
    def usd_per_hour(self) -> float:
        return self.num_devices * self.device.price.usd_per_hour


def _check_gpu_cluster(c: ClusterSpec) -> None:
    if c.slice_shape is not None:
        raise ValueError("slice_shape is for TPU slices; for GPUs set devices_per_node")
    if c.num_slices != 1:
        raise ValueError("num_slices is for TPU multi-slice; GPU nodes come from num_devices")
    node = c.node_size
    if c.num_devices % node:
        lo, hi = (c.num_devices // node) * node, (c.num_devices // node + 1) * node
        raise ValueError(
            f"num_devices={c.num_devices} is not a whole number of {node}-GPU nodes; "
            f"use {lo or node} or {hi}, or set devices_per_node"
        )


def _check_tpu_cluster(c: ClusterSpec) -> None:
    ici = c.device.ici
    if c.num_devices % c.num_slices:
        raise ValueError(
            f"num_devices={c.num_devices} does not split into num_slices={c.num_slices} equal "
            "slices; use a multiple of num_slices"
        )
    dims = c.slice_dims  # raises for impossible default shapes
    if len(dims) != len(ici.pod_dims):
        raise ValueError(
            f"slice_shape {format_dims(dims)} has {len(dims)} dims but {c.device.name} is a "
            f"{len(ici.pod_dims)}-D torus (pod {format_dims(ici.pod_dims)})"
        )
    if any(d <= 0 for d in dims):
        raise ValueError(f"slice_shape dims must be positive, got {format_dims(dims)}")
    if any(d > p for d, p in zip(sorted(dims), sorted(ici.pod_dims), strict=True)):
        raise ValueError(
            f"slice_shape {format_dims(dims)} does not fit in a {c.device.name} pod "
            f"({format_dims(ici.pod_dims)}); use a smaller slice and num_slices > 1 (--num-slices)"
        )
    if math.prod(dims) * c.num_slices != c.num_devices:
        raise ValueError(
            f"slice_shape {format_dims(dims)} ({math.prod(dims)} chips) x "
            f"num_slices={c.num_slices} != num_devices={c.num_devices}; make them agree"
        )
    problem = check_slice_shape(c.device, dims)
    if problem:
        raise ValueError(problem)


def make_cluster(
    device: str | DeviceSpec,
    num_devices: int,
    *,
    devices_per_node: int | None = None,
    slice_shape: tuple[int, ...] | str | None = None,
    num_slices: int = 1,
    name: str = "",
    extra_devices: dict[str, DeviceSpec] | None = None,
) -> ClusterSpec:
    """Build and validate a cluster from a device name and a device count (ConfigError if bad)."""
    spec = device if isinstance(device, DeviceSpec) else get_device(device, extra_devices)
    try:
        return ClusterSpec(
            name=name or f"{num_devices}x{spec.name}",
            device=spec,
            num_devices=num_devices,
            devices_per_node=devices_per_node,
            slice_shape=slice_shape if isinstance(slice_shape, str) else _tuple(slice_shape),
            num_slices=num_slices,
        )
    except ValidationError as exc:
        raise spec_error(exc, "cluster") from None


def _tuple(dims) -> tuple[int, ...] | None:
    return tuple(dims) if dims else None
