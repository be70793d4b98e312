"""webdataset tar shards as a server dataset folder (repscope.shard_layout, worker.datasets.shards).

Shards are written here with tarfile by the published webdataset convention (https://github.com/webdataset/webdataset:
one sample = consecutive members sharing a key, ``key.png`` + ``key.cls`` holding the ASCII label), PNG bytes by
Pillow from known arrays; the expected order is the order written (shards by name, members as added).
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from repscope import datasets as api_datasets
from repscope import shard_layout
from repscope.dataset_layouts import describe_folder, detect_layout
from worker.datasets import DatasetError
from worker.datasets.readers import read_image_folder

SIDE = 6


def png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mtime = len(data), kind, link, 0
    return info


def write_shard(path: Path, members: list) -> None:
    """members: (name, bytes) pairs, or TarInfo for links and devices (no data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                tf.addfile(member(m[0], m[1]), io.BytesIO(m[1]))


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIDE, SIDE, 3), dtype=np.uint8)


@pytest.fixture
def ordered(tmp_path):
    """Seven samples over two shards, written out of name order, keys descending, member order varied."""
    imgs, labels = images(7, 0), [3, 0, 2, 3, 1, 0, 2]
    keys = [f"s{900 - i:04d}" for i in range(7)]  # tar order is not key order

    def sample(i: int) -> list:
        pair = [(f"{keys[i]}.png", png(imgs[i])), (f"{keys[i]}.cls", str(labels[i]).encode())]
        return pair[::-1] if i % 2 else pair

    folder = tmp_path / "wds"
    write_shard(folder / "shard-000001.tar", [m for i in range(4, 7) for m in sample(i)])  # written first
    write_shard(folder / "shard-000000.tar", [m for i in range(4) for m in sample(i)])
    return tmp_path, imgs, labels, keys


def test_shards_are_read_in_order(ordered):
    root, imgs, labels, keys = ordered
    ds = read_image_folder(root / "wds", roots=[root])
    assert ds.images.shape == (7, SIDE, SIDE, 3) and np.array_equal(ds.images, imgs)
    assert ds.labels.tolist() == labels and ds.classes == ["0", "1", "2", "3"] and ds.name == "wds"
    assert ds.split.tolist() == api_split(labels)  # no name prefixes: the default stratified split
    got = [s.key for sh in shard_layout.list_shards(root / "wds", root) for s in shard_layout.iter_samples(sh)]
    assert got == keys
    info = describe_folder((root / "wds").resolve(), root.resolve())
    assert (info.format, info.n, info.classes, info.image_shape) == ("webdataset", 7, ["0", "1", "2", "3"], None)
    assert info.files == ["shard-000000.tar", "shard-000001.tar"]
    assert info.counts == {"shard-000000.tar": 4, "shard-000001.tar": 3}
    sizes = sum((root / "wds" / f).stat().st_size for f in info.files)
    assert info.notes[0] == f"2 shards, {sizes} bytes" and "stratified" in info.notes[1]


def api_split(labels: list[int]) -> list[int]:
    from worker.datasets.builtin import stratified_split

    return stratified_split(np.array(labels)).tolist()


def test_webdataset_library_agrees_on_the_order(ordered):
    wds = pytest.importorskip("webdataset")  # only where it is installed; never installed for this test
    root, _, labels, keys = ordered
    urls = [str(root / "wds" / f"shard-00000{i}.tar") for i in range(2)]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert [s["__key__"] for s in samples] == keys
    assert [int(s["cls"]) for s in samples] == labels


