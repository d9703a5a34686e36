"""Checks of values that many layers accept, written once: the FLIP mask ratio.

FLIP (Li et al. 2023, "Scaling Language-Image Pre-training via Masking") drops a fraction r of
the image patches; r = 0 keeps them all and r = 1 would keep none, so r is a real number in
[0, 1). NaN fails that comparison and a bool is not a ratio: both are refused, naming the field.

- :func:`check_mask_ratio` for plain functions (``vlscale.costs``, ``vlscale.specs.towers``,
  ``models``, the CLI): raises one :class:`~vlscale.errors.ConfigError`;
- :data:`MaskRatio` the same rule as a pydantic field type (recipes, run records, configs):
  pydantic parses the float as usual, then the same check runs, so the message is the same.
"""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field

from vlscale.errors import ConfigError


def mask_ratio_problem(value: Any) -> str | None:
    """Why ``value`` is not a mask ratio (a real number in [0, 1), not a bool), or None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        return f"must be a number in [0, 1), got {value}; e.g. 0.5 drops half the patches (FLIP)"
    return None


def check_mask_ratio(value: Any, field: str = "mask_ratio") -> float:
    """``value`` as a float if it is a mask ratio; else one ConfigError naming ``field``:
    "mask_ratio: must be a number in [0, 1), got nan; e.g. 0.5 drops half the patches (FLIP)"."""
    problem = mask_ratio_problem(value)
    if problem:
        raise ConfigError(field, problem)
    return float(value)


def _validate(value: Any) -> Any:
    problem = mask_ratio_problem(value)
    if problem:
        raise ValueError(problem)  # pydantic names the field
    return value


def _not_bool(value: Any) -> Any:
    return _validate(value) if isinstance(value, bool) else value


MaskRatio = Annotated[float, BeforeValidator(_not_bool), AfterValidator(_validate)]
"""A FLIP mask ratio as a pydantic field: a float in [0, 1), never NaN, never a bool."""


def _no_bool_count(value: Any) -> Any:
    # pydantic reads `true` as 1; a count of devices, steps or samples is a number
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, not {str(value).lower()}")
    return value


MAX_COUNT = 2**62
"""The largest count any field accepts: it fits an int64 (torch, numpy) with room to multiply."""

Count = Annotated[int, BeforeValidator(_no_bool_count), Field(ge=1, le=MAX_COUNT)]
"""A positive whole number as a pydantic field (devices, steps, micro-steps, group sizes):
never a bool, never beyond :data:`MAX_COUNT`."""


# --- one numeric rule: finite, in range, never a bool -------------------------------------------


def _no_bool_number(value: Any) -> Any:
    # pydantic reads `true` as 1 (or 1.0); a bandwidth, a size or a price is a number
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {value}")
    return value


def _bounded(kind: type, low: float, high: float, *, strict_low: bool = False, text: str = ""):
    """A number field in [low, high] (or (low, high] with ``strict_low``): never a bool, never
    NaN or infinite, one message naming the range (``text``, e.g. "from 1 MiB to 1 EiB";
    pydantic prefixes the field)."""
    lo = f"more than {low:g}" if strict_low else f"at least {low:g}"
    text = text or f"{lo} and at most {high:g}"

    def check(value: Any) -> Any:
        if kind is float:
            _finite(value)
        too_low = value <= low if strict_low else value < low
        if too_low or value > high:
            raise ValueError(f"must be {text}, got {value:g}")
        return value

    return Annotated[kind, BeforeValidator(_no_bool_number), AfterValidator(check)]


MAX_FLOAT = 1e30
"""The largest plain positive number (a price, an MTBF, a duration) a field accepts: far beyond
any real value and far from overflowing when multiplied by a count."""

PositiveFinite = _bounded(float, 0.0, MAX_FLOAT, strict_low=True)
"""A float > 0, finite (no inf / NaN), at most :data:`MAX_FLOAT`, never a bool."""

NonNegativeFinite = _bounded(float, 0.0, MAX_FLOAT)
"""A float >= 0, finite, at most :data:`MAX_FLOAT`, never a bool."""

MAX_BYTES = 2**60
"""The largest memory size or message a field accepts: 1 EiB (an H100 holds 80 GB = 2**36)."""

ByteSize = _bounded(
    float, 2**20, MAX_BYTES, text="a size in bytes from 2**20 (1 MiB) to 2**60 (1 EiB)"
)
"""A device memory size in bytes: finite, between 1 MiB and 1 EiB."""

ByteRate = _bounded(float, 1e3, 1e16, text="a bandwidth in bytes/s from 1e3 to 1e16")
"""A bandwidth in bytes/s: finite, between 1 kB/s and 1e16 B/s (HBM3e is about 8e12)."""

FlopRate = _bounded(float, 1e6, 1e21, text="a peak in FLOP/s from 1e6 to 1e21 (an H100: 1e15)")
"""Dense peak FLOP/s of one device: finite, between 1e6 and 1e21 (an H100 does about 1e15)."""

Seconds = _bounded(float, 0.0, MAX_FLOAT, text="a duration in seconds from 0 to 1e30")
"""A duration in seconds >= 0 (a latency, a restart): finite, never a bool."""

MAX_DIM = 2**24
"""The largest model dimension (width, depth, heads, image size, vocabulary, context) a model
file may give: 16,777,216, far beyond any real model, small enough that products of a few
dimensions stay exact in float64 and int64."""

Dim = Annotated[int, BeforeValidator(_no_bool_count), Field(ge=1, le=MAX_DIM)]
"""A model dimension: a whole number in [1, :data:`MAX_DIM`], never a bool."""

MIN_EFFICIENCY = 1e-4
"""The smallest fraction of a peak a device may be said to reach: 0.01 %, far below any measured
one; below it a step's time overflows instead of answering."""

