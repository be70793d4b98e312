"""A server folder's identity is its files' manifest: the embed cache is keyed by it, reused while the folder is
unchanged, and not reused (nor silently refilled by the worker) once a file changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from repscope.dataset_manifest import ManifestError, folder_manifest
from tests.conftest import ADMIN_HEADERS
from tests.unit.test_api import npz_bytes, upload
from tests.unit.test_datasets_checkpoints_api import _torchscript_bytes


def tree(root: Path) -> Path:
    for cls, names in {"cat": ("a.png", "b.png"), "dog": ("c.png",)}.items():
        (root / cls).mkdir(parents=True)
        for n in names:
            (root / cls / n).write_bytes(n.encode() * 10)
    return root


def test_manifest_follows_every_change_and_ignores_hidden_files(tmp_path):
    root = tree(tmp_path / "pets")
    first = folder_manifest(root)
    assert first == folder_manifest(root) and (first.files, first.bytes) == (3, 150)
    (root / ".DS_Store").write_bytes(b"junk")
    assert folder_manifest(root) == first
    seen = {first.sha256}
    st = os.stat(root / "cat" / "a.png")
    os.utime(root / "cat" / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # same bytes, touched
    seen.add(folder_manifest(root).sha256)
    (root / "dog" / "c.png").write_bytes(b"other size")  # content and size
    seen.add(folder_manifest(root).sha256)
    (root / "dog" / "c.png").rename(root / "dog" / "d.png")  # renamed
    seen.add(folder_manifest(root).sha256)
    (root / "dog" / "e.png").write_bytes(b"new")  # added
    seen.add(folder_manifest(root).sha256)
    assert len(seen) == 5
    with pytest.raises(ManifestError, match="more than 2 files"):
        folder_manifest(root, max_files=2)
    with pytest.raises(ManifestError, match="does not exist"):
        folder_manifest(tmp_path / "gone")


@pytest.fixture
def folder_api(settings, tmp_path):
    from fastapi.testclient import TestClient

    from backend.app import create_app

    root = tree(tmp_path / "roots" / "pets")
    app = create_app(settings.model_copy(update={"dataset_roots": str(root.parent)}), run_sweeper=False)
    with TestClient(app, headers=ADMIN_HEADERS) as api:
        assert api.post("/api/v1/datasets/folder", json={"name": "pets", "path": str(root)}).status_code == 201
        yield api, root


def embed_once(api, run_id: int, ckpt: bytes) -> dict:
    """Upload the checkpoint on the folder and play the worker's part of its embed step."""
    first = upload(api, run_id, "enc.pt", ckpt, kind="checkpoint", step=1, dataset="pets", suites="spectrum").json()
    embed_id = first["evaluations"][0]["id"]
    claim = api.post(f"/api/v1/evaluations/{embed_id}/claim", json={"worker": "w"}).json()
    z = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    upload(api, run_id, "z.npz", npz_bytes(embeddings=z), step=1, dataset="pets", evaluation=embed_id,
           claim=claim["claim"])
    api.post(f"/api/v1/evaluations/{embed_id}/result", json={"claim": claim["claim"], "metrics": {}})
    return claim["evaluation"]["params"]


def statuses(api, project_run: str, ckpt: bytes) -> dict:
    run = api.post("/api/v1/runs", json={"project": "folders", "name": project_run}).json()["id"]
    body = upload(api, run, "enc.pt", ckpt, kind="checkpoint", step=1, dataset="pets", suites="spectrum").json()
    return {e["suite"]: e["status"] for e in body["evaluations"]}


def test_folder_embeddings_are_cached_by_manifest_and_not_reused_after_a_change(folder_api, run_id):
    api, root = folder_api
    ckpt = _torchscript_bytes()
    params = embed_once(api, run_id, ckpt)
    assert params["dataset_manifest"] == folder_manifest(root).key
    assert statuses(api, "same-folder", ckpt) == {"embed": "succeeded", "spectrum": "queued"}  # cache reused
    (root / "dog" / "c.png").write_bytes(b"changed")
    assert statuses(api, "changed-folder", ckpt) == {"embed": "queued"}  # a new embed step, not the old vectors


def test_worker_refuses_a_folder_that_changed_after_upload(tmp_path):
    from worker.derive import check_manifest

    root = tree(tmp_path / "pets")
    key = folder_manifest(root).key
    check_manifest(str(root), key)
    (root / "cat" / "b.png").unlink()
    with pytest.raises(ValueError, match="changed since the checkpoint was uploaded"):
        check_manifest(str(root), key)


def test_a_vanished_folder_is_a_clear_422(folder_api, run_id):
    api, root = folder_api
    for f in root.rglob("*.png"):
        f.unlink()
    for d in sorted(root.iterdir()):
        d.rmdir()
    root.rmdir()
    response = upload(api, run_id, "enc.pt", _torchscript_bytes(), kind="checkpoint", dataset="pets")
    assert response.status_code == 422 and "does not exist (any more)" in response.json()["detail"]


def test_class_subset_and_per_class_cap(settings, tmp_path, run_id):  # noqa: ARG001 - run_id: app set up
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from worker.datasets.readers import folder_items

    root = tree(tmp_path / "roots" / "zoo")
    (root / "emu").mkdir()
    for i in range(4):
        (root / "emu" / f"{i}.png").write_bytes(b"e" * (i + 1))
    app = create_app(settings.model_copy(update={"dataset_roots": str(root.parent)}), run_sweeper=False)
    with TestClient(app, headers=ADMIN_HEADERS) as api:
        def post(name: str, **extra):
            return api.post("/api/v1/datasets/folder", json={"name": name, "path": str(root), **extra})

        made = post("zoo-2", classes=["cat", "emu"], per_class=2).json()
        assert made["classes"] == ["cat", "emu"] and made["meta"]["per_class"] == 2 and made["n"] is None
        assert post("zoo-all").json()["classes"] == ["cat", "dog", "emu"]
        bad = post("zoo-x", classes=["cat", "yak"])
        assert bad.status_code == 422 and "yak" in bad.json()["detail"]
        ckpt = _torchscript_bytes()
        run = api.post("/api/v1/runs", json={"project": "zoo", "name": "r"}).json()["id"]
        keys = {}
        for i, name in enumerate(("zoo-2", "zoo-all")):
            embed_id = upload(api, run, "e.pt", ckpt, kind="checkpoint", step=i, dataset=name).json()["evaluations"][0]
            keys[name] = api.get(f"/api/v1/evaluations/{embed_id['id']}").json()["params"]["cache_key"]
        assert keys["zoo-2"] != keys["zoo-all"]  # the selection is part of the dataset's identity
    listed = folder_items(root, [root.parent], classes=["cat", "emu"], per_class=2)
    assert listed.paths == ["cat/a.png", "cat/b.png", "emu/0.png", "emu/1.png"]
    assert listed.classes == ["cat", "emu"] and listed.labels.tolist() == [0, 0, 1, 1]
