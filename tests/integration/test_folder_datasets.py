"""A server folder through the real path: register it, upload a checkpoint, the sandboxed worker streams the
folder image by image (worker.embed_stream), and the served embeddings equal a torchvision ImageFolder +
DataLoader + model loop on the same files; labels and train/val split come from the tree; an unreadable image is
left out with a warning; a changed folder is embedded afresh."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import repscope
from tests.integration.procs import base_env, free_port, start_serve, wait_healthy
from tests.unit.test_embed_stream import PREP, Net, jpeg_tree, torchvision_reference

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folders")
    roots = tmp / "roots"
    tree = jpeg_tree(roots / "bugs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(base_env(tmp / "data", url, REPSCOPE_DATASET_ROOTS=str(roots),
                                 REPSCOPE_LOADER_WORKERS="2", REPSCOPE_MAX_UNREADABLE_FRACTION="0.05"), port, tmp / "data", tmp)
    wait_healthy(url, serve.proc, timeout=90)
    client = repscope.Client(url)
    made = client.http.post("/datasets/folder", json={"name": "bugs", "path": str(tree)})
    assert made.status_code == 201, made.text
    yield client, serve, tree, tmp
    serve.stop()


def embed(client, serve, tmp, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, object]:
    model = Net().eval()
    path = tmp / "net.pt"
    torch.jit.save(torch.jit.script(model), path)
    run = client.run(project="folders", name=f"step-{step}")
    accepted = client.upload_file(run.id, path, step=step, kind="checkpoint", dataset="bugs", suites=["spectrum"],
                                  extra={"resize": "36", "crop": "32"})
    [ev] = [e for e in client.wait([e.id for e in accepted.evaluations], raise_on_failure=False, timeout=300)
            if e.suite == "embed"]
    assert ev.status == "succeeded", (ev.error, serve.log_tail())
    [derived] = [a for a in client.http.get(f"/runs/{run.id}/artifacts").json() if a["kind"] == "embeddings"]
    z = np.load(io.BytesIO(client.http.get(f"/artifacts/{derived['id']}/file").content))
    return z["embeddings"], z["labels"], z["split"], ev


def test_folder_is_streamed_like_a_torchvision_loop(served):
    client, serve, tree, tmp = served
    z, labels, split, ev = embed(client, serve, tmp, 1)
    model = Net().eval()
    want = np.concatenate([torchvision_reference(tree, s, model) for s in ("train", "val")])
    np.testing.assert_allclose(z, want, rtol=1e-5, atol=1e-6)
    assert (split == np.repeat([0, 1], 18)).all() and (labels == np.tile(np.repeat([0, 1, 2], 6), 2)).all()
    assert ev.result["variant"]["streamed"] is True
    assert ev.result["variant"]["preprocessing"]["preprocessing"]["crop"] == [32, 32]
    assert (PREP.resize, PREP.crop) == (36, (32, 32))


def test_unreadable_image_is_left_out_and_a_changed_folder_is_embedded_afresh(served):
    client, serve, tree, tmp = served
    embed(client, serve, tmp, 2)
    (tree / "val" / "bee" / "002.jpg").write_bytes(b"broken")  # changes the manifest too
    z, labels, split, ev = embed(client, serve, tmp, 3)
    assert len(z) == 35 and ev.result["variant"]["unreadable_images"] == 1
    assert any("could not be read" in w for w in ev.result["warnings"])
    assert int((split == 1).sum()) == 17 and int((labels[split == 1] == 1).sum()) == 5
