"""The run page's chart controls and the runs table's provenance in a real browser (issue #20): the EMA slider
draws the EMA of the raw series (kept faint behind), log/linear per chart, x by step / wall / relative time, the
empty state, and '@step' with a pending badge while a later evaluation waits. One live `repscope serve` for the
module (the fixture pattern of tests/browser/test_pages.py); screenshots go to tests/artifacts/."""

from __future__ import annotations

import time
from datetime import datetime

import numpy as np
import pytest

import repscope
from tests.browser.test_pages import ARTIFACTS, VIEWPORT, browser, chromium, instance, shot  # noqa: F401
from tests.reference import structured_embeddings

pytestmark = pytest.mark.integration

LOSS = {0: 4.0, 500: 3.1, 1000: 2.2, 1500: 2.6, 2000: 1.4, 2500: 1.9, 3000: 1.1}  # noisy, to see smoothing
EMBED_STEPS = (1000, 3000)


def ema_reference(ys: list[float], a: float) -> list[float]:
    """s_0 = y_0, s_i = a s_{i-1} + (1 - a) y_i (what the slider documents)."""
    out = [ys[0]]
    for y in ys[1:]:
        out.append(a * out[-1] + (1 - a) * y)
    return out


@pytest.fixture(scope="module")
def logged_run(instance):  # noqa: F811
    url = instance
    run = repscope.Client(url).run(project="runpage", name="smoothing", background=False)
    for step, loss in LOSS.items():
        run.log_metrics(step, loss=loss)
    for step in EMBED_STEPS:
        run.log_embeddings(step=step, embeddings=structured_embeddings(200, 16, seed=step, decay=0.8),
                           suites=["spectrum"])
    assert all(e.status == "succeeded" for e in run.wait(timeout=120))
    return url, run


def errors_of(page) -> list[str]:  # noqa: ANN001
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    return errors


def first_chart(page) -> dict:  # noqa: ANN001
    return page.evaluate("() => { const el = document.querySelector('#run-charts .plot'); return {title: "
                         "el.layout.title.text, xtype: el.layout.xaxis.type, ytype: el.layout.yaxis.type, traces: "
                         "el.data.map(t => ({name: t.name, x: t.x, y: t.y, opacity: t.opacity, meta: t.meta || null,"
                         " showlegend: t.showlegend}))}; }")


