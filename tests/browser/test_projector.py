"""The embedding projector in a real browser: Playwright drives the system Chromium against one live `repscope
serve` (fixtures as tests/browser/test_pages.py). A generated dataset of three well-separated clusters with known
labels is uploaded at two steps with suites=projector; the worker projects it; the pages draw every point with
Plotly scattergl (WebGL) in the colour backend/projector.py assigns its label, under the Content-Security-Policy,
with no console error on any page. Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import time

import numpy as np
import pytest

import repscope
from backend.projector import POISON_COLORS, label_color
from tests.browser.test_pages import (
    ARTIFACTS,
    CHROMIUM,
    CHROMIUM_ARGS,
    CSP_PROBE,
    VIEWPORT,
    SignedInBrowser,
    shot,
    sign_in,
)
from tests.conftest import ADMIN_TOKEN
from tests.integration.procs import base_env, free_port, start_serve, wait_healthy

pytestmark = pytest.mark.integration

N_PER = 200
LABELS = (1, 4, 12)  # label 12 takes palette entry 2: the mapping is by value, not by rank
D = 24


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
    tmp = tmp_path_factory.mktemp("projector")
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


def three_clusters(seed: int, spread: float) -> dict[str, np.ndarray]:
    """Three Gaussian clusters 30 apart (unit spread times `spread`), labelled LABELS, rows shuffled; 6 rows
    flagged poisoned, a fifth of the rows in the test split."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(LABELS), N_PER)
    centres = np.zeros((3, D))
    for i in range(3):
        centres[i, i] = 30.0
    z = centres[np.repeat(np.arange(3), N_PER)] + spread * rng.standard_normal((3 * N_PER, D))
    order = rng.permutation(3 * N_PER)
    poison = np.zeros(3 * N_PER, dtype=np.int64)
    poison[rng.choice(3 * N_PER, 6, replace=False)] = 1
    split = (rng.random(3 * N_PER) < 0.2).astype(np.int64)
    return {"embeddings": z[order].astype(np.float32), "labels": labels[order], "poison": poison, "split": split}


@pytest.fixture(scope="module")
def projected(instance):
    """One run, steps 1 and 2 (the clusters tighten), each evaluated by the projector suite."""
    client = repscope.Client(instance)
    run = client.run(project="browser-projector", name="clusters")
    data = {1: three_clusters(0, 3.0), 2: three_clusters(1, 1.0)}
    ids = {}
    for step, arrays in data.items():
        ids[step] = run.log_embeddings(step=step, embeddings=arrays["embeddings"], labels=arrays["labels"],
                                       split=arrays["split"], poison=arrays["poison"], suites=["projector"])[0]
    evaluations = {s: ev for s, ev in zip(ids, client.wait(list(ids.values()), timeout=180), strict=True)}
    for ev in evaluations.values():
        assert ev.status == "succeeded", ev.error
    return instance, run, data, evaluations


class Watch:
    """Console errors and warnings, uncaught exceptions and CSP violations of one page, over navigations."""

    def __init__(self, page) -> None:  # noqa: ANN001
        self.page, self.console = page, []
        page.add_init_script(CSP_PROBE)
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console.append(f"uncaught: {e}"))

    def check(self, where: str) -> None:
        violations = self.page.evaluate("() => window.__csp")
        assert violations == [], (where, violations)
        assert self.console == [], (where, self.console)
        assert self.page.locator("text=WebGL is not supported").count() == 0, where


def drawn(page, selector: str) -> dict:  # noqa: ANN001
    return page.evaluate("""(sel) => { const el = document.querySelector(sel); return {
        title: el.layout.title.text, gl: Boolean(el._fullLayout._glcanvas),
        traces: el.data.map(t => ({type: t.type, name: t.name, x: t.x, y: t.y, rows: t.customdata, text: t.text,
                                   color: t.marker.color}))}; }""", selector)


def wait_drawn(page, selector: str, state: str) -> None:  # noqa: ANN001
    page.wait_for_selector(f'{selector}[data-drawn="{state}"]', timeout=30_000)


def colour_pixels(png: bytes, colour: str, tol: int = 12) -> int:
    """How many pixels of a screenshot lie within `tol` of `colour` in every channel."""
    from PIL import Image

    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img - rgb).max(axis=2) <= tol).sum())


def hover_outlier(page, selector: str, fig: dict) -> dict:  # noqa: ANN001
    """Move the mouse onto the point of the first trace farthest from its cluster's centre (so no other point
    is nearer) and read Plotly's hover label: {"name": trace name, "text": the label's lines}."""
    t = fig["traces"][0]
    xy = np.c_[t["x"], t["y"]]
    i = int(np.linalg.norm(xy - xy.mean(axis=0), axis=1).argmax())
    at = page.evaluate("""([sel, x, y]) => { const el = document.querySelector(sel), L = el._fullLayout;
        const box = el.getBoundingClientRect();
        return [box.left + L._size.l + L.xaxis.l2p(x), box.top + L._size.t + L.yaxis.l2p(y)]; }""",
                       [selector, t["x"][i], t["y"][i]])
    page.mouse.move(*at)
    label = page.wait_for_selector(f"{selector} .hoverlayer .hovertext", timeout=10_000)
    return {"name": t["name"], "text": label.text_content()}  # SVG: its lines run together


