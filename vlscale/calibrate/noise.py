"""How noisy the measurements are that ``vlscale validate`` scores: speed index, repeat
dispersion, and the order a campaign runs its repeats in.

- **Speed index** of a run: s = r_run / r_profile, where r_run is the smaller of the reference
  kernel's times (``trainer.probe.reference``) right before and right after the run and
  r_profile the machine's speed that the profile describes (``ComputeProfile.reference``): its
  time when the profile was probed, and once ``vlscale calibrate`` has fitted it, the median of
  the fit runs' reference times (``fit_reference``): the fitted parameters describe the machine
  as it ran those runs, so a held-out run is normalised to those conditions, not to the probe's
  quiet moment. The smaller, not the mean: contention only ever adds time, so a slowdown that
  lasts through the run raises both timings while a spike in one is the timing's own noise
  (the first noise campaign had one 107 ms reference among 58-65 ms ones, which as a mean
  turned an accurate run's −2 % into +33 %). s > 1: the
  machine was slower during the run than when probed (other jobs, clocks, another VM). The
  speed-normalised error divides the measurement by it::

      error            = predicted / measured − 1
      error_normalised = predicted / (measured / s) − 1

  A slowdown k that scales the step and the reference kernel alike leaves error_normalised as
  it was. Only references of the same kernel tag, device and thread count compare; otherwise
  the run has no speed index.
- **Repeat dispersion** of a configuration run n ≥ 2 times: (max − min) / mean of its median
  step times (for two runs |a − b| / mean); the noise floor is its median over configurations.
- **Speed-index spread** over a set of runs: (max − min) / median of their speed indices.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from vlscale.specs.machine import MachineIdentity, ReferenceTime, mismatch_warning


def comparable(a: ReferenceTime, b: ReferenceTime) -> bool:
    """The same kernel on the same device with the same threads: times that may be divided."""
    return (a.kernel, a.device, a.threads) == (b.kernel, b.device, b.threads)


def run_reference(run_refs: Sequence[ReferenceTime], like: ReferenceTime) -> float | None:
    """The run's reference seconds: the smallest of its times that compare with ``like``
    (module docstring); None when none do."""
    times = [r.seconds for r in run_refs if comparable(r, like)]
    return min(times) if times else None


def speed_index(run_refs: Sequence[ReferenceTime], profile_ref: ReferenceTime | None):
    """run reference seconds / profile reference seconds (``run_reference``); None when the
    run has no comparable reference (or the profile has none)."""
    if profile_ref is None:
        return None
    seconds = run_reference(run_refs, profile_ref)
    return None if seconds is None else seconds / profile_ref.seconds


def fit_reference(probed: ReferenceTime | None, runs) -> ReferenceTime | None:
    """The reference time a calibrated profile describes: the median over ``runs`` (the fit
    runs) of their reference times (``run_reference``); None without any."""
    if probed is None:
        return None
    times = [t for r in runs if (t := run_reference(r.references, probed)) is not None]
    if not times:
        return None
    return probed.model_copy(update={"seconds": statistics.median(times)})


def dispersion(step_times: Sequence[float]) -> float:
    """(max − min) / mean of one configuration's repeated step times (n ≥ 2)."""
    if len(step_times) < 2:
        raise ValueError("dispersion needs at least two runs of a configuration")
    return (max(step_times) - min(step_times)) / statistics.fmean(step_times)


def spread(indices: Sequence[float]) -> float | None:
    """(max − min) / median of speed indices; None for fewer than two."""
    if len(indices) < 2:
        return None
    return (max(indices) - min(indices)) / statistics.median(indices)


def noise_summary(groups: dict[str, list[float]], indices: Sequence[float]) -> dict:
    """The ``noise`` block of ``vlscale validate --json``: ``groups`` maps a configuration to
    its runs' step times (those with one run are not repeats), ``indices`` are the runs' speed
    indices (runs without one left out)."""
    per_config = [dispersion(t) for t in groups.values() if len(t) >= 2]
    return {
        "repeat_dispersion": statistics.median(per_config) if per_config else None,
        "repeat_dispersion_max": max(per_config) if per_config else None,
        "repeated_configs": len(per_config),
        "speed_index_spread": spread(indices),
        "runs_with_speed_index": len(indices),
    }


def interleaved_order(n: int, repeats: int) -> list[tuple[int, int]]:
    """(configuration, repeat) pairs: every configuration once per pass, pass p rotated by
    p · ⌊n / 2⌋ (no rotation for n ≤ 2), so that two runs of a configuration are never next to
    each other when n ≥ 2 — a pass holds each once, and the last of one pass and the first of
    the next differ unless ⌊n / 2⌋ + 1 ≡ 0 (mod n), i.e. n ≤ 2, where no rotation keeps a, b,
    a, b. With n = 1 repeats are necessarily back to back."""
    shift = n // 2 if n > 2 else 0
    order = []
    for p in range(repeats):
        start = (p * shift) % n if n else 0
        order += [((start + i) % n, p) for i in range(n)]
    return order


def identity_warning(
    profile: str, measured_on: MachineIdentity | None, machines: Iterable[MachineIdentity | None]
) -> str | None:
    """One line when the runs' recorded machine differs from the profile's (the first that
    differs, with how many runs ran on it); None when all agree or nothing is recorded."""
    machines = list(machines)
    for here in (m for m in machines if m is not None):
        n = sum(m == here for m in machines)
        what = f"{n} of these {len(machines)} runs are" if n < len(machines) else "these runs are"
        line = mismatch_warning(profile, measured_on, here, what)
        if line is not None:
            return line
    return None