def test_ema_log_and_time_axes(browser, logged_run):  # noqa: F811
    url, run = logged_run
    page = browser.new_page(viewport=VIEWPORT)
    errors = errors_of(page)
    page.goto(f"{url}/runs/{run.id}")
    page.wait_for_selector("#run-charts .plot .main-svg")
    chart = first_chart(page)
    assert chart["title"].startswith("logged: loss")  # the user's own scalar first
    assert chart["traces"][0]["x"] == list(LOSS) and chart["traces"][0]["y"] == list(LOSS.values())

    page.fill("#ema", "0.6")
    chart = first_chart(page)
    raw, smooth = chart["traces"]
    assert raw["opacity"] == 0.25 and raw["showlegend"] is False and raw["y"] == list(LOSS.values())
    np.testing.assert_allclose(smooth["y"], ema_reference(list(LOSS.values()), 0.6), rtol=1e-12)
    assert smooth["meta"] == {"smoothed": 0.6} and page.locator("#ema-value").inner_text() == "0.60"
    shot(page, "run_page_smoothed")

    page.hover("#run-charts .plot >> nth=0")
    page.click('#run-charts .plot >> nth=0 >> .modebar-btn[data-title="Log / linear y-axis"]')
    assert first_chart(page)["ytype"] == "log"
    page.hover("#run-charts .plot >> nth=0")
    page.click('#run-charts .plot >> nth=0 >> .modebar-btn[data-title="Log / linear y-axis"]')
    assert first_chart(page)["ytype"] == "linear"
    page.fill("#ema", "0")

    page.select_option("#x-mode", "wall")
    chart = first_chart(page)
    assert chart["xtype"] == "date"
    wall = chart["traces"][0]["x"]  # loss logged at 0 and 500 precede the first upload (1000): dropped
    assert len(wall) == len([s for s in LOSS if EMBED_STEPS[0] <= s <= EMBED_STEPS[-1]])
    stamps = [datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp() for x in wall]
    assert stamps == sorted(stamps) and abs(stamps[0] - time.time()) < 600
    page.select_option("#x-mode", "relative")
    chart = first_chart(page)
    rel = chart["traces"][0]["x"]
    assert chart["xtype"] == "linear" and rel[0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(rel, np.array(stamps) - stamps[0], atol=2e-3)  # ms-rounded ISO strings
    shot(page, "run_page_relative_time")
    page.close()
    assert errors == []


def test_runs_table_step_and_pending_badge(browser, logged_run):  # noqa: F811
    """RankMe evaluated at 1000 and 3000; an upload at 6000 claimed by hand before the worker takes it (so it
    stays running): the table shows the value '@3000' and 'pending @6000'; 'best' picks the step by direction."""
    url, run = logged_run
    client = repscope.Client(url)
    ids = run.log_embeddings(step=6000, embeddings=structured_embeddings(200, 16, seed=6, decay=0.9),
                             suites=["spectrum"])
    claimed = client.claim(ids[0], "test-harness")
    page = browser.new_page(viewport=VIEWPORT)
    errors = errors_of(page)
    page.goto(f"{url}/projects/runpage")
    cell = page.locator('#runs tbody tr >> nth=0 >> td[data-key="rankme"]').inner_text()
    assert "@3000" in cell
    if claimed is not None:  # the worker did not take it first: it is running, by us, at a later step
        assert "pending @6000" in cell  # a spectrum evaluation: probe columns are not marked
        assert "pending" not in page.locator('#runs tbody tr >> nth=0 >> td[data-key="linear_top1"]').inner_text()
    shot(page, "project_pending")
    page.select_option("#value-mode", "best")
    page.click("#filter button[type=submit]")
    page.wait_for_url("**mode=best**")
    best = page.locator('#runs tbody tr >> nth=0 >> td[data-key="rankme"]').inner_text()
    values = {s: v for s, v in ((p["step"], p["value"]) for p in client.http.get(
        f"/runs/{run.id}/metrics", params={"key": "rankme"}).json()["points"])}
    best_step = max(values, key=lambda s: (values[s], -s))
    assert f"@{best_step}" in best
    if claimed is not None:
        client.report(ids[0], claim=claimed.claim, status="failed", error="released by the test")
    page.close()
    assert errors == []


def test_empty_run_page_says_what_to_do(browser, instance):  # noqa: F811
    url = instance
    run = repscope.Client(url).run(project="runpage-empty", name="nothing-yet")
    page = browser.new_page(viewport=VIEWPORT)
    errors = errors_of(page)
    page.goto(f"{url}/runs/{run.id}")
    page.wait_for_selector("#run-charts .plot .main-svg")
    note = page.locator("#run-charts .annotation-text").text_content()
    assert "No metrics yet" in note and "log_embeddings" in note
    axes = page.evaluate("() => { const l = document.querySelector('#run-charts .plot').layout; "
                         "return [l.xaxis.visible, l.yaxis.visible]; }")
    assert axes == [False, False]
    shot(page, "run_page_empty")
    page.close()
    assert errors == []


def test_logged_only_run_has_no_wall_times_and_says_so(browser, instance):  # noqa: F811
    """Wall times come from artifact uploads: a run that only logged scalars draws them by step, and in the time
    views shows no (misplaced) points but a note."""
    url = instance
    run = repscope.Client(url).run(project="runpage-empty", name="logged-only", background=False)
    run.log_metrics(10, loss=1.0)
    run.log_metrics(20, loss=0.5)
    page = browser.new_page(viewport=VIEWPORT)
    errors = errors_of(page)
    page.goto(f"{url}/runs/{run.id}")
    page.wait_for_selector("#run-charts .plot .main-svg")
    assert first_chart(page)["traces"][0]["x"] == [10, 20]
    page.select_option("#x-mode", "relative")
    assert first_chart(page)["traces"][0]["x"] == []
    assert "No wall times" in page.locator("#run-charts .plot >> nth=0 >> .annotation-text").text_content()
    page.close()
    assert errors == []
