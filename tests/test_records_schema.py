"""The run-record schema (vlscale.records): torch-free, strict, and readable back."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlscale.errors import ConfigError
from vlscale.records import SCHEMA_VERSION, RunHeader, StepRecord, read_run
from vlscale.specs import get_model
from vlscale.specs.recipes import default_recipe


def _header(**kw) -> dict:
    h = RunHeader(
        start_time="2026-01-01T00:00:00+00:00",
        host="h",
        torch_version="2.13.0",
        backend="gloo",
        device_type="cpu",
        device_name="cpu",
        world_size=2,
        dtype="fp32",
        model=get_model("tiny-clip"),
        recipe=default_recipe("clip"),
        global_batch=8,
        local_batch=4,
        grad_accum=1,
        sharding="fsdp",
        activation_checkpointing=False,
        config={"steps": 2},
    )
    return h.model_dump(mode="json") | kw


def _step(step: int, **kw) -> dict:
    s = dict(
        step=step, samples_seen=8 * step, warmup=step == 1, mask_ratio=0.0, step_time_s=0.1,
        data_time_s=0.01, loss=2.0, lr=1e-3, logit_scale=2.6, logit_bias=0.0,
        samples_per_s=80.0, flops_per_sample=1e6, mfu=0.1,
    )  # fmt: skip
    return StepRecord(**s).model_dump(mode="json") | kw


def _write(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_round_trip(tmp_path):
    f = _write(tmp_path / "run.jsonl", _header(), _step(1), _step(2))
    f.write_text(f.read_text() + '{"kind":"eval","step":2,"time_s":0.5,"metrics":{"top1":0.5}}\n')
    run = read_run(f)
    assert run.header.schema_version == SCHEMA_VERSION
    assert run.header.model.name == "tiny-clip"
    assert [s.step for s in run.steps] == [1, 2]
    assert [s.step for s in run.timed_steps()] == [2]  # warm-up marked, kept, filtered on demand
    assert run.evals[0].metrics == {"top1": 0.5}


@pytest.mark.parametrize(
    ("records", "field"),
    [
        ([_step(1)], "{f}:1: kind"),  # no header first
        ([_header(), _step(1, step_time_s=-1.0)], "{f}:2: step.step_time_s"),
        ([_header(), _step(1, bogus=1)], "{f}:2: step.bogus"),  # extra keys are refused
        ([_header(schema_version=SCHEMA_VERSION + 1)], "{f}:1: schema_version"),
    ],
)
def test_invalid_files_name_line_and_field(tmp_path, records, field):
    f = _write(tmp_path / "run.jsonl", *records)
    with pytest.raises(ConfigError) as err:
        read_run(f)
    assert err.value.field == field.format(f=f)


def test_torn_line_is_reported(tmp_path):
    f = _write(tmp_path / "run.jsonl", _header(), _step(1))
    f.write_text(f.read_text() + '{"kind":"step","st')
    with pytest.raises(ConfigError, match="line 3"):
        read_run(f)


def test_schema_module_does_not_import_torch():
    code = "import sys, vlscale.records; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
