"""Built-in datasets (determinism, factors), upload readers and their guards, device transforms."""

from __future__ import annotations

import io
import os
import stat
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worker.datasets import DatasetError, dataset_sha256, digits, read_dataset_file, read_npz, shapes
from worker.datasets import transforms as T
from worker.datasets.builtin import render_shapes, stratified_split
from worker.datasets.readers import read_image_folder, read_image_zip


@pytest.fixture(scope="module")
def shp():
    return shapes(n_per_class=40, seed=3)


# ---------------------------------------------------------------- digits


def test_digits_match_sklearn_and_an_independent_resize():
    from sklearn.datasets import load_digits

    ds = digits()
    ref = load_digits()
    assert ds.images.shape == (1797, 32, 32, 3) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, ref.target)
    assert ds.labels.dtype == np.int64 and ds.split.dtype == np.int8 and ds.classes == list("0123456789")
    # torch's bilinear resize (align_corners=False) of the 0..255 images: same pixels up to rounding
    x = torch.from_numpy(ref.images * (255 / 16))[:, None]
    up = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)[:, 0].numpy()
    assert np.abs(ds.images[..., 0].astype(float) - up).max() <= 0.5 + 1e-6
    assert (ds.images[..., 0] == ds.images[..., 2]).all()
    for c in range(10):  # stratified 80/20
        in_c = ds.labels == c
        assert ds.split[in_c].sum() == round(0.2 * in_c.sum())
    assert dataset_sha256(digits()) == dataset_sha256(ds)


# ---------------------------------------------------------------- shapes


def test_shapes_are_deterministic_and_typed(shp):
    again = shapes(n_per_class=40, seed=3)
    np.testing.assert_array_equal(again.images, shp.images)
    assert all(np.array_equal(again.factors[k], shp.factors[k]) for k in shp.factors)
    assert dataset_sha256(again) == dataset_sha256(shp)
    assert dataset_sha256(shapes(n_per_class=40, seed=4)) != dataset_sha256(shp)
    n = 40 * len(shp.classes)
    assert shp.images.shape == (n, 32, 32, 3) and shp.images.dtype == np.uint8
    assert np.bincount(shp.labels).tolist() == [40] * len(shp.classes)
    assert set(shp.factors) == {"class", "colour", "size", "x", "y", "angle", "bg"}
    assert shp.factors["colour"].shape == (n, 3) and shp.factors["colour"].dtype == np.uint8
    np.testing.assert_array_equal(shp.factors["class"], shp.labels)
    assert shapes(n_per_class=2, size=48).images.shape[1:] == (48, 48, 3)


def test_shapes_regenerate_from_factors(shp):
    f = shp.factors
    for i in (0, 17, 101):
        sl = slice(i, i + 1)
        img = render_shapes(f["class"][sl], f["colour"][sl], f["size"][sl], f["x"][sl], f["y"][sl],
                            f["angle"][sl], f["bg"][sl], size=32)  # fmt: skip
        np.testing.assert_array_equal(img[0], shp.images[i])


def _coverage(shp, i) -> np.ndarray:
    """Per-pixel fraction of the shape, from the image and its two colours only."""
    fg, bg = shp.factors["colour"][i].astype(float), shp.factors["bg"][i].astype(float)
    c = int(np.argmax(np.abs(fg - bg)))
    return (shp.images[i][..., c].astype(float) - bg[c]) / (fg[c] - bg[c])


def test_shape_factors_describe_the_image(shp):
    """Independent checks: centroid = (x, y); circle area = pi r^2; corners are background;
    a triangle's far vertex points at 90 deg + angle (counter-clockwise on screen)."""
    centres = np.arange(32) + 0.5
    for i in range(len(shp)):
        cov = _coverage(shp, i)
        cx = (cov.sum(0) * centres).sum() / cov.sum()
        cy = (cov.sum(1) * centres).sum() / cov.sum()
        assert abs(cx - shp.factors["x"][i]) < 0.25 and abs(cy - shp.factors["y"][i]) < 0.25
        np.testing.assert_array_equal(shp.images[i, 0, 0], shp.factors["bg"][i])
        name, r = shp.classes[shp.labels[i]], float(shp.factors["size"][i])
        if name == "circle":
            assert abs(cov.sum() - np.pi * r * r) < 0.03 * np.pi * r * r
        if name == "triangle":
            ys, xs = np.nonzero(cov > 0.5)
            dx, dy = xs + 0.5 - shp.factors["x"][i], shp.factors["y"][i] - (ys + 0.5)
            far = np.argmax(dx * dx + dy * dy)
            direction = np.degrees(np.arctan2(dy[far], dx[far]))
            expected = 90 + shp.factors["angle"][i]
            off = (direction - expected + 60) % 120 - 60  # 3-fold symmetry
            assert abs(off) < 12


