"""SigLIP 2 against SigLIP at the paper's scale (issue 21, item 5), planned with vlscale.

Tschannen et al. 2025 (arXiv 2502.14786), section 3: batch 32k, 40B examples, up to 2,048
TPUv5e chips, fully sharded (FSDP-style) data parallelism. For ViT-B/16 at 256 px and
So400m/14 at 224 px, ``paper_scale`` plans:

* SigLIP (the sigmoid loss alone) and SigLIP 2 (every objective, the paper's phases);
* SigLIP 2 with each objective off in turn: the objective's share of the run's cost is
  (cost with it − cost without it) / cost with it;
* SigLIP 2 phase by phase: step time, samples/s, memory per chip, wall time and cost.

2,048 TPUv5e = 8 slices of 16x16 (the v5e pod is 256 chips) joined by DCN; bf16, activation
checkpointing on (16 GB of HBM per chip), the sigmoid loss's ``gather`` implementation, AdamW;
the chunked ``ring`` for SigLIP and SigLIP 2 as two more rows (over 2,048 ranks its 2 × 2,047
latency-bound hops per step dominate the planned step). No published SigLIP 2 training time
exists to check these numbers against (the paper gives the chips and the examples seen, not
the time), so they are the planner's estimate only. ``benchmarks/siglip2_paper_scale.py`` writes
them to ``reports/siglip2/``; the study page shows them
(``vlscale.report.study_page``).
"""

from __future__ import annotations

from typing import Any

MODELS = ("ViT-B-16-SigLIP2-256", "ViT-SO400M-14-SigLIP2")
OBJECTIVES = ("decoder", "distill", "masked", "naflex")
SCENARIO: dict[str, Any] = {
    "device": "TPUv5e",
    "devices": 2048,
    "num_slices": 8,
    "slice_shape": "16x16",
    "global_batch": 32_768,
    "samples": 40_000_000_000,
    "sharding": "fsdp",
    "precision": "bf16",
    "checkpointing": True,
    "loss_impl": "gather",
    "optimizer": "adamw",
}
SUMMARY_KEYS = (
    "step_time_s",
    "samples_per_s",
    "mfu",
    "wall_time_h",
    "device_hours",
    "cost_usd",
    "memory_per_device_bytes",
    "fits",
    "model_flops_per_step",
)
NO_PUBLISHED_TIME = (
    "No published SigLIP 2 training time exists to check these against: the paper states the "
    "chips and the examples seen, not the time or the cost. These are the planner's estimates "
    "(TPUv5e's framework efficiency is the catalog's assumption)."
)


def _plan(model: str, recipe: str, siglip2: dict | None = None, **extra) -> dict:
    from vlscale.plan import make_plan_config, plan

    cfg = SCENARIO | {"model": model, "recipe": recipe} | extra
    if siglip2 is not None:
        cfg["siglip2"] = siglip2
    return plan(make_plan_config(cfg)).to_json()


def paper_scale(models: tuple[str, ...] = MODELS) -> dict[str, Any]:
    """Per model: the plans' summaries (SigLIP, SigLIP 2, SigLIP 2 without each objective, the
    ring rows), SigLIP 2's phases, the binding phase and each objective's share of the cost."""
    out: dict[str, Any] = {"scenario": SCENARIO, "models": {}}
    for model in models:
        full = _plan(model, "siglip2")
        rows = {
            "siglip": _plan(model, "siglip"),
            "siglip2": full,
            **{f"siglip2 -{x}": _plan(model, "siglip2", {x: None}) for x in OBJECTIVES},
            "siglip (ring)": _plan(model, "siglip", loss_impl="ring"),
            "siglip2 (ring)": _plan(model, "siglip2", loss_impl="ring"),
        }
        shares = {
            x: (full["cost_usd"] - rows[f"siglip2 -{x}"]["cost_usd"]) / full["cost_usd"]
            for x in OBJECTIVES
        }
        out["models"][model] = {
            "plans": {k: {key: v[key] for key in SUMMARY_KEYS} for k, v in rows.items()},
            "phases": full["phases"],
            "binding_phase": full["binding_phase"],
            "objective_cost_share": shares,
        }
    return out


SIGLIP2_HEADING = "SigLIP 2 against SigLIP at the paper's scale (planned, no published time)"
SIGLIP2_HEADER = ["model", "SigLIP: wall (h) / cost", "SigLIP 2: wall (h) / cost", "× SigLIP"]
SIGLIP2_HEADER += [f"{x} share" for x in OBJECTIVES]


def siglip2_rows(data: dict[str, Any]) -> list[list[str]]:
    """One row per model: SigLIP's and SigLIP 2's wall time and cost, their ratio, and each
    objective's share of SigLIP 2's cost."""
    rows = []
    for model, m in data["models"].items():
        a, b = m["plans"]["siglip"], m["plans"]["siglip2"]
        shares = [f"{m['objective_cost_share'][x]:+.1%}" for x in OBJECTIVES]
        rows.append(
            [
                model,
                f"{a['wall_time_h']:,.1f} / ${a['cost_usd']:,.0f}",
                f"{b['wall_time_h']:,.1f} / ${b['cost_usd']:,.0f}",
                f"{b['cost_usd'] / a['cost_usd']:.2f}",
                *shares,
            ]
        )
    return rows
