"""The locust side of benchmarks.bench_load: simulated training jobs against a running repscope API.

bench_load runs this module in a process of its own (`python -m benchmarks.load_jobs`), because importing
locust monkey-patches the standard library with gevent, which the orchestrating process must not get.

Each job is one locust FastHttpUser holding its own write token, as a lab's training job would:
  start     get-or-create its run (POST /api/v1/runs), then wait a random fraction of a step
  each ~1 s log its training scalars (POST /api/v1/runs/{id}/metrics {"step", "metrics": {loss, lr}});
            the pacing is one step a second however long the requests took (constant_pacing)
  each ~10 s upload a 256 x 64 float32 .npy of embeddings (POST /api/v1/runs/{id}/artifacts, multipart
            `file` + `step` + `suites=spectrum`, with an Idempotency-Key), at a per-job phase
  each ~30 s read its loss curve back (GET /api/v1/runs/{id}/metrics?key=loss) and check that it holds
            every step logged so far (read-your-writes)

Writes one JSON file (--out): every request (type, latency in ms, ok, status, error) and, per job, its run
id and how many metric posts and uploads were sent and accepted. Stopping is graceful (users finish the step
they are in), so the accepted counts can be compared with the rows the server stored.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gevent
import numpy as np
from locust import FastHttpUser, constant_pacing, task
from locust.env import Environment
from locust.exception import StopUser

STEP_S = 1.0  # one training step a second
UPLOAD_EVERY = 10  # steps between embedding uploads
READ_EVERY = 30  # steps between read-backs of the loss curve
N_ROWS, DIM = 256, 64
PROJECT = "loadtest"

RUNS, METRICS, UPLOAD, READ = (
    "POST /runs",
    "POST /runs/{id}/metrics",
    "POST /runs/{id}/artifacts",
    "GET /runs/{id}/metrics?key=loss",
)


@dataclass
class JobTally:
    """What one simulated job sent and what the server accepted."""

    job: int
    run_id: int | None = None
    metric_posts_sent: int = 0
    metric_posts_accepted: int = 0
    uploads_sent: int = 0
    uploads_accepted: int = 0
    evaluation_ids: list[int] = field(default_factory=list)


def embeddings_npy(job: int, step: int) -> bytes:
    """A 256 x 64 float32 .npy with a decaying spectrum, different for every (job, step)."""
    rng = np.random.default_rng([job, step])
    scale = np.exp(-np.arange(DIM) / (8 + step / 20)).astype(np.float32)
    z = rng.standard_normal((N_ROWS, DIM), dtype=np.float32) * scale
    buf = io.BytesIO()
    np.save(buf, z)
    return buf.getvalue()


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body (fields, then `file`) and its content type; FastHttpUser has no `files=`."""
    boundary = f"repscope-load-{random.getrandbits(64):016x}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def training_scalars(step: int, lr0: float) -> dict[str, float]:
    """A plausible loss (decaying, noisy) and a cosine learning-rate schedule."""
    loss = 2.5 * math.exp(-step / 300) + 0.3 + random.gauss(0, 0.02)
    return {"loss": loss, "lr": lr0 * 0.5 * (1 + math.cos(math.pi * min(step, 10_000) / 10_000))}


