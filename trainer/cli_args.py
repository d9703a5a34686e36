"""The trainer's command line: ``--kebab-case`` flags generated from ``TrainConfig`` and
``RunLayout``, usage mistakes as one ``ConfigError`` line, and ``load_config``, which merges the
YAML file (``--config``) and the flags, fills the layout from the launch (torchrun's
``WORLD_SIZE`` / ``LOCAL_WORLD_SIZE``) and validates the result.

Torch-free, like ``trainer.config``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from typing import Any, Literal

from pydantic import ValidationError

from trainer.config import LAYOUT_FIELDS, TRAINER_PRECISION, TrainConfig, split_layout
from vlscale.config_files import read_mapping
from vlscale.errors import ConfigError, from_validation_error, validate_as
from vlscale.specs.layout import RunLayout
from vlscale.specs.run_file import key_name, split_keys

_HELP = {
    "model": "model preset (OpenCLIP name, or tiny-clip / tiny-siglip / tiny-eva / small-clip), "
    "or a model file: a vlscale model spec (YAML/JSON) or an OpenCLIP model-config JSON",
    "recipe": "training recipe",
    "loss_impl": "siglip loss implementation (ring: chunked sigmoid loss)",
    "mask_ratio": "FLIP patch-drop ratio r in [0, 1) (eva-clip default 0.5)",
    "optimizer": "optimizer (recipe default: adamw, lamb for eva-clip)",
    "siglip2": "SigLIP 2's objectives and phases as a YAML mapping, e.g. "
    "'{distill_start: 0.5, naflex: null}' (vlscale/specs/siglip2.py; recipe siglip2 only)",
    "global_batch": "samples per optimizer step over all ranks",
    "steps": "optimizer steps; the warm-up + cosine schedule spans exactly these, so it is part "
    "of the run identity: --resume with another --steps is refused (start a new run to train "
    "longer)",
    "data": "'shapes' (synthetic) or a path to a CSV file / tar-shard directory",
    "tokenizer": "'byte' (byte-level, the default) or a Hugging Face tokenizer.json file",
    "out": "output directory (run.jsonl, traces, checkpoints)",
    "lr": "peak learning rate",
    "image_lr": "peak learning rate of the image tower (default --lr)",
    "text_lr": "peak learning rate of the text tower (default --lr)",
    "weight_decay": "decoupled weight decay (not on norms, biases, logit params)",
    "warmup_steps": "linear learning-rate warm-up steps, then cosine decay",
    "grad_clip": "clip the global gradient norm to this value (0: off)",
    "compile": "torch.compile each transformer block",
    "compile_backend": "torch.compile backend of --compile: inductor (generated kernels), or "
    "aot_eager / eager (graph capture only, eager kernels: quick, for testing the wiring)",
    "seed": "random seed (model init, data, FLIP masks)",
    "eval_every": "evaluate every N steps (0: off)",
    "ckpt_every": "write a checkpoint every N steps (0: off; a stop on SIGTERM / SIGINT still "
    "checkpoints its step)",
    "resume": "resume from the newest valid checkpoint in OUT/ckpt (a corrupt one is skipped, "
    "with a line saying so), or from the run / checkpoint directory given (--resume PATH); "
    "--steps, --global-batch, model and schedule must match the checkpoint's run",
    "phase_timing": "time forward / loss / backward / optimizer separately (syncs the device)",
    "profile_steps": "write a torch.profiler Chrome trace of steps A:B to OUT/trace_rank{r}.json",
    "unmasked_final_steps": "train the last N steps without patch dropping (EVA-CLIP/FLIP)",
    "init_image_from": "initialise the image tower from this checkpoint directory or OpenCLIP "
    "file (.pt/.bin/.safetensors)",
    "init_from": "initialise the whole model from an OpenCLIP file (.pt/.bin/.safetensors)",
    "peak_flops": "peak FLOP/s per device for MFU (default: device lookup / CPU measurement)",
    "peak_from": "take the peak FLOP/s for MFU from this device profile (a hardware file as "
    "python -m trainer.probe writes; a CPU's peak is shared by the ranks of the host)",
    "timing_warmup": "number of first steps marked warmup in the run record",
    "log_every": "print a log line every N steps (rank 0)",
    "device": "auto picks cuda when available",
    "num_workers": "data-loader worker processes",
    "overwrite": "start afresh in a non-empty --out: delete its run.jsonl, ckpt/ and traces first",
    "keep_last": "keep only the newest N checkpoints (default: all)",
    "skip_nonfinite": "skip (and count) a step whose loss or gradient norm is inf/NaN instead "
    "of stopping the run",
    "force": "start even when the memory estimate exceeds the device's (or host's) memory",
}


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage mistakes are one ``ConfigError`` (``error: --steps: invalid
    int value: 'abc'; see --help``, exit status 2) instead of argparse's usage block;
    ``--help`` still prints the full usage."""

    def error(self, message: str):  # type: ignore[override]
        m = re.match(r"argument (-[^/:\s]+)(?:/\S+)?: (.*)", message, re.S)
        if m:
            field, text = m.group(1), m.group(2)
        elif message.startswith("unrecognized arguments: "):
            extra = message.split(": ", 1)[1].split()
            field = next((a for a in extra if a.startswith("-")), extra[0]).split("=")[0]
            known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            close = difflib.get_close_matches(field, known, n=1)
            text = "unknown option" if field.startswith("-") else "unexpected argument"
            if close:
                text += f" (did you mean {close[0]}?)"
        elif message.startswith("the following arguments are required: "):
            field = message.split(": ", 1)[1].split(",")[0]
            text = "is required"
        else:
            field, text = "usage", message
        err = ConfigError(field, f"{' '.join(text.split())}; see --help")
        err.all_ranks = True  # every rank parses the same command line
        raise err


