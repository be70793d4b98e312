"""HTML pages over the real app: status codes and the content a user must see."""

from __future__ import annotations

import html
import io
import json
import re

import numpy as np

from worker.suites.spectrum import run_spectrum


def upload_and_finish(api, run_id: int, step: int, z: np.ndarray) -> int:
    buf = io.BytesIO()
    np.save(buf, z)
    body = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": str(step)},
                    files={"file": ("z.npy", buf.getvalue())}).json()
    eid = body["evaluations"][0]["id"]
    lease = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "test"}).json()["claim"]
    result = {**run_spectrum(z, device="cpu").to_json(), "claim": lease}
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


# --- the dashboard -------------------------------------------------------------------------------------------

def _figures(text: str) -> list[dict]:
    return [json.loads(html.unescape(m)) for m in re.findall(r"data-figure='([^']*)'", text)]


def _run_names(html: str) -> list[str]:
    return re.findall(r'<td><a href="/runs/\d+">([^<]+)</a></td>', html)


def _seed_runs_in_bulk(app, n_runs: int, seed: int = 0) -> dict[str, dict[str, float | None]]:
    """n_runs runs x 2 steps x (rankme, linear_top1) rows, inserted in bulk; returns each run's latest values."""
    from sqlalchemy import insert

    from backend.models import Artifact, Evaluation, Metric, Project, Run

    rng = np.random.default_rng(seed)
    latest_rank, latest_acc = rng.permutation(n_runs) / 7.0, rng.permutation(n_runs) / n_runs
    expected: dict[str, dict[str, float | None]] = {}
    runs, artifacts, evaluations, metrics = [], [], [], []
    with app.state.sessionmaker() as session:
        project = Project(name="huge")
        session.add(project)
        session.commit()
        for i in range(n_runs):
            rid = i + 1
            name = f"run-{i:05d}"
            runs.append({"id": rid, "project_id": project.id, "name": name, "config": {"lr": float(i)},
                         "tags": ["even" if i % 2 == 0 else "odd"]})
            has_acc = i % 7 != 3  # some runs never got probes: they sort last
            expected[name] = {"rankme": float(latest_rank[i]), "linear_top1": float(latest_acc[i]) if has_acc else None}
            for step in (100, 200):
                aid = 2 * i + (step // 100)
                artifacts.append({"id": aid, "run_id": rid, "step": step, "kind": "embeddings", "format": "npy",
                                  "sha256": f"{aid:064x}", "bytes": 0, "storage_key": f"k{aid}", "meta": {},
                                  "dataset": "val"})
                evaluations.append({"id": aid, "artifact_id": aid, "suite": "spectrum", "params": {},
                                    "status": "succeeded", "progress": 1.0, "attempts": 1})
                # the earlier step has larger values: a "max" instead of "latest" would sort differently
                rank = latest_rank[i] if step == 200 else latest_rank[i] + 10_000
                metrics.append({"evaluation_id": aid, "run_id": rid, "step": step, "key": "rankme", "value": rank})
                if has_acc:
                    acc = latest_acc[i] if step == 200 else 2.0 + latest_acc[i]
                    metrics.append({"evaluation_id": aid, "run_id": rid, "step": step, "key": "linear_top1",
                                    "value": acc})
        for model, rows in ((Run, runs), (Artifact, artifacts), (Evaluation, evaluations), (Metric, metrics)):
            session.execute(insert(model), rows)
        session.commit()
    return expected


def test_runs_table_of_10000_runs_sorts_and_pages_in_sql(app, api):
    import time

    n_runs = 10_000
    started = time.perf_counter()
    expected = _seed_runs_in_bulk(app, n_runs)
    seeded = time.perf_counter() - started

    def best_first(key: str, names: list[str]) -> list[str]:
        present = [n for n in names if expected[n][key] is not None]
        missing = [n for n in names if expected[n][key] is None]
        return sorted(present, key=lambda n: -expected[n][key]) + sorted(missing, reverse=True)  # then newest

    timings = {}
    for label, params in (("linear_top1", {"sort": "linear_top1"}), ("rankme", {"sort": "rankme"}),
                          ("tag+rankme asc", {"sort": "rankme", "order": "asc", "tag": "even"}),
                          ("last page", {"sort": "linear_top1", "page": 200})):
        api.get("/projects/huge", params=params)  # warm (first-request template compilation)
        t0 = time.perf_counter()
        page = api.get("/projects/huge", params=params)
        timings[label] = time.perf_counter() - t0
        assert page.status_code == 200
        names = _run_names(page.text)
        if label == "linear_top1":
            assert names == best_first("linear_top1", list(expected))[:50]
            assert f"{n_runs} runs" in page.text and "page 1 of 200" in page.text
        elif label == "rankme":
            assert names == best_first("rankme", list(expected))[:50]
        elif label == "tag+rankme asc":
            even = [n for n in expected if int(n[4:]) % 2 == 0]
            assert names == sorted(even, key=lambda n: expected[n]["rankme"])[:50]
            assert f"{len(even)} runs" in page.text
        else:
            tail = best_first("linear_top1", list(expected))[-50:]
            assert names == tail and all(expected[n]["linear_top1"] is None for n in names[-10:])
    print(f"\n10 000-run table: seeded {seeded:.2f} s; page render " +
          ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in timings.items()))
    assert max(timings.values()) < 5.0


