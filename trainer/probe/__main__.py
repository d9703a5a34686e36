"""Measure this machine and write a device profile the planner uses like a catalog device.

    python -m trainer.probe --out profile.yaml [--name NAME] [--quick] [--no-comm] [--cpu]

On a machine where torch sees a GPU it measures GPU 0 (``trainer.probe.cuda``), otherwise the
CPU (``trainer.probe.cpu``); ``--cpu`` keeps the CPU probe. Either way the profile records the
machine it measured (``measured_on``: the CPU's identity, and the GPU's on CUDA) and the time of
the fixed reference kernel (``reference``, ``trainer.probe.reference``), the denominator of a
run's speed index. Next to the profile it writes ``<out>.probe.json``: the raw measurements and
fit errors, for whoever doubts a number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from vlscale.errors import ConfigError
from vlscale.paths import atomic_write_text
from vlscale.specs.hardware import DeviceSpec, dump_hardware_file


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m trainer.probe", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", required=True, help="hardware file to write (YAML)")
    parser.add_argument(
        "--name", default="this-cpu", help="device name in the file (GPU: <catalog name>-probed)"
    )
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--no-comm", action="store_true", help="skip the collectives")
    parser.add_argument(
        "--cpu", action="store_true", help="measure the CPU even when a GPU is visible"
    )
    return parser.parse_args(argv)


def run_probe(args: argparse.Namespace) -> tuple[DeviceSpec, dict]:
    """The device profile and raw report, with the reference kernel timed before and after the
    measurements (their mean is the profile's reference: the probe's conditions on average, as
    a campaign run's is the mean of its before and after)."""
    from trainer.probe.reference import reference_time

    gpu = torch.cuda.is_available() and not args.cpu
    where = torch.device("cuda" if gpu else "cpu")
    before = reference_time(where.type)
    if gpu:
        from trainer.probe.cuda import probe_cuda

        name = None if args.name == "this-cpu" else args.name
        device, report = probe_cuda(name, args.quick, not args.no_comm)
    else:
        from trainer.probe.cpu import probe_cpu

        device, report = probe_cpu(args.name, args.quick, not args.no_comm)
    return stamp_machine(device, report, where, (before, reference_time(where.type)))


def stamp_machine(
    device: DeviceSpec, report: dict, where: torch.device, refs: tuple
) -> tuple[DeviceSpec, dict]:
    """The profile with the machine's identity and the mean of the reference times ``refs``."""
    from trainer.profiling import machine_identity

    machine = machine_identity(where)
    mean = sum(r.seconds for r in refs) / len(refs)
    reference = refs[0].model_copy(update={"seconds": mean})
    compute = device.compute.model_copy(update={"measured_on": machine, "reference": reference})
    report = report | {
        "reference_s": [r.seconds for r in refs],
        "reference": reference.model_dump(),
        "machine": machine.model_dump(),
    }
    return device.model_copy(update={"compute": compute}), report


def print_gpu_summary(out: Path, seconds: float, device: DeviceSpec, report: dict) -> None:
    print(f"wrote {out} ({seconds:.0f} s): device {device.name}")
    for dtype in ("fp32", "bf16", "fp16"):
        g = report[f"gemm_{dtype}"]
        print(
            f"  {dtype}: GEMM asymptote {g['fitted_peak_flops'] / 1e12:.0f} TFLOP/s = "
            f"{g['peak_fraction']:.2f} of the datasheet, F_half {g['flops_half']:.3g}, "
            f"tile {g['tile']}, median fit error {g['median_abs_log_error']:.0%}"
        )
    print(
        f"  HBM {report['bandwidth'] / 1e12:.2f} TB/s ({report['memory_efficiency']:.2f}), "
        f"launch {report['launch_overhead_s'] * 1e6:.1f} us/kernel, attention "
        f"{report['attention']}"
    )


def print_cpu_summary(out: Path, seconds: float, device: DeviceSpec, report: dict) -> None:
    g = report["gemm_fp32"]
    print(
        f"wrote {out} ({seconds:.0f} s): device {device.name}, fp32 peak "
        f"{g['peak_flops'] / 1e9:.0f} GFLOP/s (median fit error {g['median_abs_log_error']:.0%}), "
        f"bandwidth {report['bandwidth'] / 1e9:.1f} GB/s, op overhead "
        f"{report['op_overhead_s'] * 1e6:.1f} us, attention fraction "
        f"{report['attention_fraction']:.2f}"
    )
    if "collectives" in report:
        c = report["collectives"]
        print(
            f"gloo, 2 ranks: alpha {c['alpha_s'] * 1e6:.0f} us, {c['bandwidth'] / 1e9:.2f} GB/s "
            f"(median error {c['rms_rel_error']:.0%}); per collective: "
            + ", ".join(
                f"{op} {report['collective_' + op]['alpha_s'] * 1e6:.0f} us + "
                f"{report['collective_' + op]['bandwidth'] / 1e9:.2f} GB/s"
                for op in ("all_gather", "reduce_scatter", "all_reduce", "p2p")
            )
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        if not out.parent.is_dir():
            raise ConfigError("out", f"folder {out.parent} does not exist; create it first")
        t0 = time.perf_counter()
        device, report = run_probe(args)
        dump_hardware_file(out, devices=[device])
        raw = out.with_suffix(".probe.json")
        atomic_write_text(raw, json.dumps(report, indent=1, default=str) + "\n")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = print_gpu_summary if device.kind == "gpu" else print_cpu_summary
    summary(out, time.perf_counter() - t0, device, report)
    before, after = report["reference_s"]
    print(
        f"reference kernel {(before + after) / 2 * 1e3:.1f} ms (before {before * 1e3:.1f}, after "
        f"{after * 1e3:.1f}); measured on {device.compute.measured_on.describe()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
