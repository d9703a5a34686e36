"""Every user mistake the trainer can detect: one line ``error: <field>: ...`` on stderr, exit
status 2, no traceback, and nothing half-written. ``trainer.train.main`` is called in-process
(world 1); the checkpoint cases resume from one small run made once for the module."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from trainer.checkpoint import step_dir
from trainer.train import main

BASE = ["--model", "tiny-clip", "--global-batch", "8", "--peak-flops", "1e12", "--log-every", "100"]
STEPS = ["--steps", "2", "--ckpt-every", "1"]


pytestmark = pytest.mark.usefixtures("one_omp_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A 2-step run with checkpoints at steps 1 and 2."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main([*BASE, *STEPS, "--out", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def _fails(capsys, argv, field, *needles):
    rc = main([*BASE, *argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*"))}


# --------------------------------------------------------------------- before launch


def test_bad_inputs_before_launch_write_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "wrong.csv").write_text("path,caption\na.png,x\n")
    (tmp_path / "norows.csv").write_text("filepath,title\n")
    (tmp_path / "empty_shards").mkdir()
    (tmp_path / "tokenizer.json").write_text("{not json at all")
    (tmp_path / "s-000.tar").write_bytes(b"")
    o = ["--out", str(out)]
    cases = [
        ([*o, "--data", str(tmp_path / "wrong.csv")], "data", "lacks"),
        ([*o, "--data", str(tmp_path / "norows.csv")], "data", "no rows"),
        ([*o, "--data", str(tmp_path / "empty_shards")], "data", "no tar shards"),
        ([*o, "--data", str(tmp_path / "s-{000..003}.tar")], "data", "does not exist"),
        ([*o, "--data", str(tmp_path / "notes.txt")], "data", "no dataset"),
        ([*o, "--tokenizer", str(tmp_path / "tokenizer.json")], "tokenizer", "not a valid"),
        (["--out", str(tmp_path / "notes.txt")], "out", "is a file"),
        (["--out", str(tmp_path / "notes.txt" / "run")], "out", "under the file"),
        ([*o, "--init-image-from", str(tmp_path)], "init_image_from", "no complete checkpoint"),
        ([*o, "--resume"], "resume", "no complete checkpoint"),
        ([*o, "--lr", "inf"], "lr", "finite"),
        ([*o, "--weight-decay", "inf"], "weight_decay", "finite"),
        ([*o, "--eval-every", "1", "--data", str(tmp_path / "wrong.csv")], "eval_every",
         "unavailable"),
        ([*o, "--warmup-steps", "5", "--steps", "3"], "warmup_steps"),
        ([*o, "--resume", "--overwrite"], "overwrite"),
        ([*o, "--model", "EVA02-E-14-plus"], "memory", "--force"),
    ]  # fmt: skip
    for argv, field, *needles in cases:
        _fails(capsys, argv, field, *needles)
        assert not out.exists(), argv
    (out / "ckpt").mkdir(parents=True)  # an empty OUT/ckpt is no checkpoint either
    _fails(capsys, [*o, "--resume"], "resume", "no complete checkpoint")


def test_memory_check_names_both_sides_and_force_overrides(monkeypatch):
    from trainer import preflight
    from trainer.cli_args import load_config

    monkeypatch.setattr(preflight, "host_available_bytes", lambda: 1 << 20)  # 1 MiB host
    cfg = load_config(["--model", "tiny-clip"], world_size=1)
    with pytest.raises(Exception, match=r"needs an estimated .* offers 0\.0 GiB"):
        preflight.check_memory(cfg, 1, "cpu")
    forced = load_config(["--model", "tiny-clip", "--force"], world_size=1)
    assert "--force" in preflight.check_memory(forced, 1, "cpu")[0]
    monkeypatch.setattr(preflight, "host_available_bytes", lambda: 64 << 30)
    assert preflight.check_memory(cfg, 1, "cpu") == []


# --------------------------------------------------------------------- --out and --resume


def test_non_empty_out_refused_then_overwrite(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    before = _tree(run)
    _fails(capsys, [*STEPS, "--out", str(run)], "out", "--resume", "--overwrite")
    assert _tree(run) == before
    assert main([*STEPS, *BASE, "--out", str(run), "--overwrite", "--seed", "9"]) == 0
    header = json.loads((run / "run.jsonl").read_text().splitlines()[0])
    assert header["seed"] == 9 and header["run_id"] != _run_id(finished)
    assert "--overwrite: removed ckpt, run.jsonl" in capsys.readouterr().out


def _run_id(run: Path) -> str:
    return json.loads((run / "run.jsonl").read_text().splitlines()[0])["run_id"]


def test_resume_refuses_what_would_change_the_run(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    before = _tree(run)
    o = ["--out", str(run), "--resume"]
    _fails(capsys, [*o, "--steps", "3", "--ckpt-every", "1"], "steps", "--steps 2")
    _fails(capsys, [*o, *STEPS, "--global-batch", "16"], "global_batch", "8 -> 16")
    _fails(capsys, [*o, *STEPS, "--model", "tiny-siglip", "--recipe", "siglip"], "model",
           "'tiny-clip' -> 'tiny-siglip'", "recipe")  # fmt: skip
    # another run's checkpoint into this run's --out
    other = tmp_path / "other"
    assert main([*BASE, *STEPS, "--out", str(other), "--seed", "4"]) == 0
    capsys.readouterr()
    _fails(capsys, ["--out", str(run), "--resume", str(other), *STEPS, "--seed", "4"], "resume",
           "belongs to run", _run_id(other), _run_id(run))  # fmt: skip
    assert _tree(run) == before


def test_resume_path_and_console_lines(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    assert main([*BASE, *STEPS, "--out", str(run), "--resume", str(step_dir(run, 1))]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {step_dir(run, 1)}: step 1" in out
    assert f"checkpoint of step 2 saved to {step_dir(run, 2)}" in out
    assert "records " + str(run / "run.jsonl") in out
    assert "done: steps 2-2" in out and "final loss" in out and "samples/s" in out
    lines = [json.loads(ln) for ln in (run / "run.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "step"] == [1, 2]
    assert [r["path"] for r in lines if r["kind"] == "resume"] == [str(step_dir(run, 1))]


def test_corrupt_metadata_or_marker_of_the_only_checkpoint(finished, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    shutil.rmtree(step_dir(run, 1))
    (step_dir(run, 2) / ".metadata").write_bytes(os.urandom(64))
    _fails(capsys, ["--out", str(run), "--resume", *STEPS], "resume", "no valid checkpoint",
           ".metadata")  # fmt: skip
    _fails(capsys, ["--out", str(run), "--resume", str(step_dir(run, 2)), *STEPS], "resume",
           "not a valid checkpoint")  # fmt: skip
    (step_dir(run, 2) / "COMPLETE").write_text('{"step": 2, "wor')
    _fails(capsys, ["--out", str(run), "--resume", *STEPS], "resume", "unreadable COMPLETE")


def test_keep_last(tmp_path):
    out = tmp_path / "keep"
    assert main([*BASE, "--steps", "4", "--ckpt-every", "1", "--keep-last", "2", "--out",
                 str(out)]) == 0  # fmt: skip
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["step_000003", "step_000004"]


# --------------------------------------------------------------------- non-finite steps


def test_nonfinite_stops_naming_the_last_checkpoint(tmp_path, capsys):
    out = tmp_path / "nan"
    blowup = ["--lr", "1e30", "--warmup-steps", "0", "--grad-clip", "0", "--steps", "4"]
    line = _fails(capsys, [*blowup, "--ckpt-every", "1", "--out", str(out)], "loss", "non-finite")
    last = max((out / "ckpt").iterdir())
    assert f"the last good checkpoint is {last}" in line


def test_skip_nonfinite_counts_in_records(tmp_path, capsys):
    out = tmp_path / "skip"
    blowup = ["--lr", "1e30", "--warmup-steps", "0", "--grad-clip", "0", "--steps", "4"]
    assert main([*BASE, *blowup, "--skip-nonfinite", "--out", str(out)]) == 0
    steps = [json.loads(ln) for ln in (out / "run.jsonl").read_text().splitlines()[1:]]
    skipped = [s["step"] for s in steps if s["skipped_nonfinite"]]
    assert skipped and steps[0]["skipped_nonfinite"] is False
    assert steps[-1]["nonfinite_skips"] == len(skipped)
    assert f"{len(skipped)} non-finite steps skipped" in capsys.readouterr().out


def test_run_identity_in_header_and_every_checkpoint(finished):
    from trainer.checkpoint import list_checkpoints, read_marker
    from trainer.cli_args import load_config
    from trainer.identity import config_hash

    header = json.loads((finished / "run.jsonl").read_text().splitlines()[0])
    assert len(header["run_id"]) == 12 and header["seed"] == 0
    cfg = load_config([*BASE, *STEPS, "--out", str(finished)], world_size=1)
    assert header["config_hash"] == config_hash(cfg)
    # a setting that changes the trajectory changes the hash; one that does not, does not
    assert (
        config_hash(load_config([*BASE, *STEPS, "--lr", "1e-3"], world_size=1))
        != header["config_hash"]
    )
    assert (
        config_hash(load_config([*BASE, *STEPS, "--log-every", "7"], world_size=1))
        == header["config_hash"]
    )
    ckpts = list_checkpoints(finished)
    assert len(ckpts) == 2
    for ckpt in ckpts:
        identity = read_marker(ckpt)["identity"]
        assert (identity["run_id"], identity["config_hash"], identity["seed"]) == (
            header["run_id"],
            header["config_hash"],
            0,
        )
        files = read_marker(ckpt)["files"]
        assert ".metadata" in files and "extra_rank00000.pt" in files
        assert all(len(f["sha256"]) == 64 for f in files.values())
