"""Datasets and checkpoint uploads over the real app: validation, refusal of unsafe files, the embed cache."""

from __future__ import annotations

import io
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from repscope.datasets import DatasetError, DatasetLimits, inspect_dataset
from tests import malformed_corpus as corpus
from tests.unit.test_api import count, npz_bytes, stored_files, tmp_files, upload


def images_npz(n: int = 12, **extra) -> bytes:
    rng = np.random.default_rng(0)
    arrays = {"images": rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), "labels": np.arange(n) % 3}
    arrays.update(extra)
    return npz_bytes(**arrays)


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def zip_bytes(members: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def post_dataset(api, name: str, content: bytes, filename: str = "d.npz"):
    return api.post("/api/v1/datasets", data={"name": name}, files={"file": (filename, content)})


def test_builtin_datasets_are_listed(api):
    names = {d["name"]: d for d in api.get("/api/v1/datasets").json()}
    assert names["digits"]["kind"] == "builtin" and names["digits"]["n"] == 1797
    assert names["shapes"]["kind"] == "builtin"


def test_upload_npz_dataset(api, settings):
    response = post_dataset(api, "tiny", images_npz(split=np.arange(12) % 2))
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["n"], body["image_shape"], body["classes"], body["format"]) == (12, [8, 8, 3], ["0", "1", "2"], "npz")
    assert api.get("/api/v1/datasets/tiny/file").content == images_npz(split=np.arange(12) % 2)
    assert post_dataset(api, "tiny", images_npz()).status_code == 409
    assert api.get("/api/v1/datasets/nope").status_code == 404


def test_upload_image_folder_zip(api):
    content = zip_bytes({"root/cat/a.png": PNG, "root/cat/b.png": PNG, "root/dog/c.png": PNG})
    body = post_dataset(api, "pets", content, "pets.zip").json()
    assert body["format"] == "imagefolder" and body["n"] == 3 and body["classes"] == ["cat", "dog"]


BAD_DATASETS = {
    "no labels": (npz_bytes(images=np.zeros((4, 8, 8, 3), np.uint8)), "labels"),
    "float images": (npz_bytes(images=np.zeros((4, 8, 8, 3)), labels=np.arange(4)), "uint8"),
    "bad split": (images_npz(split=np.full(12, 3)), "split"),
    "path traversal": (zip_bytes({"../evil/a.png": PNG}), "climbs out"),
    "absolute path": (zip_bytes({"/etc/a.png": PNG}), "absolute"),
    "symlink": (zip_bytes({"cat/a.png": PNG}, symlink="cat/link.png"), "symbolic link"),
    "zip bomb": (zip_bytes({"cat/a.png": PNG[:8] + b"\x00" * 5_000_000}), "zip bomb"),
    "not an image": (zip_bytes({"cat/a.png": b"#!/bin/sh\necho hi\n"}), "not a PNG"),
    "not a dataset": (b"hello world", "neither"),
    # found by tests/integration/test_malformed_uploads.py (a 201 or a 500 before the fix)
    "negative labels": (images_npz(labels=np.arange(12) % 3 - 1), "non-negative"),
    "labels header of gigabytes": (corpus.raw_zip([  # labels loaded before their length was checked
        corpus.stored("images.npy", corpus.npy(np.zeros((4, 8, 8, 3), np.uint8))),
        corpus.short_stream("labels.npy", corpus.npy_header((4 * 10**8,), "<i8"), 128 + 4 * 10**8 * 8)]),
        "expands to 3200001024 bytes"),  # now refused from the zip directory, before any header is read
    "member that is not an array": (corpus.raw_zip([corpus.stored("images.npy", b"\x00garbage" * 40),
                                                    corpus.stored("labels.npy", corpus.npy(np.arange(4)))]),
                                    "invalid dataset .npz"),
    "encrypted image": (corpus.raw_zip([corpus.stored("cat/a.png", PNG, flags=1)]), "encrypted"),
    "unknown compression": (corpus.raw_zip([corpus.RawMember("cat/a.png", PNG, 99, 0, len(PNG))]),
                            "unsupported compression method"),
    "corrupt deflate stream": (corpus.raw_zip([corpus.RawMember("cat/a.png", bytes(range(64)), 8, 0, 72)]),
                               "is corrupt"),
    "corrupt bzip2 stream": (corpus.raw_zip([corpus.RawMember("cat/a.png", bytes(range(64)), 12, 0, 72)]),
                             "is corrupt"),
}


@pytest.mark.parametrize("case", list(BAD_DATASETS))
def test_bad_datasets_are_refused_and_leave_nothing(api, app, settings, case):
    from backend.models import Dataset

    content, words = BAD_DATASETS[case]
    response = post_dataset(api, "bad", content, "bad.zip")
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"], response.json()["detail"]
    assert count(app, Dataset) == 2  # the two built-ins only
    assert stored_files(settings) == [] and tmp_files(settings) == []


