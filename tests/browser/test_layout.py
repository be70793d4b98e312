"""Layout at 800 px (#20): no page of the dashboard overflows horizontally (wide tables scroll inside their own
wrapper), the top nav collapses to a CSS-only menu button, the favicon answers, and no page logs a console error.
One live `repscope serve` for the module, seeded with repscope.demo (the fixture pattern of test_pages.py);
screenshots go to tests/artifacts/layout-*.png."""

from __future__ import annotations

import os

import pytest

from tests.browser.test_pages import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, SignedInBrowser, sign_in
from tests.conftest import ADMIN_TOKEN
from tests.integration.procs import base_env, free_port, start_serve, wait_healthy

NARROW = {"width": 800, "height": 900}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        if os.environ.get("REPSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail("system Chromium not found (REPSCOPE_REQUIRE_BROWSER=1); apt-get install chromium")
        pytest.skip("system Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layout")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(base_env(tmp / "data", url), port, tmp / "data", tmp)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        yield url
    finally:
        serve.stop()
        print(serve.log_tail())


@pytest.fixture(scope="module")
def browser(chromium, instance):
    page = chromium.new_page()
    sign_in(page, instance, ADMIN_TOKEN)
    state = page.context.storage_state()
    page.close()
    return SignedInBrowser(chromium, state)


@pytest.fixture(scope="module")
def demo(instance):
    """A small demo project: 3 runs x 1 step with probes, so the runs table and the leaderboard are wide."""
    from repscope.demo import seed_demo

    return instance, seed_demo(instance, runs=3, steps=1, n=120, dim=16, classes=4, seed=1, timeout=300)


def test_pages_hold_at_800px(browser, demo):
    url, summary = demo
    first = summary["runs"][0]
    ids = "&".join(f"run={r['id']}" for r in summary["runs"])
    dataset = summary["dataset"]
    pages = [("/", "projects", "#projects"), ("/projects/demo", "project", "#runs"),
             (f"/runs/{first['id']}", "run", "#run-charts .main-svg"), (f"/compare?{ids}", "compare", "#radar .main-svg"),
             ("/leaderboards", "leaderboards", "#boards"), ("/leaderboards?scope=all", "leaderboards-all", "#boards"),
             (f"/leaderboards/{dataset}?project=demo", "leaderboard", "#leaderboard"),
             (f"/leaderboards/{dataset}?scope=all", "leaderboard-all", "#leaderboard"),
             ("/jobs", "jobs", "#workers"), ("/datasets", "datasets", "#datasets"), ("/upload", "upload", "#upload-form"),
             (f"/evaluations/{first['evaluations'][0]}", "evaluation", ".main-svg")]
    errors: list[str] = []
    page = browser.new_page(viewport=NARROW)
    page.on("console", lambda m: errors.append(f"{page.url}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{page.url}: uncaught {e}"))
    widths = {}
    for path, name, selector in pages:
        response = page.goto(url + path)
        assert response is not None and response.ok, (path, response and response.status)
        page.wait_for_selector(selector)
        widths[name] = page.evaluate("() => document.documentElement.scrollWidth")
        page.screenshot(path=str(ARTIFACTS / f"layout-{name}.png"), full_page=True)
    assert widths == {name: min(w, NARROW["width"]) for name, w in widths.items()}, widths
    assert errors == []
    # the runs table is wider than the page: it scrolls inside itself instead of widening the page
    page.goto(url + "/projects/demo")
    page.wait_for_selector("#runs")
    assert page.evaluate("() => { const t = document.querySelector('#runs'); "
                         "const box = t.closest('.table-wrap') || t; "
                         "return getComputedStyle(box).overflowX; }") == "auto"
    # the nav is collapsed behind the menu button, which opens it without any script
    assert not page.locator("header.top nav").is_visible() and page.locator(".nav-button").is_visible()
    page.click(".nav-button")
    assert page.locator('header.top nav a[href="/leaderboards"]').is_visible()
    page.screenshot(path=str(ARTIFACTS / "layout-nav-open.png"))
    page.click('header.top nav a[href="/leaderboards"]')
    page.wait_for_selector("#boards")
    icon = page.request.get(url + "/favicon.ico")
    assert icon.ok and icon.headers["content-type"].startswith("image/svg+xml")
    page.close()
    # at full width the nav is shown as before and the button hidden
    wide = browser.new_page(viewport={"width": 1280, "height": 900})
    wide.goto(url + "/")
    assert wide.locator("header.top nav").is_visible() and not wide.locator(".nav-button").is_visible()
    wide.close()
