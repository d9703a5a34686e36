"""The ``vlscale`` command line: load -> compute -> print a table (or ``--json``) / write a file.

Kept thin and torch-free so that it starts fast; every command turns bad input into one line on
stderr naming the field and the fix, and exit status 2.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError

from vlscale.errors import ConfigError, from_validation_error
from vlscale.validation import check_mask_ratio

app = typer.Typer(
    help="Plan, simulate and validate CLIP / SigLIP / EVA-CLIP training runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
MODEL_HELP = (
    "preset name, e.g. ViT-L-14 (see `vlscale models`), or a model file: a vlscale model spec "
    "(YAML/JSON, see `vlscale models show NAME --yaml`) or an OpenCLIP model-config JSON"
)


def fail(message: str) -> None:
    """Print one clear error line and exit with status 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def handles_bad_input(fn: Callable) -> Callable:
    """Decorator: ConfigError / pydantic ValidationError -> one line on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc))
        except ValidationError as exc:
            fail(str(from_validation_error(exc)))

    return wrapper


def emit_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2))


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """Rich table for people; rich is imported here so --json paths never pay for it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    # piped output has no terminal width; rich would assume 80 columns and elide names
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (SI prefixes, 3 significant digits)."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{prefix}{unit}"
    return f"{n:.3g}{unit}"


def human_bytes(n: float) -> str:
    for factor, prefix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(n) >= factor:
            return f"{n / factor:.2f} {prefix}"
    return f"{int(n)} B"


def check_positive(field: str, value: int | float | None) -> None:
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise ConfigError(field, f"must be a positive finite number, got {value}")


# --- models / params / flops / memory -------------------------------------------------------


models_app = typer.Typer(
    help="Model presets: list them, or print one as a starting model file.",
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_app, name="models")


