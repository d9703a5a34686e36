"""Which compute model a plan uses, and where each of its numbers came from.

Order of precedence:

1. ``--utilisation u``: the old single-constant model (every matmul at u · peak, elementwise work
   free; ``vlscale.costs.compute.utilisation_profile``).
2. The device's own ``compute`` profile (a hardware file; ``python -m trainer.probe`` measures
   one, ``vlscale calibrate`` fits its free parameters to trainer runs): used as it is.
3. A legacy ``measured.matmul_efficiency``: treated as a utilisation (1).
4. Catalog defaults (``vlscale/specs/data/compute.yaml``: assumed op-level efficiencies drawn
   from public GEMM / bandwidth measurements) and ONE constant per device kind,
   ``framework_efficiency`` γ (compute times are divided by it), solved from ONE named
   published run (``vlscale.plan.published_runs``, ``benchmarks/calibrate_published.py``). Devices
   without a run of their own borrow the A100's γ (stated as assumed); every other published
   run is a prediction (tests/published).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import yaml

from vlscale.costs.compute import RankResources, rank_resources, utilisation_profile
from vlscale.specs.compute_profile import ComputeProfile, MatmulCurve
from vlscale.specs.hardware import DATA_DIR, DeviceSpec

_CLIP = "calibrated on CLIP ViT-L/14, 12.8B samples on 256 V100 in 12 days (Radford et al. 2021)"
_OPENCLIP = (
    "calibrated on OpenCLIP ViT-B/32, 13B samples on 128 A100-40GB in ~36 h (OpenCLIP notes)"
)

# device name -> (framework efficiency γ, where it came from). Solved with
# `python benchmarks/calibrate_published.py`; tests/published checks they still reproduce their
# case (a pin, named as such), so a change to the cost model that moves them fails loudly.
CALIBRATED: dict[str, tuple[float, str]] = {
    "V100": (0.4424, _CLIP),
    "A100-40GB": (0.3318, _OPENCLIP),
    "A100-80GB": (0.3318, _OPENCLIP + "; same silicon as A100-40GB"),
}
FALLBACK = (
    CALIBRATED["A100-40GB"][0],
    "assumed: the A100's framework efficiency (no published run of this device calibrates it)",
)


@dataclass(frozen=True)
class ComputeModel:
    """A resolved compute model: the rank's resources, γ, and a one-line provenance."""

    resources: RankResources
    framework_efficiency: float
    source: str

    @property
    def profile(self) -> ComputeProfile:
        return self.resources.profile


def resolve_compute(
    device: DeviceSpec,
    utilisation: float | None = None,
    ranks_per_host: int = 1,
    framework_efficiency: float | None = None,
    stack: str | None = None,
) -> ComputeModel:
    """The compute model for ``device`` (module docstring for the precedence)."""
    if utilisation is None and device.compute is None and device.measured is not None:
        utilisation = device.measured.matmul_efficiency
        src = f"measured profile ({device.measured.source})"
    else:
        src = "given (--utilisation)"
    if utilisation is not None:
        prof = utilisation_profile(utilisation, src)
        res = rank_resources(device, prof, ranks_per_host)
        # the old model folded elementwise work into u: memory-bound ops cost nothing
        res = RankResources(res.peaks, math.inf, res.units_scale, prof)
        return ComputeModel(res, 1.0, src)
    if device.compute is not None:
        prof = device.compute
        gamma = framework_efficiency or prof.framework_efficiency
        cal = f"; calibrated: {prof.calibration.source}" if prof.calibration else ""
        return ComputeModel(rank_resources(device, prof, ranks_per_host), gamma, prof.source + cal)
    prof = default_profile(device)
    gamma, why = stack_gamma(device.derived_from or device.name, stack)
    if framework_efficiency is not None:
        gamma, why = framework_efficiency, "given (--framework-efficiency)"
    source = f"per-op model, catalog defaults (assumed); framework efficiency {gamma:.3f}: {why}"
    return ComputeModel(rank_resources(device, prof, ranks_per_host), gamma, source)


def stack_gamma(device_name: str, stack: str | None = None) -> tuple[float, str]:
    """γ of ``device_name`` under ``stack`` and where it came from. A γ measured from this
    project's trainer runs (``vlscale stacks fit``; a fragment in ``vlscale.specs.stacks``'s
    measured folder) comes first; else the default stack (None or its name) keeps the stored
    ``CALIBRATED`` values; another stack uses the γ fitted for the device kind on its named
    published runs (``vlscale/specs/data/stacks.yaml``), and a kind it has none for borrows the
    default's, marked assumed."""
    from vlscale.specs.stacks import default_stack_name, device_kind, get_stack

    base = CALIBRATED.get(device_name, FALLBACK)
    profile = get_stack(stack)
    kind = device_kind(device_name)
    if kind in profile.measured:
        runs = profile.fitted_on.get(kind, ())
        return profile.gamma[kind], (
            f"measured on {len(runs)} trainer run(s) of stack {profile.name} "
            f"({profile.measured[kind]})"
        )
    if stack is None or stack == default_stack_name():
        return base
    if kind in profile.gamma:
        runs = profile.fitted_on.get(kind, ())
        return profile.gamma[kind], (
            f"calibrated on {len(runs)} published {kind} run(s) of stack {stack} "
            f"({profile.gamma_source})"
        )
    return base[0], f"assumed: stack {stack} has no {kind} runs; the default stack's γ ({base[1]})"


@cache
def _defaults() -> dict:
    return yaml.safe_load((DATA_DIR / "compute.yaml").read_text())


def default_profile(device: DeviceSpec) -> ComputeProfile:
    """Catalog defaults for ``device`` (``vlscale/specs/data/compute.yaml``)."""
    data = _defaults()
    kind = dict(data["defaults"][device.kind])
    entry = data["devices"].get(device.derived_from or device.name, {})
    tile = entry.get("tile", [1, 1])
    fraction = entry.get("peak_fraction", 0.7)
    latency = entry.get("latency_s", 3e-6)
    source = "assumed catalog default (vlscale/specs/data/compute.yaml)"
    curves = {}
    for dtype in ("fp32", "tf32", "bf16", "fp16"):
        peak = getattr(device.peak_flops, dtype)
        if peak:
            curves[dtype] = MatmulCurve(
                peak_fraction=fraction,
                flops_half=peak * fraction * latency,
                tile_m=tile[0],
                tile_n=tile[1],
                parallel_units=entry.get("units", 1),
                source=source,
            )
    origins = dict.fromkeys(["matmul", *kind], "assumed")
    return ComputeProfile(matmul=curves, origins=origins, source=source, **kind)
