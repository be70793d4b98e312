"""The dashboard in a real browser: Playwright drives the system Chromium against `repscope serve`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import repscope
from tests.integration.procs import base_env, free_port, start_serve, wait_healthy
from tests.reference import rankme_numpy, structured_embeddings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("REPSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail("system Chromium not found (REPSCOPE_REQUIRE_BROWSER=1); apt-get install chromium")
        pytest.skip("system Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A live embedded instance with one run logged at three steps, all evaluated."""
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(base_env(tmp / "data", url), port, tmp / "data", tmp)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        run = repscope.Client(url).run(project="browser-demo", name="simclr-lr0.3", tags=["baseline"])
        expected = {}
        for step, decay in ((1000, 0.5), (2000, 0.8), (3000, 0.95)):
            z = structured_embeddings(400, 32, seed=step, decay=decay)
            run.log_embeddings(step=step, embeddings=z, labels=np.arange(400) % 4)
            expected[step] = rankme_numpy(z)
        finished = run.wait(timeout=120)
        yield url, run, expected, finished
    finally:
        serve.stop()
        print(serve.log_tail())


def test_navigate_to_rankme_chart(browser, seeded):
    url, run, expected, finished = seeded
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url + "/")
    page.screenshot(path=str(ARTIFACTS / "projects.png"), full_page=True)
    page.click("text=browser-demo")
    page.wait_for_selector("#runs")
    assert page.locator("#runs tbody tr").count() == 1
    page.screenshot(path=str(ARTIFACTS / "project.png"), full_page=True)
    page.click("text=simclr-lr0.3")
    page.wait_for_selector(".plot .main-svg")
    trace = page.evaluate("() => { const el = document.querySelector('.plot'); "
                          "return {x: el.data[0].x, y: el.data[0].y, title: el.layout.title.text}; }")
    assert trace["x"] == sorted(expected)
    np.testing.assert_allclose(trace["y"], [expected[s] for s in sorted(expected)], rtol=1e-6)
    assert "RankMe" in trace["title"]
    assert page.locator("#artifacts tbody tr").count() == 3
    page.screenshot(path=str(ARTIFACTS / "run.png"), full_page=True)

    page.click("#artifacts tbody tr >> nth=0 >> a.status")
    page.wait_for_selector(".plot .main-svg")
    spectrum = page.evaluate("() => { const el = document.querySelector('.plot'); "
                             "return {n: el.data[0].y.length, type: el.layout.yaxis.type}; }")
    first = repscope.Client(url).evaluation(finished[0].id)
    positive = [v for v in first.result["figures"]["singular_values"] if v > 0]  # log axis drops zeros
    assert spectrum == {"n": len(positive), "type": "log"} and len(positive) >= 20
    assert page.locator("#status-text").inner_text() == "succeeded"
    assert page.locator("#metrics").inner_text().count("rankme") >= 1
    page.screenshot(path=str(ARTIFACTS / "evaluation.png"), full_page=True)
    page.close()


def test_failed_evaluation_page_shows_error(browser, tmp_path_factory):
    """A failing evaluation shows its status and readable error (suite missing on the worker)."""
    # Exercised through the API contract: a worker PATCHes status=failed; the page must show the error.
    tmp = tmp_path_factory.mktemp("failpage")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(base_env(tmp / "data", url), port, tmp / "data", tmp)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        client = repscope.Client(url)
        run = client.run(project="browser-fail", name="r")
        # a 1-row matrix is valid input; claim it before the worker does and fail it by hand
        ids = run.log_embeddings(step=1, embeddings=np.ones((3, 2), dtype=np.float32))
        claimed = client.claim(ids[0], "test-harness")
        if claimed is not None:
            client.report(ids[0], status="failed", error="RuntimeError: CUDA out of memory (test)")
        ev = client.wait(ids, raise_on_failure=False, timeout=60)[0]
        page = browser.new_page()
        page.goto(f"{url}/evaluations/{ids[0]}")
        assert page.locator("#status-text").inner_text() == ev.status
        if ev.status == "failed":
            assert "CUDA out of memory" in page.locator("#error").inner_text()
        page.close()
    finally:
        serve.stop()
