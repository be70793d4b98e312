"""Fill a running repscope with a realistic demo project: several runs logged over training steps.

Nothing here invents a metric. Each upload is an N×D embeddings matrix drawn from a labelled Gaussian mixture
whose spectrum widens with training step — at a different pace for each run, and for one run it widens and then
collapses, as SSL runs with too high a learning rate do — and the worker computes every metric (spectrum suite:
RankMe and kin; probes suite: linear and k-NN probes, open-set scores) exactly as for real training jobs.

    z_i = Q · ((s(t) · m_{y_i} + ε_i) ⊙ σ(t)) + 0.1,   ε_i ~ N(0, I_D),  m_c ~ N(0, I_D),  σ_j(t) = exp(−j / w(t))

w(t) — the spectrum's width, which sets the effective rank — and s(t) — the class separation, which sets the
probe accuracies — follow each run's schedule; Q is a fixed random rotation per run (so the spectrum is not
axis-aligned). Used by `repscope demo` and the browser tests. Needs only numpy and the client.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from repscope.client import Client

DEMO_PROJECT = "demo"
DEMO_DATASET = "demo-mixture"


@dataclass(frozen=True)
class Profile:
    """How one demo run trains: spectrum width and class separation as functions of progress p ∈ (0, 1]."""

    name: str
    config: dict[str, Any]
    tags: tuple[str, ...]
    width: Callable[[float], float]
    separation: Callable[[float], float]


def _profiles(rng: np.random.Generator, count: int) -> list[Profile]:
    base = [
        Profile("simclr-lr0.3", {"method": "simclr", "lr": 0.3, "temperature": 0.2, "batch_size": 512,
                                 "projector": [2048, 128]}, ("baseline",),
                width=lambda p: 2.0 + 22.0 * (1 - math.exp(-3.0 * p)),
                separation=lambda p: 0.25 + 0.3 * (1 - math.exp(-3.0 * p))),
        Profile("simclr-lr0.05", {"method": "simclr", "lr": 0.05, "temperature": 0.2, "batch_size": 512,
                                  "projector": [2048, 128]}, ("sweep",),
                width=lambda p: 2.0 + 14.0 * p ** 1.5,
                separation=lambda p: 0.25 + 0.25 * p ** 1.5),
        Profile("simclr-lr2.0", {"method": "simclr", "lr": 2.0, "temperature": 0.2, "batch_size": 512,
                                 "projector": [2048, 128]}, ("sweep", "collapse"),
                width=lambda p: 2.0 + 20.0 * math.sin(math.pi * min(p, 1.0) * 0.95) ** 2,
                separation=lambda p: 0.25 + 0.3 * math.sin(math.pi * min(p, 1.0) * 0.9)),
        Profile("vicreg-lr0.3", {"method": "vicreg", "lr": 0.3, "sim_coeff": 25, "std_coeff": 25, "cov_coeff": 1,
                                 "batch_size": 512, "projector": [2048, 2048]}, ("baseline",),
                width=lambda p: 4.0 + 36.0 * (1 - math.exp(-4.0 * p)),
                separation=lambda p: 0.2 + 0.25 * (1 - math.exp(-2.0 * p))),
    ]
    out = list(base[:count])
    for i in range(len(out), count):  # more runs: random schedules around the baseline
        w_max, s_max, rate = float(rng.uniform(8, 36)), float(rng.uniform(0.15, 0.4)), float(rng.uniform(1, 5))
        out.append(Profile(f"sweep-{i:02d}", {"method": "simclr", "lr": round(float(rng.uniform(0.02, 1.5)), 3),
                                               "temperature": round(float(rng.uniform(0.1, 0.5)), 2),
                                               "batch_size": int(rng.choice([256, 512, 1024]))}, ("sweep",),
                           width=lambda p, w=w_max, r=rate: 2.0 + w * (1 - math.exp(-r * p)),
                           separation=lambda p, s=s_max, r=rate: 0.2 + s * (1 - math.exp(-r * p))))
    return out


def demo_embeddings(rng: np.random.Generator, width: float, separation: float, *, n: int, dim: int,
                    classes: int, prototypes: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One checkpoint's embeddings (float32, n × dim) and labels, from the mixture above."""
    labels = np.arange(n) % classes
    scales = np.exp(-np.arange(dim) / width)
    z = (separation * prototypes[labels] + rng.standard_normal((n, dim))) * scales
    return (z @ rotation.T + 0.1).astype(np.float32), labels.astype(np.int64)


