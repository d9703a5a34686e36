"""The CLI's shared option types (typer ``Annotated`` aliases), in one place.

Options whose value is ``None`` until a default is computed show that effective default in
``--help`` (``show_default`` text): for the planner it is the embedded scenario's value
(``vlscale.plan.config.PlanConfig``; a test holds the two together), which a ``--config`` file
overrides and a flag overrides again.

The run layout's options (``--devices``, ``--sharding``, ``--shard-size``, ``--precision``, ...)
are not here: ``vlscale.cli.layout_options`` generates them from ``RunLayout``'s fields.

A module of its own, importing nothing of the CLI (not even ``vlscale.cli.app``), so that any
command module can use these types without importing another command module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML/TOML plan file")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="preset (e.g. ViT-L-14) or model file (YAML/JSON)",
        show_default="ViT-L-14",
    ),
]
RecipeOpt = Annotated[
    str | None,
    typer.Option("--recipe", help="clip | siglip | eva-clip | siglip2", show_default="clip"),
]
LossImplOpt = Annotated[
    str | None, typer.Option("--loss-impl", help="gather | ring", show_default="gather")
]
# sweep: the same keys, set in every point of a grid over the grid file's values
PointRecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help="clip | siglip | eva-clip | siglip2, in every point",
        show_default="the grid file's",
    ),
]
PointLossImplOpt = Annotated[
    str | None,
    typer.Option(
        "--loss-impl", help="gather | ring, in every point", show_default="the grid file's"
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="e.g. H100, TPUv5p", show_default="H100")
]
BatchOpt = Annotated[
    int | None, typer.Option("--global-batch", help="samples per step", show_default="32768")
]
SamplesOpt = Annotated[
    str | None,
    typer.Option("--samples", help="samples seen, e.g. 12.8e9", show_default="12.8e9"),
]
MaskOpt = Annotated[
    float | None,
    typer.Option(
        "--mask-ratio",
        help="FLIP ratio in [0, 1)",
        show_default="the recipe's: eva-clip 0.5, else 0",
    ),
]
OptimOpt = Annotated[
    str | None,
    typer.Option(
        "--optimizer",
        help="adamw | lamb | adafactor",
        show_default="the recipe's: eva-clip lamb, else adamw",
    ),
]
UtilOpt = Annotated[
    float | None,
    typer.Option(
        "--utilisation",
        help="fraction of peak FLOP/s",
        show_default="the calibrated per-op model",
    ),
]
PriceOpt = Annotated[
    float | None,
    typer.Option("--price", help="USD per device-hour", show_default="the catalog's price"),
]
StragglerOpt = Annotated[
    float | None,
    typer.Option("--stragglers", help="lognormal sigma of per-rank slowdown", show_default="0"),
]
StepsOpt = Annotated[
    int | None, typer.Option("--sim-steps", help="steps to simulate", show_default="1")
]
DecodeOpt = Annotated[
    float | None,
    typer.Option(
        "--decode-rate", help="input samples/s per device", show_default="∞, never stalls"
    ),
]
HwOpt = Annotated[str | None, typer.Option("--hardware-file", help="YAML/TOML with devices")]
StackOpt = Annotated[
    str | None,
    typer.Option(
        "--stack",
        help="software stack profile (vlscale stacks): its γ per device kind",
        show_default="pytorch-fsdp2, this project's trainer",
    ),
]
# `vlscale collectives` (no run layout); the layout's own flags come from vlscale.cli.layout_options
PerNodeOpt = Annotated[
    int | None,
    typer.Option(
        "--devices-per-node", help="GPUs per NVLink node", show_default="the device's node"
    ),
]
SlicesOpt = Annotated[
    int | None,
    typer.Option("--num-slices", help="TPU slices joined by DCN", show_default="1"),
]
ShapeOpt = Annotated[
    str | None,
    typer.Option("--slice-shape", help="TPU slice torus, e.g. 4x4x8", show_default="compact"),
]
ImageOpt = Annotated[
    int | None,
    typer.Option("--image-size", help="override the image size", show_default="the model's"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", help="local processes", show_default="every core"),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (extra dask)"),
]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="write an HTML report with plotly figures")
]
