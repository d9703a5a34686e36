"""``vlscale models`` / ``params`` / ``flops`` / ``memory``: a model on its own, no cluster."""

from __future__ import annotations

from typing import Any

import typer

from vlscale.cli.app import (
    MODEL_HELP,
    check_positive,
    emit_json,
    handles_bad_input,
    human,
    human_bytes,
    print_table,
)
from vlscale.cli.layout_options import with_layout_options
from vlscale.errors import ConfigError, validate_as
from vlscale.specs.fields import check_mask_ratio
from vlscale.specs.layout import RunLayout

models_app = typer.Typer(
    help="Model presets: list them, or print one as a starting model file.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


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
                # a ResNet has no patches: null here, "-" in the table
                "patch_size": spec.vision.patch_size if spec.vision.kind == "vit" else None,
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
                "-" if r["patch_size"] is None else r["patch_size"],
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


@handles_bad_input
@with_layout_options(RunLayout())
def memory_cmd(
    model: str = typer.Argument(..., help=MODEL_HELP),
    local_batch: int = typer.Option(32, "--local-batch", help="samples per device per step"),
    shard_degree: int | None = typer.Option(
        None,
        "--shard-degree",
        help="ranks that shard the model (1 = DDP; = devices: FSDP; between: HSDP); "
        "a shorthand for --sharding / --shard-size",
    ),
    world_size: int | None = typer.Option(
        None, "--world-size", help="devices (same as --devices)", show_default="the shard degree"
    ),
    optimizer: str = typer.Option("adamw", "--optimizer", help="adamw | lamb | adafactor"),
    mask_ratio: float = typer.Option(0.0, "--mask-ratio", help="FLIP patch-drop ratio in [0, 1)"),
    recipe: str = typer.Option(
        "clip", "--recipe", help="clip | siglip | eva-clip | siglip2 (its largest phase)"
    ),
    loss_impl: str = typer.Option("gather", "--loss-impl", help="gather | ring"),
    device: str | None = typer.Option(
        None,
        "--device",
        help="catalog device to fit in, e.g. H100 (80 GB = 74.5 GiB, as `plan` counts it); "
        "adds fits / largest local batch",
    ),
    device_memory_gib: float | None = typer.Option(
        None,
        "--device-memory-gib",
        help="device memory in GiB (2^30 bytes; an '80 GB' card has 74.5 GiB); "
        "adds fits / largest local batch",
        show_default="the --device's memory",
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    layout_flags: dict | None = None,
):
    """Per-device memory broken down: params, grads, optimizer, master, FSDP buffers, ...

    Sizes are printed in GiB (2^30 bytes), like `plan`; catalog capacities are the vendors'
    decimal GB, converted the same way in both commands. Without --precision: bf16, or the
    --device's 16-bit type."""
    from vlscale.specs.recipes import default_recipe

    check_mask_ratio(mask_ratio)
    for field, value in (
        ("local_batch", local_batch),
        ("shard_degree", shard_degree),
        ("world_size", world_size),
        ("device_memory_gib", device_memory_gib),
    ):
        check_positive(field, value)
    layout = _memory_layout(layout_flags or {}, shard_degree, world_size, device)
    # the recipe's defaults (SigLIP 2: its paper objectives and phases) under the flags
    rec = default_recipe(recipe, loss_impl=loss_impl, optimizer=optimizer, mask_ratio=mask_ratio)
    capacity = _device_capacity(device, device_memory_gib)
    result = _memory_result(model, layout, rec, local_batch, capacity)
    if as_json:
        emit_json(result)
        return
    source = f"--device {device}" if device_memory_gib is None else "--device-memory-gib"
    _print_memory(result, layout, rec, source)


def _memory_result(
    model: str, layout: RunLayout, rec, local_batch: int, capacity: int | None
) -> dict[str, Any]:
    """``vlscale memory --json``: the breakdown, and with a capacity whether it fits and the
    largest local batch that does."""
    from vlscale.costs.memory import estimate_memory, max_local_batch
    from vlscale.costs.siglip2_memory import phases_memory, run_memory
    from vlscale.specs.presets import resolve_model
    from vlscale.specs.siglip2 import check_against_towers

    spec = resolve_model(model)
    phases = {}
    if rec.objectives is not None:  # SigLIP 2: every phase; the largest binds
        check_against_towers(rec.objectives, spec.vision, spec.text)
        phases = phases_memory(spec, layout, rec, local_batch=local_batch)
    mem = (
        max(phases.values(), key=lambda m: m.total)
        if phases
        else estimate_memory(spec, layout, rec, local_batch=local_batch)
    )
    result: dict[str, Any] = {
        "model": spec.name,
        "local_batch": local_batch,
        "shard_degree": layout.shard_group,
        "world_size": layout.devices,
        "precision": layout.precision,
        "optimizer": rec.optimizer,
        "checkpointing": layout.checkpointing,
        "mask_ratio": rec.mask_ratio,
        "loss_impl": rec.loss_impl,
        "breakdown": mem.as_dict(),
        "total": mem.total,
        "layout": layout.model_dump(mode="json"),
    }
    if phases:
        result["phases"] = {name: m.total for name, m in phases.items()}
        result["binding_phase"] = max(phases, key=lambda name: phases[name].total)
    if capacity is not None:
        result["device_memory_bytes"] = capacity
        result["fits"] = mem.total <= capacity
        result["max_local_batch"] = max_local_batch(
            spec,
            capacity,
            layout,
            rec,
            memory=lambda b: run_memory(spec, layout, rec, local_batch=b).total,
        )
    return result


def _print_memory(result: dict[str, Any], layout: RunLayout, rec, source: str) -> None:
    """The human-readable table of ``vlscale memory``; ``source`` names where the capacity
    came from."""
    rows = [[k, human_bytes(v)] for k, v in result["breakdown"].items()]
    rows.append(["total", human_bytes(result["total"])])
    if "phases" in result:  # SigLIP 2: the breakdown above is the binding phase's
        rows += [[f"phase {name}", human_bytes(v)] for name, v in result["phases"].items()]
        rows.append(["binding phase", result["binding_phase"]])
    if "device_memory_bytes" in result:
        rows.append([f"device memory ({source})", human_bytes(result["device_memory_bytes"])])
        rows.append(["fits", str(result["fits"])])
        rows.append(["largest local batch", str(result["max_local_batch"])])
    print_table(
        f"{result['model']} memory per device (b={result['local_batch']}, {layout.sharding} "
        f"shard {layout.shard_group}/{layout.devices}, {layout.precision}, {rec.optimizer}, "
        f"ckpt={layout.checkpointing})",
        ["component", "bytes"],
        rows,
    )


def _memory_layout(
    flags: dict[str, Any], shard_degree: int | None, world_size: int | None, device: str | None
) -> RunLayout:
    """The layout of ``vlscale memory``: the layout flags, with ``--shard-degree S`` and
        ``--world-size W`` read as the sharding they mean (S = 1: ddp, S = W: fsdp, else hsdp with
        shard size S); without a precision, the --device's 16-bit type (bf16 without a device), and
    HSDP's default shard size is the --device's node (all ranks without a device)."""
    flags = dict(flags)
    if world_size is not None:
        if flags.get("devices", world_size) != world_size:
            raise ConfigError("world_size", "give --world-size or --devices, not both")
        flags["devices"] = world_size
    if shard_degree is not None:
        if "sharding" in flags or "shard_size" in flags:
            raise ConfigError(
                "shard_degree", "give --shard-degree or --sharding / --shard-size, not both"
            )
        world = flags.setdefault("devices", shard_degree)
        if world % shard_degree:
            raise ConfigError(
                "shard_degree",
                f"{shard_degree} does not divide world_size {world}; pick a divisor",
            )
        if shard_degree == 1 and world > 1:
            flags["sharding"] = "ddp"
        elif shard_degree < world:
            flags |= {"sharding": "hsdp", "shard_size": shard_degree}
    layout = validate_as(RunLayout, flags, "")
    precision, node = "bf16", layout.devices  # no device: one node of every rank
    if device is not None:
        from vlscale.plan.planner import default_precision
        from vlscale.specs.hardware import get_device

        spec = get_device(device)
        precision, node = default_precision(spec), spec.devices_per_node
    return layout.resolved(precision, node)


def _device_capacity(device: str | None, device_memory_gib: float | None) -> int | None:
    """Bytes to fit in: --device-memory-gib (GiB) wins, else the catalog device's memory
    (decimal bytes as published; ``plan`` uses the same number); None when neither is given."""
    if device_memory_gib is not None:
        return int(device_memory_gib * 2**30)
    if device is None:
        return None
    from vlscale.specs.hardware import get_device

    return int(get_device(device).memory.hbm_bytes)
