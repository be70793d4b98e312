"""Two queues: light suites to `light_queue`, heavy ones to `queue`; workers report device and queue on claims,
and the jobs page shows them. Over the real app, its SQLite database and the filesystem broker."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest

from backend.queue import queue_for
from backend.sweeper import sweep_once
from repscope.celeryconf import EVALUATE_TASK, all_queues, broker_folders
from repscope.settings import Settings

GPU, CPU = "gpu-test", "cpu-test"


@pytest.fixture
def settings(settings):
    """The shared settings with the light suites routed to their own queue."""
    return settings.model_copy(update={"queue": GPU, "light_queue": CPU})


def routed_messages(settings: Settings) -> list[tuple[str, int]]:
    """(queue, evaluation id) of every message in the filesystem broker; the queue is in the file name."""
    out = []
    for path in sorted(broker_folders(settings)["queue"].glob("*.msg")):
        payload = json.loads(path.read_text())
        assert payload["headers"]["task"] == EVALUATE_TASK
        queue = path.name.partition(".")[2].removesuffix(".msg")
        assert payload["properties"]["delivery_info"]["routing_key"] == queue
        out.append((queue, _evaluation_id(payload)))
    return out


def _evaluation_id(payload: dict) -> int:
    """The task's single argument, from the message body: base64 JSON [args, kwargs, embed]."""
    assert payload["properties"]["body_encoding"] == "base64"
    args, kwargs, _ = json.loads(base64.b64decode(payload["body"]))
    assert len(args) == 1 and not kwargs
    return int(args[0])


def labelled_npz() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, embeddings=rng.standard_normal((40, 6)).astype(np.float32), labels=np.arange(40) % 4)
    return buf.getvalue()


def upload(api, run_id: int, content: bytes, name: str = "z.npz", **fields) -> dict:
    response = api.post(f"/api/v1/runs/{run_id}/artifacts", data={k: str(v) for k, v in fields.items()},
                        files={"file": (name, content)})
    assert response.status_code == 202, response.text
    return response.json()


@pytest.mark.parametrize("suite", ["spectrum", "probes", "embed", "equivariance", "backdoor"])
def test_without_a_light_queue_everything_goes_to_the_queue(suite):
    assert queue_for(suite, Settings(queue="q")) == "q"


def test_light_suites_go_to_the_light_queue_and_the_rest_to_the_queue():
    settings = Settings(queue="gpu", light_queue="cpu")
    assert queue_for("spectrum", settings) == "cpu"
    assert [queue_for(s, settings) for s in ("embed", "probes", "equivariance", "backdoor")] == ["gpu"] * 4
    several = Settings(queue="gpu", light_queue="cpu", light_suites=" spectrum, probes ,")
    assert (queue_for("probes", several), queue_for("spectrum", several), queue_for("backdoor", several)) == (
        "cpu", "cpu", "gpu")
    assert all_queues(settings) == ["gpu", "cpu"] and all_queues(Settings(queue="gpu")) == ["gpu"]


def test_upload_routes_each_suite_and_records_the_queue(api, settings, run_id):
    body = upload(api, run_id, labelled_npz(), step=1)
    ids = {e["suite"]: e["id"] for e in body["evaluations"]}
    assert set(ids) == {"spectrum", "probes"}
    assert sorted(routed_messages(settings)) == sorted([(CPU, ids["spectrum"]), (GPU, ids["probes"])])
    for suite, queue in (("spectrum", CPU), ("probes", GPU)):
        assert api.get(f"/api/v1/evaluations/{ids[suite]}").json()["queue"] == queue


def test_sweeper_resends_to_the_same_routes(api, app, settings, run_id):
    ids = {e["suite"]: e["id"] for e in upload(api, run_id, labelled_npz(), step=2)["evaluations"]}
    for msg in broker_folders(settings)["queue"].glob("*.msg"):
        msg.unlink()  # the broker lost both messages
    with app.state.sessionmaker() as session:
        assert sweep_once(session, app.state.queue, settings.model_copy(update={"requeue_after_s": 0.0}))[
            "resent"] == 2
    assert sorted(routed_messages(settings)) == sorted([(CPU, ids["spectrum"]), (GPU, ids["probes"])])