def test_project_page_tag_filter_sort_links_and_compare_checkboxes(api):
    from tests.unit.test_leaderboards import make_run, post_metrics

    a = make_run(api, "alpha", project="p", tags=["baseline"])
    b = make_run(api, "beta", project="p", tags=["sweep"])
    post_metrics(api, a, 10, {"rankme": 3.0})
    post_metrics(api, b, 10, {"rankme": 7.0})
    page = api.get("/projects/p", params={"sort": "rankme"})
    assert _run_names(page.text) == ["beta", "alpha"]
    assert f'name="run" value="{a}"' in page.text and 'id="compare-button"' in page.text
    assert 'aria-sort="descending"' in page.text and "7.000" in page.text
    assert _run_names(api.get("/projects/p", params={"sort": "rankme", "order": "asc"}).text) == ["alpha", "beta"]
    assert _run_names(api.get("/projects/p", params={"tag": "sweep"}).text) == ["beta"]
    assert _run_names(api.get("/projects/p", params={"tag": "swe"}).text) == []  # tags match exactly
    assert _run_names(api.get("/projects/p", params={"q": "%"}).text) == []  # LIKE wildcards are literal


def test_run_page_groups_every_metric_and_live_json(api, run_id):
    from tests.unit.test_leaderboards import post_metrics

    for step, rank in ((100, 5.0), (200, 9.0)):
        post_metrics(api, run_id, step, {"rankme": rank, "stable_rank": rank / 2, "alpha_req": 1.1,
                                         "linear_top1": 0.5, "knn20_top1": 0.4, "knn10_top1": 0.45,
                                         "openset_fpr95_msp": 0.3, "backdoor_risk": 0.1, "equi_r2_mean": 0.7,
                                         "rankme@d16": rank / 3, "mystery": 1.0})
    page = api.get(f"/runs/{run_id}")
    assert page.status_code == 200
    titles = " | ".join(f["layout"]["title"]["text"] for f in _figures(page.text))
    for title in ("Effective rank over training", "α-ReQ", "Linear probe accuracy", "k-NN accuracy",
                  "Open-set FPR", "Backdoor risk", "Equivariance", "mystery over training",
                  "of nested prefixes"):
        assert title in titles, title
    live = api.get(f"/runs/{run_id}/live").json()
    assert live["pending"] is False and len(live["html"]["artifacts-body"]) > 0
    first = live["charts"][0]
    assert first["data"][0]["name"].startswith("RankMe") and first["data"][0]["y"] == [5.0, 9.0]
    knn = next(c for c in live["charts"] if c["layout"]["title"]["text"].startswith("k-NN"))
    assert [t["name"] for t in knn["data"]] == ["10-NN top-1", "20-NN top-1"]  # numeric order of k
    assert live["nested"][0]["data"][1]["name"] == "d = 16"
    # a queued upload shows up in the live fragment as queued
    buf = io.BytesIO()
    np.save(buf, np.eye(5, 3, dtype=np.float32))
    api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "300"}, files={"file": ("z.npy", buf.getvalue())})
    live = api.get(f"/runs/{run_id}/live").json()
    assert live["pending"] is True and "spectrum: queued" in live["html"]["artifacts-body"]
    assert "1 queued" in live["html"]["queue-summary"]


def test_compare_page(api):
    from tests.unit.test_leaderboards import make_run, post_metrics

    result = run_spectrum(np.random.default_rng(0).standard_normal((80, 16)).astype(np.float32), device="cpu")
    a = make_run(api, "a", project="cmp", config={"lr": 0.1, "opt": {"name": "sgd", "wd": 0.0}})
    b = make_run(api, "b", project="cmp", config={"lr": 0.3, "opt": {"name": "sgd", "wd": 0.0}})
    for rid, scale in ((a, 1.0), (b, 2.0)):
        for step in (1, 2):
            post_metrics(api, rid, step, {"rankme": scale * step, "alpha_req": 1.0 + scale / 10,
                                          "linear_top1": 0.3 * scale, "uniformity": -scale},
                         figures={"singular_values": [s * scale for s in result.figures["singular_values"]]})
    page = api.get("/compare", params={"run": [a, b]})
    assert page.status_code == 200
    figs = _figures(page.text)
    titles = [f["layout"]["title"]["text"] for f in figs]
    rank = figs[titles.index("RankMe (effective rank) over training")]
    assert [t["name"] for t in rank["data"]] == ["a", "b"] and rank["data"][1]["y"] == [2.0, 4.0]
    spectra = next(f for f in figs if f["layout"]["title"]["text"].startswith("Singular-value spectra"))
    assert [t["name"] for t in spectra["data"]] == ["a (step 2)", "b (step 2)"] and spectra["data"][0]["y"][0] == 1.0
    radar = next(f for f in figs if "polar" in f["layout"])
    assert radar["data"][0]["theta"][:4] == ["RankMe (effective rank)", "α-ReQ", "uniformity loss", "linear probe top-1"]
    # b: more RankMe (1), α further from 1 (0), lower = better uniformity (1), better accuracy (1); a the opposite
    assert radar["data"][1]["r"][:4] == [1.0, 0.0, 1.0, 1.0] and radar["data"][0]["r"][:4] == [0.0, 1.0, 0.0, 0.0]
    assert 'id="only-diff"' in page.text and "config.lr" in page.text
    assert re.search(r'class="same config" data-same="1">\s*<th scope="row">config.opt.name', page.text)
    assert re.search(r'class="differs config" data-same="0">\s*<th scope="row">config.lr', page.text)
    assert api.get("/compare", params={"run": [a]}).status_code == 400
    assert api.get("/compare", params={"run": [a, 999]}).status_code == 404


