"""Queue control (issue #20) over the real app and database: cancel and retry (REST, CLI, engine), queue position,
elapsed time and ETA, and errors as a user-facing message with the traceback for admins only."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import pytest

from repscope.schemas import EvaluationRead, Status
from repscope.suites import SuiteSpec
from tests.conftest import WORKER_TOKEN
from tests.unit.test_auth import bearer, make_token

SLOW = SuiteSpec("slow_ticks", "deliberately slow (test only)", embeddings=True, module="tests.unit.slow_suite")
TRACE = ('Traceback (most recent call last):\n  File "/srv/repscope/worker/engine.py", line 212, in _run_claimed\n'
         '    result = run_on(arrays, params, device, progress)\nValueError: no rows in /srv/data/cache/ab12.npy\n')
FAILURE = "ValueError: no rows in /srv/data/cache/ab12.npy\n\n" + TRACE


def upload(api, run_id: int, seed: int, suites: str = "spectrum", headers: dict | None = None) -> int:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).normal(size=(20, 4)).astype(np.float32))
    response = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": str(seed), "suites": suites},
                        files={"file": ("z.npy", buf.getvalue())}, headers=headers or {})
    assert response.status_code == 202, response.text
    return response.json()["evaluations"][0]["id"]


def claim(api, eid: int) -> str:
    response = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "w@test"}, headers=bearer(WORKER_TOKEN))
    assert response.status_code == 200, response.text
    return response.json()["claim"]


def patch(api, eid: int, **body) -> object:
    return api.patch(f"/api/v1/evaluations/{eid}", json=body, headers=bearer(WORKER_TOKEN))


def messages_for(settings, eid: int) -> int:
    """Messages published to the embedded broker for evaluation `eid` (kombu filesystem transport files)."""
    from repscope.celeryconf import broker_folders

    return sum(json.loads(path.read_text())["headers"]["argsrepr"] in (f"({eid},)", f"[{eid}]")
               for path in broker_folders(settings)["queue"].glob("*.msg"))


def engine_client(api, token: str = WORKER_TOKEN):
    import httpx

    from repscope.client import Client
    from tests.unit.test_client import FlakyTransport

    client = Client("http://testserver", retries=0)
    client.http = httpx.Client(base_url="http://testserver/api/v1", transport=FlakyTransport(api._transport),
                               headers=bearer(token))
    return client


@pytest.fixture
def slow_suite():
    from repscope import suites as registry
    from tests.unit import slow_suite as module

    registry.register(SLOW)
    yield module
    registry.unregister(SLOW.name)
    module.ON_TICK, module.SLEEP_S = None, 0.0


def test_queue_positions_cancel_of_a_queued_evaluation_and_retry_to_the_back(api, run_id, settings):
    a, b, c = (upload(api, run_id, seed) for seed in (1, 2, 3))
    assert [api.get(f"/api/v1/evaluations/{e}").json()["queue_position"] for e in (a, b, c)] == [1, 2, 3]

    cancelled = api.post(f"/api/v1/evaluations/{b}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and "before it started" in cancelled.json()["message"]
    assert cancelled.json()["queue_position"] is None
    assert api.post(f"/api/v1/evaluations/{b}/cancel").json()["status"] == "cancelled"  # idempotent
    # its Celery task still arrives: the claim refuses it, saying why, so the worker skips it
    refused = api.post(f"/api/v1/evaluations/{b}/claim", json={"worker": "w"}, headers=bearer(WORKER_TOKEN))
    assert refused.status_code == 409 and "cancelled" in refused.json()["detail"]
    assert [api.get(f"/api/v1/evaluations/{e}").json()["queue_position"] for e in (a, c)] == [1, 2]

    assert messages_for(settings, b) == 1
    retried = api.post(f"/api/v1/evaluations/{b}/retry")
    assert retried.status_code == 200, retried.text
    body = retried.json()
    assert body["status"] == "queued" and body["attempts"] == 0 and body["error"] is None
    assert body["queue_position"] == 3  # behind c: the back of the queue, although its id is older
    assert messages_for(settings, b) == 2  # sent again
    listed = api.get("/api/v1/evaluations", params={"run": run_id, "status": "queued"}).json()["items"]
    assert {e["id"]: e["queue_position"] for e in listed} == {a: 1, c: 2, b: 3}
    conflict = api.post(f"/api/v1/evaluations/{b}/retry")
    assert conflict.status_code == 409 and "only a failed or cancelled" in conflict.json()["detail"]


def test_a_running_cancel_is_answered_on_the_next_patch_and_acknowledged(api, run_id):
    eid = upload(api, run_id, 1)
    lease = claim(api, eid)
    running = patch(api, eid, claim=lease, progress=0.3, message="gram").json()
    assert running["elapsed_s"] >= 0 and running["queue_position"] is None
    assert running["eta_s"] == pytest.approx(running["elapsed_s"] / 0.3 * 0.7, abs=2e-3)
    assert patch(api, eid, claim=lease, progress=0.04).json()["eta_s"] is None  # under 5 %: no estimate yet

    cancelled = api.post(f"/api/v1/evaluations/{eid}/cancel").json()
    assert cancelled["status"] == "cancelled" and cancelled["message"].endswith("at its next progress report")
    answer = patch(api, eid, claim=lease, progress=0.5, message="still going")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    assert answer.json()["progress"] == 0.04  # nothing changes but the answer
    assert patch(api, eid, claim="not-the-claim", progress=0.5).status_code == 409
    late = api.post(f"/api/v1/evaluations/{eid}/result", json={"claim": lease, "metrics": {"rankme": 1.0}},
                    headers=bearer(WORKER_TOKEN))
    assert late.status_code == 409 and api.get(f"/api/v1/evaluations/{eid}").json()["metrics"] == {}
    ack = patch(api, eid, claim=lease, status="cancelled", progress=0.5, message="worker w stopped at 50%").json()
    assert ack["status"] == "cancelled" and ack["progress"] == 0.5
    assert ack["message"].startswith("cancelled by ") and ack["message"].endswith("; worker w stopped at 50%")
    assert "next progress report" not in ack["message"]


def test_only_queued_or_running_cancel_only_failed_or_cancelled_retry(api, run_id):
    done = upload(api, run_id, 1)
    lease = claim(api, done)
    api.post(f"/api/v1/evaluations/{done}/result", json={"claim": lease, "metrics": {"rankme": 1.0}},
             headers=bearer(WORKER_TOKEN))
    refused = api.post(f"/api/v1/evaluations/{done}/cancel")
    assert refused.status_code == 409 and "is succeeded" in refused.json()["detail"]
    assert api.post(f"/api/v1/evaluations/{done}/retry").status_code == 409
    running = upload(api, run_id, 2)
    claim(api, running)
    assert api.post(f"/api/v1/evaluations/{running}/retry").status_code == 409
    assert api.post("/api/v1/evaluations/999999/cancel").status_code == 404


def test_cancel_and_retry_need_the_write_scope(api, anon, run_id):
    eid = upload(api, run_id, 1)
    reader, writer = make_token(api, "reader", "read"), make_token(api, "writer", "write")
    assert anon.post(f"/api/v1/evaluations/{eid}/cancel").status_code == 401
    for token in (reader, WORKER_TOKEN):
        assert anon.post(f"/api/v1/evaluations/{eid}/cancel", headers=bearer(token)).status_code == 403
    assert api.get(f"/api/v1/evaluations/{eid}").json()["status"] == "queued"
    ok = anon.post(f"/api/v1/evaluations/{eid}/cancel", headers=bearer(writer))
    assert ok.status_code == 200 and ok.json()["message"] == "cancelled by writer before it started"
    assert anon.post(f"/api/v1/evaluations/{eid}/retry", headers=bearer(reader)).status_code == 403
    assert anon.post(f"/api/v1/evaluations/{eid}/retry", headers=bearer(writer)).json()["status"] == "queued"


@pytest.fixture
def anon(app, api):  # noqa: ARG001 - `api` starts the app
    from fastapi.testclient import TestClient

    return TestClient(app)


def test_errors_are_the_user_message_and_the_traceback_is_for_admins(api, anon, run_id):
    eid = upload(api, run_id, 1)
    lease = claim(api, eid)
    patch(api, eid, claim=lease, status="failed", error=FAILURE)
    ok = upload(api, run_id, 2)
    lease = claim(api, ok)
    api.post(f"/api/v1/evaluations/{ok}/result", json={"claim": lease, "metrics": {"rankme": 1.0}},
             headers=bearer(WORKER_TOKEN))
    admin = api.get(f"/api/v1/evaluations/{eid}").json()
    assert admin["error"] == "ValueError: no rows in …/ab12.npy"
    assert admin["error_detail"] == TRACE.strip()
    reader = bearer(make_token(api, "reader", "read"))
    seen = anon.get(f"/api/v1/evaluations/{eid}", headers=reader)
    assert seen.json()["error"] == admin["error"] and seen.json()["error_detail"] is None
    assert "/srv/" not in seen.text and "engine.py" not in seen.text
    listed = anon.get("/api/v1/evaluations", params={"status": "failed"}, headers=reader).text
    assert "/srv/" not in listed and "engine.py" not in listed

    # pages: the message for everyone, the traceback behind a toggle for admins only
    page = api.get(f"/evaluations/{eid}").text
    assert "no rows in …/ab12.npy" in page and 'id="error-detail"' in page and "engine.py" in page
    jobs = api.get("/jobs").text
    assert f'id="error-detail-{eid}"' in jobs and "engine.py" in jobs
    for html in (anon.get(f"/evaluations/{eid}", headers=reader).text, anon.get("/jobs", headers=reader).text,
                 anon.get("/jobs/live", headers=reader).json()["html"]["jobs-body"]):
        assert "no rows in …/ab12.npy" in html and "engine.py" not in html and "/srv/" not in html
        assert "error-detail" not in html and 'data-queue-action' not in html  # a reader gets no buttons either

    # the Error column of the recent table: the failure's message, and no "done" for the success
    recent = jobs.split('id="jobs-recent"', 1)[1].split("</table>", 1)[0]
    row = recent.split(f'data-evaluation-id="{ok}"', 1)[1].split("</tr>", 1)[0]
    assert "done" not in row and "—" in row
    assert 'data-queue-action="retry"' in jobs.split('id="jobs-failed"', 1)[1].split("</table>", 1)[0]


def test_pages_show_position_elapsed_eta_and_the_buttons(api, run_id):
    running, queued = upload(api, run_id, 1), upload(api, run_id, 2)
    lease = claim(api, running)
    patch(api, running, claim=lease, progress=0.5)
    page = api.get(f"/evaluations/{running}").text
    assert 'data-queue-action="cancel"' in page and "elapsed " in page and "ETA " in page
    assert 'src="/static/queue.js"' in page and api.get("/static/queue.js").status_code == 200
    page = api.get(f"/evaluations/{queued}").text
    assert "position 1 in queue repscope" in page and 'data-queue-action="cancel"' in page
    live = api.get("/jobs/live").json()["html"]["jobs-body"]
    queued_table = live.split('id="jobs-queued"', 1)[1].split("</table>", 1)[0]
    assert "position 1 in queue repscope" in queued_table and 'data-queue-action="cancel"' in queued_table
    running_table = live.split('id="jobs-running"', 1)[1].split("</table>", 1)[0]
    assert "ETA " in running_table and 'data-queue-action="cancel"' in running_table


def test_the_engine_stops_at_the_next_progress_report_and_takes_the_next_job(api, run_id, settings, slow_suite,
                                                                               monkeypatch):
    """worker.engine against the real app: the user cancels after tick 10; the suite's next progress report (tick
    11, every report PATCHed) answers `cancelled`, the suite is stopped there and the worker acknowledges; the
    same engine then runs the next evaluation to the end."""
    from worker import engine

    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)
    slow, after = upload(api, run_id, 1, suites="slow_ticks"), upload(api, run_id, 2, suites="slow_ticks")
    slow_suite.ON_TICK = lambda i: api.post(f"/api/v1/evaluations/{slow}/cancel") if i == 10 else None
    worker_settings = settings.model_copy(update={"device": "cpu"})
    assert engine.run_evaluation(slow, engine_client(api), "engine@test", worker_settings) == "cancelled"
    assert slow_suite.REACHED == list(range(11))  # the report of tick 11 raised; tick 11's work never ran
    view = api.get(f"/api/v1/evaluations/{slow}").json()
    assert view["status"] == "cancelled" and view["progress"] == 11 / slow_suite.TICKS
    assert view["metrics"] == {} and f"worker engine@test stopped at {11 / slow_suite.TICKS:.0%}" in view["message"]

    slow_suite.ON_TICK = None
    assert engine.run_evaluation(after, engine_client(api), "engine@test", worker_settings) == "succeeded"
    assert api.get(f"/api/v1/evaluations/{after}").json()["metrics"] == {"slow_rows": 20.0}
    # a cancelled evaluation delivered again is skipped, and a retry runs it to the end
    assert engine.run_evaluation(slow, engine_client(api), "engine@test", worker_settings) == "skipped"
    api.post(f"/api/v1/evaluations/{slow}/retry")
    assert engine.run_evaluation(slow, engine_client(api), "engine@test", worker_settings) == "succeeded"


def test_a_real_suite_stops_at_its_next_progress_report(api, run_id, settings, monkeypatch):
    """The spectrum suite through the engine, every report PATCHed: the user cancels right after its first report;
    the worker stops at the second (the acknowledged progress is the second value of the schedule an uncancelled
    run reports) and no metrics are stored."""
    from worker import engine
    from worker.suites.spectrum import run_spectrum

    z = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
    schedule: list[float] = []
    run_spectrum(z, device="cpu", progress=lambda f, m: schedule.append(f))
    buf = io.BytesIO()
    np.save(buf, z)
    eid = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "1", "suites": "spectrum"},
                   files={"file": ("z.npy", buf.getvalue())}).json()["evaluations"][0]["id"]
    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)
    client = engine_client(api)
    send = client.report

    def report(evaluation_id: int, **fields) -> EvaluationRead:
        answer = send(evaluation_id, **fields)
        if fields.get("progress", 0.0) > 0.0 and answer.status == Status.running:  # the suite's first report
            api.post(f"/api/v1/evaluations/{eid}/cancel")
        return answer

    client.report = report
    assert engine.run_evaluation(eid, client, "engine@test", settings.model_copy(update={"device": "cpu"})) == \
        "cancelled"
    view = api.get(f"/api/v1/evaluations/{eid}").json()
    assert view["status"] == "cancelled" and view["metrics"] == {} and len(schedule) > 2
    assert view["progress"] == pytest.approx(schedule[1], abs=1e-12)


def test_the_suite_s_memory_is_free_when_the_worker_cleans_up(api, run_id, settings, slow_suite, monkeypatch):
    """The worker frees device memory only once the cancel's exception (whose traceback holds the suite's frames and
    so its tensors) is gone: at that point the suite's tensor is dead, so emptying the CUDA cache returns it."""
    from worker import engine

    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)
    free, alive_then = engine._free_device_memory, []

    def record() -> None:
        free()
        alive_then.append(slow_suite.HELD() is not None)

    monkeypatch.setattr(engine, "_free_device_memory", record)
    slow_suite.HOLD_BYTES = 1 << 20
    slow = upload(api, run_id, 1, suites="slow_ticks")
    slow_suite.ON_TICK = lambda i: api.post(f"/api/v1/evaluations/{slow}/cancel") if i == 3 else None
    try:
        assert engine.run_evaluation(slow, engine_client(api), "engine@test",
                                     settings.model_copy(update={"device": "cpu"})) == "cancelled"
    finally:
        slow_suite.HOLD_BYTES = 0
    assert alive_then == [False]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA device")
