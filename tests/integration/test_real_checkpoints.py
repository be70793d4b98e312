"""Real checkpoints through the real path: upload -> API validation -> worker (sandboxed) -> derived embeddings.
Each checkpoint is saved in its training codebase's layout from a random-init model of the real library; the
served embeddings equal the library's own forward on the same preprocessed batch (max relative error <= 1e-5).
The preprocessing is the one the embed step reports (tests/unit/test_preprocessing.py checks it against
torchvision's transforms)."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import timm
import torch
import torchvision

import repscope
from tests.integration.procs import base_env, free_port, start_serve, wait_healthy
from tests.unit.test_layouts import DINO2_SMALLER, VIT_SMALLER, dinov2_hub, perturb, prefixed, timm_model
from worker.datasets.preprocessing import Preprocessing, apply

pytestmark = pytest.mark.integration
RTOL = 1e-5
DATASET = "real-ckpt-images"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real-checkpoints")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(base_env(tmp / "data", url), port, tmp / "data", tmp)
    wait_healthy(url, serve.proc, timeout=90)
    client = repscope.Client(url)
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, images=rng.integers(0, 256, (24, 40, 36, 3), dtype=np.uint8), labels=np.arange(24) % 3)
    assert client.http.post("/datasets", data={"name": DATASET},
                            files={"file": ("real.npz", buf.getvalue())}).status_code == 201
    yield client, serve
    serve.stop()


def served(client: repscope.Client, serve, path, step: int, **fields) -> tuple[np.ndarray, dict]:
    """Upload, wait for the embed step, return (embeddings, the embed evaluation's result)."""
    run = client.run(project="real-checkpoints", name=f"{path.name}-{step}")
    extra = {k: v if isinstance(v, str) else __import__("json").dumps(v) for k, v in fields.items()}
    accepted = client.upload_file(run.id, path, step=step, kind="checkpoint", dataset=DATASET, suites=["spectrum"],
                                  extra=extra)
    [embed] = client.wait([e.id for e in accepted.evaluations], raise_on_failure=False, timeout=300)
    assert embed.status == "succeeded", (embed.error, serve.log_tail())
    [derived] = [a for a in client.http.get(f"/runs/{run.id}/artifacts").json() if a["kind"] == "embeddings"]
    data = client.http.get(f"/artifacts/{derived['id']}/file").content
    return np.load(io.BytesIO(data))["embeddings"], embed.result


def expected(model: torch.nn.Module, result: dict, client: repscope.Client) -> np.ndarray:
    """The library's forward on the dataset's images, preprocessed as the embed step says it did."""
    spec = result["variant"]["preprocessing"]["preprocessing"]
    prep = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 40, 36, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        return model.eval()(apply(x, prep)).numpy()


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert float(np.abs(got - want).max() / np.abs(want).max()) <= RTOL


@pytest.mark.timeout(900)
def test_real_layouts_through_the_worker(server, tmp_path):
    client, serve = server
    # DINOv2 ViT-S/14 with 4 registers, hub layout: LayerScale, registers, mask token
    model = timm_model("vit_small_patch14_reg4_dinov2", 1, **DINO2_SMALLER)
    torch.save(dinov2_hub(model), tmp_path / "dinov2_reg4.pth")
    z, result = served(client, serve, tmp_path / "dinov2_reg4.pth", 1, arch="vit_small_patch14_reg4_dinov2",
                       arch_kwargs=DINO2_SMALLER)
    assert_close(z, expected(model, result, client))
    assert result["variant"]["layout"] == "DINOv2 hub with registers"
    assert result["variant"]["preprocessing"]["preprocessing"]["interpolation"] == "bicubic"
    assert result["figures"]["load_report"]["converted"]
    # torchvision ResNet-101, its default weights' transforms with a smaller crop from the upload
    torch.manual_seed(2)
    r101 = perturb(torchvision.models.resnet101(), 2)
    torch.save(r101.state_dict(), tmp_path / "r101.pth")
    z, result = served(client, serve, tmp_path / "r101.pth", 2, arch="torchvision:resnet101", crop="64")
    r101.fc = torch.nn.Identity()
    assert_close(z, expected(r101, result, client))
    assert result["variant"]["preprocessing"]["preprocessing"]["crop"] == [64, 64]
    # I-JEPA: target encoder, no CLS token
    kwargs = {**VIT_SMALLER, "class_token": False, "global_pool": "avg", "fc_norm": False}
    target = timm_model("vit_small_patch16_224", 3, **kwargs)
    torch.save({"encoder": prefixed(timm_model("vit_small_patch16_224", 4, **kwargs).state_dict(), "module."),
                "target_encoder": prefixed(target.state_dict(), "module."), "epoch": 1}, tmp_path / "ijepa.pth.tar")
    z, result = served(client, serve, tmp_path / "ijepa.pth.tar", 3, arch="vit_small_patch16_224",
                       arch_kwargs=VIT_SMALLER)
    assert_close(z, expected(target, result, client))
    assert result["variant"]["layout"] == "I-JEPA (target encoder)"


@pytest.mark.timeout(900)
def test_solo_learn_mae_and_hf_through_the_worker(server, tmp_path):
    client, serve = server
    from tests.unit.test_layouts import solo_learn_cifar_resnet18

    solo = solo_learn_cifar_resnet18(5)
    torch.save({"pytorch-lightning_version": "2.2.0", "epoch": 9,
                "state_dict": {**prefixed(solo.state_dict(), "backbone."), "projector.0.weight": torch.randn(8, 512),
                               "classifier.weight": torch.randn(10, 512)}}, tmp_path / "solo.ckpt")
    z, result = served(client, serve, tmp_path / "solo.ckpt", 4, arch="resnet18_cifar")
    assert_close(z, expected(solo, result, client))
    assert result["variant"]["preprocessing"]["preprocessing"]["mean"] == [0.4914, 0.4822, 0.4465]
    # MAE ViT-B/16 (86 M parameters; 32 px input keeps the CPU time small), decoder dropped
    mae = timm_model("vit_base_patch16_224", 6, img_size=32)
    torch.save({"model": {**mae.state_dict(), "mask_token": torch.randn(1, 1, 64),
                          "decoder_embed.weight": torch.randn(64, 768), "decoder_pred.weight": torch.randn(48, 64)},
                "epoch": 1}, tmp_path / "mae.pth")
    z, result = served(client, serve, tmp_path / "mae.pth", 5, arch="vit_base_patch16_224",
                       arch_kwargs={"img_size": 32})
    assert_close(z, expected(mae, result, client))
    assert "MAE decoder" in result["figures"]["load_report"]["dropped"]
    # Hugging Face Dinov2Model, zipped save_pretrained folder, no arch needed
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(7)
    hf = perturb(Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                          intermediate_size=64, image_size=28, patch_size=14)), 7)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    with zipfile.ZipFile(tmp_path / "hf.zip", "w") as zf:
        for f in (tmp_path / "hf").iterdir():
            zf.write(f, f.name)
    z, result = served(client, serve, tmp_path / "hf.zip", 6)

    class Pooled(torch.nn.Module):
        def forward(self, x):
            return hf(pixel_values=x).pooler_output

    assert_close(z, expected(Pooled(), result, client))
    assert result["variant"]["checkpoint_format"] == "hf"


