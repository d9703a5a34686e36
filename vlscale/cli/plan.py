"""``vlscale plan``, ``compare``, ``sweep`` and ``hardware``: the planner's commands.

Flags override a ``--config`` file (YAML / TOML with the keys of ``vlscale.plan.PlanConfig``),
which overrides the embedded default scenario. JSON keys are documented in the README.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Annotated, Any

import typer

from vlscale.cli.app import emit_json, handles_bad_input, print_table
from vlscale.cli.layout_options import with_layout_options
from vlscale.cli.options import (
    BatchOpt,
    ConfigOpt,
    DecodeOpt,
    DeviceOpt,
    HwOpt,
    ImageOpt,
    JsonOpt,
    LossImplOpt,
    MaskOpt,
    ModelOpt,
    OptimOpt,
    PointLossImplOpt,
    PointRecipeOpt,
    PriceOpt,
    RecipeOpt,
    ReportOpt,
    SamplesOpt,
    SchedulerOpt,
    ShapeOpt,
    SlicesOpt,
    StackOpt,
    StepsOpt,
    StragglerOpt,
    UtilOpt,
    WorkersOpt,
)
from vlscale.cli.siglip2_options import (
    DistillStartOpt,
    NaflexStartOpt,
    ObjectivesOpt,
    objective_variants,
    print_objective_costs,
    print_phases,
    without_label,
)
from vlscale.errors import ConfigError
from vlscale.paths import check_output_file
from vlscale.plan.config import DEFAULT_LAYOUT, LAYOUT_FIELDS


def _check_report(report: Path | None) -> None:
    """Refuse a bad --report path before planning (vlscale.report is only imported here)."""
    if report is not None:
        from vlscale.report.html import check_report_path

        check_report_path(report)


def _base_config(config: Path | None, *, note: bool = True, **flags: Any):
    """The plan of a --config file (its trainer keys set aside, and listed on stderr unless
    not ``note``) with the flags given over it."""
    from vlscale.cli.siglip2_options import siglip2_mapping
    from vlscale.plan.config import make_plan_config, parse_count, planner_part, read_config_file

    data = read_config_file(config) if config is not None else {}
    data, ignored = planner_part(data)
    if ignored and note:
        typer.echo(f"note: ignored trainer keys: {', '.join(ignored)}", err=True)
    flags["samples"] = parse_count("samples", flags.get("samples"))
    s2 = siglip2_mapping(data.get("siglip2"), flags)
    if s2 is not None:
        flags["siglip2"] = s2
    try:
        # YAML reads 12.8e9 as a string and TOML as a float: accept what the flag accepts
        if isinstance(data.get("samples"), str | float):
            data["samples"] = parse_count("samples", str(data["samples"]))
        return make_plan_config(data, **flags)
    except ConfigError as exc:
        raise _in_file(exc, config, data, flags) from None


def _in_file(exc: ConfigError, config: Path | None, data: dict, flags: dict) -> ConfigError:
    """``exc`` naming the --config file when the bad value came from it (not from a flag)."""
    key = exc.field.split(".")[0]
    from_file = key in data or (key in LAYOUT_FIELDS and "layout" in data)
    if config is None or not from_file or flags.get(key) is not None:
        return exc
    return ConfigError(exc.field, f"{str(exc).removeprefix(exc.field + ': ')} (in '{config}')")


# options of ``plan`` / ``compare`` that are not PlanConfig keys, and those renamed on the way
_NOT_CONFIG = ("config", "trace", "report", "ops", "uncertainty", "draws", "explain", "as_json")
_CONFIG_KEYS = {
    "price": "price_per_device_hour",
    "stragglers": "straggler_sigma",
    "decode_rate": "decode_samples_per_s_per_device",
}


def _config_flags(options: dict[str, Any]) -> dict[str, Any]:
    """A command's options (its ``locals()`` on entry) as PlanConfig keys, the layout flags
    spread out: one mapping for ``plan`` and ``compare`` instead of a keyword list in each."""
    layout = options.get("layout_flags") or {}
    skip = {*_NOT_CONFIG, "layout_flags"}
    return {_CONFIG_KEYS.get(k, k): v for k, v in options.items() if k not in skip} | layout


@handles_bad_input
@with_layout_options(DEFAULT_LAYOUT)
def plan_cmd(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    recipe: RecipeOpt = None,
    loss_impl: LossImplOpt = None,
    device: DeviceOpt = None,
    num_slices: SlicesOpt = None,
    slice_shape: ShapeOpt = None,
    global_batch: BatchOpt = None,
    samples: SamplesOpt = None,
    mask_ratio: MaskOpt = None,
    optimizer: OptimOpt = None,
    utilisation: UtilOpt = None,
    price: PriceOpt = None,
    stragglers: StragglerOpt = None,
    sim_steps: StepsOpt = None,
    decode_rate: DecodeOpt = None,
    hardware_file: HwOpt = None,
    stack: StackOpt = None,
    image_size: ImageOpt = None,
    objectives: ObjectivesOpt = None,
    distill_start: DistillStartOpt = None,
    naflex_start: NaflexStartOpt = None,
    trace: Annotated[
        Path | None, typer.Option("--trace", help="write the simulated timeline (Chrome JSON)")
    ] = None,
    report: ReportOpt = None,
    ops: Annotated[
        bool, typer.Option("--ops", help="the per-op table: FLOPs, bytes, bound and time")
    ] = False,
    uncertainty: Annotated[
        bool,
        typer.Option("--uncertainty", help="P10 / P50 / P90 from the efficiencies' spread"),
    ] = False,
    draws: Annotated[
        int, typer.Option("--draws", help="Monte Carlo plans for --uncertainty", min=2, max=10000)
    ] = 64,
    explain: Annotated[
        bool,
        typer.Option(
            "--explain",
            help="each number's function and formula, and the collectives' raw time and groups",
        ),
    ] = False,
    as_json: JsonOpt = False,
    layout_flags: dict | None = None,
):
    """Plan a run: step time, memory per device, wall time, device-hours and cost.

    Defaults are the embedded scenario's (OpenCLIP's ViT-L-14 run); a --config file overrides
    them and flags override both."""
    flags = _config_flags(locals())  # the options, before any other local is bound
    _check_report(report)
    cfg = _base_config(config, **flags)
    _run_plan(cfg, trace, report, ops, uncertainty, draws, explain, as_json)


def _run_plan(cfg, trace, report, ops, uncertainty, draws, explain, as_json) -> None:
    """Plan ``cfg``, write the trace and report asked for, and print the plan (JSON or
    tables) with its spread and explanation when asked."""
    from vlscale.plan.planner import plan

    if trace is not None:
        check_output_file(trace, "trace", (".json",))
    result = plan(cfg, keep_sim=trace is not None or report is not None)
    if trace is not None:
        result.sim.to_chrome_trace(trace)
    if report is not None:
        from vlscale.report.pages import write_plan_report

        write_plan_report(result, report)
        typer.echo(f"report written to {report}", err=True)
    spread = None
    if uncertainty:
        from vlscale.plan.uncertainty import plan_uncertainty

        spread = plan_uncertainty(cfg, draws=draws, seed=cfg.seed)
    if as_json:
        out = result.to_json(ops=ops) | ({"uncertainty": spread} if spread else {})
        if explain:
            from vlscale.plan.explain import explain_json

            out["explain"] = explain_json(result)
        emit_json(out)
        return
    _print_plan(cfg, result, ops, spread, explain)
    for w in result.warnings:
        typer.echo(f"warning: {w}", err=True)
    if trace is not None:
        typer.echo(f"trace written to {trace}", err=True)


def _print_plan(cfg, result, ops: bool, spread, explain: bool) -> None:
    """The plan's tables: the summary, where a step goes, and on request the ops, the
    uncertainty and the explanation."""
    from vlscale.plan.planner import summary_rows

    r = result.recipe
    title = (
        f"{cfg.model} {r.name}/{r.loss_impl} (mask {r.mask_ratio}, {r.optimizer}) on "
        f"{cfg.devices}x{cfg.device}, batch {cfg.global_batch:,}, {cfg.samples:.3g} samples"
    )
    print_table(title, ["", ""], [list(row) for row in summary_rows(result)])
    breakdown = result.breakdown
    print_table(
        "where a step goes: exposed time on rank 0 (s)",
        list(breakdown),
        [[f"{v:.4f}" for v in breakdown.values()]],
    )
    if result.phases:
        print_phases(result)
    if ops:
        _print_ops(result)
    if spread:
        _print_uncertainty(spread)
    if explain:
        _print_explain(result)


def _print_uncertainty(spread: dict) -> None:
    s = spread["spread"]
    print_table(
        f"uncertainty over {spread['draws']} plans (compute σ {s['compute_sigma']:.2f}: "
        f"{s['compute_source']}; communication σ {s['comm_sigma']:.2f})",
        ["", "P10", "P50", "P90"],
        [
            [name, *(fmt.format(spread[key][q]) for q in ("p10", "p50", "p90"))]
            for name, key, fmt in (
                ("step time (s)", "step_time_s", "{:.3f}"),
                ("wall time (h)", "wall_time_h", "{:,.1f}"),
                ("cost (USD)", "cost_usd", "${:,.0f}"),
            )
        ],
    )


_COLLECTIVE_COLUMNS = [
    "collective",
    "for",
    "group",
    "tiers",
    "algorithm",
    "bytes/call",
    "calls",
    "ms/call",
    "raw s/step",
]


def _print_explain(result) -> None:
    """Where each number comes from, then the step's collectives before overlap."""
    from vlscale.cli.app import human
    from vlscale.plan.explain import QUANTITIES, collective_rows

    print_table(
        "where each number comes from",
        ["quantity", "function", "formula"],
        [[q.quantity, q.function, q.formula] for q in QUANTITIES],
    )
    rows = collective_rows(result)
    if not rows:
        typer.echo("no collectives: one device")
        return
    print_table(
        "collectives of one step on rank 0: raw time, before any hides behind compute",
        _COLLECTIVE_COLUMNS,
        [
            [
                c["collective"],
                c["for"],
                c["group"],
                ", ".join(c["tiers"]),
                c["algorithm"],
                human(c["bytes_per_call"], "B"),
                f"{c['calls_per_step']:,}",
                f"{c['time_per_call_s'] * 1e3:.3f}",
                f"{c['raw_time_per_step_s']:.4f}",
            ]
            for c in rows
        ],
    )
    typer.echo(
        "bytes/call: each rank's shard for all-gather / reduce-scatter, the whole buffer for "
        "all-reduce, one hop for p2p (vlscale.costs.collectives)"
    )
    if result.config.layout.sharding == "hsdp":
        typer.echo(
            "HSDP: each replica all-reduce follows its unit's reduce-scatter on the same "
            "stream; the breakdown counts the pair as reduce_scatter"
        )


