"""Hostile inputs and faults of the trainer (issue 19): each case is one line on stderr, exit
status 2 and ``--out`` exactly as it was; a full disk during a checkpoint leaves no temp
directory and the previous checkpoint resumes bit for bit. In process (``trainer.train.main``,
world 1) unless a case needs its own process."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.checkpoint import MARKER, find_latest, step_dir
from trainer.cli_args import load_config
from trainer.export import main as export_main
from trainer.train import main
from vlscale.errors import ConfigError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "openclip" / "tiny_clip"

BASE = ["--model", "tiny-clip", "--global-batch", "8", "--peak-flops", "1e12", "--log-every", "100"]


pytestmark = pytest.mark.usefixtures("one_omp_thread")  # tests/conftest.py


def _tree(path: Path) -> dict[str, int] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


def _one_line(capsys, rc: int, field: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), err
    return lines[0]


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(ln) for ln in (out / "run.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "step"}


# ------------------------------------------------------------------ a full disk, checkpointing


@pytest.fixture
def small_disk(tmp_path):
    """A mount point factory: ``small_disk(size)`` mounts a tmpfs of ``size`` (e.g. "5m")."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; run as root to test a full disk")
    mounted = []

    def mount(size: str) -> Path:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


FULL_RUN = ["--steps", "6", "--ckpt-every", "2", "--seed", "4"]


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path, small_disk, capsys):
    disk = small_disk("5m")  # a tiny-clip checkpoint is 3.4 MB: the first fits, the second not
    out = disk / "run"
    line = _one_line(capsys, main([*BASE, *FULL_RUN, "--out", str(out)]), "checkpoint")
    assert f"cannot write checkpoint {step_dir(out, 4)}.tmp" in line
    assert "it needs about 3.3 MiB (as step_000002)" in line and "MiB are free there" in line
    assert not list((out / "ckpt").glob("*.tmp")) and not (out / ".lock").exists()
    assert find_latest(out) == step_dir(out, 2)

    straight = tmp_path / "straight"
    assert main([*BASE, *FULL_RUN, "--out", str(straight)]) == 0
    moved = tmp_path / "moved"  # "free space": continue the run on a disk with room
    shutil.copytree(out, moved)
    assert main([*BASE, *FULL_RUN, "--out", str(moved), "--resume"]) == 0
    want, got = _losses(straight), _losses(moved)
    assert all(got[s] == want[s] for s in range(3, 7)), (got, want)


def test_full_disk_at_the_first_checkpoint(small_disk, capsys):
    out = small_disk("2m") / "run"
    line = _one_line(capsys, main([*BASE, *FULL_RUN, "--out", str(out)]), "checkpoint")
    assert "No space left on device" in line and "no earlier checkpoint" in line, line
    assert not list((out / "ckpt").glob("*.tmp")) and find_latest(out) is None


# ------------------------------------------------------------------ mistakes before the first step


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 2-step tiny-clip run with checkpoints at steps 1 and 2."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main([*BASE, "--steps", "2", "--ckpt-every", "1", "--out", str(out)]) == 0
    return out


def _files(tmp: Path) -> dict[str, str]:
    """The hostile input files, written once per test into ``tmp``."""
    import safetensors.torch as st
    import torch

    tmp.mkdir(exist_ok=True)
    (tmp / "steps_true.yaml").write_text("steps: true\n")
    (tmp / "batch_true.yaml").write_text("global_batch: true\n")
    (tmp / "ckpt_true.yaml").write_text("ckpt_every: true\n")
    (tmp / "lr_true.yaml").write_text("lr: true\n")
    (tmp / "steps_huge.yaml").write_text("steps: 1.0e+30\n")
    (tmp / "seed_huge.yaml").write_text("seed: 1180591620717411303424\n")
    (tmp / "big.csv").write_text("filepath,title\na.png,ok\nb.png," + "x" * 1_000_000 + "\n")
    (tmp / "latin1.csv").write_bytes("filepath,title\na.png,café\n".encode("latin-1"))
    (tmp / "binary.csv").write_bytes(b"filepath,title\n" + bytes(range(256)) * 8)
    (tmp / "gone.csv").write_text("filepath,title\ngone0.png,x\ngone1.png,y\n")
    (tmp / "shards").mkdir()
    (tmp / "shards" / "s-000.tar").write_text("hello, not a tar\n")
    weights = st.load_file(str(FIXTURE / "weights.safetensors"))
    st.save_file({k: v.to(torch.int64) for k, v in weights.items()}, str(tmp / "int64.safetensors"))
    nan = dict(weights)
    nan["ln_final.weight"] = torch.full_like(nan["ln_final.weight"], float("nan"))
    st.save_file(nan, str(tmp / "nan.safetensors"))
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint at all")
    (tmp / "bad_hardware.yaml").write_text("{{{ not yaml")
    return {p.stem: str(p) for p in tmp.iterdir()}