def test_truncated_checkpoint_fails_naming_keys(server, tmp_path):
    client, serve = server
    torch.save(torchvision.models.resnet101().state_dict(), tmp_path / "r101.pth")
    run = client.run(project="real-checkpoints", name="truncated")
    accepted = client.upload_file(run.id, tmp_path / "r101.pth", step=1, kind="checkpoint", dataset=DATASET,
                                  suites=["spectrum"], extra={"arch": "resnet50"})
    [ev] = client.wait([e.id for e in accepted.evaluations], raise_on_failure=False, timeout=300)
    assert ev.status == "failed" and "layer3.6.conv1.weight" in ev.error and "no place in resnet50" in ev.error
    assert timm.is_model("resnet50")


def test_load_report_on_the_evaluation_page(server, tmp_path):
    client, serve = server
    model = timm_model("vit_small_patch14_reg4_dinov2", 8, **DINO2_SMALLER)
    torch.save({"teacher": prefixed(dinov2_hub(model), "backbone.")}, tmp_path / "teacher.pth")
    run = client.run(project="real-checkpoints", name="page")
    accepted = client.upload_file(run.id, tmp_path / "teacher.pth", step=1, kind="checkpoint", dataset=DATASET,
                                  suites=["spectrum"], extra={"arch": "vit_small_patch14_reg4_dinov2",
                                                              "arch_kwargs": '{"img_size": 28, "embed_dim": 48, '
                                                                             '"depth": 2, "num_heads": 2}'})
    [ev] = client.wait([e.id for e in accepted.evaluations], raise_on_failure=False, timeout=300)
    assert ev.status == "succeeded", ev.error
    page = client.http.get(f"{client.url}/evaluations/{ev.id}").text
    assert "Checkpoint load report" in page and "prefix <code>backbone.</code> stripped" in page
    assert "register_tokens -&gt; reg_token" in page and "mask_token" in page