def _print_ops(result, top: int = 30) -> None:
    """The largest rows of the per-op table, and where the op time goes by bound."""
    from vlscale.cli.app import human
    from vlscale.plan.op_table import bound_shares

    rows = result.op_rows()
    total = sum(r["time_s"] for r in rows) or 1.0
    shares = bound_shares(result.costs.op_times)
    title = (
        f"ops of one micro-step on one rank ({len(rows)} kinds; top {min(top, len(rows))}); "
        + ", ".join(f"{k}-bound {v:.0%}" for k, v in shares.items())
    )
    print_table(
        title,
        ["op", "phase", "launches", "FLOPs", "bytes", "bound", "time ms", "share"],
        [
            [
                r["op"],
                r["phase"],
                r["launches"],
                human(r["flops"]),
                human(r["bytes"], "B"),
                r["bound"],
                f"{r['time_s'] * 1e3:.3f}",
                f"{r['time_s'] / total:.1%}",
            ]
            for r in rows[:top]
        ],
    )


@handles_bad_input
@with_layout_options(DEFAULT_LAYOUT)
def compare_cmd(
    recipe: Annotated[
        list[str] | None,
        typer.Option(
            help="repeat to compare: --recipe clip --recipe siglip",
            show_default="clip, siglip (gather and ring), eva-clip; siglip with --loss-impl",
        ),
    ] = None,
    loss_impl: Annotated[
        list[str] | None,
        typer.Option(help="repeat: gather, ring", show_default="gather with --recipe"),
    ] = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    device: DeviceOpt = None,
    num_slices: SlicesOpt = None,
    slice_shape: ShapeOpt = None,
    global_batch: BatchOpt = None,
    samples: SamplesOpt = None,
    mask_ratio: MaskOpt = None,
    utilisation: UtilOpt = None,
    price: PriceOpt = None,
    hardware_file: HwOpt = None,
    stack: StackOpt = None,
    objectives: ObjectivesOpt = None,
    distill_start: DistillStartOpt = None,
    naflex_start: NaflexStartOpt = None,
    report: ReportOpt = None,
    as_json: JsonOpt = False,
    layout_flags: dict | None = None,
):
    """Recipes or loss implementations side by side on the same cluster.

    Default: CLIP gather, SigLIP gather, SigLIP ring and EVA-CLIP. With --recipe siglip2:
    SigLIP beside SigLIP 2, and SigLIP 2 with each of its objectives off in turn (what each
    one costs).
    """
    flags = _config_flags(locals())  # the options, before any other local is bound
    from vlscale.plan.planner import plan

    _check_report(report)
    variants = _variants(recipe, loss_impl)
    if (
        not recipe
        and not loss_impl
        and _resnet_image_tower(_base_config(config, note=False, **flags))
    ):
        # the default set's EVA-CLIP is FLIP (patch dropping): no patches in a ResNet
        variants = [v for v in variants if v[0] != "eva-clip"]
        typer.echo("note: eva-clip left out: FLIP drops ViT patches; a ResNet has none", err=True)
    results = []
    for i, (rec, impl) in enumerate(variants):
        for off in objective_variants(rec, flags.get("objectives")):
            variant = flags | {"recipe": rec, "loss_impl": impl}
            variant |= {"objectives": off} if off is not None else {}
            cfg = _base_config(config, note=i == 0, **variant)
            results.append(plan(cfg).to_json() | ({"without": off} if off is not None else {}))
    if report is not None:
        from vlscale.report.pages import write_compare_report

        write_compare_report(results, report)
        typer.echo(f"report written to {report}", err=True)
    if as_json:
        emit_json(results)
        return
    _print_compare(results)
    print_objective_costs(results)