Efficiency = _bounded(
    float, MIN_EFFICIENCY, 1.0, text=f"a fraction of the peak from {MIN_EFFICIENCY:g} to 1"
)
"""A fraction of a peak in [:data:`MIN_EFFICIENCY`, 1]: finite, never a bool."""

MAX_SEED = 2**63 - 1
"""The largest seed: what numpy, torch and an int64 can carry."""


def _seed_in_range(value: int) -> int:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"must be a whole number in 0..2**63-1 (64-bit generators), got {value}")
    return value


Seed = Annotated[int, BeforeValidator(_no_bool_count), AfterValidator(_seed_in_range)]
"""A random seed: a whole number in [0, 2**63 - 1], never a bool."""

Whole = Annotated[int, BeforeValidator(_no_bool_count), Field(ge=0, le=MAX_COUNT)]
"""A count that may be 0 (intervals, warm-up steps, workers): never a bool, at most
:data:`MAX_COUNT`."""

Real = Annotated[float, BeforeValidator(_no_bool_number)]
"""A rate or size read as a float whose bounds and finiteness each field states: never a bool."""

MAX_LAYERS = 1024
"""The most blocks a tower may have: 16 times the deepest real tower (EVA-CLIP-E's 64); the
simulation walks the blocks one by one, so a depth of millions would never finish."""

Depth = Annotated[int, BeforeValidator(_no_bool_count), Field(ge=1, le=MAX_LAYERS)]
"""The number of blocks of a tower: a whole number in [1, :data:`MAX_LAYERS`], never a bool."""

Groups = Annotated[int, BeforeValidator(_no_bool_count), Field(ge=0, le=MAX_LAYERS + 3)]
"""A number of layer groups of a tower (blocks plus the stem and head groups): a whole number in
[0, :data:`MAX_LAYERS` + 3], never a bool."""

Scale = _bounded(float, MIN_EFFICIENCY, 1e4, text="a ratio from 1e-4 to 1e4")
"""A relative speed (one dtype against another): finite, in [1e-4, 1e4], never a bool."""
