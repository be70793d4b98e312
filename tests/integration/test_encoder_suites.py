"""Suites that run on the encoder itself (equivariance) and the backdoor pool scan, through a live
`repscope serve`: the wiring from upload to worker to metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import repscope
from tests.integration.procs import base_env, free_port, start_serve, wait_healthy
from tests.integration.test_checkpoints import TinyCNN

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("encoder-suites")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(base_env(tmp / "data", url), port, tmp / "data", tmp)
    wait_healthy(url, serve.proc, timeout=90)
    yield url, serve
    serve.stop()


@pytest.mark.timeout(900)  # ~4 min alone on 2 cores (13 families x SIE's MLP head); margin for a loaded machine
def test_equivariance_runs_on_a_checkpoint(server, tmp_path):
    url, serve = server
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(TinyCNN().eval()), path)
    client = repscope.Client(url)
    run = client.run(project="encoder-suites", name="equivariance", background=False)
    [ev] = client.wait(run.log_checkpoint(1, path, dataset="shapes", suites=["equivariance"]).ids(),
                       timeout=840, raise_on_failure=False)
    assert ev.status == "succeeded", ev.error or serve.log_tail()
    assert {"equi_r2_mean", "invariance_auc_mean", "equi_mrr_mean"} <= set(ev.metrics)
    assert -1.0 <= ev.metrics["equi_r2_mean"] <= 1.0 and 0.0 <= ev.metrics["equi_mrr_mean"] <= 1.0
    assert ev.result["variant"]["dataset"] == "shapes"


def test_backdoor_pool_scan_finds_a_planted_cluster(server):
    url, serve = server
    rng = np.random.default_rng(0)
    clean = rng.standard_normal((990, 32)).astype(np.float32)
    planted = (rng.standard_normal(32) * 3 + rng.standard_normal((10, 32)) * 0.05).astype(np.float32)
    z = np.concatenate([clean, planted])
    poison = np.r_[np.zeros(990), np.ones(10)].astype(np.int8)
    client = repscope.Client(url)
    # the pool's rows are the images of a registered dataset: image-level scores and thumbnails join in
    images = rng.integers(0, 256, (1000, 8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=np.zeros(1000, dtype=np.int64))
    assert client.http.post("/datasets", data={"name": "pool-images"},
                            files={"file": ("pool.npz", buf.getvalue())}).status_code == 201
    run = client.run(project="encoder-suites", name="pool", background=False)
    run.log_embeddings(1, z, poison=poison, suites=["backdoor"], dataset="pool-images")
    [ev] = run.wait(timeout=300)
    assert ev.status == "succeeded", serve.log_tail()
    aurocs = [v for k, v in ev.metrics.items() if "auroc" in k]
    assert aurocs and max(aurocs) >= 0.9  # 1 % of the pool, clustered: easy to rank first
    assert "ctrl_energy_auroc" in ev.metrics and "grid_energy_auroc" in ev.metrics
    assert len(ev.result["figures"]["montage"]["indices"]) == 16
    page = client.http.get(f"{url}/evaluations/{ev.id}")
    assert page.status_code == 200 and "most suspicious samples" in page.text
