"""SigLIP 2's CLI options (``plan``, ``compare``): which objectives are on and when the phases
start, turned into the ``siglip2`` mapping of a plan (``vlscale.specs.siglip2.Siglip2Spec``).

The objective names are the spec's optional sub-spec fields (:data:`OBJECTIVES`), not a list
written here: ``--objectives decoder,naflex`` keeps those two on and turns the rest off,
``--objectives none`` turns every one off (the run is then SigLIP's). The flags go over a plan
file's ``siglip2:`` mapping, which carries the full spec.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

import typer

from vlscale.errors import ConfigError
from vlscale.specs.siglip2 import Siglip2Spec


def _objectives() -> tuple[str, ...]:
    """The fields of ``Siglip2Spec`` that are a sub-spec or None: the objectives."""
    out = []
    for name, info in Siglip2Spec.model_fields.items():
        ann = info.annotation
        union = get_origin(ann) in (Union, types.UnionType)
        if union and type(None) in get_args(ann):
            out.append(name)
    return tuple(out)


OBJECTIVES: tuple[str, ...] = _objectives()

ObjectivesOpt = Annotated[
    str | None,
    typer.Option(
        "--objectives",
        help=f"siglip2: objectives on, comma-separated from {','.join(OBJECTIVES)}, or none",
        show_default="all (the paper's)",
    ),
]
DistillStartOpt = Annotated[
    float | None,
    typer.Option(
        "--distill-start", help="siglip2: share of the run before distillation", show_default="0.8"
    ),
]
NaflexStartOpt = Annotated[
    float | None,
    typer.Option(
        "--naflex-start", help="siglip2: share of the run before NaFlex", show_default="0.9"
    ),
]
SIGLIP2_FLAGS = ("objectives", "distill_start", "naflex_start")


def parse_objectives(text: str) -> tuple[str, ...]:
    """``decoder,naflex`` -> those names (each one of :data:`OBJECTIVES`); ``none`` -> ()."""
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if names == ("none",):
        return ()
    bad = [x for x in names if x not in OBJECTIVES]
    if bad or not names:
        raise ConfigError(
            "objectives",
            f"unknown objective(s) {bad or [text]}; use a comma-separated list of "
            f"{', '.join(OBJECTIVES)}, or none",
        )
    return names


def siglip2_mapping(file_value: Any, flags: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's ``siglip2`` mapping: the file's (``file_value``) with the flags over it
    (``flags`` pops them); None when no flag is given (the file's, or the recipe's default)."""
    given = {k: flags.pop(k, None) for k in SIGLIP2_FLAGS}
    if all(v is None for v in given.values()):
        return None
    out = dict(file_value or {})
    if given["objectives"] is not None:
        on = parse_objectives(given["objectives"])
        for name in OBJECTIVES:
            if name not in on:
                out[name] = None
            elif out.get(name) is None:
                out[name] = {}  # on, with the paper's defaults
    for key in ("distill_start", "naflex_start"):
        if given[key] is not None:
            out[key] = given[key]
    return out


def objective_variants(recipe: str, objectives: str | None) -> list[str | None]:
    """SigLIP 2's variants: as asked (None), then each objective that is on turned off in turn
    (an ``--objectives`` value without it); one plain variant for the other recipes."""
    if recipe != "siglip2":
        return [None]
    on = parse_objectives(objectives) if objectives is not None else OBJECTIVES
    return [None] + [",".join(x for x in on if x != off) or "none" for off in on]


def without_label(objectives: str) -> str:
    """'-naflex' for the variant whose ``--objectives`` leaves naflex out."""
    kept = set(objectives.split(","))
    return " ".join(f"-{x}" for x in OBJECTIVES if x not in kept)


def print_objective_costs(results: list[dict]) -> None:
    """What each SigLIP 2 objective costs: the run with it on against the run without it."""
    full = [r for r in results if r["recipe"] == "siglip2" and "without" not in r]
    rows = []
    for base in full:
        for r in results:
            if r.get("without") is None or r["loss_impl"] != base["loss_impl"]:
                continue
            rows.append(
                [
                    f"{without_label(r['without']).lstrip('-')} ({base['loss_impl']})",
                    f"{base['wall_time_h'] - r['wall_time_h']:+,.1f}",
                    f"{base['cost_usd'] - r['cost_usd']:+,.0f}",
                    f"{(base['cost_usd'] - r['cost_usd']) / base['cost_usd']:.1%}",
                ]
            )
    if rows:
        from vlscale.cli.app import print_table

        print_table(
            "what each SigLIP 2 objective costs (the run with it on minus without it)",
            ["objective", "wall time (h)", "cost (USD)", "share of the run's cost"],
            rows,
        )


def print_phases(result) -> None:
    """The SigLIP 2 run's phases: share, objectives, step, throughput, memory, time, cost."""
    from vlscale.cli.app import print_table

    gib = 2**30
    print_table(
        f"SigLIP 2 phases (memory binds in '{result.binding_phase}'; the step numbers above are "
        f"'{result.phases[0]['name']}''s)",
        [
            "phase",
            "share",
            "objectives",
            "step (s)",
            "samples/step",
            "GiB/device",
            "fits",
            "wall (h)",
            "cost (USD)",
        ],
        [
            [
                p["name"],
                f"{p['start_fraction']:.0%}-{p['end_fraction']:.0%}",
                ", ".join(p["objectives"]) or "-",
                f"{p['step_time_s']:.3f}",
                f"{p['samples_per_step']:,.0f}",
                f"{p['memory_per_device_bytes'] / gib:.1f}",
                "yes" if p["fits"] else "NO",
                f"{p['wall_time_h']:,.1f}",
                f"{p['cost_usd']:,.0f}",
            ]
            for p in result.phases
        ],
    )