def build_parser() -> argparse.ArgumentParser:
    """Every TrainConfig field as ``--kebab-case``, the layout's fields included (generated from
    ``RunLayout``: help from each field's description); defaults are suppressed so that only
    what the user typed overrides the file."""
    parser = OneLineParser(
        prog="python -m trainer.train",
        description="Train a CLIP / SigLIP / EVA-CLIP two-tower model with FSDP2 "
        "(torchrun --nproc_per_node N -m trainer.train ...).",
        argument_default=argparse.SUPPRESS,
        epilog="Exit status: 0 done; 2 a mistake (one 'error: <field>: ...' line); 143 / 130 "
        "stopped by SIGTERM / SIGINT after finishing the step and checkpointing it (continue "
        "with --resume); a second signal ends the run at once.",
    )
    parser.add_argument("--config", help="YAML file with the same keys; the command line wins")
    for name, field in TrainConfig.model_fields.items():
        if name == "layout":
            add_layout_flags(parser)
            continue
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"help": f"{_HELP[name]} (default: {field.default})"}
        choices = _literal_choices(field.annotation)
        if name == "resume":  # --resume (newest valid) or --resume PATH
            kwargs |= {"nargs": "?", "const": True, "metavar": "PATH"}
        elif field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices:
            kwargs["choices"] = choices
        elif name == "siglip2":
            kwargs["type"] = _yaml_mapping
        elif name in _FLOAT_FIELDS:
            kwargs["type"] = float
        elif name in _INT_FIELDS:
            kwargs["type"] = int
        parser.add_argument(flag, dest=name, **kwargs)
    return parser


def _yaml_mapping(text: str) -> dict:
    """A flag's YAML mapping (``--siglip2 '{distill_start: 0.5}'``); argparse names the flag."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"'{text}' is not a YAML mapping, e.g. '{{masked: null}}'")
    return value


# what the trainer fills in for the layout's unresolved defaults (None in RunLayout)
_LAYOUT_DEFAULTS = {
    "devices": "torchrun's WORLD_SIZE, 1 without torchrun",
    "devices_per_node": "torchrun's LOCAL_WORLD_SIZE",
    "precision": TRAINER_PRECISION,
    "shard_size": "--devices-per-node",
}


def add_layout_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``RunLayout`` field: ``--sharding``, ``--shard-size``, ``--precision``,
    ``--checkpointing/--no-checkpointing``, ... with the field's description as help."""
    group = parser.add_argument_group("run layout (vlscale.specs.layout.RunLayout)")
    for name, field in RunLayout.model_fields.items():
        text, default = field.description or "", field.default
        if name in _LAYOUT_DEFAULTS:  # the trainer's default replaces the layout's "None: ..."
            text = re.sub(r" \(None: [^)]*\)", "", text)
            default = _LAYOUT_DEFAULTS[name]
        kwargs: dict[str, Any] = {"help": f"{text} (default: {default})"}
        kind = _base_type(field.annotation)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif choices := _literal_choices(field.annotation):
            kwargs["choices"] = choices
        else:
            kwargs["type"] = kind
        group.add_argument("--" + name.replace("_", "-"), dest=name, **kwargs)


