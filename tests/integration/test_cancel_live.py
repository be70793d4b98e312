"""Queue control with real processes (issue #20): API over HTTP, one real Celery worker, a real broker and database,
embedded (`repscope serve`: SQLite + filesystem broker) and cluster (PostgreSQL + Redis).

A deliberately slow suite (tests/unit/slow_suite.py: a progress report every 0.1 s for a minute, registered in
every process by a sitecustomize on PYTHONPATH) runs while two small spectra wait. Cancelling the queued one takes it
out (its delivery is skipped); cancelling the running one stops it at its next progress report — the worker
PATCHes progress at most once a second (worker.engine.PROGRESS_EVERY_S) — and the same worker takes the next job.
A retry of the cancelled one then runs it to the end, RankMe checked against numpy's SVD.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import repscope
from repscope.testing import REDIS_URL
from tests.integration.conftest import services_or_skip
from tests.integration.procs import (
    ROOT,
    Proc,
    base_env,
    free_port,
    start_api,
    start_serve,
    start_worker,
    wait_healthy,
)
from tests.reference import rankme_numpy, structured_embeddings
from worker.engine import PROGRESS_EVERY_S

pytestmark = pytest.mark.integration

SLOW_TICKS, SLOW_SLEEP_S = 600, 0.1  # 60 s if it ran to the end
# the stop comes at the first report PATCHed after the cancel: within one PATCH interval and one tick; the rest is
# the answer's round trip and freeing memory on a loaded 2-core machine
STOP_WITHIN_S = PROGRESS_EVERY_S + SLOW_SLEEP_S + 3.0
SITECUSTOMIZE = '''from repscope import suites
suites.register(suites.SuiteSpec("slow_ticks", "deliberately slow (test only)", embeddings=True,
                                 module="tests.unit.slow_suite"))
'''


@dataclass
class Live:
    url: str
    procs: list[Proc] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self.procs)


@pytest.fixture(params=["embedded", "cluster"])
def live(request, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    extra = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "REPSCOPE_TEST_SLOW_TICKS": str(SLOW_TICKS),
             "REPSCOPE_TEST_SLOW_SLEEP_S": str(SLOW_SLEEP_S)}
    dep = Live(url)
    if request.param == "embedded":
        env = base_env(tmp_path / "data", url, **extra)
        dep.procs.append(start_serve(env, port, tmp_path / "data", tmp_path))
        wait_healthy(url, dep.procs[0].proc, timeout=90)
    else:
        services_or_skip()
        queue = f"repscope-test-{uuid.uuid4().hex[:8]}"
        env = base_env(tmp_path / "data", url, REPSCOPE_DATABASE_URL=request.getfixturevalue("make_postgres_database")(),
                       REPSCOPE_BROKER_URL=REDIS_URL, REPSCOPE_QUEUE=queue, REPSCOPE_REQUEUE_AFTER_S="4", **extra)
        dep.procs.append(start_api(env, port, tmp_path))
        wait_healthy(url, dep.procs[0].proc, timeout=60)
        dep.procs.append(start_worker(env, queue, tmp_path))
    yield dep
    for proc in reversed(dep.procs):
        proc.stop()
    print(dep.logs())


def wait_for(predicate, timeout: float, what: str, logs=lambda: ""):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached in {timeout} s\n{logs()}")


def test_cancel_stops_the_running_job_at_its_next_report_and_the_worker_goes_on(live, tmp_path: Path):
    client = repscope.Client(live.url)
    run = client.run(project="queue-control", name="cancel", background=False)
    small = {step: structured_embeddings(300, 16, seed=step) for step in (2, 3, 4)}
    [slow] = run.log_embeddings(step=1, embeddings=small[2], suites=["slow_ticks"]).ids()
    [following] = run.log_embeddings(step=2, embeddings=small[2], suites=["spectrum"]).ids()
    [dropped] = run.log_embeddings(step=3, embeddings=small[3], suites=["spectrum"]).ids()
    try:
        running = wait_for(lambda: (ev := client.evaluation(slow)).progress >= 0.06 and ev, 90, "slow job at 6 %",
                           live.logs)
        assert running.status == "running" and running.eta_s is not None
        # ETA = elapsed / p x (1 - p) (same row, so same elapsed); the suite has ~55 s to go
        assert running.eta_s == pytest.approx(running.elapsed_s / running.progress * (1 - running.progress), abs=0.01)
        assert 20 < running.eta_s < 300
        assert [client.evaluation(e).queue_position for e in (following, dropped)] == [1, 2]

        assert client.cancel(dropped).status == "cancelled"
        assert client.evaluation(following).queue_position == 1
        asked = time.monotonic()
        assert client.cancel(slow).status == "cancelled"
        stopped = wait_for(lambda: "stopped at" in ((ev := client.evaluation(slow)).message or "") and ev,
                           30, "the worker's acknowledgement", live.logs)
        took = time.monotonic() - asked
        print(f"stopped {took:.2f} s after the cancel: {stopped.message}")
        assert took < STOP_WITHIN_S, (took, stopped.message)
        assert stopped.status == "cancelled" and stopped.metrics == {} and stopped.progress < 0.5

        [after] = run.log_embeddings(step=4, embeddings=small[4], suites=["spectrum"]).ids()
        done = {e.id: e for e in client.wait([following, after], timeout=60)}
        assert done[following].worker == running.worker  # the same worker took the next job
        assert done[following].started_at >= stopped.finished_at
        assert done[following].metrics["rankme"] == pytest.approx(rankme_numpy(small[2]), rel=1e-6)
        # `after` ran once the delivery of `dropped` had come and gone: that one was skipped, never claimed
        skipped = client.evaluation(dropped)
        assert skipped.status == "cancelled" and skipped.attempts == 0 and skipped.worker is None

        retried = client.retry(dropped)  # the idle worker may claim it before the answer is written
        assert (retried.status, retried.queue_position) in (("queued", 1), ("running", None))
        [again] = client.wait([dropped], timeout=60)
        assert again.status == "succeeded" and again.attempts == 1
        assert again.metrics["rankme"] == pytest.approx(rankme_numpy(small[3]), rel=1e-6)
        assert client.evaluation(slow).status == "cancelled"  # nothing ran it again
    except Exception:
        print(live.logs())
        raise