def test_split_from_name_prefixes_classes_and_label_members(tmp_path):
    imgs = images(5, 1)
    folder = tmp_path / "named"
    write_shard(folder / "val-000000.tar", [("v0.png", png(imgs[4])), ("v0.json", json.dumps({"label": 2}).encode())])
    write_shard(folder / "train-000001.tar", [("t2.png", png(imgs[2])), ("t2.cls.txt", b" 1\n"),
                                              ("t3.png", png(imgs[3])), ("t3.cls", b"2")])
    write_shard(folder / "train-000000.tar", [("t0.cls", b"0"), ("t0.png", png(imgs[0])),
                                              ("t0.json", b'{"label": 2}'),  # cls is preferred
                                              ("t1.png", png(imgs[1])), ("t1.cls", b"1")])
    (folder / "classes.txt").write_text("cat\ndog\n\neel\n")
    ds = read_image_folder(folder, roots=[tmp_path])
    assert np.array_equal(ds.images, imgs) and ds.labels.tolist() == [0, 1, 1, 2, 2]
    assert ds.split.tolist() == [0, 0, 0, 0, 1] and ds.classes == ["cat", "dog", "eel"]
    info = describe_folder(folder, tmp_path)
    assert (info.format, info.n, info.classes) == ("webdataset", 5, ["cat", "dog", "eel"])
    assert info.notes[1] == "split from shard names: train 4, test 1"


def test_keys_with_dots_in_their_folders(tmp_path):
    assert shard_layout.split_key("dir/abc.def.jpg") == ("dir/abc", "def.jpg")  # webdataset's base_plus_ext
    assert shard_layout.split_key("a.b/c") == (None, None) and shard_layout.split_key("README") == (None, None)
    imgs = images(2, 2)
    write_shard(tmp_path / "d" / "shard-0.tar", [
        ("a.b/c.d/x1.png", png(imgs[0])), ("a.b/c.d/x1.meta.json", b'{"label": 1}'), ("a.b/c.d/x1.cls", b"1"),
        ("a.b/x1.PNG", png(imgs[1])), ("a.b/x1.cls", b"0"), ("notes", b"no dot: skipped, as webdataset does")])
    samples = list(shard_layout.iter_samples(shard_layout.list_shards(tmp_path / "d", tmp_path)[0]))
    assert [(s.key, s.image, s.label) for s in samples] == [("a.b/c.d/x1", "a.b/c.d/x1.png", 1),
                                                            ("a.b/x1", "a.b/x1.PNG", 0)]
    ds = read_image_folder(tmp_path / "d", roots=[tmp_path])
    assert np.array_equal(ds.images, imgs) and ds.labels.tolist() == [1, 0]


def test_detection_needs_only_shards(tmp_path):
    write_shard(tmp_path / "wrap" / "inner" / "shard-0.tar", [("k.png", png(images(1, 3)[0])), ("k.cls", b"0")])
    assert detect_layout(tmp_path / "wrap") == ("webdataset", tmp_path / "wrap" / "inner")
    (tmp_path / "wrap" / "inner" / "classes.txt").write_text("only\n")
    assert detect_layout(tmp_path / "wrap")[0] == "webdataset"
    (tmp_path / "wrap" / "inner" / "readme.md").write_text("x")
    assert detect_layout(tmp_path / "wrap")[0] == "folder"


