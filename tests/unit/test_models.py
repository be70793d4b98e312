"""Checkpoint loading: every format round-trips to the model's own forward; bad and hostile files are refused."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from worker.embed import embed
from worker.models import CheckpointError, detect_checkpoint_format, load_encoder
from worker.models.cifar import resnet18_cifar
from worker.models.features import encode

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}  # overrides the CIFAR config's
PROJECTOR_KEYS = ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                  "1.num_batches_tracked", "3.weight", "3.bias")


class WithProjector(torch.nn.Module):
    """solo-learn's CIFAR ResNet-18 (features) with a SimCLR projector beside it."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = resnet18_cifar()
        self.backbone.fc = torch.nn.Identity()
        self.projector = torch.nn.Sequential(torch.nn.Linear(512, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                             torch.nn.Linear(64, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)


def reference_input(images: np.ndarray) -> torch.Tensor:
    """Independent preprocessing: uint8 NHWC -> float NCHW / 255, ImageNet normalisation."""
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so a checkpoint that lost them could not pass."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    return model.eval()


class MarkerOnUnpickle:
    """Unpickling this calls open(marker, "w"): creates the marker file if the loader runs pickle code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(WithProjector())


@pytest.fixture(scope="module")
def ref(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model(reference_input(images))


@pytest.fixture(scope="module")
def files(model, images, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    x = reference_input(images[:4])
    out = {"script": d / "script.pt", "trace": d / "trace.pt", "export": d / "model.pt2",
           "state_dict": d / "model.pth", "safetensors": d / "model.safetensors"}  # fmt: skip
    torch.jit.save(torch.jit.script(model), out["script"])
    torch.jit.save(torch.jit.trace(model, x), out["trace"])
    ep = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, out["export"])
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": sd, "epoch": 7}, out["state_dict"])
    save_file({k.removeprefix("module."): v.contiguous() for k, v in sd.items()}, out["safetensors"])
    return out


# ---------------------------------------------------------------- architectures (test_layouts.py: every layout)


def test_encode_handles_tuples_dicts_tokens_and_maps():
    z = torch.randn(3, 5, 8)

    class Returns(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, x):
            return self.out

    x = torch.zeros(3, 3, 4, 4)
    torch.testing.assert_close(encode(Returns((z[:, 0], z)), x), z[:, 0])
    torch.testing.assert_close(encode(Returns({"x_norm_clstoken": z[:, 1], "x": z}), x), z[:, 1])
    torch.testing.assert_close(encode(Returns(z), x), z[:, 0])
    torch.testing.assert_close(encode(Returns(z), x, pool="mean"), z[:, 1:].mean(1))
    fmap = torch.randn(3, 8, 2, 2)
    torch.testing.assert_close(encode(Returns(fmap), x), fmap.mean((2, 3)))


# ---------------------------------------------------------------- formats round-trip


@pytest.mark.parametrize("kind", ["script", "trace", "export", "state_dict", "safetensors"])
def test_every_format_embeds_like_the_model(kind, files, images, ref):
    weights = kind in ("state_dict", "safetensors")
    loaded = load_encoder(files[kind], arch="resnet18_cifar" if weights else None,
                          preprocessing=IMAGENET if weights else None)
    expected_fmt = {"script": "torchscript", "trace": "torchscript", "export": "export"}.get(kind, kind)
    assert loaded.fmt == expected_fmt == detect_checkpoint_format(files[kind])
    z = embed(loaded.module, images, batch_size=3, device="cpu")
    torch.testing.assert_close(torch.from_numpy(z), ref, atol=1e-5, rtol=1e-5)


def test_state_dict_report_prefixes_and_dropped_heads(files):
    loaded = load_encoder(files["state_dict"], arch="resnet18_cifar")
    report = loaded.report
    assert report.source_key == "state_dict" and report.prefix == "module.backbone."
    assert set(report.dropped["projector"]) == {f"module.projector.{k}" for k in PROJECTOR_KEYS}
    assert "layer1.0.conv1.weight" in report.loaded and len(report.loaded) == 120 and not report.filled
    assert "module.backbone." in report.summary()
    # solo-learn's CIFAR evaluation preprocessing, from the architecture's config
    assert loaded.preprocessing.mean == (0.4914, 0.4822, 0.4465) and loaded.preprocessing.crop == (32, 32)


def test_projector_output(files, model, images, ref):
    loaded = load_encoder(files["state_dict"], arch="resnet18_cifar", output="projector", preprocessing=IMAGENET)
    assert "projector" not in loaded.report.dropped
    with torch.no_grad():
        expected = model.projector(ref)
    z = embed(loaded, images, device="cpu")
    torch.testing.assert_close(torch.from_numpy(z), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(CheckpointError, match="output='projector' needs a weights checkpoint"):
        load_encoder(files["script"], output="projector")


def test_export_with_static_batch_is_padded(model, images, ref, tmp_path):
    x = reference_input(images[:4])
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "static.pt2")
    loaded = load_encoder(tmp_path / "static.pt2")
    assert loaded.input_size == (32, 32) and "static batch of 4" in loaded.report.warnings[0]
    z = embed(loaded, images, batch_size=7, device="cpu")
    torch.testing.assert_close(torch.from_numpy(z), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- refusals


def test_missing_encoder_weights_are_refused(model, tmp_path):
    sd = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("layer3.0.conv1")}
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"1 tensors of resnet18_cifar are not in the checkpoint: "
                                              r"layer3\.0\.conv1\.weight"):
        load_encoder(tmp_path / "partial.pth", arch="resnet18_cifar")


def test_wrong_architecture_is_refused(model, tmp_path):
    torch.save(model.backbone.state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"wrong shape: conv1\.weight: checkpoint \(64, 3, 3, 3\) vs "
                                              r"architecture \(64, 3, 7, 7\)"):
        load_encoder(tmp_path / "r18.pth", arch="resnet18")  # ImageNet stem: solo-learn's CIFAR stem does not fit
    with pytest.raises(CheckpointError, match="no tensor of the checkpoint is a parameter"):
        load_encoder(tmp_path / "r18.pth", arch="vit_tiny")
    with pytest.raises(CheckpointError, match="name its architecture"):
        load_encoder(tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="unknown architecture"):
        load_encoder(tmp_path / "r18.pth", arch="no_such_net")


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "marker"
    payload = {"state_dict": {"conv1.weight": torch.zeros(1), "x": MarkerOnUnpickle(marker)}}
    path = tmp_path / "evil.pth"
    if legacy:  # raw pickle, as torch.save(..., _use_new_zipfile_serialization=False) writes
        with open(path, "wb") as f:
            pickle.dump({"state_dict": {"x": MarkerOnUnpickle(marker)}}, f, protocol=2)
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"refused to unpickle.*open"):
        load_encoder(path, arch="resnet18_cifar")
    assert not marker.exists()


def test_torchscript_file_access_is_refused(tmp_path):
    marker = tmp_path / "written-by-model"

    class Writes(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.save(x, self.path)
            return x

    class Reads(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.from_file("/etc/hostname", False, 1, dtype=torch.uint8).float()

    for name, mod in (("writes", Writes(str(marker))), ("reads", Reads())):
        torch.jit.save(torch.jit.script(mod), tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match="not allowed"):
            load_encoder(tmp_path / f"{name}.pt")
    assert not marker.exists()


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


def _pickled(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("attack", ["pickled_weight", "sample_inputs", "guards_code", "sympy_expr",
                                    "target", "aoti"])  # fmt: skip
def test_export_archive_attacks_are_refused(attack, files, tmp_path):
    """torch.export.load would unpickle, exec or eval each of these (see loading.py's docstring)."""
    marker = tmp_path / "marker"
    evil = _pickled(MarkerOnUnpickle(marker))

    def edit(name: str, data: bytes):
        if attack == "pickled_weight" and name.endswith("model_weights_config.json"):
            cfg = json.loads(data)
            next(iter(cfg["config"].values()))["use_pickle"] = True
            return json.dumps(cfg).encode()
        if attack == "pickled_weight" and name.endswith("/weights/weight_0"):
            return evil
        if attack == "sample_inputs" and "/sample_inputs/" in name:
            return evil
        if name.endswith("models/model.json") and attack in ("guards_code", "sympy_expr", "target"):
            text = data.decode()
            if attack == "guards_code":
                prog = json.loads(text)
                prog["guards_code"] = [f"open({str(marker)!r}, 'w')"]
                return json.dumps(prog).encode()
            if attack == "sympy_expr":
                return text.replace(
                    "Symbol(", f"__import__('os').system('touch {marker}') or Symbol(", 1
                ).encode()
            return text.replace("torch.ops.aten.relu_.default", "torch.os.system", 1).encode()
        return data

    path = tmp_path / "evil.pt2"
    _rewrite_zip(files["export"], path, edit)
    if attack == "aoti":
        with zipfile.ZipFile(path, "a") as zf:
            zf.writestr("model/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(CheckpointError):
        load_encoder(path)
    assert not marker.exists()


def test_format_detection_and_mismatch(files, tmp_path):
    with pytest.raises(CheckpointError, match="content is a torchscript checkpoint"):
        load_encoder(files["script"], fmt="pt2")
    assert load_encoder(files["export"], fmt="pt2").fmt == "export"
    assert load_encoder(files["script"], fmt="pt").fmt == "torchscript"  # an extension only hints
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_encoder(tmp_path / "junk.pt")
    np.savez(tmp_path / "emb.npz", embeddings=np.zeros((2, 2), np.float32))
    with pytest.raises(CheckpointError, match="npz"):
        load_encoder(tmp_path / "emb.npz")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "nope.pt")