def test_a_cancel_gives_the_gpu_memory_the_suite_held_back_to_the_device(api, run_id, settings, slow_suite,
                                                                         monkeypatch):
    """A suite holding 1 GiB on the GPU is cancelled: once the worker has stopped it, the memory is released to
    the device (torch's caching allocator reserves nothing more than before), not only to torch's cache."""
    import torch

    from worker import engine

    monkeypatch.setattr(engine, "PROGRESS_EVERY_S", 0.0)
    slow_suite.HOLD_BYTES = 1 << 30
    torch.cuda.empty_cache()
    before, held = torch.cuda.memory_reserved(), []
    slow = upload(api, run_id, 1, suites="slow_ticks")

    def cancel(i: int) -> None:
        if i == 3:
            held.append(torch.cuda.memory_reserved())
            api.post(f"/api/v1/evaluations/{slow}/cancel")

    slow_suite.ON_TICK = cancel
    try:
        assert engine.run_evaluation(slow, engine_client(api), "engine@gpu",
                                     settings.model_copy(update={"device": "cuda"})) == "cancelled"
    finally:
        slow_suite.HOLD_BYTES = 0
    assert held[0] >= before + (1 << 30)
    assert torch.cuda.memory_reserved() == before


def test_with_the_throttle_the_stop_comes_within_one_report_interval(api, run_id, settings, slow_suite):
    """Reports are PATCHed at most once per PROGRESS_EVERY_S: a cancel lands within that interval (plus a tick)."""
    from worker import engine

    slow_suite.TICKS, slow_suite.SLEEP_S = 400, 0.02  # 8 s if it ran to the end
    cancelled_at = []

    def cancel(i: int) -> None:
        if i == 5:
            api.post(f"/api/v1/evaluations/{slow}/cancel")
            cancelled_at.append(time.monotonic())

    slow = upload(api, run_id, 1, suites="slow_ticks")
    slow_suite.ON_TICK = cancel
    try:
        result = engine.run_evaluation(slow, engine_client(api), "engine@test",
                                       settings.model_copy(update={"device": "cpu"}))
    finally:
        slow_suite.TICKS = 40
    stopped = slow_suite.TIMES[-1] + slow_suite.SLEEP_S - cancelled_at[0]  # the next report raised
    assert result == "cancelled" and stopped < engine.PROGRESS_EVERY_S + 0.3, stopped
    assert slow_suite.REACHED[-1] < 5 + (engine.PROGRESS_EVERY_S + 0.3) / slow_suite.SLEEP_S


