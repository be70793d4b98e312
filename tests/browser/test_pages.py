"""The dashboard in a real browser: Playwright drives the system Chromium against one live `repscope serve`.

One instance serves the whole module (starting it is the slow part); each test uses its own project. Order
matters a little: the worker is a single FIFO consumer, so the quick spectrum-only tests run before the demo
project (whose probes take longest) is seeded. Screenshots of every page go to tests/artifacts/.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import repscope
from tests.conftest import ADMIN_TOKEN
from tests.integration.procs import base_env, free_port, start_serve, wait_healthy
from tests.reference import rankme_numpy, structured_embeddings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}

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
    """A live embedded instance (API + one worker), shared by the module."""
    tmp = tmp_path_factory.mktemp("browser")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(base_env(tmp / "data", url), port, tmp / "data", tmp)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        yield url
    finally:
        serve.stop()
        print(serve.log_tail())


class SignedInBrowser:
    """Pages opened with the session cookie of one sign-in through the login form (storage state)."""

    def __init__(self, chromium, state: dict) -> None:  # noqa: ANN001
        self.chromium, self.state = chromium, state

    def new_page(self, **kwargs):  # noqa: ANN003, ANN201
        return self.chromium.new_page(storage_state=self.state, **kwargs)


def sign_in(page, url: str, token: str) -> None:  # noqa: ANN001
    page.goto(url + "/login")
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_url(url + "/")


@pytest.fixture(scope="module")
def browser(chromium, instance):
    page = chromium.new_page()
    sign_in(page, instance, ADMIN_TOKEN)
    state = page.context.storage_state()
    page.close()
    return SignedInBrowser(chromium, state)


@pytest.fixture(scope="module")
def seeded(instance):
    """One run logged at three steps, all evaluated."""
    url = instance
    run = repscope.Client(url).run(project="browser-demo", name="simclr-lr0.3", tags=["baseline"])
    expected = {}
    for step, decay in ((1000, 0.5), (2000, 0.8), (3000, 0.95)):
        z = structured_embeddings(400, 32, seed=step, decay=decay)
        run.log_embeddings(step=step, embeddings=z, labels=np.arange(400) % 4)
        expected[step] = rankme_numpy(z)
    finished = run.wait(timeout=180)
    return url, run, expected, finished


@pytest.fixture(scope="module")
def demo(instance):
    """The demo project of repscope.demo, small enough for a test: 3 runs x 2 steps, spectrum + probes."""
    from repscope.demo import seed_demo

    summary = seed_demo(instance, runs=3, steps=2, n=240, dim=32, classes=4, seed=0, timeout=300)
    return instance, summary


def plot_data(page, selector: str) -> dict:
    """The traces and layout Plotly drew in an element (read from the DOM element, as Plotly stores them)."""
    return page.evaluate("(sel) => { const el = document.querySelector(sel); return {title: el.layout.title.text, "
                         "traces: el.data.map(t => ({name: t.name, type: t.type, x: t.x, y: t.y, r: t.r}))}; }",
                         selector)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_navigate_to_rankme_chart(browser, seeded):
    url, run, expected, finished = seeded
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url + "/")
    shot(page, "projects")
    page.click("text=browser-demo")
    page.wait_for_selector("#runs")
    assert page.locator("#runs tbody tr").count() == 1
    shot(page, "project")
    page.click("text=simclr-lr0.3")
    page.wait_for_selector(".plot .main-svg")
    trace = page.evaluate("() => { const el = document.querySelector('.plot'); "
                          "return {x: el.data[0].x, y: el.data[0].y, title: el.layout.title.text}; }")
    assert trace["x"] == sorted(expected)
    np.testing.assert_allclose(trace["y"], [expected[s] for s in sorted(expected)], rtol=1e-6)
    assert "RankMe" in trace["title"]
    assert page.locator("#artifacts tbody tr").count() == 3
    shot(page, "run")

    page.click("#artifacts tbody tr >> nth=0 >> a.status")
    page.wait_for_selector(".plot .main-svg")
    spectrum = page.evaluate("() => { const el = document.querySelector('.plot'); "
                             "return {n: el.data[0].y.length, type: el.layout.yaxis.type}; }")
    first = repscope.Client(url).evaluation(finished[0].id)
    positive = [v for v in first.result["figures"]["singular_values"] if v > 0]  # log axis drops zeros
    assert spectrum == {"n": len(positive), "type": "log"} and len(positive) >= 20
    assert page.locator("#status-text").inner_text() == "succeeded"
    assert page.locator("#metrics").inner_text().count("rankme") >= 1
    shot(page, "evaluation")
    page.close()


def test_sign_in_and_manage_tokens(chromium, instance):
    """Pages need a sign-in; an admin creates a token on /admin/tokens (shown once), it works, and is revoked."""
    url = instance
    page = chromium.new_page(viewport=VIEWPORT)
    page.goto(url + "/jobs")
    page.wait_for_url(re.compile(r".*/login\?next=%2Fjobs$"))
    page.fill("#token", "rs_not-a-real-token")
    page.click("#sign-in")
    assert "not valid" in page.locator("#login-error").inner_text()
    shot(page, "login")
    page.fill("#token", ADMIN_TOKEN)
    page.click("#sign-in")
    page.wait_for_url(url + "/jobs")
    cookie = next(c for c in page.context.cookies() if c["name"] == "repscope_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and ADMIN_TOKEN not in cookie["value"]

    page.click("text=Tokens")
    page.wait_for_selector("#tokens")
    page.fill("#token-name", "browser-bot")
    page.check('input[name="scopes"][value="write"]')
    page.click("#create-token")
    secret = page.locator("#token-secret").inner_text().strip()
    assert repscope.Client(url, token=secret).http.get("/whoami").json()["scopes"] == ["read", "write"]
    shot(page, "admin-tokens")
    asked: list[str] = []  # the confirm comes from static/confirm.js (the CSP allows no inline handler)
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept()))
    page.click('tr[data-token="browser-bot"] button')
    page.wait_for_url(url + "/admin/tokens")
    assert asked == ["Revoke browser-bot? Clients using it stop working at once."]
    assert page.locator('tr[data-token="browser-bot"]').count() == 0
    assert repscope.Client(url, token=secret).http.get("/runs").status_code == 401

    page.click("text=Sign out")
    page.wait_for_url(re.compile(r".*/login$"))
    page.goto(url + "/")
    page.wait_for_url(re.compile(r".*/login\?next=%2F$"))
    page.close()


def test_failed_evaluation_page_shows_error(browser, instance):
    """A failing evaluation shows its status and readable error, on its page and on the jobs page."""
    url = instance
    client = repscope.Client(url)
    run = client.run(project="browser-fail", name="r")
    # a tiny matrix is valid input; claim it before the worker does and fail it by hand
    ids = run.log_embeddings(step=1, embeddings=np.ones((3, 2), dtype=np.float32))
    claimed = client.claim(ids[0], "test-harness")
    if claimed is not None:
        client.report(ids[0], claim=claimed.claim, status="failed", error="RuntimeError: CUDA out of memory (test)")
    ev = client.wait(ids, raise_on_failure=False, timeout=60)[0]
    page = browser.new_page()
    page.goto(f"{url}/evaluations/{ids[0]}")
    assert page.locator("#status-text").inner_text() == ev.status
    if ev.status == "failed":
        assert "CUDA out of memory" in page.locator("#error").inner_text()
        page.goto(f"{url}/jobs")
        assert "CUDA out of memory" in page.locator("#jobs-failed").inner_text()
    page.close()


def test_pool_scan_page_draws_roc_histograms_and_top_samples(browser, instance):
    """A pool with 8 planted rows (a tight far-away group): the evaluation page draws one ROC curve per score
    from the result, the histogram of each score, and the top-suspicious table whose first rows are the
    planted ones."""
    url = instance
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 16)).astype(np.float32)
    poison = np.zeros(400, dtype=np.int64)
    planted = rng.choice(400, 8, replace=False)
    poison[planted] = 1
    z[planted] = 4.0 + 0.01 * rng.normal(size=(8, 16))
    run = repscope.Client(url).run(project="browser-pool", name="poisoned")
    ids = run.log_embeddings(step=1, embeddings=z, poison=poison, suites=["backdoor"])
    ev = repscope.Client(url).wait(ids, timeout=120)[0]
    assert ev.status == "succeeded", ev.error
    figs = ev.result["figures"]
    page = browser.new_page(viewport=VIEWPORT)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{url}/evaluations/{ids[0]}")
    page.wait_for_function("() => [...document.querySelectorAll('.plot')].every(el => el.data)")
    drawn = page.evaluate("() => [...document.querySelectorAll('.plot')].map(el => ({title: el.layout.title.text, "
                          "traces: el.data.map(t => ({name: t.name, y: t.y}))}))")
    titles = [d["title"] for d in drawn]
    roc = next(d for d in drawn if d["title"].startswith("Pool scan: ROC"))
    assert [t["name"] for t in roc["traces"]][:-1] == list(figs["roc"])
    assert roc["traces"][0]["y"] == figs["roc"][roc["traces"][0]["name"]]["tpr"]
    assert any(t.startswith("Pool scan: score histogram") for t in titles)
    first = page.locator("#top-suspicious details[open]")
    assert first.count() == 1
    score = first.get_attribute("data-score")
    rows = first.locator("tbody tr")
    top = figs["top_suspicious"][score]
    assert rows.count() == len(top["indices"])
    shown_rows = [int(rows.nth(i).locator("td").nth(1).inner_text()) for i in range(8)]
    assert shown_rows == top["indices"][:8]
    assert set(shown_rows) == {int(i) for i in planted}  # the planted group leads every label-free ranking here
    assert all(rows.nth(i).locator("td").nth(3).inner_text() == "yes" for i in range(8))
    shot(page, "evaluation-pool-scan")
    assert not errors, errors
    page.close()


def test_run_page_updates_live_without_reload(browser, instance):
    """Queued work appears, progresses and lands on the chart while the page stays loaded."""
    url = instance
    run = repscope.Client(url).run(project="browser-live", name="live")
    z0 = structured_embeddings(300, 24, seed=1, decay=0.6)
    run.log_embeddings(step=10, embeddings=z0)
    run.wait(timeout=120)
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{url}/runs/{run.id}")
    page.wait_for_selector("#run-charts .plot .main-svg")
    page.evaluate("() => { window.__notReloaded = true; }")
    z1 = structured_embeddings(300, 24, seed=2, decay=0.9)
    ids = run.log_embeddings(step=20, embeddings=z1)
    page.wait_for_selector(f'[data-evaluation-id="{ids[0]}"]', timeout=20_000)  # the new row, live
    page.wait_for_selector(f'[data-evaluation-id="{ids[0]}"].succeeded', timeout=120_000)
    page.wait_for_function("() => document.querySelector('#run-charts .plot').data[0].x.length === 2",
                           timeout=20_000)
    assert page.evaluate("() => window.__notReloaded") is True
    trace = plot_data(page, "#run-charts .plot")["traces"][0]
    assert trace["x"] == [10, 20]
    np.testing.assert_allclose(trace["y"], [rankme_numpy(z0), rankme_numpy(z1)], rtol=1e-6)
    page.close()


def test_upload_page_drag_and_drop_with_progress(browser, instance):
    url = instance
    z = structured_embeddings(3000, 128, seed=5, decay=0.97)
    buf = io.BytesIO()
    np.save(buf, z)
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(f"{url}/upload")
    page.wait_for_function("() => Number(document.getElementById('upload-form').dataset.datasets) > 0")
    assert page.locator("#dataset-options option").count() >= 1  # from GET /api/v1/datasets
    page.fill("#project", "browser-upload")
    page.fill("#run", "dropped")
    page.fill("#step", "1500")
    page.check('input[name="suites"][value="spectrum"]')
    page.evaluate("""([b64, name]) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: "application/octet-stream"}));
        const zone = document.getElementById("drop");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [base64.b64encode(buf.getvalue()).decode(), "emb_step1500.npy"])
    assert "emb_step1500.npy" in page.locator("#drop-text").inner_text()
    page.check('input[name="kind"][value="checkpoint"]')
    assert page.locator("#checkpoint-fields").is_visible()  # arch / pool / output / views
    page.check('input[name="kind"][value="embeddings"]')
    shot(page, "upload")
    page.click("#upload-button")
    page.wait_for_url(re.compile(r".*/evaluations/\d+$"), timeout=30_000)
    progress = page.evaluate("() => JSON.parse(sessionStorage.getItem('repscope-upload'))")
    assert progress["loaded"] == progress["total"] >= len(buf.getvalue()) and progress["events"] >= 1
    page.wait_for_selector("#metrics", timeout=120_000)  # the page reloads once, when the evaluation finished
    page.wait_for_selector(".plot .main-svg")
    assert page.locator("#status-text").inner_text() == "succeeded"
    shown = float(page.locator('#metrics tr:has(td:text-is("rankme")) td.num').inner_text())
    assert shown == pytest.approx(rankme_numpy(z), rel=1e-5)
    shot(page, "evaluation-uploaded")
    page.close()


