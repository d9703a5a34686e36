"""The README's figures on the published record are what ``vlscale papers`` prints now: the
counts, the predictions' median |error|, the held-out error per stack and device kind (median and
worst) and the band coverage. A change to the record or the cost model that moves them fails
here until the README says the new numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vlscale.plan.papers_table import fidelity, paper_rows
from vlscale.plan.published_record import load_record, sources_of

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PROSE = " ".join(README.split())  # line breaks as spaces: the prose may be reflowed


def _pct(value: float, sign: str = "") -> str:
    return f"{100 * value:{sign}.1f} %"


@pytest.fixture(scope="module")
def rows():
    return paper_rows()


def test_counts_and_median_error(rows):
    flip = sum(r["source_id"] == "flip-paper" for r in rows)
    fid = fidelity(rows)
    counts = f"{len(load_record())} runs and {flip} FLIP ratios from {len(sources_of())} sources"
    assert counts in PROSE
    text = f"Median |error| of the {fid['predictions']} predictions (never fitted): "
    assert text + _pct(fid["median_abs_error"]) + "." in PROSE


def test_held_out_error_per_stack_and_device(rows):
    groups = fidelity(rows)["loo_by_stack"]
    lines = [
        f"| {key} | {g['runs']} | {_pct(g['median_abs_loo_error'])} | "
        f"{_pct(g['worst_loo_error'], '+')} ({g['worst_run']}) |"
        for key, g in groups.items()
    ]
    table = [
        line
        for line in README.splitlines()
        if re.match(r"\| [\w.-]+ / [\w.-]+ \| \d+ \|", line)  # this table's rows only
    ]
    assert table == lines


def test_band_coverage(rows):
    cov = fidelity(rows)["coverage"]
    text = (
        f"inside the P10–P90 band for {cov['inside_p10_p90']} of {cov['runs']} runs "
        f"({_pct(cov['p10_p90'])}) and inside P5–P95 for {cov['inside_p05_p95']} "
        f"({_pct(cov['p05_p95'])})"
    )
    assert text in PROSE
