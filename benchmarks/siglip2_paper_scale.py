"""SigLIP 2 against SigLIP at the paper's scale (issue 21, item 5): the plans of
``vlscale.report.siglip2_scale.paper_scale`` (its docstring says what is planned), written as
``reports/siglip2/paper_scale.json`` and ``.md``. The study page shows the same numbers.

    .venv/bin/python benchmarks/siglip2_paper_scale.py   # writes reports/siglip2/paper_scale.*
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlscale.report.siglip2_scale import NO_PUBLISHED_TIME, paper_scale

OUT = Path(__file__).resolve().parents[1] / "reports" / "siglip2"


def markdown(data: dict, seconds: float) -> str:
    s = data["scenario"]
    lines = [
        "# SigLIP 2 vs SigLIP at the paper's scale (planned)",
        "",
        f"`benchmarks/siglip2_paper_scale.py` ({seconds:.1f} s). {s['devices']:,} "
        f"{s['device']} ({s['num_slices']} slices of {s['slice_shape']}), global batch "
        f"{s['global_batch']:,}, {s['samples'] / 1e9:.0f}B examples, {s['sharding']}, "
        f"{s['precision']}, checkpointing, sigmoid loss '{s['loss_impl']}', {s['optimizer']}. "
        "SigLIP 2 with the paper's phases (decoder throughout; self-distillation and masked "
        "prediction from 80 %; NaFlex from 90 %) and the assumed values of "
        "`vlscale/specs/siglip2.py`.",
        "",
        f"**{NO_PUBLISHED_TIME}**",
        "",
    ]
    for model, m in data["models"].items():
        lines += [f"## {model}", "", _plans_table(m["plans"]), ""]
        lines += ["Each objective's share of SigLIP 2's cost (cost with it − without it):", ""]
        lines += ["| objective | share of the run's cost |", "|---|---:|"]
        lines += [f"| {x} | {v:.1%} |" for x, v in m["objective_cost_share"].items()]
        lines += [
            "",
            "(Without NaFlex the self-distillation phase runs to the end of the run, so NaFlex's "
            "share is what its lengths cost against distillation's extra passes over that 10 %; "
            "it is negative when those passes cost more.)",
        ]
        lines += ["", f"Phases (memory binds in `{m['binding_phase']}`):", ""]
        lines += [_phases_table(m["phases"]), ""]
    return "\n".join(lines)


def _plans_table(plans: dict) -> str:
    head = "| plan | step (s, first phase) | samples/s | MFU | wall (h) | cost (USD) | GiB/chip |"
    rows = [head + " fits |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in plans.items():
        rows.append(
            f"| {name} | {r['step_time_s']:.3f} | {r['samples_per_s']:,.0f} | {r['mfu']:.1%} | "
            f"{r['wall_time_h']:,.1f} | {r['cost_usd']:,.0f} | "
            f"{r['memory_per_device_bytes'] / 2**30:.1f} | {'yes' if r['fits'] else 'NO'} |"
        )
    return "\n".join(rows)


def _phases_table(phases: list[dict]) -> str:
    rows = [
        "| phase | share | objectives | step (s) | samples/s | GiB/chip | wall (h) | cost (USD) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for p in phases:
        rows.append(
            f"| {p['name']} | {p['start_fraction']:.0%}-{p['end_fraction']:.0%} | "
            f"{', '.join(p['objectives'])} | {p['step_time_s']:.3f} | {p['samples_per_s']:,.0f} | "
            f"{p['memory_per_device_bytes'] / 2**30:.1f} | {p['wall_time_h']:,.1f} | "
            f"{p['cost_usd']:,.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    start = time.perf_counter()
    data = paper_scale()
    seconds = time.perf_counter() - start
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "paper_scale.json").write_text(json.dumps(data, indent=2) + "\n")
    (OUT / "paper_scale.md").write_text(markdown(data, seconds) + "\n")
    print(f"wrote {OUT / 'paper_scale.md'} in {seconds:.1f} s")


if __name__ == "__main__":
    main()
