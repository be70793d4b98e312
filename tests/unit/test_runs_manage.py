"""Runs management (issue #20) on the real app: get-or-create config conflicts, rename / notes / tags / archive,
and delete with its evaluations, metrics, artifacts and the stored files nobody else shares."""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from backend.models import Artifact, Evaluation, Metric, Run
from backend.services import evaluations as evaluation_service
from backend.services import runs as run_service
from repscope.client import Client, RepscopeError, RunConfigConflict
from tests.conftest import ADMIN_HEADERS
from tests.unit.test_client import FlakyTransport


def npy(seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).standard_normal((40, 6)).astype(np.float32))
    return buf.getvalue()


def upload(api, run_id: int, content: bytes, step: int) -> dict:
    response = api.post(f"/api/v1/runs/{run_id}/artifacts", files={"file": ("z.npy", content)},
                        data={"step": str(step), "suites": "spectrum"})
    assert response.status_code == 202, response.text
    return response.json()


def stored(settings) -> set[str]:
    return {p.name for p in (settings.data_dir / "artifacts" / "objects").rglob("*") if p.is_file()}


def make_run(api, name: str, **body) -> dict:
    response = api.post("/api/v1/runs", json={"project": "manage", "name": name, **body})
    assert response.status_code in (200, 201), response.text
    return response.json()


# ---- get-or-create with another config --------------------------------------------------------------------------
def test_other_config_is_refused_naming_the_differing_keys(api):
    first = make_run(api, "r", config={"lr": 0.3, "bs": 256, "opt": {"name": "sgd"}})
    assert make_run(api, "r", config={"lr": 0.3, "bs": 256, "opt": {"name": "sgd"}})["id"] == first["id"]
    assert make_run(api, "r")["config"] == first["config"]  # no config: whatever the run has
    response = api.post("/api/v1/runs", json={"project": "manage", "name": "r",
                                              "config": {"lr": 0.1, "bs": 256, "opt": {"name": "adam"}, "wd": 0}})
    assert response.status_code == 409
    body = response.json()
    assert body["differing_keys"] == ["lr", "opt", "wd"] and "update" in body["detail"]
    assert api.get(f"/api/v1/runs/{first['id']}").json()["config"] == first["config"]  # untouched
    updated = make_run(api, "r", config={"lr": 0.1}, update=True, tags=["v2"])
    assert updated["id"] == first["id"] and updated["config"] == {"lr": 0.1} and updated["tags"] == ["v2"]
    assert api.get(f"/api/v1/runs/{first['id']}").json()["config"] == {"lr": 0.1}


def test_config_diff_against_brute_force():
    old, new = {"a": 1, "b": [1, 2], "c": None}, {"a": 1.0, "b": [2, 1], "d": None}
    expected = sorted(k for k in set(old) | set(new) if (k in old) != (k in new) or old.get(k) != new.get(k))
    assert run_service.config_diff(old, new) == expected == ["b", "c", "d"]
    assert run_service.config_diff(old, dict(old)) == []


def test_client_run_raises_a_clear_error_or_updates(api):
    client = Client("http://testserver")
    client.http = httpx.Client(base_url="http://testserver/api/v1", transport=FlakyTransport(api._transport), headers=ADMIN_HEADERS)
    run = client.run("manage", "c", config={"lr": 1})
    assert client.run("manage", "c", config={"lr": 1}).id == run.id
    with pytest.raises(RunConfigConflict) as info:
        client.run("manage", "c", config={"lr": 2, "seed": 0})
    assert info.value.differing_keys == ["lr", "seed"] and "update=True" in str(info.value)
    handle = client.run("manage", "c", config={"lr": 2}, update=True)
    assert handle.config == {"lr": 2}
    assert handle.update(name="c2", notes="n", tags=["t"], archived=True).archived is True
    assert (client.get_run(run.id).name, client.get_run(run.id).notes) == ("c2", "n")
    assert client.runs(project="manage")["total"] == 0 and client.runs(project="manage", archived="all")["total"] == 1
    assert client.delete_run(run.id)["artifacts"] == 0
    with pytest.raises(RepscopeError) as gone:
        client.get_run(run.id)
    assert gone.value.status_code == 404


