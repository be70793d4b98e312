"""Leaderboard scope (#20): boards per (project, dataset name) by default; the cross-project view ranks runs
together only when their dataset identity and embedding dimension d match; the old URL still answers; favicon."""

from __future__ import annotations

import csv
import hashlib
import io
import types

import numpy as np

from backend.services import leaderboards as lb
from tests.unit.test_leaderboards import make_run


def upload(api, run_id: int, step: int, *, d: int, n: int = 8, classes: int | None = None, dataset: str = "synth",
           rankme: float = 1.0) -> int:
    """Embeddings N x d (labels when `classes`) on `dataset`, their spectrum evaluation finished with `rankme`."""
    rng = np.random.default_rng(run_id * 1009 + step)
    arrays = {"embeddings": rng.standard_normal((n, d)).astype(np.float32)}
    if classes:
        arrays["labels"] = np.arange(n) % classes
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    response = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": str(step), "suites": "spectrum",
                                                                  "dataset": dataset},
                        files={"file": ("z.npz", buf.getvalue())})
    assert response.status_code == 202, response.text
    eid = response.json()["evaluations"][0]["id"]
    claim = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "t"}).json()["claim"]
    body = {"claim": claim, "metrics": {"rankme": rankme}, "variant": {}, "figures": {}}
    assert api.post(f"/api/v1/evaluations/{eid}/result", json=body).status_code == 200
    return eid


def seed_two_projects(api) -> dict[str, int]:
    """'synth' in two projects: simclr runs at d=4 (N=8), a synthetic run at d=6 (N=8), one more simclr-like run in
    project B at d=4 (N=8) and one at d=4 with N=12 (another dataset under the same name)."""
    runs = {"a1": make_run(api, "a1", project="A"), "a2": make_run(api, "a2", project="A"),
            "b128": make_run(api, "b128", project="B"), "b64": make_run(api, "b64", project="B"),
            "bN": make_run(api, "bN", project="B")}
    upload(api, runs["a1"], 1, d=4, rankme=3.0)
    upload(api, runs["a2"], 1, d=4, rankme=2.0)
    upload(api, runs["b128"], 1, d=6, rankme=99.0)  # larger d: a larger RankMe, never ranked against d=4
    upload(api, runs["b64"], 1, d=4, rankme=2.5)
    upload(api, runs["bN"], 1, d=4, n=12, rankme=50.0)
    return runs


def test_default_scope_is_one_project_and_the_old_url_asks_when_ambiguous(api):
    seed_two_projects(api)
    ambiguous = api.get("/api/v1/leaderboards/synth")
    assert ambiguous.status_code == 409 and ambiguous.json()["detail"]["projects"] == ["A", "B"]
    board = api.get("/api/v1/leaderboards/synth", params={"project": "A"}).json()
    assert [(r["project"], r["run"], r["rank"]) for r in board["rows"]] == [("A", "a1", 1), ("A", "a2", 2)]
    assert board["project"] == "A" and [(g["d"], g["verified"]) for g in board["groups"]] == [(4, False)]
    mixed = api.get("/api/v1/leaderboards/synth", params={"project": "B"}).json()
    assert sorted(g["d"] for g in mixed["groups"]) == [4, 4, 6]  # the page warns: three groups in one project
    index = api.get("/api/v1/leaderboards").json()
    assert [(b["project"], b["runs"]) for b in index if b["dataset"] == "synth"] == [("A", 2), ("B", 3)]
    # a name used by one project: the old URL answers that project's board
    only = make_run(api, "solo", project="C")
    upload(api, only, 1, d=4, dataset="solo-set")
    solo = api.get("/api/v1/leaderboards/solo-set").json()
    assert solo["project"] == "C" and [r["run"] for r in solo["rows"]] == ["solo"]
    assert api.get("/api/v1/leaderboards/nobody-uses-this").json()["rows"] == []


def test_cross_project_boards_never_mix_identity_or_d(api):
    runs = seed_two_projects(api)
    body = api.get("/api/v1/leaderboards/synth", params={"scope": "all"}).json()
    assert body["scope"] == "all"
    boards = {(g["identity"], g["d"]): g for g in body["boards"]}
    # (name, N=8, no labels, d=4) holds A's two runs and B's d=4 run; d=6 and N=12 are boards of their own
    assert sorted((g["d"], g["runs"]) for g in body["boards"]) == [(4, 1), (4, 3), (6, 1)]
    shared = boards[("name:synth:n=8:classes=None", 4)]
    assert shared["projects"] == ["A", "B"] and not shared["verified"]
    assert [(r["run"], r["rank"]) for r in shared["board"]["rows"]] == [("a1", 1), ("b64", 2), ("a2", 3)]
    for g in body["boards"]:  # every row of a board belongs to that group's artifacts only
        ids = {r["run_id"] for r in g["board"]["rows"]}
        assert ids <= set(runs.values()) and len(ids) == g["runs"]
    assert {r["run"] for r in boards[("name:synth:n=8:classes=None", 6)]["board"]["rows"]} == {"b128"}
    table = list(csv.DictReader(io.StringIO(api.get("/api/v1/leaderboards/synth",
                                                    params={"scope": "all", "format": "csv"}).text)))
    assert {(row["run"], row["d"]) for row in table} == {("a1", "4"), ("a2", "4"), ("b64", "4"), ("bN", "4"),
                                                         ("b128", "6")}
    index = api.get("/api/v1/leaderboards", params={"scope": "all"}).json()
    assert sorted((g["d"], g["runs"], g["artifacts"]) for g in index if g["dataset"] == "synth") == \
        [(4, 1, 1), (4, 3, 3), (6, 1, 1)]


