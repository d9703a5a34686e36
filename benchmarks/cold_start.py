"""Cold-start wall time of CLI commands (median of N fresh processes).

Target (issue #2): < 1 s, which requires that the planner path never imports torch
(``benchmarks/plan_perf.py`` times ``vlscale plan`` with the same helpers).

    .venv/bin/python benchmarks/cold_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = [
    ["params", "ViT-L-14"],
    ["params", "ViT-L-14", "--json"],
    ["flops", "ViT-L-14", "--json"],
]


def vlscale_executable() -> list[str]:
    exe = Path(sys.executable).with_name("vlscale")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("vlscale")
    return [found] if found else [sys.executable, "-m", "vlscale.cli"]


def time_command(argv: list[str], repeats: int) -> tuple[float, list[float], int]:
    samples, rc = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        rc = subprocess.run(argv, capture_output=True).returncode
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples, rc


def torch_imported_by(module: str) -> bool:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() == "True"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    exe = vlscale_executable()
    print(f"torch imported by `import vlscale.cli`: {torch_imported_by('vlscale.cli')}")
    print(f"{'command':40s} {'median s':>9s}  samples")
    for cmd in COMMANDS:
        median, samples, rc = time_command(exe + cmd, args.repeats)
        status = "" if rc == 0 else f"  (exit {rc})"
        shown = " ".join(f"{s:.3f}" for s in samples)
        print(f"{'vlscale ' + ' '.join(cmd):40s} {median:9.3f}  {shown}{status}")


if __name__ == "__main__":
    main()
