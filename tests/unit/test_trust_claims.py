"""Worker leases are bound to a server-issued claim id (issue 16, finding 4): a PATCH or result without the
current claim id is a 409 that changes nothing, whichever worker token sends it; a lost lease's holder is
refused once the evaluation is claimed again."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import func, select

from backend.models import Evaluation, Metric
from backend.services.evaluations import claim as claim_service
from backend.sweeper import sweep_once
from tests.unit.test_auth import bearer, make_token, upload


def _row(app, eid: int) -> dict:
    with app.state.sessionmaker() as session:
        e = session.get(Evaluation, eid)
        metrics = session.scalar(select(func.count()).select_from(Metric).where(Metric.evaluation_id == eid))
        return {"status": e.status, "progress": e.progress, "message": e.message, "error": e.error,
                "heartbeat_at": e.heartbeat_at, "result": e.result, "metrics": metrics, "worker": e.worker}


@pytest.fixture
def anon(app, api):  # noqa: ARG001 - `api` starts the app; this client sends no token of its own
    from fastapi.testclient import TestClient

    return TestClient(app)


@pytest.fixture
def running(api, run_id):
    """An evaluation claimed by worker A (the bootstrap worker token): (id, A's claim id, A's headers)."""
    from tests.conftest import WORKER_TOKEN

    eid = upload(api, run_id).json()["evaluations"][0]["id"]
    headers = bearer(WORKER_TOKEN)
    claimed = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "a@host"}, headers=headers)
    assert claimed.status_code == 200
    return eid, claimed.json()["claim"], headers


def test_claim_ids_are_random_hashed_and_never_shown(api, app, running):
    eid, lease, _ = running
    assert len(lease) >= 32
    with app.state.sessionmaker() as session:
        assert session.get(Evaluation, eid).claim_hash == hashlib.sha256(lease.encode()).hexdigest()
    view = api.get(f"/api/v1/evaluations/{eid}").text
    assert lease not in view and "claim_hash" not in view


@pytest.mark.parametrize("claim", [None, "", "wrong-claim-id-0123456789"], ids=["missing", "empty", "wrong"])
def test_patch_and_result_without_the_claim_are_refused_and_change_nothing(api, app, running, claim):
    eid, _, headers = running
    before = _row(app, eid)
    extra = {} if claim is None else {"claim": claim}
    patched = api.patch(f"/api/v1/evaluations/{eid}", headers=headers,
                        json={"worker": "a@host", "progress": 0.9, "message": "forged", **extra})
    failed = api.patch(f"/api/v1/evaluations/{eid}", headers=headers,
                       json={"status": "failed", "error": "forged", **extra})
    result = api.post(f"/api/v1/evaluations/{eid}/result", headers=headers,
                      json={"worker": "a@host", "metrics": {"rankme": 1e9}, **extra})
    for response in (patched, failed, result):
        assert response.status_code == 409, response.text
        assert "claim" in response.json()["detail"]
    assert _row(app, eid) == before


def test_another_worker_token_cannot_post_a_result_for_a_held_evaluation(api, anon, app, running):
    """The finding: any worker token could post a result by omitting `worker`."""
    eid, lease, headers = running
    other = bearer(make_token(api, "worker-b", "worker"))
    assert anon.post(f"/api/v1/evaluations/{eid}/result", headers=other,
                     json={"metrics": {"rankme": 1e9}}).status_code == 409
    assert anon.post(f"/api/v1/evaluations/{eid}/claim", headers=other, json={"worker": "b"}).status_code == 409
    assert _row(app, eid)["metrics"] == 0
    done = anon.post(f"/api/v1/evaluations/{eid}/result", headers=headers,
                     json={"claim": lease, "metrics": {"rankme": 3.25}})
    assert done.status_code == 200 and done.json()["metrics"] == {"rankme": 3.25}


def test_sweeper_requeue_then_reclaim_issues_a_new_claim_and_refuses_the_old(api, app, settings, running):
    eid, old, headers = running
    dead = settings.model_copy(update={"lease_s": 0.0, "requeue_after_s": 0.0})
    with app.state.sessionmaker() as session:
        assert sweep_once(session, app.state.queue, dead)["recovered"] == 1
    assert api.patch(f"/api/v1/evaluations/{eid}", headers=headers, json={"claim": old}).status_code == 409
    again = api.post(f"/api/v1/evaluations/{eid}/claim", headers=headers, json={"worker": "b@host"}).json()
    assert again["claim"] != old and again["evaluation"]["attempts"] == 2
    stale = api.post(f"/api/v1/evaluations/{eid}/result", headers=headers, json={"claim": old, "metrics": {"x": 1}})
    assert stale.status_code == 409 and "b@host" in stale.json()["detail"]
    fresh = api.post(f"/api/v1/evaluations/{eid}/result", headers=headers,
                     json={"claim": again["claim"], "metrics": {"rankme": 2.0}})
    assert fresh.status_code == 200 and fresh.json()["worker"] == "b@host"


def test_expired_lease_taken_over_directly_refuses_the_old_holder(api, app, running):
    eid, old, headers = running
    with app.state.sessionmaker() as session:  # what a second delivery's claim does once the lease is stale
        _, new = claim_service(session, eid, "c@host", lease_s=0.0)
    assert new != old
    assert api.patch(f"/api/v1/evaluations/{eid}", headers=headers,
                     json={"claim": old, "progress": 0.5}).status_code == 409
    assert api.patch(f"/api/v1/evaluations/{eid}", headers=headers,
                     json={"claim": new, "progress": 0.5}).json()["progress"] == 0.5


def test_the_worker_engine_reports_under_its_claim(api, app, run_id, settings):
    """worker.engine end to end against the real app: claim, progress and result all carry the claim id."""
    import httpx

    from repscope.client import Client
    from tests.conftest import WORKER_TOKEN
    from tests.unit.test_client import FlakyTransport
    from worker.engine import run_evaluation

    eid = upload(api, run_id).json()["evaluations"][0]["id"]
    client = Client("http://testserver", retries=0)
    client.http = httpx.Client(base_url="http://testserver/api/v1", transport=FlakyTransport(api._transport),
                               headers=bearer(WORKER_TOKEN))
    assert run_evaluation(eid, client, "engine@test", settings.model_copy(update={"device": "cpu"})) == "succeeded"
    view = api.get(f"/api/v1/evaluations/{eid}").json()
    assert view["status"] == "succeeded" and view["worker"] == "engine@test" and view["metrics"]["rankme"] > 1
