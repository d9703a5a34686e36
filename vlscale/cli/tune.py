"""``vlscale tune``: which layout should this run use? (``vlscale.plan.tune``)."""

from __future__ import annotations

from typing import Annotated

import typer

from vlscale.cli.app import emit_json, handles_bad_input, print_table
from vlscale.cli.options import (
    DeviceOpt,
    JsonOpt,
    ModelOpt,
    RecipeOpt,
    SamplesOpt,
    SchedulerOpt,
    ShapeOpt,
    SlicesOpt,
    StackOpt,
    WorkersOpt,
)

TuneDevicesOpt = Annotated[
    list[int] | None,
    typer.Option(
        "--devices",
        help="device count to consider; repeat for several (--devices 256 --devices 512)",
        show_default="256",
    ),
]
DeadlineOpt = Annotated[
    float | None, typer.Option("--deadline-h", help="drop layouts whose run takes longer (hours)")
]
BudgetOpt = Annotated[
    float | None, typer.Option("--budget-usd", help="drop layouts whose run costs more (USD)")
]
TopOpt = Annotated[int, typer.Option("--top", help="how many layouts to list")]


@handles_bad_input
def tune_cmd(
    model: ModelOpt = None,
    recipe: RecipeOpt = None,
    device: DeviceOpt = None,
    devices: TuneDevicesOpt = None,
    samples: SamplesOpt = None,
    global_batch: Annotated[
        int | None,
        typer.Option(
            "--global-batch",
            help="samples per step, fixed across layouts",
            show_default="the recipe's paper batch (32768; eva-clip 131072), "
            "rounded to a multiple of each device count",
        ),
    ] = None,
    deadline_h: DeadlineOpt = None,
    budget_usd: BudgetOpt = None,
    top: TopOpt = 10,
    stack: StackOpt = None,
    num_slices: SlicesOpt = None,
    slice_shape: ShapeOpt = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    as_json: JsonOpt = False,
):
    """Search the layouts (sharding, HSDP shard size, resharding, checkpointing, accumulation,
    loss implementation) and list the cheapest that fit, meet --deadline-h and --budget-usd.

    Each layout is planned like `vlscale plan`, on every local core by default (or on a Dask
    cluster with --scheduler). On TPUs, --slice-shape makes each device count as many slices of
    that torus as it takes (2,048 v5e chips of 16x16: 8 slices; --num-slices fixes the count).
    Layouts that do not fit are never listed; the summary on stderr
    counts them. `binding` says what limits a layout: memory, communication or compute."""
    from vlscale.plan.config import PlanConfig, parse_count
    from vlscale.plan.tune import TuneRequest, tune

    defaults = PlanConfig.model_fields
    request = TuneRequest(
        model=model or defaults["model"].default,
        recipe=recipe or defaults["recipe"].default,
        device=device or defaults["device"].default,
        devices=tuple(devices) if devices else (defaults["devices"].default,),
        samples=parse_count("samples", samples) or defaults["samples"].default,
        global_batch=global_batch,
        deadline_h=deadline_h,
        budget_usd=budget_usd,
        top=top,
        base={k: v for k, v in (("stack", stack), ("num_slices", num_slices)) if v is not None},
        slice_shape=slice_shape,
    )
    result = tune(request, workers=workers, scheduler=scheduler, progress=not quiet)
    typer.echo(result.summary.line(), err=True)
    if as_json:
        emit_json(result.best)
        return
    if not result.best:
        typer.echo("no layout fits within the deadline and budget; see the summary above")
        return
    print_table(
        f"vlscale tune: {request.model} {request.recipe} on {request.device}", *_table(result.best)
    )
    first = result.best[0]
    typer.echo(
        f"best: {_describe(first['layout'], first['loss_impl'])}, bound by {first['binding']}"
    )


def _describe(layout: dict, loss_impl: str) -> str:
    shard = f" (shard {layout['shard_size']})" if layout.get("shard_size") else ""
    parts = [f"{layout['devices']} devices", f"{layout['sharding']}{shard}"]
    if layout["sharding"] != "ddp" and not layout["reshard_after_forward"]:
        parts.append("no reshard")
    if layout["checkpointing"]:
        parts.append("checkpointing")
    if layout["grad_accum"] > 1:
        parts.append(f"grad_accum {layout['grad_accum']}")
    parts.append(f"{loss_impl} loss")
    return ", ".join(parts)


def _table(best: list[dict]) -> tuple[list[str], list[list[str]]]:
    columns = ["#", "layout", "step (s)", "wall (h)", "cost (USD)", "memory (GiB)", "binding"]
    rows = [
        [
            str(i),
            _describe(r["layout"], r["loss_impl"]),
            f"{r['step_time_s']:.3f}",
            f"{r['wall_time_h']:,.1f}",
            f"{r['cost_usd']:,.0f}",
            f"{r['memory_per_device_bytes'] / 2**30:.1f}",
            r["binding"],
        ]
        for i, r in enumerate(best, 1)
    ]
    return columns, rows
