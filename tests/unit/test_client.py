"""The Python client against the real app: streamed uploads, background queue, retries, idempotency."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import func, select

import repscope
from backend.models import Artifact, Evaluation, Metric
from repscope import RepscopeError
from tests.conftest import ADMIN_HEADERS


class FlakyTransport(httpx.BaseTransport):
    """Forwards to the app, but loses the response of the first `lose` artifact uploads after the server
    has processed them — the worst case for a retry."""

    def __init__(self, inner: httpx.BaseTransport, lose: int = 0) -> None:
        self.inner, self.lose, self.uploads = inner, lose, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self.inner.handle_request(request)
        response = httpx.Response(inner.status_code, headers=inner.headers, content=inner.read())
        if request.method == "POST" and request.url.path.endswith("/artifacts"):
            self.uploads += 1
            if self.uploads <= self.lose:
                raise httpx.ReadError("connection reset by peer (simulated)", request=request)
        return response


@pytest.fixture
def client(api):
    def make(lose: int = 0) -> repscope.Client:
        c = repscope.Client("http://testserver", backoff=0.01)
        c.http = httpx.Client(base_url="http://testserver/api/v1", transport=FlakyTransport(api._transport, lose),
                              headers=ADMIN_HEADERS)
        return c

    return make


def count(app, model, *where) -> int:
    with app.state.sessionmaker() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def stored_arrays(api, upload: repscope.client.Upload) -> np.lib.npyio.NpzFile | np.ndarray:
    artifact = upload.result().artifact
    data = api.get(f"/api/v1/artifacts/{artifact.id}/file").content
    return np.load(io.BytesIO(data))


def test_background_upload_streams_arrays_and_copies_them(api, client):
    run = client().run(project="p", name="r")
    z = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    labels = torch.arange(64) % 4
    original = z.copy()
    handle = run.log_embeddings(step=3, embeddings=torch.from_numpy(z), labels=labels)
    z[:] = 0  # the training loop moves on and reuses its buffer
    stored = stored_arrays(api, handle)
    np.testing.assert_array_equal(stored["embeddings"], original)
    np.testing.assert_array_equal(stored["labels"], labels.numpy())
    assert [api.get(f"/api/v1/evaluations/{i}").json()["suite"] for i in handle] == ["spectrum", "probes"]
    plain = run.log_embeddings(step=4, embeddings=original)
    np.testing.assert_array_equal(stored_arrays(api, plain), original)  # a bare .npy when alone
    assert plain.result().artifact.format == "npy"


def test_lost_response_is_retried_and_stored_once(api, app, client):
    run = client(lose=2).run(project="p", name="flaky", background=False)
    z = np.random.default_rng(1).standard_normal((32, 4)).astype(np.float32)
    handle = run.log_embeddings(step=1, embeddings=z)
    assert handle.result().deduplicated is True  # the third attempt found the first one's artifact
    assert count(app, Artifact) == 1 and count(app, Evaluation) == 1


def test_refusal_is_a_clear_exception(api, client):
    background = client().run(project="p", name="bad")
    bad = np.ones((5, 3), dtype=np.float32)
    bad[0, 0] = np.inf
    handle = background.log_embeddings(step=1, embeddings=bad)
    with pytest.raises(RepscopeError, match="non-finite") as err:
        handle.result(timeout=30)
    assert err.value.status_code == 422
    blocking = client().run(project="p", name="bad", background=False)
    with pytest.raises(RepscopeError, match="2-D"):
        blocking.log_embeddings(step=2, embeddings=np.ones(5, dtype=np.float32))
    with pytest.raises(RepscopeError) as refused:
        background.wait(timeout=5)  # wait() re-raises the first failed upload
    assert refused.value.status_code == 422


def test_log_metrics_are_charted_series(api, app, client):
    run = client().run(project="p", name="train")
    for step, loss in ((10, 2.0), (20, 1.5), (20, 1.25)):  # step 20 logged twice: the last value wins
        run.log_metrics(step, loss=loss, lr=0.1)
    run.flush()
    assert run.metrics("loss") == [(10, 2.0), (20, 1.25)]
    assert count(app, Metric, Metric.evaluation_id.is_(None)) == 4
    response = api.post(f"/api/v1/runs/{run.id}/metrics", json={"step": 1, "metrics": {"bad name!": 1.0}})
    assert response.status_code == 422


def test_log_checkpoint_from_a_module(api, client):
    run = client().run(project="p", name="ckpt", background=False)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32 * 3, 5))
    scripted = run.log_checkpoint(1, module, dataset="digits").result()
    assert scripted.artifact.format == "torchscript" and scripted.evaluations[0].suite == "embed"
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))  # with an arch: sent as its state_dict (not checked here)
    weights = run.log_checkpoint(2, small, arch="resnet18_cifar").result()
    assert weights.artifact.format == "state_dict" and weights.artifact.meta["arch"] == "resnet18_cifar"


def test_metric_series_can_be_split_by_dataset(api, client):
    run = client().run(project="p", name="two-datasets", background=False)
    for step in (1, 2):
        for dataset, seed in (("val", 0), ("ood", 1)):
            z = np.random.default_rng(seed + step).standard_normal((30, 5)).astype(np.float32)
            handle = run.log_embeddings(step, z, dataset=dataset)
            eid = handle.ids()[0]
            lease = api.post(f"/api/v1/evaluations/{eid}/claim", json={"worker": "w"}).json()["claim"]
            api.post(f"/api/v1/evaluations/{eid}/result",
                     json={"claim": lease, "metrics": {"rankme": step + (seed / 10)}})
    run.log_metrics(2, rankme=99.0)  # a scalar the job logged itself has no dataset
    assert run.metrics("rankme", dataset="val") == [(1, 1.0), (2, 2.0)]
    assert run.metrics("rankme", dataset="ood") == [(1, 1.1), (2, 2.1)]
    points = api.get(f"/api/v1/runs/{run.id}/metrics", params={"key": "rankme"}).json()["points"]
    assert sorted((p["step"], p["dataset"]) for p in points) == [(1, "ood"), (1, "val"), (2, "ood"), (2, "val")]
    assert run.metrics("rankme", source="logged") == [(2, 99.0)]  # its own namespace, never mixed in


def test_missing_or_weak_token_is_a_clear_exception(api, client):
    anonymous = client()
    del anonymous.http.headers["Authorization"]
    with pytest.raises(RepscopeError) as missing:
        anonymous.run(project="p", name="r")
    assert missing.value.status_code == 401 and "repscope token create" in missing.value.detail
    reader = client()
    secret = api.post("/api/v1/tokens", json={"name": "ro", "scopes": ["read"]}).json()["token"]
    reader.http.headers["Authorization"] = f"Bearer {secret}"
    with pytest.raises(RepscopeError) as weak:
        reader.run(project="p", name="r")
    assert weak.value.status_code == 403 and "lacks the write scope" in weak.value.detail


def test_rate_limited_requests_wait_for_retry_after(app, client):
    import time

    from backend.security import RateLimiter

    app.state.rate_limiter = RateLimiter(per_minute=60, burst=1)  # one request, then one per second
    c = client()
    c.run(project="p", name="r")
    start = time.monotonic()
    run = c.run(project="p", name="r")  # 429 Retry-After: 1, then retried (backoff alone would be 0.01 s)
    assert time.monotonic() - start >= 0.9
    assert run.info.name == "r"