class TrainingJob(FastHttpUser):
    """One training job: its run, a scalar log each step, embeddings every UPLOAD_EVERY steps."""

    wait_time = constant_pacing(STEP_S)
    tokens: list[str] = []  # one write token per job, set by main()
    tallies: list[JobTally] = []
    _ids = itertools.count()

    def on_start(self) -> None:
        self.index = next(TrainingJob._ids)
        self.tally = JobTally(job=self.index)
        TrainingJob.tallies.append(self.tally)
        self.auth = {"Authorization": f"Bearer {self.tokens[self.index % len(self.tokens)]}"}
        self.rng = random.Random(self.index)
        self.lr0 = self.rng.choice([0.03, 0.1, 0.3, 1.0])
        self.upload_phase = self.rng.randrange(UPLOAD_EVERY)
        self.read_phase = self.rng.randrange(READ_EVERY)
        self.step = 0
        body = {"project": PROJECT, "name": f"job-{self.index:03d}", "config": {"lr": self.lr0, "batch": 256},
                "tags": ["load"]}
        with self.client.post("/api/v1/runs", json=body, headers=self.auth, name=RUNS,
                              catch_response=True) as resp:
            if resp.status_code in (200, 201):
                self.tally.run_id = resp.json()["id"]
            else:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
        if self.tally.run_id is None:
            raise StopUser()
        gevent.sleep(self.rng.uniform(0, STEP_S))  # jobs do not step in lockstep

    @task
    def train_step(self) -> None:
        self.step += 1
        self.log_scalars()
        if (self.step + self.upload_phase) % UPLOAD_EVERY == 0:
            self.upload_embeddings()
        if (self.step + self.read_phase) % READ_EVERY == 0:
            self.read_back()

    def log_scalars(self) -> None:
        body = {"step": self.step, "metrics": training_scalars(self.step, self.lr0)}
        self.tally.metric_posts_sent += 1
        with self.client.post(f"/api/v1/runs/{self.tally.run_id}/metrics", json=body, headers=self.auth,
                              name=METRICS, catch_response=True) as resp:
            if resp.status_code == 201 and resp.json().get("stored") == 2:
                self.tally.metric_posts_accepted += 1
            else:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")

    def upload_embeddings(self) -> None:
        data, content_type = multipart({"kind": "embeddings", "step": str(self.step), "dataset": "val",
                                        "suites": "spectrum"}, f"emb_step{self.step}.npy",
                                       embeddings_npy(self.index, self.step))
        headers = {**self.auth, "Content-Type": content_type,
                   "Idempotency-Key": f"load-{self.tally.run_id}-{self.step}"}
        self.tally.uploads_sent += 1
        with self.client.post(f"/api/v1/runs/{self.tally.run_id}/artifacts", data=data, headers=headers,
                              name=UPLOAD, catch_response=True) as resp:
            evaluations = resp.json().get("evaluations", []) if resp.status_code == 202 else []
            if resp.status_code == 202 and [e["suite"] for e in evaluations] == ["spectrum"]:
                self.tally.uploads_accepted += 1
                self.tally.evaluation_ids.extend(e["id"] for e in evaluations)
            else:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")

    def read_back(self) -> None:
        with self.client.get(f"/api/v1/runs/{self.tally.run_id}/metrics?key=loss", headers=self.auth,
                             name=READ, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            points = len(resp.json()["points"])
            if points != self.tally.metric_posts_accepted:
                resp.failure(f"read-your-writes: {points} loss points, {self.tally.metric_posts_accepted} logged")


def run_load(host: str, tokens: list[str], users: int, duration: float) -> dict:
    """Run `users` jobs for `duration` seconds (then let each finish its step); every request and tally."""
    TrainingJob.tokens = tokens
    requests: list[dict] = []

    def on_request(request_type, name, response_time, response_length, response=None, exception=None,
                   **_: object) -> None:  # noqa: ANN001
        status = getattr(response, "status_code", 0) or 0
        requests.append({"name": name, "ms": response_time, "ok": exception is None, "status": status,
                         "error": None if exception is None else str(exception)[:300]})

    env = Environment(user_classes=[TrainingJob], host=host, stop_timeout=60.0)
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    t0 = time.monotonic()
    runner.start(users, spawn_rate=max(1.0, users / 5))  # all jobs running within ~5 s
    while time.monotonic() - t0 < duration:  # not spawn_later: the hub's cached clock may lag at start
        gevent.sleep(min(0.5, duration - (time.monotonic() - t0)))
    runner.quit()  # graceful: every job finishes the step it is in
    wall = time.monotonic() - t0
    return {"users": users, "duration_s": duration, "wall_s": wall, "requests": requests,
            "jobs": [asdict(t) for t in sorted(TrainingJob.tallies, key=lambda t: t.job)],
            "cpu_warning": bool(getattr(runner, "cpu_warning_emitted", False))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--tokens", type=Path, required=True, help="JSON list of write tokens, one per job")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = run_load(args.host, json.loads(args.tokens.read_text()), args.users, args.duration)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
