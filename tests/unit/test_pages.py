"""HTML pages over the real app: status codes and the content a user must see."""

from __future__ import annotations

import io
import re

import numpy as np

from worker.suites.spectrum import run_spectrum


def upload_and_finish(api, run_id: int, step: int, z: np.ndarray) -> int:
    buf = io.BytesIO()
    np.save(buf, z)
    body = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": str(step)},
                    files={"file": ("z.npy", buf.getvalue())}).json()
    eid = body["evaluations"][0]["id"]
    api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "test"})
    result = run_spectrum(z, device="cpu").to_json()
    assert api.post(f"/api/v1/evaluations/{eid}/result", json=result).status_code == 200
    return eid


def test_pages_show_runs_metrics_and_spectrum(api, run_id):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((300, 64)) * 0.9 ** np.arange(64)).astype(np.float32)
    eid = upload_and_finish(api, run_id, 100, z)
    home = api.get("/")
    assert home.status_code == 200 and 'href="/projects/simclr"' in home.text
    project = api.get("/projects/simclr")
    assert project.status_code == 200 and f'href="/runs/{run_id}"' in project.text
    expected = run_spectrum(z, device="cpu").metrics["rankme"]
    assert f"{expected:.3f}" in project.text  # latest RankMe column
    run = api.get(f"/runs/{run_id}")
    assert run.status_code == 200 and "data-figure" in run.text and f"/evaluations/{eid}" in run.text
    page = api.get(f"/evaluations/{eid}")
    assert page.status_code == 200
    assert page.text.count('class="plot"') == 4  # spectrum, explained variance, alpha fit, nested prefixes
    assert 'id="nested"' in page.text and "d = 64" in page.text and "d = 16" in page.text
    assert "raw uncentered σ" in page.text  # the variant, readable (not \\u-escaped)


def test_project_search_and_pagination(api):
    for i in range(55):
        api.post("/api/v1/runs", json={"project": "big", "name": f"run-{i:02d}"})
    first = api.get("/projects/big")
    assert len(re.findall(r'href="/runs/\d+"', first.text)) == 50 and "page 1 of 2" in first.text
    second = api.get("/projects/big", params={"page": 2})
    assert len(re.findall(r'href="/runs/\d+"', second.text)) == 5
    found = api.get("/projects/big", params={"q": "run-07"})
    assert len(re.findall(r'href="/runs/\d+"', found.text)) == 1


def test_missing_pages_are_html_404_and_api_is_json(api):
    page = api.get("/runs/12345")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    assert "run 12345 does not exist" in page.text
    api_response = api.get("/api/v1/runs/12345")
    assert api_response.status_code == 404 and api_response.json() == {"detail": "run 12345 does not exist"}


def test_plotly_served_locally(api):
    js = api.get("/static/vendor/plotly.min.js")
    assert js.status_code == 200 and "plotly" in js.text[:2000].lower() and len(js.content) > 1_000_000