def _base_type(annotation) -> Any:
    """``int`` for ``Count | None`` (Optional and Annotated stripped); bool, float, str alike."""
    from typing import Annotated, get_args, get_origin

    while True:
        if get_origin(annotation) is Annotated:
            annotation = get_args(annotation)[0]
            continue
        args = [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation) is not Literal and len(args) == 1:
            annotation = args[0]
            continue
        return annotation


def load_config(argv: list[str] | None = None, world_size: int | None = None) -> TrainConfig:
    """Parse ``argv`` (and ``--config``), validate, and check against ``world_size``.

    ``world_size`` defaults to torchrun's ``WORLD_SIZE`` (1 for a plain ``python -m``).
    """
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file is not None:
        values |= _read_yaml(config_file)
    values |= args
    values = with_launch(values, world_size or env_world_size(), env_local_world_size())
    try:
        cfg = TrainConfig(**values)
    except ValidationError as exc:
        cause = _config_error_inside(exc)
        raise cause or from_validation_error(exc) from None
    return cfg


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_world_size() -> int | None:
    """torchrun's ranks on this node; None without torchrun."""
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local else None


def with_launch(values: dict[str, Any], world: int, local: int | None) -> dict[str, Any]:
    """``values`` with the layout's ``devices`` / ``devices_per_node`` taken from the launch
    when not given; a given one that disagrees with the launch is one ConfigError."""
    out, layout = split_layout(values)
    launch = {"devices": (world, "WORLD_SIZE")}
    if local is not None:  # torchrun says how many ranks run on this node
        launch["devices_per_node"] = (local, "LOCAL_WORLD_SIZE")
    for name, (ranks, where) in launch.items():
        given = layout.get(name)
        if given is None or isinstance(given, bool) or not str(given).isdigit():
            continue  # absent, or not a count: the layout's validation names it
        if int(given) != ranks:
            raise ConfigError(
                name,
                f"{given} but this launch has {ranks} rank{'s' * (ranks != 1)} (torchrun's "
                f"{where}); launch {given} ranks (torchrun --nnodes / --nproc-per-node), or "
                f"drop {name}: the trainer takes it from the launch",
            )
    layout.setdefault("devices", world)
    layout.setdefault("devices_per_node", min(local or world, world))
    return out | {"layout": validate_as(RunLayout, layout, "")}  # errors name the flag's field


def _read_yaml(path: str) -> dict[str, Any]:
    """The trainer's keys of the run file at ``path``. The planner's keys are ignored and listed
    in one stderr line (rank 0); a key of neither half is refused with a did-you-mean."""
    raw = read_mapping(path, "config", "a YAML file of trainer options (see --help)")
    own_keys = [f for f in TrainConfig.model_fields] + list(LAYOUT_FIELDS)
    device = next((k for k in raw if key_name(k) == "device"), None)
    if device is not None and raw[device] not in _literal_choices(
        TrainConfig.model_fields["device"].annotation
    ):
        own_keys.remove("device")  # ``device: H100`` names the planner's catalog device
    out, foreign, unknown = split_keys(raw, own_keys)
    for key in unknown:
        name = key_name(key)
        close = difflib.get_close_matches(name, own_keys, n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see --help for the keys"
        raise ConfigError(f"config.{key}", f"unknown key in {path}; {hint}")
    if foreign and os.environ.get("RANK", "0") == "0":
        print(f"note: ignored planner keys: {', '.join(foreign)}", file=sys.stderr, flush=True)
    return out


def _config_error_inside(exc: ValidationError) -> ConfigError | None:
    """Validators raise ConfigError (a ValueError); pydantic wraps it. Recover the original."""
    for err in exc.errors():
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):
            return inner
    return None


def _literal_choices(annotation) -> list[str] | None:
    from typing import get_args, get_origin

    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    for a in args:
        if get_origin(a) is Literal:
            return list(get_args(a))
    return None


_FLOAT_FIELDS = {
    "mask_ratio",
    "lr",
    "image_lr",
    "text_lr",
    "weight_decay",
    "grad_clip",
    "peak_flops",
}
_INT_FIELDS = {
    "global_batch",
    "steps",
    "warmup_steps",
    "seed",
    "eval_every",
    "ckpt_every",
    "unmasked_final_steps",
    "timing_warmup",
    "log_every",
    "num_workers",
    "keep_last",
}