def _resnet_image_tower(cfg) -> bool:
    """Whether the model of the plan config ``cfg`` has a ResNet image tower."""
    from vlscale.specs.presets import resolve_model

    return resolve_model(cfg.model).vision.kind == "resnet"


def _variants(recipes: list[str] | None, loss_impls: list[str] | None) -> list[tuple[str, str]]:
    """(recipe, loss implementation) pairs to compare: every combination of those given
    (siglip / gather for the one not given), else CLIP gather, SigLIP gather and ring, and
    EVA-CLIP."""
    if recipes or loss_impls:
        recipes = recipes or ["siglip"]
        if recipes == ["siglip2"]:  # SigLIP 2 beside SigLIP
            recipes = ["siglip", "siglip2"]
        return list(itertools.product(recipes, loss_impls or ["gather"]))
    return [("clip", "gather"), ("siglip", "gather"), ("siglip", "ring"), ("eva-clip", "gather")]


def _print_compare(results: list[dict]) -> None:
    from vlscale.plan.planner import compare_rows

    header = [""] + [
        f"{r['recipe']}/{r['loss_impl']}"
        + (f" (mask {r['mask_ratio']:g})" if r["mask_ratio"] else "")
        + (f" {without_label(r['without'])}" if "without" in r else "")
        for r in results
    ]
    first = results[0]
    title = (
        f"recipes side by side: {first['model']} on {first['devices']}x{first['device']}, "
        f"global batch {first['global_batch']:,}"
    )
    print_table(title, header, compare_rows(results))


