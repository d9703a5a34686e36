"""Hardware: devices (one GPU, TPU chip or CPU host), their catalog and the clusters built
from them -- the public names, gathered from the modules that each do one job:

    vlscale.specs.device          DeviceSpec and its parts (peaks, memory, fabrics, price)
    vlscale.specs.catalog         the catalog in vlscale/specs/data/*.yaml, lookup by name
    vlscale.specs.torus           TPU slice shapes and wraparound
    vlscale.specs.cluster         ClusterSpec, make_cluster
    vlscale.specs.hardware_file   user hardware files (load / dump)
"""

from __future__ import annotations

from vlscale.specs.catalog import (
    CATALOG_FILES,
    DATA_DIR,
    catalog_devices,
    catalog_name,
    device_key,
    find_device,
    get_device,
    list_devices,
)
from vlscale.specs.cluster import ClusterSpec, make_cluster
from vlscale.specs.device import (
    DeviceSpec,
    Dtype,
    Ici,
    LinkCalibration,
    Measured,
    Memory,
    Network,
    NVLink,
    PeakFlops,
    Price,
    TierName,
    Wraparound,
)
from vlscale.specs.hardware_file import HardwareFile, dump_hardware_file, load_hardware_file
from vlscale.specs.torus import (
    check_slice_shape,
    default_slice_shape,
    parse_slice_shape,
    torus_wraparound,
)

__all__ = [
    "CATALOG_FILES",
    "DATA_DIR",
    "ClusterSpec",
    "DeviceSpec",
    "Dtype",
    "HardwareFile",
    "Ici",
    "LinkCalibration",
    "Measured",
    "Memory",
    "NVLink",
    "Network",
    "PeakFlops",
    "Price",
    "TierName",
    "Wraparound",
    "catalog_devices",
    "catalog_name",
    "check_slice_shape",
    "default_slice_shape",
    "device_key",
    "dump_hardware_file",
    "find_device",
    "get_device",
    "list_devices",
    "load_hardware_file",
    "make_cluster",
    "parse_slice_shape",
    "torus_wraparound",
]
