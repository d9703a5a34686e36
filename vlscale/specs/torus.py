"""TPU torus geometry: slice shapes, their defaults and which axes wrap around.

A TPU slice is a 2-D or 3-D torus of chips (``Ici.pod_dims`` the pod's); Cloud TPU writes its
shape as "4x4x8". Which shapes exist, and which axes get wraparound links, depends on the
generation (rules in :class:`vlscale.specs.device.Ici`, from the Cloud TPU docs'
configuration tables). The collective models use the dims and wrap flags
(``vlscale.costs.topology``).
"""

from __future__ import annotations

import math

from vlscale.specs.device import DeviceSpec, Ici


def check_slice_shape(device: DeviceSpec, dims: tuple[int, ...]) -> str | None:
    """Why ``dims`` is not a slice shape of ``device`` (rules in :class:`Ici`), or None."""
    ici, chips = device.ici, math.prod(dims)
    if ici.max_slice_chips is not None and chips > ici.max_slice_chips:
        return (
            f"slice_shape {format_dims(dims)} has {chips} chips; the largest {device.name} slice "
            f"has {ici.max_slice_chips}: use num_slices > 1 (--num-slices)"
        )
    if chips <= device.devices_per_node:  # part of one host
        return None
    if ici.wraparound == "full_cube":
        unit = ici.wrap_unit
        small = chips < unit ** len(dims) and all(d in (1, 2, unit) for d in dims)
        if not (small or all(d % unit == 0 for d in dims)):
            return (
                f"slice_shape {format_dims(dims)} is not a {device.name} slice: below a "
                f"{format_dims([unit] * len(dims))} cube every dim is 1, 2 or {unit} (e.g. 2x2x4, "
                f"2x4x4), from a cube up every dim is a multiple of {unit} (e.g. 4x4x8)"
            )
    elif ici.wraparound == "full_axis":
        pow2 = all(d & (d - 1) == 0 for d in dims)
        if not (pow2 and max(dims) <= 2 * min(dims)):
            return (
                f"slice_shape {format_dims(dims)} is not a {device.name} slice: dims are powers of "
                "two at most 2:1 apart (2x2, 2x4, 4x4, 4x8, 8x8, 8x16, 16x16)"
            )
    return None


def parse_slice_shape(text: str) -> tuple[int, ...]:
    """'4x4x8' -> (4, 4, 8), as Cloud TPU writes topologies; ValueError naming the fix."""
    parts = text.lower().replace(" ", "").split("x")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"'{text}' is not a slice shape; write positive dims joined by x: 4x4x8")
    return tuple(int(p) for p in parts)


def default_slice_shape(device: DeviceSpec, chips: int) -> tuple[int, ...]:
    """A compact torus shape for ``chips``: prime factors go, largest first, to the smallest
    dim, giving the documented shapes for powers of two (v5p: 2x2x1, 2x2x2, 2x4x4, 4x4x4,
    4x4x8; v5e: 2x2, 2x4, 4x4, 4x8, ..., 16x16). Raises ValueError if it does not fit a pod."""
    ici = device.ici
    if chips > math.prod(ici.pod_dims):  # also spares factoring a huge prime
        raise ValueError(
            f"{chips} chips do not fit in one {device.name} slice "
            f"(pod {format_dims(ici.pod_dims)}, {math.prod(ici.pod_dims)} chips); "
            "use num_slices > 1 (--num-slices) or give slice_shape (--slice-shape)"
        )
    dims = [1] * len(ici.pod_dims)
    for f in sorted(_prime_factors(chips), reverse=True):
        i = min(range(len(dims)), key=lambda j: dims[j])
        dims[i] *= f
    # Cloud TPU writes shapes ascending with unit dims last: 2x2x1, 2x4x4, 4x4x8, 8x16.
    shape = tuple(sorted(d for d in dims if d > 1)) + tuple(d for d in dims if d == 1)
    if any(d > p for d, p in zip(sorted(shape), sorted(ici.pod_dims), strict=True)):
        raise ValueError(
            f"{chips} chips do not fit in one {device.name} slice "
            f"(pod {format_dims(ici.pod_dims)}, {math.prod(ici.pod_dims)} chips); "
            "use num_slices > 1 (--num-slices) or give "
            "slice_shape (--slice-shape)"
        )
    return shape


def torus_wraparound(ici: Ici, dims: tuple[int, ...]) -> tuple[bool, ...]:
    """Which slice axes are rings. An axis of size <= 2 never counts as wrapped (a 2-ring is a
    single link). Rules: see :class:`Ici`."""
    if ici.wraparound == "never":
        flags = [False] * len(dims)
    elif ici.wraparound == "always":
        flags = [True] * len(dims)
    elif ici.wraparound == "full_cube":
        whole = all(d % ici.wrap_unit == 0 for d in dims)
        flags = [whole] * len(dims)
    else:  # full_axis
        flags = [d in ici.pod_dims for d in dims]
    return tuple(f and d > 2 for f, d in zip(flags, dims, strict=True))


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return [*out, n] if n > 1 else out


def format_dims(dims) -> str:
    """(4, 4, 8) -> "4x4x8"."""
    return "x".join(str(d) for d in dims)
