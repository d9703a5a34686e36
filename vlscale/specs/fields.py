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
