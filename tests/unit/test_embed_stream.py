"""Server folders embedded image by image: the features equal what a user's torchvision ImageFolder + DataLoader +
model loop gives on the same files; unreadable images are counted and skipped up to a fraction; the sandboxed
child reads the folder through a read-only bind."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from worker.datasets.preprocessing import Preprocessing
from worker.datasets.readers import folder_items
from worker.embed_stream import UnreadableImages, embed_files, folder_preprocessing

PREP = Preprocessing.from_crop_pct(32, 0.875, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "test")


def jpeg_tree(root: Path, per_class: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c, cls in enumerate(("ant", "bee", "cat")):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                h, w = rng.integers(30, 60, 2)
                arr = (rng.integers(0, 256, (h, w, 3)) // 4 + 60 * c).astype(np.uint8)
                Image.fromarray(arr).save(root / split / cls / f"{i:03d}.jpg", quality=90)
    return root


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


def torchvision_reference(root: Path, split: str, model: torch.nn.Module) -> np.ndarray:
    """The loop a user writes: ImageFolder + classic transforms + DataLoader + model."""
    t = torchvision.transforms
    tf = t.Compose([t.Resize(36), t.CenterCrop(32), t.ToTensor(), t.Normalize(PREP.mean, PREP.std)])
    ds = torchvision.datasets.ImageFolder(str(root / split), transform=tf)
    out = []
    with torch.inference_mode():
        for x, _ in torch.utils.data.DataLoader(ds, batch_size=5):
            out.append(model.eval()(x).numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_features_equal_a_torchvision_imagefolder_loop(tmp_path, workers):
    root = jpeg_tree(tmp_path / "tree")
    listed = folder_items(root, [tmp_path])
    assert listed.classes == ["ant", "bee", "cat"] and len(listed.paths) == 36
    assert (PREP.resize, PREP.crop) == (36, (32, 32))
    model = Net()
    result = embed_files(model, str(listed.folder), listed.paths, PREP, tmp_path / "z.npy", batch_size=7,
                         workers=workers)
    z = np.load(tmp_path / "z.npy")
    assert (result.rows, result.dim, result.unreadable) == (36, 5, [])
    train, val = listed.split == 0, listed.split == 1
    np.testing.assert_allclose(z[train], torchvision_reference(root, "train", model), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z[val], torchvision_reference(root, "val", model), rtol=1e-5, atol=1e-6)
    assert (listed.labels[train] == np.repeat([0, 1, 2], 6)).all()


def test_unreadable_images_are_counted_then_refused(tmp_path):
    root = jpeg_tree(tmp_path / "tree", per_class=10)
    (root / "train" / "bee" / "003.jpg").write_bytes(b"not a jpeg")
    data = (root / "val" / "cat" / "001.jpg").read_bytes()
    (root / "val" / "cat" / "001.jpg").write_bytes(data[: len(data) // 3])  # truncated
    listed = folder_items(root, [tmp_path])
    result = embed_files(Net(), str(root), listed.paths, PREP, tmp_path / "z.npy", max_unreadable=0.05)
    bad = [listed.paths[i] for i in result.unreadable]
    assert bad == ["train/bee/003.jpg", "val/cat/001.jpg"]
    assert not np.load(tmp_path / "z.npy")[result.unreadable].any()  # zero rows, dropped by the caller
    with pytest.raises(UnreadableImages, match=r"2 of 60 images could not be read .*train/bee/003\.jpg"):
        embed_files(Net(), str(root), listed.paths, PREP, tmp_path / "z2.npy", max_unreadable=0.01)


def test_an_encoder_without_input_size_gets_the_imagenet_folder_default():
    prep = folder_preprocessing(Preprocessing())
    assert (prep.resize, prep.crop) == (256, (224, 224))


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_sandboxed_child_streams_the_folder(tmp_path, mode):
    from worker.sandbox import EncoderJob, FolderSource, run_job

    root = jpeg_tree(tmp_path / "tree")
    listed = folder_items(root, [tmp_path])
    model = Net().eval()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(model), path)
    job = EncoderJob(task="embed", preprocessing={"resize": 36, "crop": 32}, threads=1)
    out = run_job(job, path, None, source=FolderSource(listed.folder, listed.paths, workers=2), mode=mode,
                  progress=lambda f, m: None)
    want = np.concatenate([torchvision_reference(root, s, model) for s in ("train", "val")])
    np.testing.assert_allclose(out.arrays["embeddings"], want, rtol=1e-5, atol=1e-6)
    assert out.unreadable == [] and out.report["preprocessing"]["crop"] == [32, 32]


def test_a_killed_streamed_embed_resumes_where_it_stopped(tmp_path):
    from worker.sandbox import EncoderJob, FolderSource, run_job

    root = jpeg_tree(tmp_path / "tree", per_class=10)
    listed = folder_items(root, [tmp_path])
    model = Net().eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "net.pt")
    job = EncoderJob(task="embed", preprocessing={"resize": 36, "crop": 32}, threads=1)
    resume = tmp_path / "resume"
    resume.mkdir()

    def source(key: str) -> FolderSource:
        return FolderSource(listed.folder, listed.paths, workers=0, batch_size=8, resume_dir=resume, resume_key=key)

    seen = []

    def kill_after_three_batches(fraction: float, message: str) -> None:
        seen.append(message)
        if sum("embedded" in m for m in seen) == 3:
            raise KeyboardInterrupt  # the worker dies: the runner kills the child mid-way

    with pytest.raises(KeyboardInterrupt):
        run_job(job, tmp_path / "net.pt", None, source=source("k1"), mode="bwrap", progress=kill_after_three_batches)
    out = run_job(job, tmp_path / "net.pt", None, source=source("k1"), mode="bwrap", progress=lambda f, m: None)
    done = out.report["resumed_from"]  # at least the 3 batches reported; the child may have finished one more
    assert 24 <= done < 60 and done % 8 == 0
    want = np.concatenate([torchvision_reference(root, s, model) for s in ("train", "val")])
    np.testing.assert_allclose(out.arrays["embeddings"], want, rtol=1e-5, atol=1e-6)
    other = run_job(job, tmp_path / "net.pt", None, source=source("k2"), mode="off", progress=lambda f, m: None)
    assert other.report["resumed_from"] == 0  # another job's key: starts over


def test_uncompressed_shards_stream_by_offset_compressed_ones_are_read_whole(tmp_path):
    import gzip
    import shutil

    from tests.unit.test_dataset_shards import write_shard
    from worker.datasets.readers import read_image_folder

    rng = np.random.default_rng(1)
    members = []
    for i in range(7):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(buf, format="JPEG")
        members += [(f"s/{i:03d}.jpg", buf.getvalue()), (f"s/{i:03d}.cls", str(i % 3).encode())]
    write_shard(tmp_path / "wds" / "train-000.tar", members[:8])
    write_shard(tmp_path / "wds" / "val-000.tar", members[8:])
    listed = folder_items(tmp_path / "wds", [tmp_path])
    assert len(listed.paths) == 7 and listed.split.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert listed.labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    embed_files(Net(), str(listed.folder), listed.paths, PREP, tmp_path / "z.npy")
    whole = read_image_folder(tmp_path / "wds", [tmp_path])  # the same bytes through the in-memory reader
    assert whole.labels.tolist() == listed.labels.tolist()
    t = torchvision.transforms
    tf = t.Compose([t.Resize(36), t.CenterCrop(32), t.ToTensor(), t.Normalize(PREP.mean, PREP.std)])
    with torch.inference_mode():
        want = Net().eval()(torch.stack([tf(Image.open(io.BytesIO(b))) for name, b in members
                                          if name.endswith(".jpg")])).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), want, rtol=1e-5, atol=1e-6)
    for shard in (tmp_path / "wds").iterdir():  # gzip'd shards: no offsets, read front to back instead
        with open(shard, "rb") as src, gzip.open(shard.with_suffix(".gz.tmp"), "wb") as dst:
            shutil.copyfileobj(src, dst)
        shard.with_suffix(".gz.tmp").replace(shard)
    assert folder_items(tmp_path / "wds", [tmp_path]) is None
    assert read_image_folder(tmp_path / "wds", [tmp_path]).labels.tolist() == listed.labels.tolist()
