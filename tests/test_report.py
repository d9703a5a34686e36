"""vlscale.report: tidy tables, figure builders, the HTML document and the CLI's --report.

Expected values come from the planner's own outputs (events, breakdown, memory breakdown, loss
bytes) or from hand-made event tables, never from the report code: each test checks that a
figure shows exactly what the plan computed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from vlscale.errors import ConfigError
from vlscale.plan.config import make_plan_config
from vlscale.plan.planner import plan
from vlscale.report import html as report_html
from vlscale.report.pages import compare_report, plan_report, write_plan_report
from vlscale.report.step_figures import (
    breakdown_figure,
    loss_figure,
    memory_figure,
    timeline_figure,
)
from vlscale.report.tables import (
    GIB,
    MIB,
    breakdown_frame,
    loss_frame,
    memory_frame,
    timeline_frame,
)
from vlscale.sim import BREAKDOWN_COLUMNS

SMALL = dict(model="tiny-clip", devices=8, global_batch=64)
VLSCALE = Path(sys.executable).with_name("vlscale")


@pytest.fixture(scope="module")
def ring_plan():
    """A SigLIP ring plan with stragglers (two simulated ranks) over two steps."""
    cfg = make_plan_config(
        {}, recipe="siglip", loss_impl="ring", sim_steps=2, straggler_sigma=0.2, **SMALL
    )
    return plan(cfg, keep_sim=True)


@pytest.fixture(scope="module")
def variants():
    """clip/gather and siglip/ring on the same cluster, as ``vlscale compare`` holds them."""
    return [
        plan(make_plan_config({}, recipe=r, loss_impl=i, **SMALL)).to_json()
        for r, i in (("clip", "gather"), ("siglip", "ring"))
    ]


def _events(rows):
    return pd.DataFrame(
        rows, columns=["rank", "step", "stream", "kind", "name", "start_s", "end_s"]
    )


def _steps(bounds, warmup=()):
    return pd.DataFrame(
        {
            "step": range(len(bounds)),
            "start_s": [a for a, _ in bounds],
            "end_s": [b for _, b in bounds],
            "warmup": [s in warmup for s in range(len(bounds))],
        }
    )


# --- tables ------------------------------------------------------------------------------------


def test_timeline_merges_only_back_to_back_ops_of_one_kind_and_shifts_to_the_step():
    ev = _events(
        [
            (0, 0, "compute", "forward", "warm-up fwd", 0.0, 1.0),
            (0, 1, "compute", "forward", "fwd a", 1.0, 1.2),
            (0, 1, "compute", "forward", "fwd b", 1.2, 1.4),  # touches a: merged
            (0, 1, "compute", "forward", "fwd c", 1.6, 1.8),  # 0.2 s gap: its own bar
            (0, 1, "compute", "backward", "bwd", 1.8, 2.0),  # other kind: its own bar
            (0, 1, "collective", "all_gather", "ag", 1.0, 1.1),
        ]
    )
    bars = timeline_frame(ev, _steps([(0.0, 1.0), (1.0, 2.0)], warmup={0}))
    assert bars.attrs["step"] == 1  # first non-warm-up step
    assert bars.attrs["events"] == 5 and bars["count"].sum() == 5
    fwd = bars[bars["kind"] == "forward"].sort_values("start_ms")
    assert fwd["count"].tolist() == [2, 1]
    assert fwd["start_ms"].tolist() == pytest.approx([0.0, 600.0])
    assert fwd["end_ms"].tolist() == pytest.approx([400.0, 800.0])
    assert set(bars["row"]) == {"rank 0 · compute", "rank 0 · collective"}


def test_timeline_caps_bars_and_says_how_many_were_cut():
    ev = _events(
        [
            (0, 0, "compute", k, f"op {i}", i * 0.1, i * 0.1 + 0.05)
            for i, k in enumerate(["forward", "backward"] * 10)
        ]
    )
    bars = timeline_frame(ev, _steps([(0.0, 2.0)]), max_bars=7)
    assert len(bars) == 7 and bars.attrs["clipped"] == 13
    assert bars["start_ms"].max() == pytest.approx(600.0)  # the earliest seven are kept
    assert "13" in timeline_figure(bars).layout.title.text


def test_timeline_of_a_ring_plan_accounts_for_every_event_of_the_step(ring_plan):
    sim = ring_plan.sim
    bars = timeline_frame(sim.events, sim.steps, step=1, rank_labels=sim.rank_labels)
    in_step = sim.events[sim.events["step"] == 1]
    assert bars["count"].sum() == len(in_step)
    assert bars.attrs["clipped"] == 0
    assert len(bars) < len(in_step)  # hops and blocks merged
    assert set(bars["rank"]) == {0, 1}
    for kind, part in in_step.groupby("kind"):
        shown = bars[bars["kind"] == kind]
        # merged bars cover their events: same extent per kind
        t0 = sim.steps.loc[1, "start_s"]
        assert shown["start_ms"].min() == pytest.approx((part["start_s"].min() - t0) * 1e3)
        assert shown["end_ms"].max() == pytest.approx((part["end_s"].max() - t0) * 1e3)


def test_timeline_rejects_a_step_that_was_not_simulated(ring_plan):
    with pytest.raises(ValueError, match="not simulated"):
        timeline_frame(ring_plan.sim.events, ring_plan.sim.steps, step=5)


# --- figures -----------------------------------------------------------------------------------


def test_timeline_figure_has_one_horizontal_bar_trace_per_kind(ring_plan):
    sim = ring_plan.sim
    bars = timeline_frame(sim.events, sim.steps, rank_labels=sim.rank_labels)
    fig = timeline_figure(bars)
    assert sorted(t.name for t in fig.data) == sorted(bars["kind"].unique())
    assert sum(len(t.x) for t in fig.data) == len(bars)
    for trace in fig.data:
        assert trace.type == "bar" and trace.orientation == "h"
        part = bars[bars["kind"] == trace.name]
        assert sum(trace.x) == pytest.approx((part["end_ms"] - part["start_ms"]).sum())
        assert min(trace.base) == pytest.approx(part["start_ms"].min())
    assert "slowest of the other 7 ranks · compute" in set(fig.layout.yaxis.categoryarray)
    assert "(ms)" in fig.layout.xaxis.title.text


def test_breakdown_figure_stacks_to_the_step_time(ring_plan, variants):
    fig = breakdown_figure(breakdown_frame([ring_plan.to_json()]))
    assert [t.name for t in fig.data] == BREAKDOWN_COLUMNS
    assert fig.layout.barmode == "stack" and "(s)" in fig.layout.yaxis.title.text
    # the breakdown partitions each step, so the stack is the mean step time
    assert sum(t.y[0] for t in fig.data) == pytest.approx(ring_plan.step_time_s, rel=1e-9)
    fig = breakdown_figure(breakdown_frame(variants))
    for i, r in enumerate(variants):
        assert sum(t.y[i] for t in fig.data) == pytest.approx(r["step_time_s"], rel=1e-9)
    assert list(fig.data[0].x) == ["clip/gather", "siglip/ring"]


def test_memory_figure_stacks_to_the_total_with_the_capacity_line(variants):
    fig = memory_figure(memory_frame(variants))
    bars = [t for t in fig.data if t.type == "bar"]
    nonzero = {k for r in variants for k, v in r["memory_breakdown"].items() if v > 0}
    assert {t.name for t in bars} == nonzero
    for i, r in enumerate(variants):
        total = sum(t.y[i] for t in bars) * GIB
        assert total == pytest.approx(r["memory_per_device_bytes"], rel=1e-9)
    (cap,) = [t for t in fig.data if t.type == "scatter"]
    assert cap.name == "device memory"
    assert list(cap.y) == pytest.approx([r["device_memory_bytes"] / GIB for r in variants])
    assert "GiB" in fig.layout.yaxis.title.text


def test_loss_figure_shows_each_variants_loss_memory_and_traffic(variants):
    fig = loss_figure(loss_frame(variants))
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"loss buffers", "comm forward", "comm backward"}
    for i, r in enumerate(variants):
        assert by_name["loss buffers"].y[i] * MIB == pytest.approx(r["loss_memory_bytes"])
        moved = (by_name["comm forward"].y[i] + by_name["comm backward"].y[i]) * MIB
        assert moved == pytest.approx(sum(r["loss_comm_bytes_per_device"].values()))
    assert by_name["loss buffers"].xaxis == "x" and by_name["comm forward"].xaxis == "x2"


# --- HTML --------------------------------------------------------------------------------------


def _plot_divs(text: str) -> int:
    return text.count('class="plotly-graph-div"')


def test_plan_report_holds_the_summary_the_figures_and_plotly_once(ring_plan):
    text = plan_report(ring_plan)
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert _plot_divs(text) == 3
    # plotly.js inline exactly once (its bundle starts with this licence banner)
    assert len(re.findall(r"plotly\.js v\d", text)) == 1
    assert "<script src=" not in text  # nothing fetched: works offline
    assert f"{ring_plan.step_time_s:.3f}" in text and f"${ring_plan.cost_usd:,.0f}" in text
    assert "tiny-clip siglip/ring" in text and "8xH100" in text
    for name in ("loss_forward", "p2p", "activations", "device memory", "idle"):
        assert f'"name":"{name}"' in text


def test_compare_report_has_a_column_per_variant_and_three_figures(variants):
    text = compare_report(variants)
    assert _plot_divs(text) == 3
    assert "<th>clip/gather</th>" in text and "<th>siglip/ring</th>" in text
    assert f"{variants[1]['mfu']:.1%}" in text
    assert '"name":"comm backward"' in text


def test_bad_report_paths_are_config_errors_that_name_the_fix(tmp_path):
    for bad, fix in (
        (tmp_path / "missing" / "r.html", "does not exist"),
        (tmp_path, "is a folder"),
        (tmp_path / "r.txt", ".html"),
    ):
        with pytest.raises(ConfigError, match=fix) as err:
            report_html.check_report_path(bad)
        assert err.value.field == "report"


def test_a_failed_write_leaves_neither_a_temp_file_nor_a_changed_report(tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    target.write_text("old report")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(report_html.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        report_html.write_report_atomic("<html>new</html>", target)
    assert os.listdir(tmp_path) == ["r.html"] and target.read_text() == "old report"
    monkeypatch.undo()
    report_html.write_report_atomic("<html>new</html>", target)
    assert os.listdir(tmp_path) == ["r.html"] and target.read_text() == "<html>new</html>"


def test_write_plan_report_needs_the_simulation(tmp_path):
    result = plan(make_plan_config({}, **SMALL))  # keep_sim=False
    with pytest.raises(ValueError, match="keep_sim"):
        write_plan_report(result, tmp_path / "r.html")
    assert os.listdir(tmp_path) == []


# --- CLI ---------------------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess:
    exe = [str(VLSCALE)] if VLSCALE.exists() else [sys.executable, "-m", "vlscale.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, timeout=120)


def test_cli_plan_and_compare_write_reports(tmp_path):
    small = ["--model", "tiny-clip", "--devices", "8", "--global-batch", "64"]
    out = _run(
        "plan",
        *small,
        "--recipe",
        "siglip",
        "--loss-impl",
        "ring",
        "--report",
        str(tmp_path / "p.html"),
    )
    assert out.returncode == 0, out.stderr
    assert "report written to" in out.stderr
    assert _plot_divs((tmp_path / "p.html").read_text()) == 3
    out = _run("compare", *small, "--json", "--report", str(tmp_path / "c.html"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.lstrip().startswith("[")  # --json output is unchanged by --report
    assert "siglip/ring" in (tmp_path / "c.html").read_text()
    assert sorted(os.listdir(tmp_path)) == ["c.html", "p.html"]


def test_cli_bad_report_path_exits_2_before_planning(tmp_path):
    out = _run("compare", "--report", str(tmp_path / "nope" / "c.html"))
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error: report:") and "does not exist" in out.stderr
    assert os.listdir(tmp_path) == []


def test_plan_json_cold_start_imports_neither_plotly_nor_torch():
    code = (
        "import sys\n"
        "from vlscale.cli import app\n"
        "try:\n"
        "    app(['plan', '--json'], standalone_mode=False)\n"
        "finally:\n"
        "    print('LOADED', 'plotly' in sys.modules, 'torch' in sys.modules, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "LOADED False False" in out.stderr
