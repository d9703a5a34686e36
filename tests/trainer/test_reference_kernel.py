"""The reference kernel behind a run's speed index (``trainer.probe.reference``): its time is a
``ReferenceTime`` of this machine, and ``--when`` prints the run-file record the campaigns append
(``benchmarks/gpu_calibration.sh``), which ``vlscale.records`` reads back with the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from trainer.probe.reference import KERNEL, main, reference_time  # noqa: E402
from vlscale.records import ReferenceRecord, read_run  # noqa: E402


def test_reference_time_names_its_kernel_threads_and_device():
    ref = reference_time("cpu", threads=1)
    assert ref.kernel == KERNEL and ref.threads == 1 and ref.device == "cpu"
    assert 0 < ref.seconds < 60


def test_when_prints_a_record_a_run_file_carries(tmp_path, capsys):
    main(["--when", "after"])
    line = capsys.readouterr().out.strip()
    record = ReferenceRecord.model_validate_json(line)
    assert record.when == "after" and record.time.kernel == KERNEL
    # appended to a run file (here the first lines of a committed one), the run reads it back
    src = Path(__file__).resolve().parents[2] / "reports/validation/cpu-noise/runs/heldout"
    text = (src / "medium-clip-clip-r0-b16-w1-fp32-fsdp.jsonl").read_text()
    lines = [x for x in text.splitlines() if json.loads(x)["kind"] != "reference"]
    run_file = tmp_path / "run.jsonl"
    run_file.write_text("\n".join([*lines, line]) + "\n")
    assert [r.when for r in read_run(run_file).references] == ["after"]
