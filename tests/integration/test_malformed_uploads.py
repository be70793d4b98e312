"""Bad input at scale: the malformed corpus (tests/malformed_corpus.py) uploaded to a live API process.

Every file goes to a real uvicorn process (SQLite, filesystem broker, the corpus' REPSCOPE_* limits) as
embeddings, as a checkpoint, or as a dataset. Each must get a 4xx whose JSON detail names the problem; after the
whole corpus the process still answers /health, no artifact or dataset was added, the store holds no new file
and no temp leftover, no payload ran, and the process' peak memory stayed small.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import ADMIN_HEADERS
from tests.integration.procs import Proc, base_env, free_port, start_api, wait_healthy
from tests.malformed_corpus import (
    GOOD,
    SERVER_LIMITS,
    Malformed,
    checkpoint_corpus,
    dataset_corpus,
    embeddings_corpus,
    npy,
    npz,
    tensor_ops,
    torch_zip,
)

pytestmark = pytest.mark.integration
PEAK_RSS_LIMIT_KB = 1024 * 1024  # 1 GiB: the bombs must never be expanded in memory


@dataclass
class Live:
    url: str
    data_dir: Path
    api: Proc


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("malformed")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = start_api(base_env(tmp / "data", url, **SERVER_LIMITS), port, tmp)
    try:
        wait_healthy(url, api.proc, timeout=60)
        yield Live(url, tmp / "data", api)
    finally:
        api.stop()
        print(api.log_tail(30))


def store_files(data_dir: Path) -> set[str]:
    root = data_dir / "artifacts"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def problem_with(response: httpx.Response, case: Malformed) -> str | None:
    """Why this response is not the 4xx with a JSON detail naming the problem that `case` expects."""
    if response.status_code // 100 != case.family:
        return f"status {response.status_code}: {response.text[:300]}"
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return f"status {response.status_code} without a JSON detail: {response.text[:300]}"
    if not isinstance(detail, str) or case.words not in detail.lower():
        return f"status {response.status_code}, detail {detail!r} does not mention {case.words!r}"
    return None


def uploaders(client: httpx.Client, run_id: int) -> dict[str, Callable[[Malformed, int], httpx.Response]]:
    def artifact(fields: dict[str, str]) -> Callable[[Malformed, int], httpx.Response]:
        def post(case: Malformed, i: int) -> httpx.Response:
            return client.post(f"/api/v1/runs/{run_id}/artifacts", data={**fields, "step": str(1000 + i)},
                               files={"file": (case.filename, case.content)})
        return post

    def dataset(case: Malformed, i: int) -> httpx.Response:
        return client.post("/api/v1/datasets", data={"name": f"malformed-{i}"},
                           files={"file": (case.filename, case.content)})

    return {"embeddings": artifact({}), "checkpoint": artifact({"kind": "checkpoint", "arch": "resnet18_cifar"}),
            "dataset": dataset}


def upload_controls(client: httpx.Client, run_id: int) -> None:
    """Well-formed files through the same forms: the endpoints accept good input, so a 4xx below is the file's."""
    post = uploaders(client, run_id)
    weights = torch_zip(b"}(Vw\n" + tensor_ops((4, 2), 8) + b"u.", {"0": bytes(32)})
    images, labels = np.full((12, 8, 8, 3), 7, np.uint8), np.arange(12) % 3
    for kind, case in (("embeddings", Malformed("good", "z.npy", npy(GOOD), 2, "")),
                       ("checkpoint", Malformed("good", "w.pt", weights, 2, "")),
                       ("dataset", Malformed("good", "d.npz", npz(images=images, labels=labels), 2, ""))):
        response = post[kind](case, 999_999)  # an index no corpus reaches: its own step and dataset name
        assert response.status_code // 100 == 2, f"control {kind}: {response.status_code} {response.text}"


def test_malformed_corpus_is_refused_and_leaves_nothing(live, tmp_path):
    marker = tmp_path / "pwned"
    corpora = {"embeddings": embeddings_corpus(str(marker)), "checkpoint": checkpoint_corpus(str(marker)),
               "dataset": dataset_corpus()}
    with httpx.Client(base_url=live.url, headers=ADMIN_HEADERS, timeout=120) as client:
        run_id = client.post("/api/v1/runs", json={"project": "corpus", "name": "malformed"}).json()["id"]
        upload_controls(client, run_id)
        artifacts_before = client.get(f"/api/v1/runs/{run_id}/artifacts").json()
        datasets_before = client.get("/api/v1/datasets").json()
        files_before = store_files(live.data_dir)
        post = uploaders(client, run_id)
        problems, lines = [], []
        for kind, corpus in corpora.items():
            for i, case in enumerate(corpus):
                started = time.monotonic()
                try:
                    response = post[kind](case, i)
                except httpx.HTTPError as exc:  # no answer at all: a crash, a hang past the timeout
                    problems.append(f"{kind} / {case.name}: no response ({type(exc).__name__}: {exc})")
                    continue
                lines.append(f"{kind:10s} {response.status_code} {time.monotonic() - started:6.2f}s "
                             f"{len(case.content):>9d} B  {case.name}")
                problem = problem_with(response, case)
                if problem:
                    problems.append(f"{kind} / {case.name}: {problem}")
        print("\n".join(lines))
        print(f"{sum(len(c) for c in corpora.values())} malformed uploads: "
              + ", ".join(f"{len(c)} {k}" for k, c in corpora.items()))
        assert not problems, "\n".join(problems)

        assert live.api.proc.poll() is None, "the API process died"
        health = client.get("/api/v1/health")
        assert health.status_code == 200 and health.json()["database"] == "ok", health.text
        assert client.get(f"/api/v1/runs/{run_id}/artifacts").json() == artifacts_before
        assert client.get("/api/v1/datasets").json() == datasets_before
    assert store_files(live.data_dir) == files_before
    assert list((live.data_dir / "artifacts" / "tmp").iterdir()) == []
    assert not marker.exists(), "a pickle payload ran"
    peak = peak_rss_kb(live.api.proc.pid)
    print(f"API peak RSS {peak / 1024:.0f} MiB")
    assert peak < PEAK_RSS_LIMIT_KB, f"API peak RSS {peak} kB"
