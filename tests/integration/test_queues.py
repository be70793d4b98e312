"""Two queues with real processes: the API routes the light suite (spectrum) to a CPU queue and probes to the
GPU queue; one worker consumes each (over PostgreSQL + Redis), both finish, and the jobs page shows both workers
with the device each reported."""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

import repscope
from repscope.cli import worker_command
from tests.integration.conftest import REDIS_URL, services_or_skip
from tests.integration.procs import Proc, base_env, free_port, start_api, wait_healthy
from tests.reference import rankme_numpy

pytestmark = pytest.mark.integration


def separable(n: int = 400, d: int = 16, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Classes on far-apart centres with small noise: every probe must be exact on them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.standard_normal((classes, d)) * 10.0
    z = centres[labels] + 0.1 * rng.standard_normal((n, d))
    return z.astype(np.float32), labels.astype(np.int64)


def test_spectrum_runs_on_the_cpu_queue_and_probes_on_the_gpu_queue(make_postgres_database, tmp_path):
    services_or_skip()
    uid = uuid.uuid4().hex[:8]
    gpu_queue, cpu_queue = f"{uid}-gpu", f"{uid}-cpu"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = base_env(tmp_path / "data", url, REPSCOPE_DATABASE_URL=make_postgres_database(),
                   REPSCOPE_BROKER_URL=REDIS_URL, REPSCOPE_QUEUE=gpu_queue, REPSCOPE_LIGHT_QUEUE=cpu_queue,
                   REPSCOPE_DEVICE="cpu")  # no GPU here: both report cpu; routing shows in who ran what
    procs = [start_api(env, port, tmp_path)]
    logs = lambda: "\n".join(p.log_tail() for p in procs)  # noqa: E731
    try:
        wait_healthy(url, procs[0].proc)
        procs.append(Proc("worker-gpu", worker_command(gpu_queue, f"gpu-{uid}@%h"), env, tmp_path))
        procs.append(Proc("worker-cpu", worker_command(cpu_queue, f"cpu-{uid}@%h"), env, tmp_path))
        client = repscope.Client(url)
        run = client.run(project="queues", name=f"two-queues-{uid}", background=False)
        z, labels = separable()
        run.log_embeddings(step=1, embeddings=z, labels=labels, dataset="val")
        finished = {e.suite: e for e in run.wait(timeout=240)}

        assert set(finished) == {"spectrum", "probes"}
        spectrum, probes = finished["spectrum"], finished["probes"]
        assert spectrum.status == probes.status == "succeeded"
        # routing: each evaluation was sent to its suite's queue and ran on the only worker consuming it
        assert (spectrum.queue, spectrum.worker.split("@")[0]) == (cpu_queue, f"cpu-{uid}")
        assert (probes.queue, probes.worker.split("@")[0]) == (gpu_queue, f"gpu-{uid}")
        assert spectrum.device == probes.device == "cpu"  # what each worker reported on its claim
        assert abs(spectrum.metrics["rankme"] - rankme_numpy(z)) / rankme_numpy(z) < 1e-6
        assert probes.metrics["linear_top1"] == 1.0 and probes.metrics["knn10_top1"] == 1.0

        live = httpx.get(f"{url}/jobs/live", headers=client.http.headers, timeout=10).json()
        workers = {w["name"]: w for w in live["workers"]}
        assert {name: (w["device"], w["queues"], w["succeeded"], w["active"]) for name, w in workers.items()} == {
            spectrum.worker: ("cpu", cpu_queue, 1, True), probes.worker: ("cpu", gpu_queue, 1, True)}
        page = httpx.get(f"{url}/jobs", headers=client.http.headers, timeout=10).text
        for worker in (spectrum.worker, probes.worker):
            row = page[page.index(f'<tr data-worker="{worker}">'):]
            assert '<td class="device">cpu</td>' in row[:row.index("</tr>")]
        recent = page[page.index('id="jobs-recent"'):page.index('id="jobs-failed"')]
        for e in (spectrum, probes):
            assert f'href="/evaluations/{e.id}"' in recent and f"<td>{e.queue}</td>" in recent
            assert f'{e.worker} <span class="device">(cpu)</span>' in recent
    except Exception:
        print(logs())
        raise
    finally:
        for proc in reversed(procs):
            proc.stop()
