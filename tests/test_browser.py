"""The written pages in a real browser: headless Chromium (Debian's ``chromium`` package, which
``.ci/run`` installs) driven by Playwright's Python client — no browser is downloaded.

For each page (``plan --report``, ``compare --report``, ``vlscale report``): no console errors
and no uncaught exceptions, every figure rendered (as many plot containers as the HTML has
figure divs, each with its SVG layers and at least one drawn trace), no request leaving the
file (every non-``file:`` request is recorded and aborted), and a screenshot under the test's
tmp dir. Skips, saying why, only when the client or the browser is missing or cannot start.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from vlscale.plan.config import make_plan_config
from vlscale.plan.planner import plan
from vlscale.report.pages import write_compare_report, write_plan_report
from vlscale.report.study import StudySpec
from vlscale.report.study_page import build_study_report, write_study_report

CHROMIUM = os.environ.get("VLSCALE_CHROMIUM", "/usr/bin/chromium")
# Headless, and nothing that talks to the network by itself (updates, sync, QUIC probes), so
# that every request the page makes is one the test sees.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TINY = dict(model="tiny-clip", devices=8, global_batch=64)
VALIDATION = {
    "runs": [
        {
            "path": "a",
            "split": "fit",
            "measured_step_s": 0.5,
            "predicted_step_s": 0.6,
            "error": 0.2,
        },
        {
            "path": "b",
            "split": "held-out",
            "measured_step_s": 1.0,
            "predicted_step_s": 0.9,
            "error": -0.1,
        },
    ],
    "mape": {"replay": 0.05, "prediction": 0.15},
    "max_error": {"replay": 0.1, "prediction": 0.2},
}


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    manager = sync_api.sync_playwright().start()
    try:
        browser = manager.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    except Exception as exc:  # the reason is the skip message
        manager.stop()
        pytest.skip(f"Chromium at {CHROMIUM} did not start: {str(exc).splitlines()[0]}")
    yield browser
    browser.close()
    manager.stop()


@pytest.fixture(scope="module")
def pages(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pages")
    result = plan(make_plan_config({}, recipe="siglip", loss_impl="ring", **TINY), keep_sim=True)
    write_plan_report(result, folder / "plan.html")
    variants = [
        plan(make_plan_config({}, recipe=r, loss_impl=i, **TINY)).to_json()
        for r, i in (("clip", "gather"), ("siglip", "gather"), ("siglip", "ring"))
    ]
    write_compare_report(variants, folder / "compare.html")
    (folder / "validation" / "set").mkdir(parents=True)
    (folder / "validation" / "set" / "validation.json").write_text(json.dumps(VALIDATION))
    spec = StudySpec.quick(make_plan_config({}, **TINY), loss_local_batch=64)
    text = build_study_report(
        spec, command="vlscale report", validation_dir=folder / "validation", workers=1
    )
    write_study_report(text, folder / "report.html")
    return {p.stem: p for p in folder.glob("*.html")}


@pytest.mark.parametrize("name", ["plan", "compare", "report"])
def test_page_renders_offline_without_errors(browser, pages, tmp_path, name):
    path = pages[name]
    expected = path.read_text().count('class="plotly-graph-div"')
    assert expected >= 3
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    def route(r):
        if r.request.url.startswith("file:"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_function(
        "n => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2 * n",
        arg=expected,
        timeout=60_000,
    )
    plots = page.locator(".js-plotly-plot")
    assert plots.count() == expected
    for i in range(expected):
        plot = plots.nth(i)
        assert plot.locator("svg.main-svg").count() >= 2  # the plot layer and its info layer
        drawn = plot.locator(".scatterlayer .trace, .barlayer .trace").count()
        assert drawn >= 1, f"figure {i} of {name} has no drawn trace"
    shot = tmp_path / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    context.close()
    assert errors == []
    assert outside == []
    assert shot.stat().st_size > 10_000