def test_leaderboard_selection_upload_jobs_and_datasets_pages(api):
    from tests.unit.test_leaderboards import make_run, post_metrics

    runs = [make_run(api, f"r{i}", project="sel") for i in range(3)]
    for i, rid in enumerate(runs):
        for step in (1, 2, 3):
            post_metrics(api, rid, step, {"rankme": step + i, "linear_top1": 0.1 * step + 0.01 * i},
                         dataset="val", worker="gpu-box-1", variant={"device": "cuda:0"})
    board = api.get("/leaderboards/val", params={"metric": ["rankme", "linear_top1"], "sort": "linear_top1"})
    assert board.status_code == 200 and 'id="leaderboard"' in board.text
    assert _run_names(board.text) == ["r2", "r1", "r0"]
    assert "format=csv" in board.text and "Borda" in board.text
    assert "val" in api.get("/leaderboards").text

    selection = api.get("/projects/sel/selection")
    assert selection.status_code == 200 and 'id="agreement"' in selection.text
    row = re.search(r'<tr data-key="rankme">.*?</tr>', selection.text, re.S).group(0)
    from backend.services.selection import kendall_tau_b, spearman_rho

    xs = [step + i for i in range(3) for step in (1, 2, 3)]
    ys = [0.1 * step + 0.01 * i for i in range(3) for step in (1, 2, 3)]
    assert f"{spearman_rho(xs, ys):.3f}" in row and f"{kendall_tau_b(xs, ys):.3f}" in row and "3 / 3" in row
    assert selection.text.count('class="plot"') == 1

    upload = api.get("/upload", params={"project": "sel"})
    assert upload.status_code == 200 and 'id="drop"' in upload.text and 'value="probes"' in upload.text
    assert 'src="/static/upload.js"' in upload.text and api.get("/static/upload.js").status_code == 200

    # jobs: a failed evaluation with its error, a retried one, the worker with its device
    failing = make_run(api, "bad", project="sel")
    buf = io.BytesIO()
    np.save(buf, np.ones((4, 2), dtype=np.float32))
    eid = api.post(f"/api/v1/runs/{failing}/artifacts", data={"step": "1"},
                   files={"file": ("z.npy", buf.getvalue())}).json()["evaluations"][0]["id"]
    lease = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "gpu-box-2"}).json()["claim"]
    api.patch(f"/api/v1/evaluations/{eid}",
              json={"claim": lease, "status": "failed", "error": "RuntimeError: CUDA out of memory"})
    jobs = api.get("/jobs")
    assert jobs.status_code == 200
    assert "CUDA out of memory" in jobs.text and "gpu-box-1" in jobs.text and "cuda:0" in jobs.text
    live = api.get("/jobs/live").json()
    assert "failed: <b>1</b>" in live["html"]["jobs-body"]

    datasets = api.get("/datasets")
    assert datasets.status_code == 200 and 'data-kind="builtin"' in datasets.text
    assert 'href="/leaderboards/val"' in datasets.text  # a free dataset name on embeddings


def test_run_live_sends_charts_only_when_metrics_changed(api, run_id):
    from tests.unit.test_leaderboards import post_metrics

    post_metrics(api, run_id, 1, {"rankme": 2.0})
    first = api.get(f"/runs/{run_id}/live").json()
    assert "charts" in first
    same = api.get(f"/runs/{run_id}/live", params={"since": first["version"]}).json()
    assert "charts" not in same and same["version"] == first["version"] and same["html"]["artifacts-body"]
    post_metrics(api, run_id, 2, {"rankme": 3.0})
    changed = api.get(f"/runs/{run_id}/live", params={"since": first["version"]}).json()
    assert changed["version"] != first["version"] and changed["charts"][0]["data"][0]["y"] == [2.0, 3.0]