OPENCLIP = ["--model", str(FIXTURE / "open_clip_config.json")]
# (case, argv (with {name} standing for _files' paths), field, text in the line)
BEFORE_FIRST_STEP = [
    ("steps not a number", ["--steps", "abc"], "--steps", "invalid int value: 'abc'; see --help"),
    ("unknown recipe", ["--recipe", "foo"], "--recipe", "invalid choice"),
    ("unknown flag", ["--stepz", "3"], "--stepz", "did you mean --steps?"),
    ("stray argument", ["extra"], "extra", "unexpected argument"),
    ("seed beyond 64 bits", ["--seed", "1180591620717411303424"], "seed", "0..2**63-1"),
    ("negative seed", ["--seed", "-1"], "seed", "0..2**63-1"),
    ("seed beyond 64 bits in a file", ["--config", "{seed_huge}"], "seed", "0..2**63-1"),
    ("empty --out", ["--out", ""], "out", "is empty"),
    ("steps: true", ["--config", "{steps_true}"], "steps", "not true"),
    ("global_batch: true", ["--config", "{batch_true}"], "global_batch", "not true"),
    ("ckpt_every: true", ["--config", "{ckpt_true}"], "ckpt_every", "not true"),
    ("lr: true", ["--config", "{lr_true}"], "lr", "not true"),
    ("steps: 1e30", ["--config", "{steps_huge}"], "steps", "integer"),
    ("1 MB caption", ["--data", "{big}"], "data", "line 3: a field is longer than 16384"),
    ("Latin-1 CSV", ["--data", "{latin1}"], "data", "is not UTF-8 text"),
    ("binary CSV", ["--data", "{binary}"], "data", "latin1"),
    ("every image missing (after launch)", ["--data", "{gone}"], "data", ""),
    ("a tar that is not a tar", ["--data", "{shards}"], "data", "not a tar file (plain, gz"),
    ("int64 weights", [*OPENCLIP, "--init-from", "{int64}"], "init_from", "holds int64"),
    ("NaN weights", [*OPENCLIP, "--init-from", "{nan}"], "init_from", "holds 64 NaN"),
    ("garbage --init-image-from", ["--init-image-from", "{garbage}"], "init_image_from", ""),
    # the hardware file's reader (vlscale) names the file as the field
    (
        "garbage --peak-from",
        ["--peak-from", "{bad_hardware}"],
        "hardware_file bad_hardware.yaml",
        "is not valid YAML",
    ),
]


@pytest.mark.parametrize(
    ("argv", "field", "text"),
    [c[1:] for c in BEFORE_FIRST_STEP],
    ids=[c[0] for c in BEFORE_FIRST_STEP],
)
def test_mistake_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, argv, field, text):
    files = _files(tmp_path / "in")
    out = tmp_path / "runs" / "latest"  # neither folder exists: both must stay absent
    argv = [a.format(**files) for a in argv]
    # the command line wins over --config: a file's case gets no other option
    base = [] if "--config" in argv else [*BASE, "--steps", "2", "--warmup-steps", "0"]
    if "--peak-from" in argv:  # --peak-flops would win
        base = [a for a in base if a not in ("--peak-flops", "1e12")]
    rc = main([*base, "--out", str(out), *argv])
    line = _one_line(capsys, rc, field)
    assert text in line, line
    assert not (tmp_path / "runs").exists(), _tree(tmp_path / "runs")