def test_a_heartbeat_answer_stops_the_suite_at_its_next_report_without_a_patch():
    """The Heartbeat's PATCH is answered `cancelled`: the next progress call raises before sending anything."""
    from worker.engine import EvaluationCancelled, Heartbeat, ThrottledProgress

    answer = EvaluationRead.model_construct(status=Status.running)

    class Fake:
        sent: list[dict] = []

        def report(self, evaluation_id: int, *, claim: str, **fields) -> EvaluationRead:
            self.sent.append(fields)
            return answer

    client = Fake()
    with Heartbeat(client, 1, "w", 0.01, "c") as beat:
        progress = ThrottledProgress(client, 1, "w", "c", cancel=beat.cancel)
        progress.last_sent = time.monotonic() + 3600  # no progress PATCH of its own
        progress(0.1, "working")
        answer = EvaluationRead.model_construct(status=Status.cancelled)
        assert beat.cancel.wait(2.0)
        before = len(client.sent)
        with pytest.raises(EvaluationCancelled):
            progress(0.2, "working")
        assert len(client.sent) == before or all("progress" not in f for f in client.sent[before:])
    assert progress.fraction == 0.2


def test_failure_text_is_a_headline_then_the_traceback():
    from backend.services.evaluations import split_error
    from worker.engine import _failure_text

    try:
        raise FileNotFoundError("/srv/data/worker-cache/ab12.npz is gone")
    except FileNotFoundError as exc:
        text = _failure_text(exc, "cpu")
    headline, _, trace = text.partition("\n\n")
    assert headline == "FileNotFoundError: /srv/data/worker-cache/ab12.npz is gone"
    assert trace.startswith("Traceback (most recent call last):") and "test_queue_control.py" in trace
    message, detail = split_error(text)
    assert message == "FileNotFoundError: …/ab12.npz is gone" and detail == trace.strip()
    huge = _failure_text(RecursionError("x" * 30_000), None)
    assert len(huge) <= 20_000 and huge.startswith("RecursionError: xxx")