@handles_bad_input
def hardware_cmd(
    hardware_file: HwOpt = None,
    sources: Annotated[
        bool, typer.Option("--sources", help="one row per value with the document it came from")
    ] = False,
    as_json: JsonOpt = False,
):
    """The device catalog: peak FLOP/s, memory, links and price, each with its source."""
    from vlscale.specs.hardware import get_device, list_devices, load_hardware_file

    extra = dict(load_hardware_file(hardware_file).devices) if hardware_file else {}
    devices = [get_device(n) for n in list_devices()] + list(extra.values())
    if as_json:
        emit_json([d.model_dump(mode="json") for d in devices])
        return
    if sources:
        print_table(
            "where each catalog value comes from",
            ["device", "value", "source"],
            [[d.name, what, src] for d in devices for what, src in _sources(d)],
        )
        return
    rows = []
    for d in devices:
        half = d.peak_flops.bf16 or d.peak_flops.fp16
        if d.nvlink is not None:
            link = d.nvlink.bandwidth
        elif d.ici is not None:
            link = d.ici.link_bandwidth
        else:  # a CPU host: what its ranks exchange through (measured), else its memory
            host = d.measured.links.get("host") if d.measured else None
            link = host.bandwidth if host and host.bandwidth else d.memory.hbm_bandwidth
        rows.append(
            [
                d.name,
                d.kind,
                f"{half / 1e12:,.0f}",
                f"{d.memory.hbm_bytes / 1e9:,.0f}",
                f"{d.memory.hbm_bandwidth / 1e12:.2f}",
                f"{link / 1e9:,.0f}",
                f"{d.network.nic_bandwidth * d.network.nics_per_node / 1e9:,.0f}",
                f"{d.price.usd_per_hour:.2f}",
                ", ".join(_uncertain(d)) or "-",
            ]
        )
    print_table(
        "devices (dense peaks; bandwidths per direction)",
        [
            "device",
            "kind",
            "bf16/fp16 TF/s",
            "HBM GB",
            "HBM TB/s",
            "link GB/s",
            "node NIC GB/s",
            "USD/h",
            "uncertain",
        ],
        rows,
    )
    typer.echo(
        "sources: vlscale hardware --sources (or --json); 'uncertain' values are estimates",
        err=True,
    )


