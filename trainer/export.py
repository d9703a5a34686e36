"""Export a run's checkpoint for other tools: ``python -m trainer.export --format openclip
--run RUN --out FILE``.

Reads the newest complete DCP checkpoint under RUN (or the checkpoint directory given), in one
process whatever world size wrote it (DCP reshards), gathers it into one state_dict, maps it onto
OpenCLIP's names and layouts (``models.openclip.to_openclip``) and writes FILE atomically:
``.safetensors`` with the ``safetensors`` package, anything else (``.pt``, ``.bin``) with
``torch.save``. OpenCLIP loads the result with ``model.load_state_dict(sd, strict=True)`` into
``open_clip.create_model(NAME)`` for the preset of the same name.

The architecture comes from the run's header (``RUN/run.jsonl``, first line: the resolved model
spec), or from ``--model`` (a preset name or a model file). Bad input is one line
``error: <field>: <what to do>`` on stderr, exit status 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vlscale.errors import ConfigError, validate_as
from vlscale.specs.models import ModelSpec
from vlscale.specs.presets import resolve_model

FORMATS = ("openclip",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.export",
        description="Write a run's newest checkpoint as one state_dict in another format.",
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="target format")
    parser.add_argument("--run", required=True, help="run directory or checkpoint directory")
    parser.add_argument("--out", required=True, help="output file (.pt, .bin or .safetensors)")
    parser.add_argument("--model", help="model preset or file (default: the run's header)")
    return parser


def run_header_model(path: Path) -> ModelSpec:
    """The model spec in the header of ``run.jsonl`` at ``path`` or above a checkpoint in it."""
    for run_dir in (path, *path.parents[:2]):
        record = run_dir / "run.jsonl"
        if record.is_file():
            with record.open() as f:
                first = f.readline()
            try:
                header = json.loads(first)
            except json.JSONDecodeError:
                raise ConfigError("run", f"{record} has no readable header; pass --model") from None
            return validate_as(ModelSpec, header.get("model"), "model")
    raise ConfigError("model", f"no run.jsonl at or above {path}; pass --model")


def export_openclip(run: str | Path, out: str | Path, model: str | None = None) -> list[str]:
    """Write the OpenCLIP state_dict of the newest checkpoint under ``run`` to ``out``;
    returns the keys written."""
    import torch

    from models.openclip import save_state_dict_file, to_openclip
    from models.two_tower import TwoTower
    from trainer.checkpoint import find_latest, is_complete, load_model_weights

    run, out = Path(run), Path(out)
    if not out.parent.is_dir():
        raise ConfigError("out", f"folder {out.parent} does not exist; create it first")
    ckpt = run if is_complete(run) else find_latest(run)
    if ckpt is None:
        raise ConfigError(
            "run", f"no complete checkpoint at or under {run}; train with --ckpt-every"
        )
    spec = resolve_model(model) if model else run_header_model(run)
    with torch.device("meta"):
        two_tower = TwoTower(spec)
    two_tower.to_empty(device="cpu")  # every tensor is then overwritten by the checkpoint
    load_model_weights(two_tower, ckpt)
    state = to_openclip(two_tower)
    save_state_dict_file(state, out)
    return list(state)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        keys = export_openclip(args.run, args.out, args.model)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(keys)} tensors to {args.out} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
