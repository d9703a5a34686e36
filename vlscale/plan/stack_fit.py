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


def main() -> None:
    for stack, block in fitted_gamma_blocks().items():
        print(f"# {stack}")
        print(yaml.safe_dump({"gamma": block}, sort_keys=False, width=100))


if __name__ == "__main__":
    main()