def test_demo_project_compare_leaderboard_and_selection(browser, demo):
    stats = pytest.importorskip("scipy.stats")
    url, summary = demo
    names = [r["name"] for r in summary["runs"]]
    last = {name: summary["linear_top1"][name][-1][1] for name in names}
    rank_last = {name: summary["rankme"][name][-1][1] for name in names}
    assert all(len(summary["linear_top1"][n]) == 2 for n in names)  # real probe results at both steps

    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url + "/")
    assert page.locator("#projects").inner_text().count("demo") >= 1
    page.click('#projects a:text-is("demo")')
    page.wait_for_selector("#runs")
    # sort by the latest linear probe accuracy: click the column header (server-side, SQL)
    page.click('#runs th[data-sort-key="linear_top1"] a')
    page.wait_for_selector('#runs th[data-sort-key="linear_top1"].sorted')
    shown = page.locator("#runs tbody td:nth-child(2)").all_inner_texts()
    ids = {r["name"]: r["id"] for r in summary["runs"]}
    assert shown == sorted(names, key=lambda n: (-last[n], -ids[n]))  # ties: newest run first
    shot(page, "demo-project")

    # pick every run for comparison
    assert page.locator("#compare-button").is_disabled()
    for checkbox in page.locator('#runs input[name="run"]').all():
        checkbox.check()
    assert page.locator("#compare-button").is_enabled()
    page.click("#compare-button")
    page.wait_for_selector("#radar .main-svg")
    curves = plot_data(page, "#curves .plot")
    assert curves["title"].startswith("RankMe")
    by_name = {t["name"]: t for t in curves["traces"]}
    assert set(by_name) == set(shown)
    for name in names:
        assert by_name[name]["x"] == [s for s, _ in summary["rankme"][name]]
        np.testing.assert_allclose(by_name[name]["y"], [v for _, v in summary["rankme"][name]])
    spectra = plot_data(page, "#spectra")
    assert len(spectra["traces"]) == 3 and all(t["y"][0] == 1.0 for t in spectra["traces"])
    radar = plot_data(page, "#radar")
    assert {t["type"] for t in radar["traces"]} == {"scatterpolar"} and len(radar["traces"]) == 3
    rows = page.locator("#diff tbody tr")
    visible_before = sum(r.is_visible() for r in rows.all())
    page.check("#only-diff")
    visible_after = sum(r.is_visible() for r in rows.all())
    same = page.locator('#diff tbody tr[data-same="1"]').count()
    assert same >= 1 and visible_after == visible_before - same  # e.g. config.batch_size and method are equal
    shot(page, "compare")

    # leaderboard of the demo dataset, sorted by RankMe, exported as CSV
    page.goto(f"{url}/leaderboards/{summary['dataset']}?project=demo")
    page.wait_for_selector("#leaderboard")
    assert page.locator("#leaderboard tbody tr").count() == 3
    page.click('#leaderboard th[data-sort-key="rankme"] a')
    page.wait_for_selector('#leaderboard th[data-sort-key="rankme"].sorted')
    order = page.locator("#leaderboard tbody td:nth-child(3)").all_inner_texts()
    assert order == sorted(names, key=lambda n: -rank_last[n])
    shot(page, "leaderboard")
    with page.expect_download() as download:
        page.click("#export-csv")
    table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [r["run"] for r in table] == order
    for row in table:
        assert float(row["rankme"]) == pytest.approx(rank_last[row["run"]], rel=1e-12)
        assert float(row["linear_top1"]) == pytest.approx(last[row["run"]], rel=1e-12)
    borda = {r["run"]: float(r["borda"]) for r in table}
    assert sum(borda.values()) == pytest.approx(3 * 3)  # 3 metrics x C(3, 2) pairs, each pair worth 1 point

    # label-free selection: ρ and τ over the 6 checkpoints match scipy
    page.goto(f"{url}/projects/demo/selection?probe=linear_top1")
    page.wait_for_selector("#selection-charts .plot .main-svg")
    xs = [v for n in names for _, v in summary["rankme"][n]]
    ys = [v for n in names for _, v in summary["linear_top1"][n]]
    row = page.locator('#agreement tr[data-key="rankme"]')
    assert row.locator(".rho").inner_text() == f"{stats.spearmanr(xs, ys).statistic:.3f}"
    assert row.locator(".tau").inner_text() == f"{stats.kendalltau(xs, ys).statistic:.3f}"
    scatter = plot_data(page, "#selection-charts .plot")
    assert "Spearman" in scatter["title"] and sum(len(t["x"]) for t in scatter["traces"]) == 6
    shot(page, "selection")

    # run page of a demo run: grouped charts over step, probes included
    page.goto(f"{url}/runs/{summary['runs'][0]['id']}")
    page.wait_for_selector("#run-charts .plot .main-svg")
    titles = page.evaluate("() => [...document.querySelectorAll('#run-charts .plot')].map(e => e.layout.title.text)")
    assert titles[0].startswith("Effective rank") and any(t.startswith("Linear probe accuracy") for t in titles)
    assert any(t.startswith("k-NN accuracy") for t in titles)
    shot(page, "demo-run")

    for path, name, selector in (("/jobs", "jobs", "#workers"), ("/datasets", "datasets", "#datasets"),
                                 ("/leaderboards", "leaderboards", "#boards")):
        page.goto(url + path)
        page.wait_for_selector(selector)
        shot(page, name)
    assert "cpu" in page.goto(url + "/jobs").text() and page.locator("#workers tbody tr").count() >= 1
    assert page.locator("#jobs-queued").inner_text().count("Nothing queued") == 1
    page.goto(url + "/datasets")
    assert page.locator('#datasets tr[data-kind="builtin"]').count() >= 1
    page.close()

    # the same compare page in dark mode
    dark = browser.new_page(viewport=VIEWPORT, color_scheme="dark")
    ids = "&".join(f"run={r['id']}" for r in summary["runs"])
    dark.goto(f"{url}/compare?{ids}")
    dark.wait_for_selector("#radar .main-svg")
    time.sleep(0.3)
    font = dark.evaluate("() => document.querySelector('#curves .plot')._fullLayout.font.color")
    assert font == "#e6e6e6"
    shot(dark, "compare-dark")
    dark.close()


