"""Checkpoints end to end: upload an encoder, the worker embeds the dataset, the suites run on the result.

The served embeddings must equal the model's own forward on the same images.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import repscope
from worker.datasets.builtin import load_builtin
from worker.datasets.preprocessing import Preprocessing, apply
from worker.datasets.transforms import preprocess
from worker.models.cifar import resnet18_cifar

pytestmark = pytest.mark.integration


class TinyCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(8 * 16 * 16, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def reference_embeddings(model: torch.nn.Module, dataset: str = "digits") -> np.ndarray:
    images = load_builtin(dataset).images
    with torch.inference_mode():
        x = preprocess(torch.from_numpy(images).to("cpu"), image_size=None)
        return model.eval()(x).numpy()


def served_embeddings(client: repscope.Client, run_id: int, step: int) -> tuple[dict, np.ndarray]:
    [derived] = [a for a in client.http.get(f"/runs/{run_id}/artifacts").json()
                 if a["kind"] == "embeddings" and a["step"] == step]
    data = client.http.get(f"/artifacts/{derived['id']}/file").content
    return derived, np.load(io.BytesIO(data))["embeddings"]


def wait_all(client: repscope.Client, run_id: int, deployment, timeout: float = 240) -> list:
    """Wait for the embed step and then for the suites it queued."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        page = client.http.get("/evaluations", params={"run": run_id, "limit": 100}).json()["items"]
        if page and all(e["status"] in ("succeeded", "failed") for e in page) and any(
                e["suite"] != "embed" for e in page):
            return page
        if time.monotonic() > deadline:
            print(deployment.logs())
            raise TimeoutError(f"evaluations not finished: {page}")
        time.sleep(0.5)


def test_torchscript_checkpoint_is_embedded_and_evaluated(deployment, tmp_path):
    torch.manual_seed(0)
    model = TinyCNN().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(model), path)
    client = repscope.Client(deployment.url)
    run = client.run(project="ckpt", name=f"torchscript-{deployment.name}")
    accepted = client.upload_file(run.id, path, step=100, kind="checkpoint", dataset="digits",
                                  extra={"views": "2"})
    assert [e.suite for e in accepted.evaluations] == ["embed"]
    finished = wait_all(client, run.id, deployment)
    assert all(e["status"] == "succeeded" for e in finished), finished
    derived, served = served_embeddings(client, run.id, 100)
    np.testing.assert_allclose(served, reference_embeddings(model), rtol=1e-4, atol=1e-5)
    metrics = {e["suite"]: client.evaluation(e["id"]).metrics for e in finished}
    assert metrics["probes"]["linear_top1"] > 0.5  # digits are easy even for a random conv net
    assert "lidar" in metrics["spectrum"] and metrics["spectrum"]["lidar"] > 1.0
    embed = client.evaluation([e["id"] for e in finished if e["suite"] == "embed"][0])
    assert embed.result["variant"]["derived_artifact"] == derived["id"]

    # the same checkpoint on the same dataset is not embedded again
    again = client.run(project="ckpt", name=f"torchscript-copy-{deployment.name}")
    second = client.upload_file(again.id, path, step=100, kind="checkpoint", dataset="digits",
                                extra={"views": "2"})
    statuses = {e.suite: e.status for e in second.evaluations}
    assert statuses["embed"] == "succeeded" and statuses["spectrum"] == "queued"


def test_state_dict_with_prefixes_loads_into_the_named_arch(deployment, tmp_path):
    torch.manual_seed(1)
    model = resnet18_cifar().eval()
    state = {"state_dict": {f"module.backbone.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    model.fc = torch.nn.Identity()  # the embeddings are the features, not the classifier's logits
    client = repscope.Client(deployment.url)
    run = client.run(project="ckpt", name=f"state-dict-{deployment.name}")
    client.upload_file(run.id, path, step=7, kind="checkpoint", dataset="digits", suites=["spectrum"],
                       extra={"arch": "resnet18_cifar"})
    finished = wait_all(client, run.id, deployment)
    assert all(e["status"] == "succeeded" for e in finished), finished
    _, served = served_embeddings(client, run.id, 7)
    embed = client.evaluation([e["id"] for e in finished if e["suite"] == "embed"][0])
    # solo-learn's CIFAR evaluation preprocessing (from the architecture's config): 32 x 32, CIFAR mean / std
    spec = embed.result["variant"]["preprocessing"]["preprocessing"]
    assert spec["crop"] == [32, 32] and spec["mean"] == [0.4914, 0.4822, 0.4465]
    prep = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})
    x = torch.from_numpy(load_builtin("digits").images).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        want = model.eval()(apply(x, prep)).numpy()
    np.testing.assert_allclose(served, want, rtol=1e-4, atol=1e-4)
    report = embed.result["figures"]["load_report"]
    # the classifier head was dropped by its rule; every encoder weight was loaded
    assert sorted(report["dropped"]["classifier head"]) == ["module.backbone.fc.bias", "module.backbone.fc.weight"]
    assert report["prefix"] == "module.backbone." and len(report["loaded"]) == 120


def test_checkpoint_missing_encoder_weights_fails_with_report(deployment, tmp_path):
    model = resnet18_cifar()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    client = repscope.Client(deployment.url)
    run = client.run(project="ckpt", name=f"partial-{deployment.name}")
    accepted = client.upload_file(run.id, path, step=1, kind="checkpoint", extra={"arch": "resnet18_cifar"})
    [ev] = client.wait([e.id for e in accepted.evaluations], raise_on_failure=False, timeout=180)
    assert ev.status == "failed" and "not in the checkpoint" in ev.error and "layer4" in ev.error
