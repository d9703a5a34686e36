"""Export a run's checkpoint for other tools: ``python -m trainer.export --format openclip
--run RUN --out FILE``.

Reads the newest complete DCP checkpoint under RUN (or the checkpoint directory given), in one
process whatever world size wrote it (DCP reshards), gathers it into one state_dict, maps it onto
OpenCLIP's names and layouts (``models.openclip.to_openclip``) and writes FILE atomically:
``.safetensors`` with the ``safetensors`` package, ``.pt`` / ``.bin`` with ``torch.save``; any
other suffix, or a folder, is refused before any work. OpenCLIP loads the result with
``model.load_state_dict(sd, strict=True)`` into ``open_clip.create_model(NAME)`` for the preset
of the same name. The checkpoint's checksums are verified as --resume verifies them.

The architecture comes from the run's header (``RUN/run.jsonl``, first line: the resolved model
spec), or from ``--model`` (a preset name or a model file). Bad input is one line
``error: <field>: <what to do>`` on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from vlscale.errors import ConfigError, validate_as
from vlscale.paths import check_output_file
from vlscale.specs.models import ModelSpec
from vlscale.specs.presets import resolve_model

FORMATS = ("openclip",)
SUFFIXES = (".safetensors", ".pt", ".bin")  # what --out may end in (the file's format)


def build_parser() -> argparse.ArgumentParser:
    from trainer.cli_args import OneLineParser

    parser = OneLineParser(
        prog="python -m trainer.export",
        description="Write a run's newest checkpoint as one state_dict in another format.",
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="target format")
    parser.add_argument("--run", required=True, help="run directory or checkpoint directory")
    parser.add_argument("--out", required=True, help="output file (.pt, .bin or .safetensors)")
    parser.add_argument("--model", help="model preset or file (default: the run's header)")
    return parser


def run_header_model(path: Path) -> ModelSpec | None:
    """The model spec in the header of ``run.jsonl`` at ``path`` or above a checkpoint in it;
    None when there is no such file."""
    for run_dir in (path, *path.parents[:2]):
        record = run_dir / "run.jsonl"
        if record.is_file():
            try:
                with record.open(encoding="utf-8") as f:
                    header = json.loads(f.readline())
            except (OSError, ValueError):
                raise ConfigError("run", f"{record} has no readable header; pass --model") from None
            if not isinstance(header, dict):
                raise ConfigError("run", f"{record} has no readable header; pass --model")
            return validate_as(ModelSpec, header.get("model"), "model")
    return None


def choose_model(run: Path, model: str | None) -> ModelSpec:
    """``--model`` (its architecture must match the run's header, when there is one; the name
    may differ) or the header's model."""
    saved = run_header_model(run)
    if model is None:
        if saved is None:
            raise ConfigError("model", f"no run.jsonl at or above {run}; pass --model")
        return saved
    spec = resolve_model(model)
    if saved is not None and spec.model_copy(update={"name": saved.name}) != saved:
        raise ConfigError(
            "model",
            f"{model} does not match the run's model {saved.name} (its run.jsonl header); "
            "drop --model to export the run's own, or pass the run's",
        )
    return spec


def export_openclip(run: str | Path, out: str | Path, model: str | None = None) -> list[str]:
    """Write the OpenCLIP state_dict of the newest valid checkpoint under ``run`` to ``out``;
    returns the keys written. Every input is checked before the checkpoint is read: ``out``
    (a file with a listed suffix in an existing, writable folder), the checkpoint (its checksums
    verified as --resume does; a corrupt newest one is passed over with a line saying so) and
    the model (``--model`` against the run's header)."""
    import torch

    from models.openclip import save_state_dict_file, to_openclip
    from models.two_tower import TwoTower
    from trainer.checkpoint import load_model_weights
    from trainer.checkpoint_files import choose_checkpoint

    out = check_output_file(out, "out", SUFFIXES)
    run = Path(run)
    if not run.exists():
        raise ConfigError("run", f"no run or checkpoint at {run}; pass a run directory")
    ckpt, passed_over = choose_checkpoint(run, field="run")
    for bad in passed_over:
        print(f"skipping invalid checkpoint {bad}", file=sys.stderr)
    spec = choose_model(run, model)
    with torch.device("meta"):
        two_tower = TwoTower(spec)
    two_tower.to_empty(device="cpu")  # every tensor is then overwritten by the checkpoint
    load_model_weights(two_tower, ckpt, field="run")
    state = to_openclip(two_tower)
    try:
        save_state_dict_file(state, out)
    except Exception as exc:  # OSError, torch.save's RuntimeError, safetensors' own error;
        # atomic_path has removed its temp file
        need = sum(t.numel() * t.element_size() for t in state.values()) / (1 << 20)
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        why = getattr(exc, "strerror", None) or lines[-1][:200]
        raise ConfigError(
            "out",
            f"cannot write {out} ({why}): it needs about {need:.1f} MiB, "
            f"{free_mib(out.parent):.1f} MiB are free there; free space or pick another folder",
        ) from None
    return list(state)


def free_mib(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free / (1 << 20)
    except OSError:
        return float("nan")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        keys = export_openclip(args.run, args.out, args.model)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(keys)} tensors to {args.out} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