@models_app.callback(invoke_without_command=True)
@handles_bad_input
def models_cmd(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """List the model presets with their parameter counts."""
    if ctx.invoked_subcommand is not None:
        return
    from vlscale.costs.params import count_params
    from vlscale.specs.presets import get_model, list_models

    rows = []
    for name in list_models():
        spec = get_model(name)
        count = count_params(spec)
        rows.append(
            {
                "name": name,
                "image_params": count.image,
                "text_params": count.text,
                "total_params": count.total,
                "embed_dim": spec.embed_dim,
                "image_size": spec.vision.image_size,
                "patch_size": spec.vision.patch_size,
                "context_length": spec.text.context_length,
                "source": spec.source,
            }
        )
    if as_json:
        emit_json(rows)
        return
    print_table(
        "model presets",
        ["model", "image", "text", "total", "embed", "image size", "patch"],
        [
            [
                r["name"],
                human(r["image_params"]),
                human(r["text_params"]),
                human(r["total_params"]),
                r["embed_dim"],
                r["image_size"],
                r["patch_size"],
            ]
            for r in rows
        ],
    )


@models_app.command("show")
@handles_bad_input
def models_show_cmd(
    model: str = typer.Argument(..., help="preset name or model file"),
    as_yaml: bool = typer.Option(True, "--yaml", help="YAML model spec (the default)"),
    as_json: bool = typer.Option(False, "--json", help="JSON model spec instead of YAML"),
):
    """Print a model's full spec: a starting file for `--model FILE` (vlscale's own schema)."""
    from vlscale.specs.presets import resolve_model

    data = resolve_model(model).model_dump(mode="json")
    if as_json:
        emit_json(data)
        return
    import yaml

    typer.echo(yaml.safe_dump(data, sort_keys=False), nl=False)


@app.command("params")
@handles_bad_input
def params_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Parameter counts of a model's image and text towers."""
    from vlscale.costs.params import count_params
    from vlscale.specs.presets import resolve_model

    spec = resolve_model(model)
    count = count_params(spec)
    result = {"model": spec.name, "image": count.image, "text": count.text, "total": count.total}
    if as_json:
        emit_json(result)
        return
    print_table(
        f"{spec.name} parameters",
        ["tower", "parameters", "exact"],
        [[k, human(result[k]), f"{result[k]:,}"] for k in ("image", "text", "total")],
    )


@app.command("flops")
@handles_bad_input
def flops_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    mask_ratio: float = typer.Option(0.0, "--mask-ratio", help="FLIP patch-drop ratio in [0, 1)"),
    image_size: int | None = typer.Option(None, "--image-size", help="override image size"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Forward FLOPs per sample (2 per multiply-add), per tower, and training FLOPs."""
    from vlscale.costs.flops import flip_flop_ratio, forward_flops, train_flops_per_sample
    from vlscale.specs.presets import resolve_model

    check_mask_ratio(mask_ratio)
    check_positive("image_size", image_size)
    spec = resolve_model(model)
    if image_size is not None:
        spec = spec.with_image_size(image_size)
    f = forward_flops(spec, mask_ratio=mask_ratio)
    flip = flip_flop_ratio(spec.vision, spec.embed_dim, mask_ratio)
    result = {
        "model": spec.name,
        "mask_ratio": mask_ratio,
        "image": f.image,
        "text": f.text,
        "total": f.total,
        "image_size": spec.vision.image_size,
        "context_length": spec.text.context_length,
        "train_total": train_flops_per_sample(spec, mask_ratio),
        "train_total_recompute": train_flops_per_sample(spec, mask_ratio, recompute=True),
        "flip_ratio": {"linear": flip.linear, "attention": flip.attention, "total": flip.total},
    }
    if as_json:
        emit_json(result)
        return
    rows = [[k, f"{result[k] / 1e9:.2f}"] for k in ("image", "text", "total")]
    rows.append(["train (fwd+bwd)", f"{result['train_total'] / 1e9:.2f}"])
    rows.append(["train + recompute", f"{result['train_total_recompute'] / 1e9:.2f}"])
    if mask_ratio > 0:
        rows.append(["image vs unmasked", f"{flip.total:.3f}x"])
    print_table(
        f"{spec.name} FLOPs per sample (image {spec.vision.image_size}px, mask ratio {mask_ratio})",
        ["", "GFLOPs"],
        rows,
    )


@app.command("memory")
@handles_bad_input
def memory_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    local_batch: int = typer.Option(32, "--local-batch", help="samples per device per step"),
    shard_degree: int = typer.Option(1, "--shard-degree", help="FSDP shard degree (1 = DDP)"),
    world_size: int | None = typer.Option(None, "--world-size", help="devices (default: shard)"),
    precision: str = typer.Option("bf16", "--precision", help="fp32 | bf16 | fp16"),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | lamb | adafactor"),
    checkpointing: bool = typer.Option(False, "--checkpointing/--no-checkpointing"),
    mask_ratio: float = typer.Option(0.0, "--mask-ratio", help="FLIP patch-drop ratio in [0, 1)"),
    recipe: str = typer.Option("clip", "--recipe", help="clip | siglip | eva-clip"),
    loss_impl: str = typer.Option("gather", "--loss-impl", help="gather | ring"),
    device_memory_gib: float | None = typer.Option(
        None, "--device-memory-gib", help="device memory; adds fits / largest local batch"
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
):
    """Per-device memory broken down: params, grads, optimizer, master, FSDP buffers, ..."""
    from vlscale.costs.memory import estimate_memory, max_local_batch
    from vlscale.specs.presets import resolve_model
    from vlscale.specs.recipes import RecipeSpec

    check_mask_ratio(mask_ratio)
    for field, value in (
        ("local_batch", local_batch),
        ("shard_degree", shard_degree),
        ("world_size", world_size),
        ("device_memory_gib", device_memory_gib),
    ):
        check_positive(field, value)
    world = world_size if world_size is not None else shard_degree
    if world % shard_degree:
        raise ConfigError(
            "shard_degree", f"{shard_degree} does not divide world_size {world}; pick a divisor"
        )
    rec = RecipeSpec(name=recipe, loss_impl=loss_impl, optimizer=optimizer, mask_ratio=mask_ratio)
    _check_choice("precision", precision, ("fp32", "bf16", "fp16"))
    spec = resolve_model(model)
    kwargs = dict(
        shard_degree=shard_degree,
        world_size=world,
        precision=precision,
        optimizer=rec.optimizer,
        checkpointing=checkpointing,
        mask_ratio=mask_ratio,
        loss=rec.loss,
        loss_impl=rec.loss_impl,
    )
    mem = estimate_memory(spec, local_batch=local_batch, **kwargs)
    result: dict[str, Any] = {
        "model": spec.name,
        "local_batch": local_batch,
        "shard_degree": shard_degree,
        "world_size": world,
        "precision": precision,
        "optimizer": rec.optimizer,
        "checkpointing": checkpointing,
        "mask_ratio": mask_ratio,
        "loss_impl": rec.loss_impl,
        "breakdown": mem.as_dict(),
        "total": mem.total,
    }
    if device_memory_gib is not None:
        capacity = int(device_memory_gib * 2**30)
        result["fits"] = mem.total <= capacity
        result["max_local_batch"] = max_local_batch(spec, capacity, **kwargs)
    if as_json:
        emit_json(result)
        return
    rows = [[k, human_bytes(v)] for k, v in mem.as_dict().items()]
    rows.append(["total", human_bytes(mem.total)])
    if device_memory_gib is not None:
        rows.append(["fits", str(result["fits"])])
        rows.append(["largest local batch", str(result["max_local_batch"])])
    print_table(
        f"{spec.name} memory per device (b={local_batch}, shard {shard_degree}/{world}, "
        f"{precision}, {rec.optimizer}, ckpt={checkpointing})",
        ["component", "bytes"],
        rows,
    )


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(field, f"'{value}' is not one of {', '.join(choices)}")


# The planner's commands register themselves on `app` (kept in their own module).
from vlscale import cli_calibrate, cli_collectives, cli_plan  # noqa: E402, F401

# isort: split
# `vlscale report` and `vlscale papers` (the study page and the published record).
from vlscale import cli_report  # noqa: E402, F401


def main() -> None:
    """Console-script entry point. Usage errors (a flag's value of the wrong type, a missing
    argument, an unknown option) are one line ``error: <option>: <what is wrong>`` and exit
    status 2, like every other bad input, instead of click's boxed usage text."""
    try:  # typer >= 0.20 vendors click; older ones use the click package
        from typer._click.exceptions import NoArgsIsHelpError, UsageError
    except ImportError:  # pragma: no cover - older typer
        from click.exceptions import NoArgsIsHelp as NoArgsIsHelpError
        from click.exceptions import UsageError
    try:
        status = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `vlscale` alone prints the help, as before
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(0)
    except UsageError as exc:
        param = getattr(exc, "param", None)
        opts = getattr(param, "opts", None)
        name = opts[0] if opts else getattr(param, "name", None)
        message = " ".join(exc.format_message().split())
        typer.echo(f"error: {name or 'usage'}: {message}; see --help", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # pragma: no cover - interactive only
        sys.exit(130)
    # without standalone mode a typer.Exit(code) (e.g. handles_bad_input's 2) comes back here
    if isinstance(status, int) and status:
        sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    # Run the imported module's app, not this __main__ copy: the planner commands register
    # themselves on `vlscale.cli.app` when `vlscale.cli_plan` is imported.
    from vlscale.cli import main as _main

    _main()