# ---- rename, notes, tags, archive --------------------------------------------------------------------------------
def test_patch_renames_notes_tags_and_archives(api):
    a, b = make_run(api, "a", tags=["x"]), make_run(api, "b")
    response = api.patch(f"/api/v1/runs/{a['id']}", json={"name": "a2", "notes": "line 1\nline 2",
                                                          "tags": ["y", "z", "y"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["notes"], body["tags"], body["archived"]) == ("a2", "line 1\nline 2", ["y", "z"], False)
    clash = api.patch(f"/api/v1/runs/{a['id']}", json={"name": "b"})
    assert clash.status_code == 409 and "'b'" in clash.json()["detail"]
    assert api.patch(f"/api/v1/runs/{a['id']}", json={"colour": "red"}).status_code == 422
    assert api.patch(f"/api/v1/runs/{a['id']}", json={"name": "has/slash"}).status_code == 422
    assert api.patch("/api/v1/runs/999999", json={"notes": "x"}).status_code == 404
    assert api.patch(f"/api/v1/runs/{a['id']}", json={"notes": ""}).json()["notes"] is None  # "" clears

    assert api.patch(f"/api/v1/runs/{a['id']}", json={"archived": True}).json()["archived"] is True
    names = lambda **p: [r["name"] for r in api.get("/api/v1/runs", params={"project": "manage", **p}).json()["items"]]  # noqa: E731
    assert names() == ["b"]
    assert names(archived="true") == ["a2"]
    assert names(archived="all") == ["b", "a2"]
    assert api.get("/api/v1/runs", params={"archived": "maybe"}).status_code == 422
    assert api.get(f"/api/v1/runs/{a['id']}").status_code == 200  # archived, not gone
    api.patch(f"/api/v1/runs/{a['id']}", json={"archived": False})
    assert names() == ["b", "a2"]
    assert b["archived"] is False


def test_read_token_cannot_change_or_delete(app, api):
    run = make_run(api, "guarded")
    secret = api.post("/api/v1/tokens", json={"name": "reader", "scopes": ["read"]}).json()["token"]
    reader = TestClient(app, headers={"Authorization": f"Bearer {secret}"})
    assert reader.patch(f"/api/v1/runs/{run['id']}", json={"notes": "x"}).status_code == 403
    assert reader.delete(f"/api/v1/runs/{run['id']}").status_code == 403
    assert api.get(f"/api/v1/runs/{run['id']}").json()["notes"] is None


# ---- delete ------------------------------------------------------------------------------------------------------
def test_delete_takes_rows_and_unshared_files_and_cancels_live_work(api, app, settings, monkeypatch):
    doomed, kept = make_run(api, "doomed"), make_run(api, "kept")
    shared, own = npy(1), npy(2)
    upload(api, doomed["id"], shared, 1)
    upload(api, doomed["id"], own, 2)
    upload(api, kept["id"], shared, 1)
    api.post(f"/api/v1/runs/{doomed['id']}/metrics", json={"step": 3, "metrics": {"loss": 0.5}})
    with app.state.sessionmaker() as session:
        ids = session.scalars(select(Evaluation.id).join(Artifact).where(Artifact.run_id == doomed["id"])
                              .order_by(Evaluation.id)).all()
        evaluation_service.claim(session, ids[0], "w1", lease_s=60)  # one running, one queued
    before = stored(settings)
    assert len(before) == 2
    cancelled = []
    real_cancel = evaluation_service.cancel
    monkeypatch.setattr(evaluation_service, "cancel",
                        lambda s, eid, by: cancelled.append((eid, s.get(Evaluation, eid).status)) or real_cancel(s, eid, by))

    response = api.delete(f"/api/v1/runs/{doomed['id']}")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": doomed["id"], "metrics": 1, "evaluations": 2, "artifacts": 2, "files": 1}
    assert sorted(cancelled) == [(ids[0], "running"), (ids[1], "queued")]
    assert stored(settings) == {n for n in before if n.startswith(hashlib.sha256(shared).hexdigest())}
    with app.state.sessionmaker() as session:
        assert session.get(Run, doomed["id"]) is None
        assert session.scalar(select(func.count()).select_from(Artifact).where(Artifact.run_id == doomed["id"])) == 0
        assert session.scalar(select(func.count()).select_from(Evaluation).where(Evaluation.id.in_(ids))) == 0
        assert session.scalar(select(func.count()).select_from(Metric).where(Metric.run_id == doomed["id"])) == 0
    assert api.get(f"/api/v1/runs/{doomed['id']}").status_code == 404
    assert api.delete(f"/api/v1/runs/{doomed['id']}").status_code == 404
    assert len(api.get(f"/api/v1/runs/{kept['id']}/artifacts").json()) == 1
    # the name is free again: a new run of that name starts empty
    again = make_run(api, "doomed")
    assert again["id"] != doomed["id"] and api.get(f"/api/v1/runs/{again['id']}/artifacts").json() == []


def test_a_failed_delete_leaves_everything(api, app, settings, monkeypatch):
    run = make_run(api, "sturdy")
    upload(api, run["id"], npy(3), 1)
    before = stored(settings)

    def broken(*_a, **_k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(run_service, "update", broken)  # fails inside the transaction, after the first deletes
    with app.state.sessionmaker() as session, pytest.raises(RuntimeError, match="disk on fire"):
        run_service.delete_run(session, app.state.store, run["id"], "tester")
    assert stored(settings) == before
    with app.state.sessionmaker() as session:
        assert session.get(Run, run["id"]) is not None
        assert session.scalar(select(func.count()).select_from(Artifact).where(Artifact.run_id == run["id"])) == 1
        assert session.scalar(select(func.count()).select_from(Evaluation).join(Artifact)
                              .where(Artifact.run_id == run["id"])) == 1


# ---- the `repscope run` command -----------------------------------------------------------------------------------
def test_cli_run_commands(api, monkeypatch, capsys):
    from repscope import cli

    def client(_args):  # noqa: ANN001, ANN202 - the CLI's client over the in-process app
        c = Client("http://testserver")
        c.http = httpx.Client(base_url="http://testserver/api/v1", transport=FlakyTransport(api._transport),
                              headers=ADMIN_HEADERS)
        return c

    monkeypatch.setattr(cli, "_client", client)
    run = make_run(api, "cli", tags=["old"])
    rid = str(run["id"])
    assert cli.main(["run", "rename", rid, "cli2"]) == 0
    assert cli.main(["run", "tags", rid, "a", "b"]) == 0
    assert cli.main(["run", "notes", rid, "first\nsecond"]) == 0
    assert cli.main(["run", "archive", rid]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"run {rid}: manage/cli2 [a, b] (archived)"
    body = api.get(f"/api/v1/runs/{rid}").json()
    assert (body["name"], body["tags"], body["notes"], body["archived"]) == ("cli2", ["a", "b"], "first\nsecond", True)
    make_run(api, "taken")
    assert cli.main(["run", "rename", rid, "taken"]) == 1
    assert "already has a run named 'taken'" in capsys.readouterr().err
    monkeypatch.setattr("builtins.input", lambda _prompt: "n")
    assert cli.main(["run", "delete", rid]) == 1 and api.get(f"/api/v1/runs/{rid}").status_code == 200
    assert cli.main(["run", "delete", rid, "--yes", "--json"]) == 0
    assert '"artifacts": 0' in capsys.readouterr().out and api.get(f"/api/v1/runs/{rid}").status_code == 404
