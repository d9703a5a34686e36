"""Achieved fraction of the dense peak FLOP/s: the planner's one calibrated constant per device.

Step compute is FLOPs / (u · peak). ``u`` folds everything the analytic model does not price —
kernel efficiency on these matmul shapes, elementwise work, framework overhead — into one number.
Order of precedence: ``--utilisation`` > the device's measured profile
(``DeviceSpec.measured.matmul_efficiency``, e.g. from benchmarks/gpu_calibration.sh) > the
calibrated table below > ``FALLBACK``.

Each calibrated entry is solved from ONE published run (``vlscale.plan.published``, solved by
``benchmarks/calibrate_published.py``); every other published case is a prediction with that
constant (tests/published/test_published_plans.py).
"""

from __future__ import annotations

from vlscale.specs.hardware import DeviceSpec

FALLBACK = (0.40, "assumed: typical model-FLOPs utilisation of tuned data-parallel training")

_CLIP = "calibrated on CLIP ViT-L/14, 12.8B samples on 256 V100 in 12 days (Radford et al. 2021)"
_OPENCLIP = (
    "calibrated on OpenCLIP ViT-B/32, 13B samples on 128 A100-40GB in ~36 h (OpenCLIP notes)"
)

# device name -> (utilisation, where it came from). Solved with
# `python benchmarks/calibrate_published.py`; tests/published checks they still reproduce
# their case, so a change to the cost model that moves them fails loudly.
CALIBRATED: dict[str, tuple[float, str]] = {
    "V100": (0.2525, _CLIP),
    "A100-40GB": (0.1135, _OPENCLIP),
    "A100-80GB": (0.1135, _OPENCLIP + "; same silicon as A100-40GB"),
}


def default_utilisation(device: DeviceSpec) -> tuple[float, str]:
    """(u, source) for ``device`` (module docstring for the precedence)."""
    if device.measured is not None and device.measured.matmul_efficiency is not None:
        return device.measured.matmul_efficiency, f"measured profile ({device.measured.source})"
    if device.name in CALIBRATED:
        return CALIBRATED[device.name]
    return FALLBACK