def seed_demo(url: str, *, runs: int = 4, steps: int = 6, seed: int = 0, project: str = DEMO_PROJECT,
              n: int = 400, dim: int = 48, classes: int = 6, wait: bool = True, timeout: float = 900.0,
              log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Log `runs` runs × `steps` steps of labelled embeddings to the instance at `url` (spectrum and probes
    suites) and, with `wait`, block until the worker has evaluated all of them.

    Deterministic in `seed`: calling it again re-uses the same runs and the uploads are deduplicated.
    Returns {"url", "project", "dataset", "runs": [{"id", "name", "steps", "evaluations"}], "evaluations",
    "seconds", and with `wait` "rankme" / "linear_top1": {run name: [(step, value), ...]}}."""
    if runs < 1 or steps < 1:
        raise ValueError("runs and steps must be at least 1")
    say = log or (lambda _msg: None)
    started = time.monotonic()
    rng = np.random.default_rng(seed)
    client = Client(url)
    try:
        plan = []
        for profile in _profiles(rng, runs):
            run = client.run(project=project, name=profile.name, config=profile.config,
                             tags=("demo", *profile.tags))
            prototypes = rng.standard_normal((classes, dim))
            rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
            plan.append((profile, run, prototypes, rotation, np.random.default_rng(rng.integers(2**63))))
        step_values = [1000 * (i + 1) for i in range(steps)]
        handles: dict[str, list[Any]] = {profile.name: [] for profile, *_ in plan}
        for i, step in enumerate(step_values):  # step-major, as runs training side by side would log
            p = (i + 1) / steps
            for profile, run, prototypes, rotation, run_rng in plan:
                z, y = demo_embeddings(run_rng, profile.width(p), profile.separation(p), n=n, dim=dim,
                                       classes=classes, prototypes=prototypes, rotation=rotation)
                handles[profile.name].append(run.log_embeddings(step=step, embeddings=z, labels=y,
                                                                dataset=DEMO_DATASET))
                say(f"{profile.name}: step {step} logged")
        # each handle iterates to its evaluation ids (blocking until a background upload is sent)
        evaluation_ids = {name: [i for h in hs for i in h] for name, hs in handles.items()}
        summary: dict[str, Any] = {
            "url": client.url, "project": project, "dataset": DEMO_DATASET,
            "runs": [{"id": run.id, "name": profile.name, "steps": step_values,
                      "evaluations": evaluation_ids[profile.name]} for profile, run, *_ in plan],
            "evaluations": sum(len(v) for v in evaluation_ids.values()),
        }
        if wait:
            deadline = time.monotonic() + timeout
            for profile, run, *_ in plan:
                run.wait(timeout=max(1.0, deadline - time.monotonic()))
                say(f"{profile.name}: evaluated")
            summary["rankme"] = {profile.name: run.metrics("rankme") for profile, run, *_ in plan}
            summary["linear_top1"] = {profile.name: run.metrics("linear_top1") for profile, run, *_ in plan}
        summary["seconds"] = round(time.monotonic() - started, 2)
        return summary
    finally:
        for _, run, *_ in locals().get("plan", []):
            try:  # let background uploads finish before the connection closes
                getattr(run, "flush", lambda: None)()
            except Exception:  # noqa: BLE001, S110 - the caller already gets the first error
                pass
        client.close()