def claim(api, eid: int, worker: str, **fields) -> dict:
    """The claimed evaluation, with the lease's claim id added under "claim"."""
    response = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": worker, **fields})
    assert response.status_code == 200, response.text
    return {**response.json()["evaluation"], "claim": response.json()["claim"]}


def workers_by_name(api) -> dict[str, dict]:
    return {w["name"]: w for w in api.get("/jobs/live").json()["workers"]}


def test_claims_record_device_and_queue_and_the_jobs_page_shows_them(api, run_id):
    ids = {e["suite"]: e["id"] for e in upload(api, run_id, labelled_npz(), step=3)["evaluations"]}
    spectrum = claim(api, ids["spectrum"], "cpu0@box", device="cpu", queue=CPU)
    probes = claim(api, ids["probes"], "gpu0@box", device="cuda", queue=GPU)
    assert (spectrum["device"], probes["device"]) == ("cpu", "cuda")
    workers = workers_by_name(api)
    assert {n: (w["device"], w["queues"], w["running"], w["active"]) for n, w in workers.items()} == {
        "cpu0@box": ("cpu", CPU, 1, True), "gpu0@box": ("cuda", GPU, 1, True)}
    seen = workers["gpu0@box"]["last_seen"]
    assert api.patch(f"/api/v1/evaluations/{ids['probes']}",
                     json={"claim": probes["claim"], "worker": "gpu0@box"}).status_code == 200
    assert workers_by_name(api)["gpu0@box"]["last_seen"] > seen  # a heartbeat renews last_seen
    assert api.post(f"/api/v1/evaluations/{ids['spectrum']}/result",
                    json={"claim": spectrum["claim"], "worker": "cpu0@box",
                          "metrics": {"rankme": 3.0}}).status_code == 200

    page = api.get("/jobs").text
    for name, device, queue in (("cpu0@box", "cpu", CPU), ("gpu0@box", "cuda", GPU)):
        row = page[page.index(f'<tr data-worker="{name}">'):]
        row = row[:row.index("</tr>")]
        assert f'<td class="device">{device}</td>' in row and f"<td>{queue}</td>" in row
    recent = page[page.index('id="jobs-recent"'):page.index('id="jobs-failed"')]
    assert f'href="/evaluations/{ids["spectrum"]}"' in recent and 'cpu0@box <span class="device">(cpu)</span>' in recent
    running = page[page.index('id="jobs-running"'):page.index('id="jobs-queued"')]
    assert 'gpu0@box <span class="device">(cuda)</span>' in running and f"<td>{GPU}</td>" in running
    assert 'id="jobs-recent"' in api.get("/jobs/live").json()["html"]["jobs-body"]


def test_a_worker_on_two_queues_lists_both_and_keeps_its_device(api, run_id):
    ids = {e["suite"]: e["id"] for e in upload(api, run_id, labelled_npz(), step=4)["evaluations"]}
    claim(api, ids["probes"], "both@box", device="cuda:1", queue=GPU)
    claim(api, ids["spectrum"], "both@box", queue=CPU)  # an older client: no device on this claim
    assert (workers_by_name(api)["both@box"]["device"], workers_by_name(api)["both@box"]["queues"]) == (
        "cuda:1", f"{CPU},{GPU}")
    assert api.get(f"/api/v1/evaluations/{ids['spectrum']}").json()["device"] is None


def test_claim_request_limits_are_enforced(api, run_id):
    eid = upload(api, run_id, labelled_npz(), step=5)["evaluations"][0]["id"]
    response = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "w", "device": "x" * 51})
    assert response.status_code == 422 and "device" in response.text


def test_migration_adds_the_worker_registry(tmp_path: Path):
    from sqlalchemy import create_engine, inspect

    from backend.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    inspector = inspect(create_engine(url))
    assert {"queue", "device"} <= {c["name"] for c in inspector.get_columns("evaluations")}
    assert {"name", "device", "queues", "first_seen", "last_seen"} <= {c["name"] for c in inspector.get_columns("workers")}
