"""REST API over the real app, database and filesystem broker: uploads, dedupe, bad input, life cycle."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from backend.models import Artifact, Evaluation, Metric
from backend.services.evaluations import claim
from backend.sweeper import sweep_once
from repscope.celeryconf import EVALUATE_TASK, broker_folders


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def upload(api, run_id: int, name: str, content: bytes, **fields):
    data = {k: str(v) for k, v in fields.items()}
    return api.post(f"/api/v1/runs/{run_id}/artifacts", data=data, files={"file": (name, content)})


def stored_files(settings) -> list[Path]:
    return [p for p in (settings.data_dir / "artifacts" / "objects").rglob("*") if p.is_file()]


def tmp_files(settings) -> list[Path]:
    return list((settings.data_dir / "artifacts" / "tmp").iterdir())


def queued_messages(settings) -> list[dict]:
    """Messages the backend published to the embedded broker (kombu filesystem transport files)."""
    out = []
    for path in sorted(broker_folders(settings)["queue"].glob("*.msg")):
        payload = json.loads(path.read_text())
        out.append(payload)
    return out


def count(app, model) -> int:
    with app.state.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_run_get_or_create(api):
    first = api.post("/api/v1/runs", json={"project": "p", "name": "r", "config": {"lr": 1}, "tags": ["a"]})
    again = api.post("/api/v1/runs", json={"project": "p", "name": "r", "tags": ["b"]})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert again.json()["config"] == {"lr": 1}
    assert again.json()["tags"] == ["a", "b"]
    listed = api.get("/api/v1/runs", params={"project": "p"}).json()
    assert listed["total"] == 1 and listed["items"][0]["name"] == "r"
    assert api.get("/api/v1/runs", params={"tag": "b"}).json()["total"] == 1
    assert api.get("/api/v1/runs", params={"tag": "zzz"}).json()["total"] == 0


def test_run_pagination(api):
    for i in range(7):
        api.post("/api/v1/runs", json={"project": "pg", "name": f"run{i}"})
    page = api.get("/api/v1/runs", params={"project": "pg", "limit": 3, "offset": 3}).json()
    assert page["total"] == 7 and len(page["items"]) == 3
    assert [r["name"] for r in page["items"]] == ["run3", "run2", "run1"]


def test_run_validation_is_readable(api):
    response = api.post("/api/v1/runs", json={"project": "", "name": "x"})
    assert response.status_code == 422
    assert "project" in response.json()["detail"]


def test_upload_npy_queues_task_by_name(api, app, settings, run_id):
    z = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    response = upload(api, run_id, "z.npy", npy_bytes(z), step=100, dataset="val")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["artifact"]["meta"]["n"] == 50 and body["artifact"]["meta"]["d"] == 8
    assert body["artifact"]["step"] == 100 and body["artifact"]["dataset"] == "val"
    assert [(e["suite"], e["status"]) for e in body["evaluations"]] == [("spectrum", "queued")]
    files = stored_files(settings)
    assert len(files) == 1 and np.array_equal(np.load(files[0]), z)
    messages = queued_messages(settings)
    assert len(messages) == 1
    headers = messages[0]["headers"]
    assert headers["task"] == EVALUATE_TASK
    assert json.loads(headers["argsrepr"].replace("(", "[").replace(",)", "]").replace(")", "]")) == [
        body["evaluations"][0]["id"]]
    # the stored file is served back byte for byte
    download = api.get(f"/api/v1/artifacts/{body['artifact']['id']}/file")
    assert download.status_code == 200 and download.content == npy_bytes(z)


def test_same_content_stored_once(api, app, settings, run_id):
    z = np.ones((20, 4), dtype=np.float32) * np.arange(4)
    content = npy_bytes(z)
    first = upload(api, run_id, "a.npy", content, step=1).json()
    retry = upload(api, run_id, "a.npy", content, step=1).json()
    assert retry["deduplicated"] is True and retry["artifact"]["id"] == first["artifact"]["id"]
    other_run = api.post("/api/v1/runs", json={"project": "simclr", "name": "other"}).json()["id"]
    second = upload(api, other_run, "a.npy", content, step=1).json()
    assert second["artifact"]["id"] != first["artifact"]["id"]
    assert second["artifact"]["sha256"] == first["artifact"]["sha256"]
    assert len(stored_files(settings)) == 1
    assert count(app, Artifact) == 2 and count(app, Evaluation) == 2
    assert tmp_files(settings) == []


def _malicious_pickle() -> bytes:
    class Evil:
        def __reduce__(self):
            return (Path.touch, (Path("/tmp/repscope-pwned-marker"),))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(Evil()))
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


GOOD = np.random.default_rng(1).standard_normal((30, 6)).astype(np.float32)
BAD_UPLOADS = {
    "non-numeric": ("x.npy", npy_bytes(np.array([["a", "b"], ["c", "d"]])), "dtype"),
    "1-D": ("x.npy", npy_bytes(np.arange(10, dtype=np.float32)), "2-D"),
    "NaN": ("x.npy", npy_bytes(np.where(np.eye(6, dtype=bool)[:6], np.nan, 1.0).astype(np.float32)), "finite"),
    "Inf": ("x.npy", npy_bytes(np.full((4, 3), np.inf, dtype=np.float32)), "finite"),
    "wrong label count": ("x.npz", npz_bytes(embeddings=GOOD, labels=np.arange(29)), "labels"),
    "unknown format": ("x.csv", b"1,2,3\n4,5,6\n", "format"),
    "truncated": ("x.npy", npy_bytes(GOOD)[:-40], "truncated"),
    "pickle with globals": ("x.pt", _malicious_pickle(), "forbidden"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_leaves_nothing(api, app, settings, run_id, case):
    name, content, words = BAD_UPLOADS[case]
    response = upload(api, run_id, name, content)
    assert 400 <= response.status_code < 500, response.text
    assert words.lower() in response.json()["detail"].lower(), response.json()["detail"]
    assert count(app, Artifact) == 0 and count(app, Evaluation) == 0
    assert stored_files(settings) == [] and tmp_files(settings) == []
    assert queued_messages(settings) == []
    assert not Path("/tmp/repscope-pwned-marker").exists()
    assert api.get("/api/v1/health").json()["database"] == "ok"  # still serving


def test_upload_over_size_limit(api, app, settings, run_id):
    big = np.zeros((settings.max_upload_bytes // 4 + 10, 1), dtype=np.float32)
    response = upload(api, run_id, "big.npy", npy_bytes(big))
    assert response.status_code == 413 and "size limit" in response.json()["detail"]
    assert stored_files(settings) == [] and tmp_files(settings) == [] and count(app, Artifact) == 0


def test_upload_form_errors(api, run_id):
    assert upload(api, run_id, "z.npy", npy_bytes(GOOD), suites="nope").json()["detail"].startswith("unknown suite")
    assert upload(api, run_id, "z.npy", npy_bytes(GOOD), step="-3").status_code == 422
    assert upload(api, run_id, "z.npy", npy_bytes(GOOD), kind="banana").status_code == 422
    missing = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "1"})
    assert missing.status_code == 400
    assert upload(api, 9999, "z.npy", npy_bytes(GOOD)).status_code == 404


def test_worker_life_cycle_and_metric_series(api, app, run_id):
    ids = []
    for step in (10, 20):
        body = upload(api, run_id, f"s{step}.npy", npy_bytes(GOOD * step), step=step).json()
        ids.append(body["evaluations"][0]["id"])
    first = api.post(f"/api/v1/evaluations/{ids[0]}/claim", json={"worker": "w1"})
    assert first.status_code == 200 and first.json()["local_path"].endswith(".npy")
    lease = first.json()["claim"]
    assert api.post(f"/api/v1/evaluations/{ids[0]}/claim", json={"worker": "w2"}).status_code == 409
    patched = api.patch(f"/api/v1/evaluations/{ids[0]}", json={"claim": lease, "progress": 0.5, "message": "gram"})
    assert patched.json()["progress"] == 0.5
    result = {"claim": lease, "metrics": {"rankme": 4.5, "nan_metric": float("nan")},
              "figures": {"singular_values": [3, 2, 1]}, "variant": {"centered": False}}
    done = api.post(f"/api/v1/evaluations/{ids[0]}/result", content=json.dumps(result),
                    headers={"content-type": "application/json"}).json()
    assert done["status"] == "succeeded" and done["metrics"] == {"rankme": 4.5}
    assert done["result"]["undefined_metrics"] == ["nan_metric"]
    # a retried result POST is refused, never duplicated
    assert api.post(f"/api/v1/evaluations/{ids[0]}/result", json=result | {"metrics": {"rankme": 1.0}}).status_code == 409
    lease = api.post(f"/api/v1/evaluations/{ids[1]}/claim", json={"worker": "w1"}).json()["claim"]
    api.post(f"/api/v1/evaluations/{ids[1]}/result", json={"claim": lease, "metrics": {"rankme": 5.5}})
    series = api.get(f"/api/v1/runs/{run_id}/metrics", params={"key": "rankme"}).json()
    assert [(p["step"], p["value"]) for p in series["points"]] == [(10, 4.5), (20, 5.5)]
    assert api.get(f"/api/v1/runs/{run_id}/metrics").json() == ["rankme"]
    assert count(app, Metric) == 2
    failed = upload(api, run_id, "s30.npy", npy_bytes(GOOD * 30), step=30).json()["evaluations"][0]["id"]
    lease = api.post(f"/api/v1/evaluations/{failed}/claim", json={"worker": "w1"}).json()["claim"]
    api.patch(f"/api/v1/evaluations/{failed}", json={"claim": lease, "status": "failed", "error": "CUDA out of memory"})
    view = api.get(f"/api/v1/evaluations/{failed}").json()
    assert view["status"] == "failed" and view["error"] == "CUDA out of memory"
    listed = api.get("/api/v1/evaluations", params={"run": run_id, "status": "failed"}).json()
    assert [e["id"] for e in listed["items"]] == [failed]


def test_sweeper_resends_lost_and_recovers_stale(api, app, settings, run_id):
    eid = upload(api, run_id, "z.npy", npy_bytes(GOOD)).json()["evaluations"][0]["id"]
    for msg in broker_folders(settings)["queue"].glob("*.msg"):
        msg.unlink()  # the broker lost the message
    sweeper_settings = settings.model_copy(update={"requeue_after_s": 0.0, "lease_s": 0.0})
    with app.state.sessionmaker() as session:
        assert sweep_once(session, app.state.queue, sweeper_settings)["resent"] == 1
    assert len(queued_messages(settings)) == 1
    with app.state.sessionmaker() as session:
        claim(session, eid, "dead-worker", lease_s=60)
        counts = sweep_once(session, app.state.queue, sweeper_settings)  # lease 0 s: the worker is presumed dead
    assert counts["recovered"] == 1
    assert api.get(f"/api/v1/evaluations/{eid}").json()["status"] == "queued"


def test_health(api):
    body = api.get("/api/v1/health").json()
    assert body["database"] == "ok" and body["broker"] == "ok" and body["status"] == "ok"


def test_openapi_documents_upload_form(api):
    spec = api.get("/openapi.json").json()
    form = spec["paths"]["/api/v1/runs/{run_id}/artifacts"]["post"]["requestBody"]["content"]
    assert "file" in form["multipart/form-data"]["schema"]["properties"]


def test_default_suites_follow_the_content(api, run_id):
    labelled = upload(api, run_id, "l.npz", npz_bytes(embeddings=GOOD, labels=np.arange(30) % 3), step=1).json()
    assert [e["suite"] for e in labelled["evaluations"]] == ["spectrum", "probes"]
    unlabelled = upload(api, run_id, "u.npy", npy_bytes(GOOD), step=2).json()
    assert [e["suite"] for e in unlabelled["evaluations"]] == ["spectrum"]
    narrowed = upload(api, run_id, "l.npz", npz_bytes(embeddings=GOOD * 2, labels=np.arange(30) % 3), step=3,
                      suites="probes").json()
    assert [e["suite"] for e in narrowed["evaluations"]] == ["probes"]


def test_probes_without_labels_is_refused(api, app, settings, run_id):
    response = upload(api, run_id, "u.npy", npy_bytes(GOOD), suites="spectrum,probes")
    assert response.status_code == 422 and "need labels" in response.json()["detail"]
    assert count(app, Artifact) == 0 and stored_files(settings) == [] and tmp_files(settings) == []


def test_idempotency_key_returns_the_first_result(api, app, run_id):
    key = {"Idempotency-Key": "job-42:step-7:attempt"}
    first = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "7"}, headers=key,
                     files={"file": ("a.npy", npy_bytes(GOOD))}).json()
    # a retry of the same request by the same token maps to the first artifact (other bodies: test_trust_uploads)
    again = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "7"}, headers=key,
                     files={"file": ("a.npy", npy_bytes(GOOD))}).json()
    assert again["deduplicated"] is True and again["artifact"]["id"] == first["artifact"]["id"]
    assert [e["id"] for e in again["evaluations"]] == [e["id"] for e in first["evaluations"]]
    other = upload(api, run_id, "a.npy", npy_bytes(GOOD * 2), step=7).json()
    assert other["artifact"]["id"] != first["artifact"]["id"] and count(app, Artifact) == 2
    bad_key = api.post(f"/api/v1/runs/{run_id}/artifacts", headers={"Idempotency-Key": "x y"},
                       files={"file": ("a.npy", npy_bytes(GOOD))})
    assert bad_key.status_code == 400


HUGE = 2**64  # found by tests/integration/test_schemathesis.py: SQLite cannot bind it (OverflowError, a 500)
OUT_OF_RANGE = [
    ("get", f"/api/v1/runs/{HUGE}", None, "path.run_id"),
    ("get", f"/api/v1/runs/{-HUGE}/artifacts", None, "path.run_id"),
    ("get", f"/api/v1/runs/{HUGE}/metrics", None, "path.run_id"),
    ("get", f"/api/v1/runs?offset={HUGE}", None, "query.offset"),
    ("get", f"/api/v1/artifacts/{HUGE}", None, "path.artifact_id"),
    ("get", f"/api/v1/artifacts/{HUGE}/file", None, "path.artifact_id"),
    ("get", f"/api/v1/evaluations/{HUGE}", None, "path.evaluation_id"),
    ("get", f"/api/v1/evaluations?run={HUGE}", None, "query.run"),
    ("get", f"/api/v1/evaluations?offset={HUGE}", None, "query.offset"),
    ("post", f"/api/v1/evaluations/{HUGE}/claim", {"worker": "w"}, "path.evaluation_id"),
    ("patch", f"/api/v1/evaluations/{HUGE}", {"progress": 0.5}, "path.evaluation_id"),
    ("post", f"/api/v1/evaluations/{HUGE}/result", {"metrics": {}}, "path.evaluation_id"),
    ("post", f"/api/v1/runs/{HUGE}/metrics", {"step": 1, "metrics": {"a": 1.0}}, "path.run_id"),
    ("post", "/api/v1/runs/{run}/metrics", {"step": HUGE, "metrics": {"a": 1.0}}, "body.step"),
    ("post", f"/api/v1/runs/{HUGE}/artifacts", None, "path.run_id"),
    ("delete", f"/api/v1/tokens/{HUGE}", None, "path.token_id"),
]


@pytest.mark.parametrize(("method", "url", "body", "where"), OUT_OF_RANGE, ids=[f"{m} {w}" for m, _, _, w in OUT_OF_RANGE])
def test_integers_beyond_64_bits_are_a_422_naming_the_parameter(api, run_id, method, url, body, where):
    response = api.request(method, url.format(run=run_id), json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"{where}: Input should be"), response.json()["detail"]
    assert api.get(f"/api/v1/runs/{run_id}").status_code == 200  # ids in range still work
