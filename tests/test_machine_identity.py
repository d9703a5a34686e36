"""The machine a profile was measured on, against the machine of the runs it predicts: parsed
from /proc/cpuinfo and sysfs text, compared, and warned about in one line."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.test_plan_cli import vlscale
from vlscale.specs.machine import (
    CpuIdentity,
    MachineIdentity,
    identity_differences,
    mismatch_warning,
    parse_cache_size,
    parse_cpuinfo,
    read_cache_sizes,
)

REPO = Path(__file__).resolve().parents[1]
EPYC = REPO / "reports/validation/cpu-epyc-b"
FLAGS = "fpu sse sse2 avx avx2 avx512f avx512_bf16"


def cpuinfo(stepping: int = 1, flags: str = FLAGS, name: str = "AMD EPYC") -> str:
    block = (
        "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
        f"model name\t: {name}\nstepping\t: {stepping}\ncache size\t: 1024 KB\n"
        f"flags\t\t: {flags}\n"
    )
    # the second processor differs: only the first one's block is read
    return block.format(n=0) + "\n" + block.format(n=1).replace("AMD EPYC", "other") + "\n"


def machine(text: str, l2: int = 2**20) -> MachineIdentity:
    cpu = parse_cpuinfo(text).model_copy(update={"l2_bytes": l2, "l3_bytes": 32 * 2**20})
    return MachineIdentity(cpu=cpu)


def test_cpuinfo_text_is_parsed_from_the_first_processor():
    cpu = parse_cpuinfo(cpuinfo())
    assert (cpu.vendor, cpu.family, cpu.model, cpu.stepping) == ("AuthenticAMD", 26, 2, 1)
    assert cpu.model_name == "AMD EPYC"
    assert cpu.flags == tuple(sorted(FLAGS.split())) and len(cpu.flags_digest) == 12
    assert parse_cpuinfo("") == CpuIdentity()


def test_cache_sizes_are_read_from_sysfs_text(tmp_path):
    for i, (level, kind, size) in enumerate(
        [("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K"),
         ("3", "Unified", "32M")]
    ):  # fmt: skip
        d = tmp_path / f"index{i}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(value + "\n")
    assert read_cache_sizes(tmp_path) == {
        "l1d_bytes": 48 * 2**10,
        "l2_bytes": 2**20,
        "l3_bytes": 32 * 2**20,
    }
    assert parse_cache_size("junk") is None


def test_a_different_cpu_warns_in_one_line_and_an_equal_one_does_not():
    profile = machine(cpuinfo())
    assert mismatch_warning("p.yaml", profile, machine(cpuinfo()), "this machine is") is None
    other = machine(cpuinfo(stepping=2), l2=512 * 2**10)
    line = mismatch_warning("p.yaml", profile, other, "this machine is")
    assert line is not None and "\n" not in line
    assert line.startswith("warning: p.yaml was measured on AMD EPYC (L2 1 MiB, L3 32 MiB)")
    assert "this machine is AMD EPYC (L2 512 KiB" in line
    assert "(differs in: stepping, L2 cache)" in line
    assert line.endswith("predictions may be off by a lot")
    # an identity that is not known (an older profile) is never a mismatch
    assert mismatch_warning("p.yaml", None, other, "this machine is") is None


def test_differing_flags_are_compared_by_digest_and_a_few_named():
    a = machine(cpuinfo())
    b = machine(cpuinfo(flags="fpu sse sse2 avx amx_tile amx_bf16 amx_int8 avx512_fp16 vaes"))
    (diff,) = identity_differences(a, b)
    assert diff.startswith("flags (+amx_bf16, +amx_int8, +amx_tile, +avx512_fp16, ")
    assert diff.endswith("4 more)")  # +vaes, -avx2, -avx512_bf16, -avx512f


def test_runs_of_mixed_machines_name_how_many_differ():
    from vlscale.calibrate.noise import identity_warning

    here, other = machine(cpuinfo()), machine(cpuinfo(stepping=2))
    line = identity_warning("p.yaml", here, [here, None, other, here])
    assert "; 1 of these 4 runs are AMD EPYC" in line and "(differs in: stepping)" in line
    assert identity_warning("p.yaml", here, [here, None]) is None


def _profile_measured_on(tmp_path: Path, cpu: CpuIdentity) -> Path:
    doc = yaml.safe_load((EPYC / "profile.yaml").read_text())
    doc["devices"][0]["compute"]["measured_on"] = {"cpu": cpu.model_dump(mode="json")}
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _run_on(tmp_path: Path, cpu: CpuIdentity) -> Path:
    src = EPYC / "runs/fit/small-clip-clip-r0-b32-w1-fp32-fsdp.jsonl"
    lines = src.read_text().splitlines()
    header = json.loads(lines[0]) | {"machine": {"cpu": cpu.model_dump(mode="json")}}
    path = tmp_path / "run.jsonl"
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    return path


def test_validate_warns_when_the_runs_ran_on_another_cpu(tmp_path):
    here = machine(cpuinfo()).cpu
    profile = _profile_measured_on(tmp_path, here)
    same = vlscale("validate", str(_run_on(tmp_path, here)), "--hardware-file", str(profile))
    assert same.returncode == 0 and "warning" not in same.stderr, same.stderr
    other = machine(cpuinfo(stepping=2), l2=512 * 2**10).cpu
    run = _run_on(tmp_path, other)
    for cmd in (["validate", str(run)], ["calibrate", str(run), "--out", str(tmp_path / "f.yaml")]):
        out = vlscale(*cmd, "--hardware-file", str(profile))
        assert out.returncode == 0, out.stderr
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith("warning: profile.yaml was measured on AMD EPYC")
        assert "; these runs are AMD EPYC (L2 512 KiB" in line and "stepping, L2 cache" in line