def assert_clusters_drawn(fig: dict, arrays: dict[str, np.ndarray], n: int) -> None:
    """Every row drawn once, in the trace of its label, coloured label_color(label); each label's points form
    their own cluster (every point is nearer its own trace's centre than any other)."""
    assert {t["type"] for t in fig["traces"]} == {"scattergl"} and fig["gl"]
    assert sum(len(t["x"]) for t in fig["traces"]) == n
    assert sorted(r for t in fig["traces"] for r in t["rows"]) == list(range(n))
    assert [t["name"] for t in fig["traces"]] == [f"label {v}" for v in sorted(LABELS)]
    centres = []
    for t in fig["traces"]:
        value = int(t["name"].split()[1])
        assert t["color"] == label_color(value)
        assert set(arrays["labels"][t["rows"]]) == {value} and set(t["text"]) == {str(value)}
        centres.append(np.c_[t["x"], t["y"]].mean(axis=0))
    for i, t in enumerate(fig["traces"]):
        xy = np.c_[t["x"], t["y"]]
        nearest = np.linalg.norm(xy[:, None, :] - np.array(centres)[None], axis=2).argmin(axis=1)
        assert (nearest == i).all(), t["name"]


def test_projector_draws_every_point_in_its_label_colour(browser, projected):
    url, run, data, evaluations = projected
    ev, arrays, n = evaluations[2], data[2], 3 * N_PER
    figs = ev.result["figures"]
    page = browser.new_page(viewport=VIEWPORT)
    watch = Watch(page)
    page.goto(f"{url}/evaluations/{ev.id}")
    wait_drawn(page, "#projector-plot-0", "pca:label")
    fig = drawn(page, "#projector-plot-0")
    assert fig["title"] == "step 2 · PCA"
    assert_clusters_drawn(fig, arrays, n)
    by_row = {r: (x, y) for t in fig["traces"] for r, x, y in zip(t["rows"], t["x"], t["y"], strict=True)}
    pca = figs["projections"]["pca"]
    assert [by_row[r] for r in range(n)] == list(zip(pca["x"], pca["y"], strict=True))  # the result's numbers
    png = page.locator("#projector-plot-0").screenshot()
    for value in LABELS:  # the WebGL canvas really shows each label's colour
        assert colour_pixels(png, label_color(value)) > 100, value
    hovered = hover_outlier(page, "#projector-plot-0", fig)
    value = int(hovered["name"].split()[1])
    row = int(re.search(r"row (\d+)", hovered["text"]).group(1))
    assert f"label {value}" in hovered["text"] and arrays["labels"][row] == value, hovered
    shot(page, "projector-evaluation")

    page.select_option("#projector-color", "poison")
    wait_drawn(page, "#projector-plot-0", "pca:poison")
    fig = drawn(page, "#projector-plot-0")
    assert [(t["name"], t["color"]) for t in fig["traces"]] == [("clean", POISON_COLORS[0]),
                                                                 ("poisoned", POISON_COLORS[1])]
    assert sorted(fig["traces"][1]["rows"]) == np.flatnonzero(arrays["poison"]).tolist()

    page.select_option("#projector-color", "density")
    wait_drawn(page, "#projector-plot-0", "pca:density")
    fig = drawn(page, "#projector-plot-0")
    assert len(fig["traces"]) == 1 and fig["traces"][0]["color"] == figs["density"]
    shot(page, "projector-density")

    # the embedded worker shares this interpreter: with umap-learn installed, UMAP must have run (600 rows)
    assert ("umap" in figs["projections"]) == (importlib.util.find_spec("umap") is not None), ev.result["warnings"]
    if "umap" in figs["projections"]:  # the clusters stay apart there too
        page.select_option("#projector-color", "label")
        page.select_option("#projector-projection", "umap")
        wait_drawn(page, "#projector-plot-0", "umap:label")
        fig = drawn(page, "#projector-plot-0")
        assert fig["title"] == "step 2 · UMAP"
        assert_clusters_drawn(fig, arrays, n)
        shot(page, "projector-umap")
    watch.check("evaluation page")
    page.close()


def test_two_steps_side_by_side_and_no_console_errors_anywhere(browser, projected):
    url, run, data, evaluations = projected
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    watch = Watch(page)
    page.goto(f"{url}/runs/{run.id}")
    page.click("text=embedding projector")
    wait_drawn(page, "#projector-plot-0", "pca:label")
    wait_drawn(page, "#projector-plot-1", "pca:label")
    assert page.locator(".projector-plot").count() == 2
    for i, step in enumerate((1, 2)):
        fig = drawn(page, f"#projector-plot-{i}")
        assert fig["title"] == f"step {step} · PCA"
        assert_clusters_drawn(fig, data[step], 3 * N_PER)
    page.select_option("#projector-color", "density")  # one selector recolours both, on one colour range
    wait_drawn(page, "#projector-plot-0", "pca:density")
    wait_drawn(page, "#projector-plot-1", "pca:density")
    ranges = page.evaluate("() => [0, 1].map(i => { const m = document.querySelector(`#projector-plot-${i}`)"
                           ".data[0].marker; return [m.cmin, m.cmax]; })")
    every = evaluations[1].result["figures"]["density"] + evaluations[2].result["figures"]["density"]
    assert ranges[0] == ranges[1] == [min(every), max(every)]
    shot(page, "projector-side-by-side")
    watch.check("side by side")

    pages = [("/", "#projects"), ("/projects/browser-projector", "#runs"), (f"/runs/{run.id}", "#run-charts"),
             ("/jobs", "#workers"), ("/datasets", "#datasets"), ("/leaderboards", "#boards"),
             ("/upload", "#upload-form"), (f"/runs/{run.id}/projector?steps=2", "#projector-plot-0[data-drawn]")]
    for path, selector in pages:
        response = page.goto(url + path)
        assert response.status == 200, path
        page.wait_for_selector(selector, timeout=30_000)
        time.sleep(0.2)
        watch.check(path)
        if path == "/upload":  # the suite is offered for upload
            assert page.locator('input[name="suites"][value="projector"]').count() == 1
    page.close()