def test_stratified_split_is_per_class():
    labels = np.repeat(np.arange(3), [10, 5, 1])
    split = stratified_split(labels, seed=1)
    assert [int(split[labels == c].sum()) for c in range(3)] == [2, 1, 0]
    np.testing.assert_array_equal(split, stratified_split(labels, seed=1))


# ---------------------------------------------------------------- .npz


def test_npz_reader_good_inputs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(20) % 4
    np.savez(tmp_path / "a.npz", images=images, labels=labels, split=(np.arange(20) % 5 == 0).astype(np.uint8),
             classes=np.array(["a", "b", "c", "d"]))  # fmt: skip
    ds = read_npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(ds.images, images)
    assert ds.labels.dtype == np.int64 and ds.split.tolist() == (np.arange(20) % 5 == 0).tolist()
    assert ds.classes == ["a", "b", "c", "d"]
    np.savez_compressed(tmp_path / "gray.npz", images=images[..., 0], labels=labels)
    gray = read_dataset_file(tmp_path / "gray.npz")
    assert gray.images.shape == (20, 8, 8, 1) and gray.split.sum() == 4 and gray.classes == list("0123")


@pytest.mark.parametrize(("arrays", "message"), [
    ({"images": np.zeros((4, 8, 8, 3), np.uint8)}, "lacks \\['labels'\\]"),
    ({"images": np.zeros((4, 8, 8, 3), np.float32), "labels": np.zeros(4, int)}, "must be uint8"),
    ({"images": np.zeros((4, 8, 8, 4), np.uint8), "labels": np.zeros(4, int)}, "C = 1 or 3"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(5, int)}, "4 entries"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(4)}, "labels must be integers"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.zeros(4, int), "split": np.full(4, 2)},
     "only 0 \\(train\\) and 1 \\(test\\)"),
    ({"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.array([0, 1, None, 2], dtype=object)},
     "invalid .npz"),
])  # fmt: skip
def test_npz_reader_bad_inputs(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError, match=message):
        read_npz(tmp_path / "bad.npz")


def test_npz_expanded_size_limit(tmp_path):
    np.savez_compressed(
        tmp_path / "big.npz", images=np.zeros((64, 32, 32, 3), np.uint8), labels=np.zeros(64, int)
    )
    with pytest.raises(DatasetError, match="expands to"):
        read_npz(tmp_path / "big.npz", max_expanded_bytes=100_000)


# ---------------------------------------------------------------- zip guards (checked before decoding)


