"""The `vlscale plan --json` configurations whose output the redesigns must keep byte-identical.

`python tests/golden/configs.py` (re)writes `plan_<name>.json` from the current code; run it only
when a number is *meant* to change, and say which and why in the commit. `test_plan_golden.py`
compares every configuration against its file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent

# name -> plan flags. Spread over recipes, loss implementations, devices (GPU, V100, TPU),
# sharding, precision, checkpointing, accumulation, FLIP, optimizers and the simulator's options.
CONFIGS: dict[str, list[str]] = {
    "default": [],
    "b32_clip_a100": [
        "--model",
        "ViT-B-32",
        "--device",
        "A100",
        "--devices",
        "64",
        "--global-batch",
        "32768",
    ],
    "l14_ddp_4096": [
        "--model",
        "ViT-L-14",
        "--devices",
        "4096",
        "--global-batch",
        "131072",
        "--sharding",
        "ddp",
    ],
    "l14_fsdp_4096": [
        "--model",
        "ViT-L-14",
        "--devices",
        "4096",
        "--global-batch",
        "131072",
        "--sharding",
        "fsdp",
    ],
    "siglip_gather": [
        "--model",
        "ViT-SO400M-14-SigLIP",
        "--recipe",
        "siglip",
        "--devices",
        "512",
        "--global-batch",
        "32768",
    ],
    "siglip_ring": [
        "--model",
        "ViT-SO400M-14-SigLIP",
        "--recipe",
        "siglip",
        "--loss-impl",
        "ring",
        "--devices",
        "512",
        "--global-batch",
        "32768",
        "--checkpointing",
    ],
    "siglip_ring_tpu": [
        "--model",
        "ViT-B-16-SigLIP",
        "--recipe",
        "siglip",
        "--loss-impl",
        "ring",
        "--device",
        "TPUv4",
        "--devices",
        "32",
        "--global-batch",
        "32768",
    ],
    "tpu_slices": [
        "--model",
        "ViT-B-16",
        "--device",
        "TPUv5p",
        "--devices",
        "512",
        "--num-slices",
        "2",
        "--global-batch",
        "65536",
    ],
    "eva_clip": [
        "--model",
        "EVA02-L-14",
        "--recipe",
        "eva-clip",
        "--devices",
        "128",
        "--global-batch",
        "32768",
        "--checkpointing",
    ],
    "eva_mask_075": [
        "--model",
        "EVA02-B-16",
        "--recipe",
        "eva-clip",
        "--mask-ratio",
        "0.75",
        "--devices",
        "64",
        "--global-batch",
        "16384",
    ],
    "v100_fp16": [
        "--model",
        "ViT-B-16",
        "--device",
        "V100",
        "--devices",
        "256",
        "--global-batch",
        "32768",
    ],
    "fp32_one_rank": [
        "--model",
        "ViT-B-32",
        "--device",
        "H100",
        "--devices",
        "1",
        "--global-batch",
        "64",
        "--precision",
        "fp32",
    ],
    "grad_accum": [
        "--model",
        "ViT-H-14",
        "--devices",
        "256",
        "--global-batch",
        "65536",
        "--grad-accum",
        "4",
        "--checkpointing",
    ],
    "adafactor_bigg": [
        "--model",
        "ViT-bigG-14",
        "--devices",
        "1024",
        "--global-batch",
        "65536",
        "--optimizer",
        "adafactor",
        "--checkpointing",
    ],
    "lamb_image_size": [
        "--model",
        "ViT-B-16",
        "--optimizer",
        "lamb",
        "--image-size",
        "384",
        "--devices",
        "64",
        "--global-batch",
        "8192",
    ],
    "stragglers_sim_steps": [
        "--model",
        "ViT-B-32",
        "--devices",
        "128",
        "--global-batch",
        "32768",
        "--stragglers",
        "0.05",
        "--sim-steps",
        "3",
    ],
    "decode_rate": [
        "--model",
        "ViT-B-32",
        "--devices",
        "64",
        "--global-batch",
        "16384",
        "--decode-rate",
        "800",
    ],
    "utilisation_price": [
        "--model",
        "ViT-g-14",
        "--devices",
        "512",
        "--global-batch",
        "65536",
        "--utilisation",
        "0.4",
        "--price",
        "2.5",
    ],
    "ops_table": ["--model", "tiny-clip", "--devices", "8", "--global-batch", "64", "--ops"],
    "devices_per_node": [
        "--model",
        "ViT-L-14",
        "--devices",
        "64",
        "--devices-per-node",
        "4",
        "--global-batch",
        "16384",
    ],
}

# Keys a redesign may add to the output without changing a number (new contracts).
ADDED_KEYS = frozenset({"layout", "locked"})


def plan_json(flags: list[str]) -> str:
    """The exact stdout of `vlscale plan --json FLAGS`, in this process."""
    from typer.testing import CliRunner

    from vlscale.cli import app

    result = CliRunner().invoke(app, ["plan", *flags, "--json"], env={"COLUMNS": "200"})
    if result.exit_code != 0:
        raise RuntimeError(f"plan {flags} exited {result.exit_code}: {result.output}")
    return result.stdout


def without_added_keys(text: str) -> str:
    obj = json.loads(text)
    for key in ADDED_KEYS:
        obj.pop(key, None)
    return json.dumps(obj, indent=2)


def main() -> None:
    names = sys.argv[1:] or list(CONFIGS)
    for name in names:
        (HERE / f"plan_{name}.json").write_text(plan_json(CONFIGS[name]))
        print("wrote", name)


if __name__ == "__main__":
    main()