def test_uploaded_labels_give_a_verified_identity(api):
    """Uploads with labels are identified by the sha256 of their labels (int64, little-endian) and N: the same
    labels in two projects share a board, other labels of the same name, N and d do not."""
    a, b, c = make_run(api, "x", project="P"), make_run(api, "y", project="Q"), make_run(api, "z", project="R")
    upload(api, a, 1, d=4, classes=2, dataset="lab")
    upload(api, b, 1, d=4, classes=4, dataset="lab")  # same name, N and d, other labels
    upload(api, c, 1, d=4, classes=2, dataset="lab")  # the same labels as run x, another project
    body = api.get("/api/v1/leaderboards/lab", params={"scope": "all"}).json()
    digest = {k: hashlib.sha256((np.arange(8) % k).astype("<i8").tobytes()).hexdigest() for k in (2, 4)}
    boards = {g["identity"]: (g["projects"], g["verified"]) for g in body["boards"]}
    assert boards == {f"labels-sha256:{digest[2]}:n=8": (["P", "R"], True),
                      f"labels-sha256:{digest[4]}:n=8": (["Q"], True)}


def test_identity_rules():
    reg = types.SimpleNamespace(sha256="ab" * 32)
    manifest = "manifest-v1:" + "cd" * 32
    assert lb.artifact_identity("f", {"n": 5, "d": 3}, True, reg, manifest) == lb.Identity(
        f"manifest:{manifest}", "server folder, manifest " + "cd" * 6, True)
    assert lb.artifact_identity("f", {"n": 5}, True, reg, None).key == "dataset-sha256:" + "ab" * 32
    hashed = lb.artifact_identity("f", {"n": 5, "labels_sha256": "ef" * 32}, False, reg, None)
    assert hashed.key == f"labels-sha256:{'ef' * 32}:n=5" and hashed.verified
    # an upload never takes a registered dataset's hash on its name alone
    weak = lb.artifact_identity("f", {"n": 5, "n_classes": 3}, False, reg, None)
    assert weak.key == "name:f:n=5:classes=3" and not weak.verified
    assert lb.artifact_identity(None, {"n": 2}, False, None, None).key == f"name:{lb.NO_DATASET}:n=2:classes=None"


def test_pages_redirect_chooser_cross_view_and_favicon(api):
    seed_two_projects(api)
    chooser = api.get("/leaderboards/synth")
    assert chooser.status_code == 200 and 'id="chooser"' in chooser.text
    assert 'href="/leaderboards/synth?project=A"' in chooser.text and "?scope=all" in chooser.text
    only = make_run(api, "solo", project="C")
    upload(api, only, 1, d=4, dataset="solo-set")
    moved = api.get("/leaderboards/solo-set", params={"metric": ["rankme"], "pick": "best"}, follow_redirects=False)
    assert moved.status_code == 307
    assert moved.headers["location"] == "/leaderboards/solo-set?metric=rankme&pick=best&project=C"
    scoped = api.get("/leaderboards/synth", params={"project": "B"}).text
    assert 'id="board-identity"' in scoped and "d = 6" in scoped and "3 (identity, d) groups" in scoped
    cross = api.get("/leaderboards/synth", params={"scope": "all"}).text
    assert cross.count('class="board-group"') == 3 and 'class="table-wrap"' in cross
    assert "scope=all" in cross and "d = 4" in cross
    index = api.get("/leaderboards").text
    assert 'href="/leaderboards/synth?project=A"' in index and 'href="/leaderboards/synth?project=B"' in index
    assert "unverified" in api.get("/leaderboards", params={"scope": "all"}).text
    icon = api.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.content.startswith(b"<svg") and 'rel="icon"' in index


def test_cli_project_and_cross_project(api, app, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from repscope import cli
    from tests.conftest import ADMIN_HEADERS

    seed_two_projects(api)
    http = TestClient(app, base_url="http://testserver/api/v1", headers=ADMIN_HEADERS)
    monkeypatch.setattr(cli, "_client", lambda args: types.SimpleNamespace(http=http))
    parser = cli.build_parser()

    def run(*argv: str) -> int:
        args = parser.parse_args(["leaderboard", *argv])
        return args.func(args)

    assert run("synth") == 1
    assert "projects: A, B" in capsys.readouterr().err
    assert run("synth", "--project", "A") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["A/a1", "A/a2"]
    assert run("synth", "--cross-project") == 0
    out = capsys.readouterr().out
    assert out.count("board ") == 3 and "d=6" in out and "projects A, B" in out
