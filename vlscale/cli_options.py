"""The CLI's shared option types (typer ``Annotated`` aliases), in one place.

A module of its own, importing nothing of the CLI: ``vlscale.cli`` imports the command modules,
and one command module importing another's options while that one is half-initialised (a sweep
worker imports ``cli_plan`` first) would be circular.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML/TOML plan file")]
ModelOpt = Annotated[
    str | None, typer.Option("--model", help="preset (e.g. ViT-L-14) or model file (YAML/JSON)")
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="e.g. H100, TPUv5p")]
DevicesOpt = Annotated[int | None, typer.Option("--devices", help="number of devices")]
BatchOpt = Annotated[int | None, typer.Option("--global-batch", help="samples per step")]
SamplesOpt = Annotated[str | None, typer.Option("--samples", help="samples seen, e.g. 12.8e9")]
MaskOpt = Annotated[float | None, typer.Option("--mask-ratio", help="FLIP ratio in [0, 1)")]
PrecisionOpt = Annotated[str | None, typer.Option("--precision", help="fp32 | bf16 | fp16")]
ShardingOpt = Annotated[str | None, typer.Option("--sharding", help="fsdp | ddp")]
CkptOpt = Annotated[
    bool | None, typer.Option("--checkpointing/--no-checkpointing", help="activation ckpt")
]
OptimOpt = Annotated[str | None, typer.Option("--optimizer", help="adamw | lamb | adafactor")]
UtilOpt = Annotated[
    float | None,
    typer.Option("--utilisation", help="fraction of peak FLOP/s (default: calibrated)"),
]
PriceOpt = Annotated[float | None, typer.Option("--price", help="USD per device-hour")]
StragglerOpt = Annotated[
    float | None, typer.Option("--stragglers", help="lognormal sigma of per-rank slowdown")
]
StepsOpt = Annotated[int | None, typer.Option("--sim-steps", help="steps to simulate")]
DecodeOpt = Annotated[
    float | None, typer.Option("--decode-rate", help="input samples/s per device (default: ∞)")
]
HwOpt = Annotated[str | None, typer.Option("--hardware-file", help="YAML/TOML with devices")]
PerNodeOpt = Annotated[
    int | None,
    typer.Option("--devices-per-node", help="GPUs per NVLink node (default: the device's node)"),
]
SlicesOpt = Annotated[
    int | None, typer.Option("--num-slices", help="TPU slices joined by DCN (default 1)")
]
ShapeOpt = Annotated[
    str | None,
    typer.Option("--slice-shape", help="TPU slice torus, e.g. 4x4x8 (default: compact)"),
]
ImageOpt = Annotated[int | None, typer.Option("--image-size", help="override the image size")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", help="local processes (default: every core)")
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (extra dask)"),
]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="write an HTML report with plotly figures")
]