def test_the_cli_cancels_and_retries_and_reports_refusals(api, run_id, monkeypatch, capsys):
    from repscope import cli
    from tests.conftest import ADMIN_TOKEN

    queued, done = upload(api, run_id, 1), upload(api, run_id, 2)
    lease = claim(api, done)
    api.post(f"/api/v1/evaluations/{done}/result", json={"claim": lease, "metrics": {"rankme": 1.0}},
             headers=bearer(WORKER_TOKEN))
    monkeypatch.setattr(cli, "_client", lambda args: engine_client(api, ADMIN_TOKEN))
    assert cli.main(["cancel", str(queued), str(done)]) == 1
    out, err = capsys.readouterr()
    assert f"evaluation {queued} (spectrum): cancelled — cancelled by bootstrap-admin before it started" in out
    assert f"error: evaluation {done}: evaluation {done} is succeeded" in err and "(HTTP 409)" in err
    assert cli.main(["retry", str(queued), "--json"]) == 0
    [ev] = json.loads(capsys.readouterr().out)
    assert ev["id"] == queued and ev["status"] == "queued" and ev["queue_position"] == 1


def test_concurrent_cancels_and_claims_leave_one_consistent_state(api, run_id):
    """A cancel racing a claim: the evaluation ends either cancelled before it started (the claim refused) or
    claimed and then cancelled while running — never running after a successful cancel."""
    def send(results: dict[str, int], what: str, url: str, **kwargs) -> None:
        results[what] = api.post(url, **kwargs).status_code

    for seed in range(5):
        eid = upload(api, run_id, seed)
        results: dict[str, int] = {}
        threads = [threading.Thread(target=send, args=(results, "claim", f"/api/v1/evaluations/{eid}/claim"),
                                    kwargs={"json": {"worker": "w"}, "headers": bearer(WORKER_TOKEN)}),
                   threading.Thread(target=send, args=(results, "cancel", f"/api/v1/evaluations/{eid}/cancel"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        view = api.get(f"/api/v1/evaluations/{eid}").json()
        assert results["cancel"] == 200 and view["status"] == "cancelled"
        assert ("before it started" in view["message"]) == (results["claim"] == 409)