def _torchscript_bytes() -> bytes:
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 3, 4)))
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return buf.getvalue()


def _state_dict_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_checkpoint_upload_queues_embedding(api, run_id, settings):
    post_dataset(api, "tiny", images_npz())
    response = upload(api, run_id, "enc.pt", _torchscript_bytes(), kind="checkpoint", step=5, dataset="tiny",
                      views=2)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["artifact"]["kind"] == "checkpoint" and body["artifact"]["format"] == "torchscript"
    [embed] = body["evaluations"]
    assert embed["suite"] == "embed" and embed["status"] == "queued"
    params = api.get(f"/api/v1/evaluations/{embed['id']}").json()["params"]
    assert params["dataset"] == "tiny" and params["views"] == 2 and params["suites"] == ["spectrum", "probes"]
    assert len(params["cache_key"]) == 64


def test_state_dict_needs_arch_and_weights_only(api, app, run_id, settings):
    from backend.models import Artifact

    weights = _state_dict_bytes({"module.backbone.fc.weight": torch.ones(2, 3)})
    missing_arch = upload(api, run_id, "w.pth", weights, kind="checkpoint")
    assert missing_arch.status_code == 422 and "arch" in missing_arch.json()["detail"]

    class Evil:
        def __reduce__(self):
            return (Path.touch, (Path("/tmp/repscope-ckpt-pwned"),))

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"w": Evil()}))
    evil = upload(api, run_id, "evil.pth", buf.getvalue(), kind="checkpoint", arch="resnet18_cifar")
    assert evil.status_code == 422 and "forbidden global" in evil.json()["detail"]
    assert not Path("/tmp/repscope-ckpt-pwned").exists()
    garbage = upload(api, run_id, "x.pt", b"not a checkpoint at all", kind="checkpoint")
    assert garbage.status_code == 422 and "unknown checkpoint format" in garbage.json()["detail"]
    unknown_dataset = upload(api, run_id, "w.pth", weights, kind="checkpoint", arch="resnet18_cifar",
                             dataset="nope")
    assert unknown_dataset.status_code == 422 and "'nope' does not exist" in unknown_dataset.json()["detail"]
    assert count(app, Artifact) == 0 and stored_files(settings) == [] and tmp_files(settings) == []
    ok = upload(api, run_id, "w.pth", weights, kind="checkpoint", arch="resnet18_cifar")
    assert ok.status_code == 202 and ok.json()["artifact"]["meta"]["n_params"] == 6


def test_same_checkpoint_on_same_dataset_is_embedded_once(api, run_id):
    ckpt = _torchscript_bytes()
    first = upload(api, run_id, "enc.pt", ckpt, kind="checkpoint", step=1).json()
    embed_id = first["evaluations"][0]["id"]
    claim = api.post(f"/api/v1/evaluations/{embed_id}/claim", json={"worker": "w"}).json()
    z = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    derived = upload(api, run_id, "z.npz", npz_bytes(embeddings=z, labels=np.arange(40) % 4), step=1,
                     dataset="digits", evaluation=embed_id, claim=claim["claim"]).json()
    assert [e["suite"] for e in derived["evaluations"]] == ["spectrum", "probes"]
    api.post(f"/api/v1/evaluations/{embed_id}/result", json={"claim": claim["claim"], "metrics": {}})
    other = api.post("/api/v1/runs", json={"project": "simclr", "name": "copy"}).json()["id"]
    second = upload(api, other, "enc.pt", ckpt, kind="checkpoint", step=1).json()
    suites = {e["suite"]: e["status"] for e in second["evaluations"]}
    assert suites == {"embed": "succeeded", "spectrum": "queued", "probes": "queued"}
    artifacts = api.get(f"/api/v1/runs/{other}/artifacts").json()
    assert [a["kind"] for a in artifacts] == ["checkpoint", "embeddings"]
    assert artifacts[1]["sha256"] == derived["artifact"]["sha256"]
    # a different dataset is a different cache entry
    third = upload(api, other, "enc.pt", ckpt, kind="checkpoint", step=2, dataset="shapes").json()
    assert [e["status"] for e in third["evaluations"]] == ["queued"]


def test_only_an_embed_step_takes_derived_embeddings(api, run_id):
    z = npz_bytes(embeddings=np.ones((5, 2), np.float32) * np.arange(2))
    first = upload(api, run_id, "a.npz", z, step=1).json()
    spectrum = first["evaluations"][0]["id"]
    lease = api.post(f"/api/v1/evaluations/{spectrum}/claim", json={"worker": "w"}).json()["claim"]
    bad = upload(api, run_id, "b.npz", z, step=2, evaluation=spectrum, claim=lease)
    assert bad.status_code == 422 and "not an embed step" in bad.json()["detail"]


