"""``vlscale report`` and ``vlscale papers``: the page, the published record, the calibration
section with and without validation results, and bad input.

The page is written by the real command in a fresh process on a small grid (``--quick``, the
tiny-clip preset); the published rows are compared with ``plan()`` on the same configurations.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from vlscale.errors import ConfigError
from vlscale.plan.compute_model import CALIBRATED
from vlscale.plan.papers_table import KEYS, paper_rows
from vlscale.plan.planner import plan
from vlscale.plan.published_runs import FLIP_TABLE_1A, PREDICTED_RUNS, PUBLISHED_RUNS, flip_config
from vlscale.report.record import calibration_frame, calibration_summary, read_validation
from vlscale.report.study_figures import calibration_figure, papers_figure
from vlscale.report.study_page import FIDELITY_HEADING, NO_VALIDATION

VALIDATION = {
    "runs": [
        {
            "path": "runs/a",
            "split": "fit",
            "measured_step_s": 0.50,
            "predicted_step_s": 0.55,
            "error": 0.10,
        },
        {
            "path": "runs/b",
            "split": "held-out",
            "measured_step_s": 2.00,
            "predicted_step_s": 1.70,
            "error": -0.15,
        },
    ],
    "mape": {"replay": 0.04, "prediction": 0.125},
    "max_error": {"replay": 0.06, "prediction": 0.15},
}


def vlscale(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", "from vlscale.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def papers():
    return paper_rows()


# ----------------------------------------------------------------------------- published runs


def test_every_published_run_is_a_row_predicted_by_plan(papers):
    from vlscale.plan.published_record import load_record, predict

    assert all(set(KEYS) <= set(r) for r in papers)
    by_id = {(r["id"], r["metric"]): r for r in papers}
    for run in load_record():
        row = by_id[(run.id, run.metric)]
        assert row["published"] == run.published
        assert row["split"] == run.split and row["stack"] == run.stack
        if run.split == "not_plannable":
            assert row["predicted"] is None and row["reason"]
            continue
        assert row["predicted"] == predict(run)
        assert row["error"] == pytest.approx((row["predicted"] - run.published) / run.published)
        assert row["calibration"] == (run.split == "calibration")
    # the two runs the stored catalog constants were solved from are in the record
    assert {"clip-vit-l14-v100", "openclip-vit-b32-a100"} <= {r["id"] for r in papers}
    assert {PUBLISHED_RUNS[i].config.device for i in PUBLISHED_RUNS} <= set(CALIBRATED)
    assert PREDICTED_RUNS.keys() <= {r["id"] for r in papers}
    assert any(not r["calibration"] for r in papers)


def test_flip_rows_are_ratios_of_two_plans(papers):
    ref, half, _ = FLIP_TABLE_1A
    row = next(r for r in papers if r["id"].endswith("mask50") and r["metric"] == "relative_flops")
    base, masked = plan(flip_config(ref)), plan(flip_config(half))
    expected = (masked.costs.model_flops_per_step / half.global_batch) / (
        base.costs.model_flops_per_step / ref.global_batch
    )
    assert row["predicted"] == pytest.approx(expected)
    assert row["published"] == half.relative_flops
    wall = next(r for r in papers if r["id"] == row["id"] and r["metric"] == "relative_wall_time")
    assert wall["predicted"] == pytest.approx(masked.wall_time_h / base.wall_time_h)


def test_papers_json_and_table():
    from typer.testing import CliRunner

    from vlscale.cli import app

    out = vlscale("papers", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert rows == paper_rows()
    table = CliRunner().invoke(app, ["papers"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    for r in rows:
        assert r["id"] in table.output
    predictions = sum(r["split"] == "prediction" and r["error"] is not None for r in rows)
    assert f"mean |error| of the {predictions} predictions" in table.output
    from vlscale.plan.papers_table import fidelity

    fid = fidelity(rows)
    for key, g in fid["loo_by_stack"].items():  # the error per stack and device, and the worst
        assert f"leave-one-out median |error| {key}: {g['median_abs_loo_error']:.1%}" in (
            table.output
        )
        assert f"worst {g['worst_loo_error']:+.1%} ({g['worst_run']})" in table.output
    cov = fid["coverage"]
    assert f"P10-P90 holds {cov['inside_p10_p90']} of {cov['runs']} published values" in (
        table.output
    )


@pytest.mark.parametrize("device, kind", [("V100", "calibrated"), ("H100", "assumed")])
def test_assumptions_say_where_each_efficiency_comes_from(device, kind):
    from vlscale.plan.config import make_plan_config
    from vlscale.report.assumptions import efficiency_rows, hardware_rows
    from vlscale.specs.hardware import get_device

    cfg = make_plan_config(
        {}, model="tiny-clip", device=device, devices=8, global_batch=64, precision="fp16"
    )
    spec = get_device(device)
    planned = plan(cfg)
    rows = efficiency_rows(spec, cfg, planned.to_json())
    assert rows[0][2] == kind
    assert rows[0][1] == f"{planned.compute['framework_efficiency']:.4f}"
    assert rows[1][2] == "assumed"  # catalog op-level defaults
    hardware = hardware_rows(spec, "fp16")
    assert hardware[0][2] == spec.peak_flops.source
    assert hardware[0][1] == f"{spec.peak_flops.fp16 / 1e12:,.1f} TFLOP/s"


def test_papers_figure_plots_the_signed_errors(papers):
    fig = papers_figure(papers)
    assert [t.name for t in fig.data] == ["prediction", "calibration case"]
    predictions = [r for r in papers if not r["calibration"] and r["error"] is not None]
    assert list(fig.data[0].y) == pytest.approx([100 * r["error"] for r in predictions])


# ----------------------------------------------------------------------------- validation


def test_validation_results_are_read_and_drawn(tmp_path):
    (tmp_path / "v100").mkdir()
    (tmp_path / "v100" / "validation.json").write_text(json.dumps(VALIDATION))
    results = read_validation(tmp_path)
    assert [name for name, _ in results] == ["v100"]
    frame = calibration_frame(results)
    assert frame["measured_step_s"].tolist() == [0.5, 2.0]
    assert calibration_summary(results) == [["v100", "2", "4.0 %", "12.5 %", "6.0 %", "15.0 %"]]
    fig = calibration_figure(frame)
    assert [t.name for t in fig.data] == ["fit", "held-out", "predicted = measured"]
    assert list(fig.data[1].x) == [2.0] and list(fig.data[1].y) == [1.7]
    assert list(fig.data[2].x) == [0.5, 2.0]  # the y = x line spans every point
    assert fig.layout.xaxis.title.text == "measured step time (s)"


def test_no_folder_is_no_results_and_a_bad_file_names_itself(tmp_path):
    assert read_validation(tmp_path / "missing") == []
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "validation.json").write_text('{"runs": [{"path": "a"}]}')
    with pytest.raises(ConfigError, match=r"validation\.json needs 'runs'"):
        read_validation(tmp_path)


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def quick_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    config = folder / "tiny.yaml"
    config.write_text("model: tiny-clip\ndevices: 8\nglobal_batch: 64\n")
    return config


def test_report_writes_every_section_and_the_command_that_reproduces_it(tmp_path, quick_config):
    (tmp_path / "val" / "set1").mkdir(parents=True)
    (tmp_path / "val" / "set1" / "validation.json").write_text(json.dumps(VALIDATION))
    out = tmp_path / "study.html"
    args = [str(quick_config), "--out", str(out), "--quick", "--loss-local-batch", "64"]
    args += ["--validation-dir", str(tmp_path / "val"), "--workers", "1"]
    result = vlscale("report", *args)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.count('<script type="text/javascript">') == 1  # plotly.js inlined once
    assert "<script src" not in text and "<link" not in text  # nothing loaded from elsewhere
    for heading in (
        "Scaling with devices and batch",
        "Softmax vs sigmoid",
        "FLIP: FLOPs and time against mask ratio",
        "Cost frontier",
        "Calibration: predicted vs measured",
        "Published runs",
        FIDELITY_HEADING,
        "Assumptions",
    ):
        assert heading in text
    assert text.count('class="plotly-graph-div"') == 7
    assert NO_VALIDATION not in text and "12.5 %" in text
    assert "tiny-clip" in text and "NVIDIA H100 datasheet" in text  # hardware with sources
    assert "<td>assumed</td>" in text  # tiny-clip on H100: no calibrated constant
    command = shlex.join(["vlscale", "report", *args[:-2]])  # --workers changes no number
    assert command.replace("'", "&#x27;") in text or command in text


def test_report_without_validation_says_so(tmp_path, quick_config):
    out = tmp_path / "study.html"
    args = [str(quick_config), "--out", str(out), "--quick", "--devices", "8", "--devices", "16"]
    result = vlscale("report", *args, "--validation-dir", str(tmp_path / "none"), "--quiet")
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert f"{NO_VALIDATION} in {tmp_path / 'none'}" in text
    assert text.count('class="plotly-graph-div"') == 6
    assert "devices 8, 16;" in text
    _assert_fidelity_is_papers(text)
    _assert_siglip2_is_the_planners(text)


def _assert_siglip2_is_the_planners(text: str) -> None:
    """The page's SigLIP 2 section: per model SigLIP's and SigLIP 2's wall time and cost, the
    ratio and each objective's share, as plan --json gives them at the paper's scale (SigLIP 2
    with one objective off through a plan file's siglip2 mapping), and the no-published-time
    line."""
    import html
    import re

    from vlscale.report.siglip2_scale import MODELS, OBJECTIVES, SCENARIO, SIGLIP2_HEADING

    heading = f"<h2>{html.escape(SIGLIP2_HEADING)}</h2>"
    section = text.split(heading, 1)[1].split("<h2>", 1)[0]
    assert "No published SigLIP 2 training time exists" in section
    shown = dict(
        (label, cells)
        for label, cells in re.findall(r"<tr><th>([^<]*)</th>((?:<td>[^<]*</td>)+)</tr>", section)
    )
    assert set(shown) == set(MODELS)
    flags = ["--device", "TPUv5e", "--devices", "2048", "--num-slices", "8", "--slice-shape",
             "16x16", "--global-batch", "32768", "--samples", "4e10", "--checkpointing",
             "--precision", "bf16", "--json"]  # fmt: skip
    assert SCENARIO["samples"] == 4e10 and SCENARIO["global_batch"] == 32768
    model = MODELS[0]
    siglip = json.loads(vlscale("plan", "--model", model, "--recipe", "siglip", *flags).stdout)
    full = json.loads(vlscale("plan", "--model", model, "--recipe", "siglip2", *flags).stdout)
    cells = re.findall(r"<td>([^<]*)</td>", shown[model])
    assert cells[0] == f"{siglip['wall_time_h']:,.1f} / ${siglip['cost_usd']:,.0f}"
    assert cells[1] == f"{full['wall_time_h']:,.1f} / ${full['cost_usd']:,.0f}"
    assert cells[2] == f"{full['cost_usd'] / siglip['cost_usd']:.2f}"
    out = vlscale("plan", "--model", model, "--recipe", "siglip2", "--objectives",
                  ",".join(x for x in OBJECTIVES if x != "decoder"), *flags)  # fmt: skip
    without = json.loads(out.stdout)
    share = (full["cost_usd"] - without["cost_usd"]) / full["cost_usd"]
    assert cells[3] == f"{share:+.1%}" and share > 0.2  # the 256k-vocabulary decoder


def _pct(value: float, sign: str = "") -> str:
    return f"{100 * value:{sign}.1f} %"


def _assert_fidelity_is_papers(text: str) -> None:
    """The page's fidelity section holds the numbers of ``vlscale papers --json`` and
    ``papers --coverage --json``, recomputed here from the rows (median, worst by hand)."""
    import re
    import statistics

    section = text.split(f"<h2>{FIDELITY_HEADING}</h2>", 1)[1].split("<h2>", 1)[0]
    rows = json.loads(vlscale("papers", "--json").stdout)
    cov = json.loads(vlscale("papers", "--coverage", "--json").stdout)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["loo_error"] is not None and r["metric"] in ("wall_time_h", "samples_per_s"):
            groups.setdefault((r["stack"], r["hardware"].split("-")[0]), []).append(r)
    shown = re.findall(r"<tr><th>([^<]*)</th>((?:<td>[^<]*</td>)+)</tr>", section)
    assert len(shown) == len(groups) >= 4
    for (stack, kind), members in groups.items():
        errors = [r["loo_error"] for r in members]
        worst = max(members, key=lambda r: abs(r["loo_error"]))
        cells = [kind, str(len(members)), _pct(statistics.median(map(abs, errors)))]
        cells += [_pct(worst["loo_error"], "+"), worst["id"]]
        assert (stack, "".join(f"<td>{c}</td>" for c in cells)) in shown, (stack, kind)
    predictions = [r for r in rows if r["error"] is not None and not r["calibration"]]
    median = statistics.median(abs(r["error"]) for r in predictions)
    assert f"Median |error| of the {len(predictions)} predictions (never fitted): " in section
    assert f"(never fitted): {_pct(median)}." in section
    assert f"P10–P90 holds {cov['inside_p10_p90']} of {cov['runs']} published values" in section
    assert f"({_pct(cov['p10_p90'])}); P5–P95 holds {cov['inside_p05_p95']} " in section
    assert section.count('class="plotly-graph-div"') == 1


@pytest.mark.parametrize(
    "args, field",
    [
        (["--out", "x.txt"], "report"),
        (["--devices", "0"], "devices"),
        (["--mask-ratio", "1.5"], "mask_ratio"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, quick_config, args, field):
    out = ["--out", str(tmp_path / "r.html")] if "--out" not in args else []
    result = vlscale("report", str(quick_config), *out, *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {field}: ")
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