# Collects Content-Security-Policy violations (the browser fires this event for each refused script, style,
# eval, image or frame) before any page script runs.
CSP_PROBE = ("window.__csp = []; document.addEventListener('securitypolicyviolation', (e) => window.__csp.push("
             "`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));")


def test_pages_run_under_the_csp_with_no_cloud_buttons(browser, chromium, demo):
    """Every page, with its charts, works under the Content-Security-Policy with no violation; no chart offers
    to send its data to Plotly's cloud; a scalar logged under a metric's name gets its own chart, first."""
    url, summary = demo
    first = summary["runs"][0]
    client = repscope.Client(url)
    client.run(project="demo", name=first["name"], background=False).log_metrics(summary["runs"][0]["steps"][-1],
                                                                                  rankme=123.0)
    ids = "&".join(f"run={r['id']}" for r in summary["runs"])
    pages = [("/", "#projects"), ("/projects/demo", "#runs"), (f"/runs/{first['id']}", "#run-charts .main-svg"),
             (f"/compare?{ids}", "#radar .main-svg"), ("/projects/demo/selection?probe=linear_top1", ".main-svg"),
             (f"/leaderboards/{summary['dataset']}", "#leaderboard"), ("/leaderboards", "#boards"),
             (f"/evaluations/{first['evaluations'][0]}", ".main-svg"), ("/jobs", "#workers"),
             ("/datasets", "#datasets"), ("/upload", "#upload-form"), ("/admin/tokens", "#tokens"),
             ("/docs", ".swagger-ui .opblock"), ("/redoc", "redoc h1")]
    console: list[str] = []
    page = browser.new_page(viewport=VIEWPORT)
    page.add_init_script(CSP_PROBE)
    page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"uncaught: {e}"))
    for path, selector in pages:
        response = page.goto(url + path)
        assert response.status == 200 and "frame-ancestors 'none'" in response.headers["content-security-policy"]
        page.wait_for_selector(selector, timeout=30_000)
        time.sleep(0.2)
        violations = page.evaluate("() => window.__csp")
        if path == "/redoc":  # ReDoc's sidebar always asks a CDN for its "by Redocly" logo: the CSP stops it
            violations = [v for v in violations if not v.startswith("img-src https://cdn.redoc.ly/")]
        assert violations == [], path
        for plot in page.locator(".js-plotly-plot").all()[:3]:  # the modebar appears on hover
            plot.hover()
            ctx = plot.evaluate("el => ({cloud: el._context.showSendToCloud, logo: el._context.displaylogo, "
                                "server: el._context.plotlyServerURL})")
            assert ctx == {"cloud": False, "logo": False, "server": ""}, path
        if page.locator(".js-plotly-plot").count():
            titles = page.evaluate("() => [...document.querySelectorAll('.modebar-btn')].map(b => b.dataset.title)")
            assert titles and not [t for t in titles if "cloud" in t.lower() or "share" in t.lower()
                                   or "chart studio" in t.lower()], (path, titles)
            assert page.locator(".modebar-btn--logo").count() == 0
    assert not [m for m in console if ("Content Security Policy" in m and "cdn.redoc.ly" not in m)
                or "uncaught" in m], console

    page.goto(f"{url}/runs/{first['id']}")
    page.wait_for_selector("#run-charts .plot .main-svg")
    charts = page.evaluate("() => [...document.querySelectorAll('#run-charts .plot')].map(e => "
                           "({title: e.layout.title.text, traces: e.data.map(t => [t.name, t.x, t.y])}))")
    assert charts[0]["title"].startswith("logged: rankme")
    assert charts[0]["traces"] == [["logged: rankme", [first["steps"][-1]], [123.0]]]
    effective = next(c for c in charts if c["title"].startswith("Effective rank"))
    rankme = next(t for t in effective["traces"] if t[0].startswith("RankMe"))
    assert rankme[1] == [s for s, _ in summary["rankme"][first["name"]]]
    np.testing.assert_allclose(rankme[2], [v for _, v in summary["rankme"][first["name"]]])
    page.close()

    framed = chromium.new_page()  # a page of another origin cannot frame the dashboard
    framed.set_content(f'<iframe id="f" src="{url}/login"></iframe>')
    time.sleep(1.0)
    assert framed.frame_locator("#f").locator("#token").count() == 0
    framed.close()