def test_dino_style_checkpoint_with_args_is_accepted(api, run_id):
    """DINO pickles argparse.Namespace next to the weights: inert metadata, accepted; other globals are not."""
    import argparse

    ckpt = _state_dict_bytes({"teacher": {"backbone.fc.weight": torch.ones(2, 3)},
                              "args": argparse.Namespace(arch="vit_small", lr=5e-4), "epoch": 100})
    response = upload(api, run_id, "dino.pth", ckpt, kind="checkpoint", arch="vit_small")
    assert response.status_code == 202, response.text
    assert response.json()["artifact"]["meta"]["sample_keys"] == ["teacher.backbone.fc.weight"]


def test_checkpoint_suites_split_between_encoder_and_embeddings(api, run_id):
    ckpt = _torchscript_bytes()
    only_encoder = upload(api, run_id, "e.pt", ckpt, kind="checkpoint", step=1, suites="equivariance").json()
    assert [e["suite"] for e in only_encoder["evaluations"]] == ["equivariance"]  # nothing to embed
    both = upload(api, run_id, "e.pt", ckpt, kind="checkpoint", step=2, dataset="shapes",
                  suites="spectrum,equivariance,backdoor").json()
    assert [e["suite"] for e in both["evaluations"]] == ["embed", "equivariance", "backdoor"]
    embed = api.get(f"/api/v1/evaluations/{both['evaluations'][0]['id']}").json()
    assert embed["params"]["suites"] == ["spectrum"] and embed["params"]["dataset"] == "shapes"
    refused = upload(api, run_id, "z.npy", __import__("tests.unit.test_api", fromlist=["npy_bytes"]).npy_bytes(
        np.ones((4, 2), np.float32) * np.arange(2)), suites="equivariance")
    assert refused.status_code == 422 and "need an encoder" in refused.json()["detail"]


def test_poison_flags_queue_the_pool_scan(api, run_id):
    z = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    body = upload(api, run_id, "p.npz", npz_bytes(embeddings=z, poison=(np.arange(50) < 5).astype(np.int8))).json()
    assert [e["suite"] for e in body["evaluations"]] == ["spectrum", "backdoor"]


def test_dataset_npz_past_the_expanded_size_limit_is_refused(tmp_path):
    """A 201 before the fix: the API checked the limit for ImageFolder zips only (the worker refused it later)."""
    images = corpus.bomb_member("images.npy", corpus.npy_header((1000, 32, 32, 3), "|u1"), 1000 * 32 * 32 * 3)
    path = tmp_path / "bomb.npz"
    path.write_bytes(corpus.raw_zip([images, corpus.stored("labels.npy", corpus.npy(np.zeros(1000, np.int64)))]))
    assert len(path.read_bytes()) < 20_000
    with pytest.raises(DatasetError, match=r"expands to 3\d{6} bytes, more than the limit of 1000000"):
        inspect_dataset(path, "bomb.npz", DatasetLimits(max_expanded_bytes=1_000_000))
    assert inspect_dataset(path, "bomb.npz").n == 1000  # within the default limit: valid (black) images


HOSTILE_STATE_DICTS = {  # a 500 (RecursionError) or a request that never ends before the fix
    "nested 5000 deep": (corpus.nested_lists_pickle(5000), "holds no tensors"),
    "containing itself": (corpus.cyclic_pickle(), "holds no tensors"),
    "billion laughs": (corpus.laughs_pickle(levels=40), "holds no tensors"),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", list(HOSTILE_STATE_DICTS))
def test_hostile_state_dict_structure_is_refused(api, app, run_id, settings, case):
    from backend.models import Artifact

    pkl, words = HOSTILE_STATE_DICTS[case]
    response = upload(api, run_id, "w.pt", corpus.torch_zip(pkl), kind="checkpoint", arch="resnet18_cifar")
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert count(app, Artifact) == 0 and stored_files(settings) == [] and tmp_files(settings) == []


def test_shared_and_nested_tensors_are_still_found():
    """The walk enters each container once but still reaches every tensor, in order, under its dotted key."""
    from repscope.checkpoints import _walk
    from repscope.formats import _Tensor

    t = _Tensor(np.zeros(3, np.float32), False)
    shared = {"w": t}
    tree = {"a": shared, "b": [t, (t,)], "c": shared, "d": {"e": {"f": t}}}
    assert [k for k, _ in _walk(tree)] == ["a.w", "b.0", "b.1.0", "d.e.f"]


def test_encrypted_checkpoint_member_is_a_checkpoint_error(api, run_id):
    """A 500 before the fix: the archive check raised FormatError, which register_checkpoint did not expect."""
    content = corpus.raw_zip([corpus.stored("archive/data.pkl", b"}.", flags=1)])
    response = upload(api, run_id, "w.pt", content, kind="checkpoint", arch="resnet18_cifar")
    assert response.status_code == 422 and "is encrypted" in response.json()["detail"], response.text