def _uncertain(device) -> list[str]:
    """Value groups whose source says they are estimates (UNCERTAIN in the catalog's data)."""
    groups = ("peak_flops", "memory", "nvlink", "ici", "network", "price")
    return [
        g
        for g in groups
        if getattr(device, g) is not None and "UNCERTAIN" in getattr(device, g).source.upper()
    ]


def _sources(d) -> list[tuple[str, str]]:
    """(value, source) pairs of a device entry: every block that carries a ``source``."""
    out = [("peak FLOP/s", d.peak_flops.source), ("memory", d.memory.source)]
    out += [("NVLink", d.nvlink.source)] if d.nvlink else []
    out += [("ICI", d.ici.source)] if d.ici else []
    out += [("network", d.network.source), ("price", d.price.source)]
    out += [("measured", d.measured.source)] if d.measured else []
    out += [("compute profile", d.compute.source)] if d.compute else []
    return out


@handles_bad_input
@with_layout_options(DEFAULT_LAYOUT)
def sweep_cmd(
    grid_file: Annotated[
        # rich markup would eat "[values]" as a style tag: escape the bracket
        Path, typer.Argument(help="YAML/TOML: `base: {...}` and `grid: {key: \\[values]}`")
    ],
    out: Annotated[Path, typer.Option("--out", help="results file: .csv or .parquet")] = Path(
        "sweep.csv"
    ),
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
    recipe: PointRecipeOpt = None,
    loss_impl: PointLossImplOpt = None,
    num_slices: SlicesOpt = None,
    slice_shape: ShapeOpt = None,
    stack: StackOpt = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    max_points: Annotated[
        int | None,
        typer.Option(
            "--max-points",
            min=1,
            help="refuse a bigger grid (counted before any work)",
            show_default="1,000,000",  # vlscale.plan.sweep.MAX_POINTS (a test holds them equal)
        ),
    ] = None,
    layout_flags: dict | None = None,
):
    """Plan every point of a grid and write one row per configuration (CSV or Parquet).

    Runs on every local core by default, or on a Dask cluster with --scheduler. --recipe,
    --loss-impl and the topology and layout flags, when given, set that key in every point (over
    the grid file), so one grid serves every recipe. The size and an
    estimated time are printed first; CSV rows are written as they finish (into a temp file
    renamed onto --out at the end, so --out is never half-written)."""
    from vlscale.plan.sweep import MAX_POINTS, check_size, expand_grid, write_sweep

    check_output_file(out, "out", (".csv", ".parquet"))
    overrides = {
        k: v
        for k, v in dict(
            recipe=recipe,
            loss_impl=loss_impl,
            num_slices=num_slices,
            slice_shape=slice_shape,
            stack=stack,
        ).items()
        if v is not None
    } | (layout_flags or {})
    points = expand_grid(grid_file).with_overrides(overrides)
    check_size(len(points), max_points or MAX_POINTS)
    summary = write_sweep(
        points,
        out,
        progress=not quiet,
        workers=workers,
        scheduler=scheduler,
        notify=lambda line: typer.echo(line, err=True),
    )
    n, ok = summary.points, summary.planned
    typer.echo(f"{n} configurations ({ok} planned, {n - ok} invalid) -> {out}")