def test_overwrite_of_a_run_that_then_fails_before_its_first_step_keeps_the_old_run(
    finished, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = _tree(run)
    files = _files(tmp_path / "in")
    argv = [*OPENCLIP, "--steps", "2", "--overwrite", "--init-from", files["nan"]]
    rc = main([*BASE, *argv, "--out", str(run)])
    capsys.readouterr()  # the "--overwrite: removed ..." note, then the error
    assert rc == 2 and _tree(run) == before
    # and once the first step is done the old run is gone
    assert (
        main([*BASE, "--steps", "1", "--warmup-steps", "0", "--overwrite", "--out", str(run)]) == 0
    )
    assert sorted(p.name for p in run.iterdir()) == ["run.jsonl"]


def test_existing_out_is_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    before = _tree(out)
    files = _files(tmp_path / "in")
    argv = [*OPENCLIP, "--steps", "2", "--overwrite", "--init-from", files["nan"]]
    rc = main([*BASE, *argv, "--out", str(out)])
    _one_line(capsys, rc, "init_from")
    assert _tree(out) == before


# ------------------------------------------------------------------ a finished run: resume, export


def test_deleted_marker_is_reported_like_other_corruptions(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (step_dir(run, 2) / MARKER).unlink()
    assert main([*BASE, "--steps", "2", "--ckpt-every", "1", "--out", str(run), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resume: skipping invalid checkpoint step_000002: no COMPLETE marker" in out, out
    assert f"resumed from {step_dir(run, 1)} (newest valid checkpoint)" in out


def _truncate_distcp(run: Path) -> None:
    for ckpt in (step_dir(run, 1), step_dir(run, 2)):
        f = next(ckpt.glob("*.distcp"))
        f.write_bytes(f.read_bytes()[:1000])


EXPORTS = [
    ("a folder", "{tmp}", [], "out", "is a folder"),
    ("a suffix of no format", "{tmp}/m.txt", [], "out", "must end in .safetensors or .pt or .bin"),
    ("another model", "{tmp}/m.pt", ["--model", "tiny-eva"], "model", "does not match"),
    ("no such folder", "{tmp}/nope/m.pt", [], "out", "does not exist"),
    ("unknown format", "{tmp}/m.pt", ["--format", "onnx"], "--format", "invalid choice"),
    ("truncated .distcp", "{tmp}/m.pt", ["truncate"], "run", "no valid checkpoint"),
]


@pytest.mark.parametrize(
    ("out", "extra", "field", "text"), [c[1:] for c in EXPORTS], ids=[c[0] for c in EXPORTS]
)
def test_export_refuses_before_any_work(finished, tmp_path, capsys, out, extra, field, text):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    if extra == ["truncate"]:
        _truncate_distcp(run)
        extra = []
    dest = tmp_path / "dest"
    dest.mkdir()
    argv = ["--format", "openclip", "--run", str(run), "--out", out.format(tmp=dest), *extra]
    if "--format" in extra:
        argv = argv[2:]
    line = _one_line(capsys, export_main(argv), field)
    assert text in line, line
    assert not any(dest.iterdir())


def test_export_to_a_full_disk_is_one_line_and_leaves_no_temp_file(finished, small_disk, capsys):
    disk = small_disk("512k")  # the tiny-clip export is about 0.9 MiB
    out = disk / "m.safetensors"
    argv = ["--format", "openclip", "--run", str(finished), "--out", str(out)]
    line = _one_line(capsys, export_main(argv), "out")
    assert f"cannot write {out}" in line and "MiB are free there" in line, line
    assert not any(disk.iterdir())


def test_full_disk_for_the_run_records_stops_the_run_in_one_line(small_disk, capsys):
    out = small_disk("12k") / "run"  # the header fits, some 20 step records do not
    line = _one_line(capsys, main([*BASE, "--steps", "40", "--out", str(out)]), "out")
    assert f"cannot append to {out / 'run.jsonl'} (No space left on device" in line, line
    assert not (out / ".lock").exists()


@pytest.mark.dist
def test_full_disk_at_a_checkpoint_on_two_ranks(small_disk):
    """The ranks agree that the save failed (no rank waits at a barrier for one that raised):
    one line, from rank 0, no temp directory, the previous checkpoint the newest."""
    import sys

    out = small_disk("5m") / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "trainer.train", *BASE, *FULL_RUN, "--out", str(out)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    text = proc.stdout + proc.stderr
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, text[-3000:]
    assert errors[0].startswith(f"error: checkpoint: cannot write checkpoint {step_dir(out, 4)}")
    assert not list((out / "ckpt").glob("*.tmp")) and find_latest(out) == step_dir(out, 2)


# ------------------------------------------------------------------ generated trainer configs

NUMBER_KEYS = ["global_batch", "grad_accum", "steps", "seed", "warmup_steps", "eval_every",
               "ckpt_every", "keep_last", "num_workers", "log_every", "timing_warmup", "lr",
               "weight_decay", "grad_clip", "peak_flops", "mask_ratio"]  # fmt: skip
HOSTILE = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.dictionaries(st.sampled_from(NUMBER_KEYS), HOSTILE, min_size=1, max_size=3))
def test_generated_configs_load_or_fail_in_one_line(tmp_path, values):
    """Any value for the numeric keys: a config whose counts are ints (never bools) and whose
    floats are finite, or one ConfigError line; never another exception."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**values, "warmup_steps": values.get("warmup_steps", 0)}))
    try:
        cfg = load_config(["--config", str(path), "--out", str(tmp_path / "out")], 1)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    for key in NUMBER_KEYS:
        value = getattr(cfg.layout if key == "grad_accum" else cfg, key)
        assert not isinstance(value, bool), key
        assert not isinstance(value, float) or math.isfinite(value), key
    assert 0 <= cfg.seed < 2**63 and 1 <= cfg.steps <= 2**62