GOOD = [("k0.png", png(images(1, 4)[0])), ("k0.cls", b"0")]
REFUSED = {  # case: (members of shard-000000.tar, words; registration sees it from the headers too)
    "symlink": ([member("k1.png", kind=tarfile.SYMTYPE, link="/etc/passwd")], "member 'k1.png' is a link", True),
    "hard link": ([member("k1.png", kind=tarfile.LNKTYPE, link="k0.png")], "member 'k1.png' is a link", True),
    "device": ([member("k1.png", kind=tarfile.CHRTYPE)], "member 'k1.png' is a device", True),
    "dotdot": ([("../k1.png", b"x")], "member '../k1.png' has an unsafe name", True),
    "absolute": ([("/tmp/k1.png", b"x")], "member '/tmp/k1.png' has an unsafe name", True),
    "no label": ([("k1.png", GOOD[0][1]), ("k1.txt", b"a caption")],
                 "shard 'shard-000000.tar', sample 'k1' has an image but no label", True),
    "no image": ([("k1.cls", b"1")], "shard 'shard-000000.tar', sample 'k1' has a label but no image", True),
    "bad cls": ([("k1.png", GOOD[0][1]), ("k1.cls", b"cat")],
                "shard 'shard-000000.tar', sample 'k1': 'cls' holds 'cat'", True),
    "negative": ([("k1.png", GOOD[0][1]), ("k1.cls", b"-1")], "'cls' holds '-1'", True),
    "json text": ([("k1.png", GOOD[0][1]), ("k1.json", b'{"label": "dog"}')], "'json' holds 'dog'", True),
    "json no label": ([("k1.png", GOOD[0][1]), ("k1.json", b"{}")], "sample 'k1' has an image but no label",
                      False),
    "two images": ([("k1.png", GOOD[0][1]), ("k1.jpg", GOOD[0][1]), ("k1.cls", b"0")], "has two images", True),
    "out of classes": ([("k1.png", GOOD[0][1]), ("k1.cls", b"5")],
                       "shard 'shard-000000.tar', sample 'k1': label 5 is out of range for the 2 classes", False),
    "undecodable": ([("k1.png", b"not a png"), ("k1.cls", b"0")], "cannot decode image 'shard-000000.tar:k1.png'",
                    False),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_shards_are_refused_naming_shard_and_member(tmp_path, case):
    members, words, at_registration = REFUSED[case]
    folder = tmp_path / "bad"
    write_shard(folder / "shard-000000.tar", GOOD + members)
    if case in ("out of classes", "json no label"):
        (folder / "classes.txt").write_text("a\nb\n")  # registration then reads headers only
    with pytest.raises(DatasetError) as e:
        read_image_folder(folder, roots=[tmp_path])
    assert words in str(e.value)
    if at_registration:
        with pytest.raises(api_datasets.DatasetError, match="shard-000000.tar|k1"):
            describe_folder(folder, tmp_path)
    else:
        assert describe_folder(folder, tmp_path).n == 2


@pytest.mark.parametrize("case, words", [
    ("not a tar", "shard 'shard-000000.tar' is not a readable tar file"),
    ("mixed prefixes", "shard 'shard-000000.tar' has no train-/val-/test- name prefix while others do"),
    ("big member", "member 'k0.png' is"),
    ("many members", "more than 3 tar members"),
    ("too many classes", "label 100000 implies more than 100000 classes"),
    ("link out", "'shard-000000.tar' links outside the configured dataset roots"),
])
def test_limits_and_names(tmp_path, monkeypatch, case, words):
    folder = tmp_path / "ds" / "bad"
    write_shard(folder / "shard-000000.tar", GOOD + [("k1.png", GOOD[0][1]), ("k1.cls", b"100000")])
    if case == "not a tar":
        (folder / "shard-000000.tar").write_bytes(b"\x00garbage" * 10)
    elif case == "mixed prefixes":
        write_shard(folder / "train-000000.tar", GOOD)
    elif case == "link out":
        (folder / "shard-000000.tar").rename(tmp_path / "outside.tar")
        (folder / "shard-000000.tar").symlink_to(tmp_path / "outside.tar")
    monkeypatch.setattr(shard_layout, "MAX_MEMBER_BYTES", 10 if case == "big member" else 64 << 20)
    monkeypatch.setattr(shard_layout, "MAX_MEMBERS", 3 if case == "many members" else 10**6)
    for read, error in ((lambda: read_image_folder(folder, roots=[tmp_path / "ds"]), DatasetError),
                        (lambda: describe_folder(folder, (tmp_path / "ds").resolve()), api_datasets.DatasetError)):
        with pytest.raises(error) as e:
            read()
        assert words in str(e.value)


def test_register_shards_over_the_api(settings, ordered):
    from fastapi.testclient import TestClient

    from backend.app import create_app
    from tests.conftest import ADMIN_HEADERS

    root = ordered[0]
    write_shard(root / "bad" / "shard-0.tar", [("k.png", GOOD[0][1])])
    app = create_app(settings.model_copy(update={"dataset_roots": str(root)}), run_sweeper=False)
    with TestClient(app, headers=ADMIN_HEADERS) as api:
        response = api.post("/api/v1/datasets/folder", json={"name": "shards", "path": str(root / "wds")})
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["format"], body["n"], body["classes"]) == ("webdataset", 7, ["0", "1", "2", "3"])
        assert body["meta"]["files"] == ["shard-000000.tar", "shard-000001.tar"]
        response = api.post("/api/v1/datasets/folder", json={"name": "bad", "path": str(root / "bad")})
        assert response.status_code == 422
        assert "shard 'shard-0.tar', sample 'k' has an image but no label" in response.json()["detail"]
