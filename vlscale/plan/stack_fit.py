"""Refit the stacks' γ from the published record: ``python -m vlscale.plan.stack_fit``.

Prints, per stack, the ``gamma:`` mapping of ``vlscale/specs/data/stacks.yaml`` (γ, leave-one-out
sigma and the run ids per device kind) from ``vlscale.plan.published_record.fit_groups``; paste it
into the data file after a cost-model change (tests/published pins the stored values).
"""

from __future__ import annotations

import yaml


def fitted_gamma_blocks() -> dict[str, dict[str, dict]]:
    from vlscale.plan.published_record import fit_groups

    out: dict[str, dict[str, dict]] = {}
    for (kind, stack), fit in sorted(fit_groups().items()):
        sigma = fit.sigma
        out.setdefault(stack, {})[kind] = {
            "gamma": round(fit.gamma, 4),
            "sigma": None if sigma is None else round(sigma, 4),
            "fitted_on": list(fit.runs),
        }
    return out


def record_spreads() -> dict[str, float]:
    """``pooled_sigma``: RMS of every leave-one-out log residual of the record;
    ``gamma_spread``: standard deviation of log γ over the fitted (device kind, stack) groups
    (how far a γ borrowed from another device or stack may be off)."""
    import math

    from vlscale.plan.papers_table import pooled_sigma
    from vlscale.plan.published_record import fit_groups

    logs = [math.log(f.gamma) for f in fit_groups().values()]
    mean = sum(logs) / len(logs)
    spread = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    return {"pooled_sigma": round(pooled_sigma(), 4), "gamma_spread": round(spread, 4)}


def main() -> None:
    print(yaml.safe_dump(record_spreads(), sort_keys=False))
    for stack, block in fitted_gamma_blocks().items():
        print(f"# {stack}")
        print(yaml.safe_dump({"gamma": block}, sort_keys=False, width=100))


if __name__ == "__main__":
    main()
