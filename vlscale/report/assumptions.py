"""The assumptions section of the study page: what the numbers rest on, and where each came from.

- Hardware: the base device's catalog values (peak FLOP/s of the compute dtype, memory, links,
  network, price), each with the ``source`` string the catalog carries.
- Efficiencies, each labelled measured / calibrated / given / assumed:
  compute utilisation (``vlscale.plan.compute_model``: the plan's ``utilisation_source``), link
  α / η / n½ per tier (a device profile's ``measured.links`` or the documented defaults in
  ``vlscale.costs.topology.DEFAULT_LINKS``), the failure model's MTBF (Llama 3), stragglers and
  the input pipeline (off unless configured).

Pure: rows of strings for ``html.summary_table``, from a DeviceSpec, a PlanConfig and a plan's
``--json`` dict.
"""

from __future__ import annotations

from typing import Any

from vlscale.plan.config import PlanConfig
from vlscale.specs.hardware import DeviceSpec

HARDWARE_HEADER = ["quantity", "value", "source"]
EFFICIENCY_HEADER = ["parameter", "value", "kind", "source"]


def efficiency_kind(source: str) -> str:
    """'measured' / 'calibrated' / 'given' / 'assumed' from a compute-model source string."""
    for kind in ("measured", "calibrated", "given"):
        if source.startswith(kind):
            return kind
    return "assumed"


def hardware_rows(device: DeviceSpec, precision: str) -> list[list[str]]:
    """One row per catalog value the planner uses for ``device``, with its source."""
    precision = precision or ("bf16" if device.peak_flops.bf16 else "fp16")
    peak = getattr(device.peak_flops, precision, None) or device.peak_flops.bf16
    rows = [
        [
            f"{device.name} peak FLOP/s ({precision}, dense)",
            f"{(peak or 0) / 1e12:,.1f} TFLOP/s",
            device.peak_flops.source,
        ],
        ["memory", f"{device.memory.hbm_bytes / 1e9:,.0f} GB", device.memory.source],
        [
            "memory bandwidth",
            f"{device.memory.hbm_bandwidth / 1e12:,.2f} TB/s",
            device.memory.source,
        ],
    ]
    if device.nvlink is not None:
        rows.append(
            [
                "NVLink per GPU, one direction",
                f"{device.nvlink.bandwidth / 1e9:,.0f} GB/s",
                device.nvlink.source,
            ]
        )
    if device.ici is not None:
        rows.append(
            [
                f"ICI, {device.ici.links_per_chip} links per chip, each one direction",
                f"{device.ici.link_bandwidth / 1e9:,.0f} GB/s",
                device.ici.source,
            ]
        )
    net = device.network
    rows.append(
        [
            "network per node, one direction",
            f"{net.nics_per_node} × {net.nic_bandwidth / 1e9:,.1f} GB/s",
            net.source,
        ]
    )
    rows.append(["price", f"{device.price.usd_per_hour:.2f} USD/device-hour", device.price.source])
    return rows


def efficiency_rows(
    device: DeviceSpec, config: PlanConfig, base: dict[str, Any]
) -> list[list[str]]:
    """Every efficiency the study's plans use, with its kind and source."""
    return _compute_rows(base) + _link_rows(device) + _run_rows(config)


def _compute_rows(base: dict[str, Any]) -> list[list[str]]:
    """γ and the op-level compute model, each with where its values came from."""
    source = str(base["utilisation_source"])
    model = base.get("compute_model") or {}
    gamma_part = source.split("framework efficiency", 1)[-1]
    if source.startswith(("given", "measured")):
        gamma_kind = efficiency_kind(source)
    elif (
        "calibrated" in gamma_part
        or (model.get("origins") or {}).get("framework_efficiency") == "calibrated"
    ):
        gamma_kind = "calibrated"
    else:
        gamma_kind = "assumed"
    origins = set((model.get("origins") or {}).values()) or {"assumed"}
    op_kind = next((k for k in ("calibrated", "measured") if k in origins), "assumed")
    rows = [
        [
            "framework efficiency γ (achieved fraction of the op roofline)",
            f"{model.get('framework_efficiency', 1.0):.4f}",
            gamma_kind,
            source,
        ],
        [
            "op-level compute: matmul curve, bandwidth, per-launch overhead",
            f"matmuls at {base['utilisation']:.1%} of peak in this plan",
            op_kind,
            "vlscale plan --ops shows every op; defaults: vlscale/specs/data/compute.yaml",
        ],
    ]
    return rows


def _link_rows(device: DeviceSpec) -> list[list[str]]:
    """α, η and n½ of every link tier: the device profile's where it measured them."""
    from vlscale.costs.topology import DEFAULT_LINKS

    rows = []
    measured_links = {}
    if device.measured is not None and getattr(device.measured, "links", None):
        measured_links = dict(device.measured.links)
    for tier, values in DEFAULT_LINKS.items():
        if tier in measured_links:
            kind, where = "measured", f"device profile ({device.measured.source})"
            m = measured_links[tier]
            values = {
                k: getattr(m, k) if getattr(m, k) is not None else v for k, v in values.items()
            }
        else:
            kind = "assumed"
            where = "documented default (vlscale/costs/topology.py, from NCCL-tests-like figures)"
        rows.append(
            [
                f"{tier} link: α, η, n½",
                f"{values['alpha_s'] * 1e6:g} µs, {values['efficiency']:.2f}, "
                f"{values['n_half_bytes'] / 1024:,.0f} KiB",
                kind,
                where,
            ]
        )
    return rows


def _run_rows(config: PlanConfig) -> list[list[str]]:
    """Failures, stragglers and the input pipeline: given or assumed."""
    rows = []
    f = config.failures
    rows.append(
        [
            "failures: MTBF per device",
            f"{f.mtbf_device_h:,.0f} device-hours" if f.enabled else "off",
            "assumed",
            "Llama 3 report (Dubey et al. 2024, sec. 3.3.4): 419 interruptions in 54 days "
            "on 16,384 H100",
        ]
    )
    rows.append(
        [
            "stragglers: lognormal σ of per-rank slowdown",
            f"{config.straggler_sigma:g}",
            "given" if config.straggler_sigma else "assumed",
            "off unless --stragglers / straggler_sigma is given",
        ]
    )
    decode = config.decode_samples_per_s_per_device
    rows.append(
        [
            "input pipeline, samples/s per device",
            f"{decode:,.0f}" if decode else "unlimited",
            "given" if decode else "assumed",
            "never stalls unless decode_samples_per_s_per_device is given",
        ]
    )
    return rows