def _zip(path, members: dict[str, bytes], *, compress=zipfile.ZIP_DEFLATED, links=()):
    with zipfile.ZipFile(path, "w", compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


@pytest.mark.parametrize(("members", "kw", "message"), [
    ({"cat/a.png": b"x", "../evil.png": b"x"}, {}, "contains '\\.\\.'"),
    ({"/etc/cron.d/x.png": b"x"}, {}, "absolute path"),
    ({"C:/windows/x.png": b"x"}, {}, "drive letter"),
    ({"cat/a.png": bytes(10_000_000)}, {}, "compression ratio .* zip bomb"),
    ({f"cat/{i}.png": b"x" for i in range(6)}, {"max_members": 5}, "6 members; at most 5"),
    ({"cat/a.png": bytes(300_000)}, {"max_expanded_bytes": 200_000, "max_ratio": 1e9}, "expands to more than"),
])  # fmt: skip
def test_zip_guards(tmp_path, members, kw, message):
    path = _zip(tmp_path / "up.zip", members)
    with pytest.raises(DatasetError, match=message):
        read_image_zip(path, **kw)


def test_zip_symlink_member_is_refused(tmp_path):
    path = _zip(tmp_path / "up.zip", {"cat/a.png": b"x"}, links=[("cat/b.png", "/etc/passwd")])
    with pytest.raises(DatasetError, match="symbolic link"):
        read_image_zip(path)


def test_zip_without_class_folders(tmp_path):
    with pytest.raises(DatasetError, match="no image files"):
        read_image_zip(_zip(tmp_path / "a.zip", {"readme.txt": b"hi"}))
    with pytest.raises(DatasetError, match="not inside a class folder"):
        read_image_zip(_zip(tmp_path / "b.zip", {"cat/a.png": b"x", "b.png": b"x"}))


def test_server_folder_outside_roots(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "ds" / "cat").mkdir(parents=True)
    (outside / "cat").mkdir(parents=True)
    (outside / "cat" / "secret.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="outside the configured dataset roots"):
        read_image_folder(outside, roots=[root])
    (root / "escape").symlink_to(outside)  # a link inside the root pointing out of it
    with pytest.raises(DatasetError, match="outside the configured dataset roots"):
        read_image_folder(root / "escape", roots=[root])
    os.symlink(outside / "cat" / "secret.png", root / "ds" / "cat" / "a.png")
    with pytest.raises(DatasetError, match="links outside"):
        read_image_folder(root / "ds", roots=[root])
    with pytest.raises(DatasetError, match="no dataset roots"):
        read_image_folder(root / "ds", roots=[])


# ---------------------------------------------------------------- decoding (needs Pillow)


def _png(rgb: tuple[int, int, int], size: tuple[int, int]) -> bytes:
    Image = pytest.importorskip("PIL.Image")
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_image_zip_decodes_resizes_and_splits(tmp_path):
    members = {
        "data/train/dog/1.png": _png((255, 0, 0), (16, 12)), "data/train/cat/2.png": _png((0, 255, 0), (20, 20)),
        "data/test/cat/3.png": _png((0, 0, 255), (8, 8)), "data/test/dog/4.png": _png((9, 9, 9), (16, 16)),
        "__MACOSX/data/train/dog/._1.png": b"junk",
    }  # fmt: skip
    ds = read_image_zip(_zip(tmp_path / "f.zip", members), image_size=10)
    assert ds.classes == ["cat", "dog"] and ds.images.shape == (4, 10, 10, 3)
    assert ds.labels.tolist() == [0, 1, 0, 1] and ds.split.tolist() == [1, 1, 0, 0]  # sorted by path
    np.testing.assert_array_equal(ds.images[0, 5, 5], [0, 0, 255])
    flat = read_image_zip(_zip(tmp_path / "g.zip", {"cat/a.png": _png((1, 2, 3), (6, 4)),
                                                    "dog/b.png": _png((4, 5, 6), (9, 9))}))  # fmt: skip
    assert flat.images.shape == (2, 4, 6, 3)  # the first image fixes the size
    with pytest.raises(DatasetError, match="more than the limit of 100 pixels"):
        read_image_zip(
            _zip(tmp_path / "h.zip", {"cat/a.png": _png((1, 2, 3), (20, 20))}), max_image_pixels=100
        )
    with pytest.raises(DatasetError, match="cannot decode image 'cat/a.png'"):
        read_image_zip(_zip(tmp_path / "i.zip", {"cat/a.png": b"not a png"}))


def test_server_folder_reads_under_root(tmp_path):
    for cls, rgb in (("cat", (10, 20, 30)), ("dog", (40, 50, 60))):
        (tmp_path / "ds" / cls).mkdir(parents=True)
        (tmp_path / "ds" / cls / "x.png").write_bytes(_png(rgb, (5, 5)))
    ds = read_image_folder(tmp_path / "ds", roots=[tmp_path])
    assert ds.classes == ["cat", "dog"] and ds.name == "ds"
    np.testing.assert_array_equal(ds.images[1, 0, 0], [40, 50, 60])


# ---------------------------------------------------------------- transforms


def test_preprocess_matches_a_plain_reference():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    ref = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = T.preprocess(torch.from_numpy(imgs), image_size=16, mean=mean, std=std)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous()
    gray = T.preprocess(torch.from_numpy(imgs[..., :1]))
    assert gray.shape == (3, 3, 20, 24)
    torch.testing.assert_close(gray[:, 0], (torch.from_numpy(imgs[..., 0]).float() / 255 - 0.485) / 0.229)


def test_view_params_depend_only_on_seed_and_index():
    whole = T.view_params(0, 1100, 3, seed=5)
    np.testing.assert_array_equal(T.view_params(1000, 50, 3, seed=5), whole[1000:1050])  # across a block
    assert not np.array_equal(T.view_params(0, 10, 3, seed=6), whole[:10])


def test_views_geometry_without_jitter(monkeypatch):
    """Full-image crops and no colour change: every view is the image or its mirror, both occur."""
    monkeypatch.setattr(T, "CROP_SCALE", (1.0, 1.0))
    monkeypatch.setattr(T, "CROP_RATIO", (1.0, 1.0))
    monkeypatch.setattr(T, "JITTER_P", 0.0)
    monkeypatch.setattr(T, "GRAY_P", 0.0)
    img = torch.rand(2, 3, 8, 8)
    v = T.views(img, 8, seed=0).view(2, 8, 3, 8, 8)
    flips = 0
    for i in range(2):
        for k in range(8):
            same = torch.allclose(v[i, k], img[i], atol=1e-5)
            mirrored = torch.allclose(v[i, k], img[i].flip(-1), atol=1e-5)
            assert same or mirrored
            flips += mirrored
    assert 0 < flips < 16


def test_views_are_seeded_and_in_range():
    img = torch.rand(4, 3, 16, 16)
    a, b = T.views(img, 3, seed=1, size=12), T.views(img, 3, seed=1, size=12)
    assert a.shape == (12, 3, 12, 12) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, T.views(img, 3, seed=2, size=12))
    torch.testing.assert_close(T.views(img[2:], 3, seed=1, size=12, offset=2), a[6:], rtol=0, atol=0)
