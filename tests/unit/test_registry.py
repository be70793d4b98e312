"""The worker's suite adapters: what the pool scan does with a dataset's images."""

from __future__ import annotations

import numpy as np

from repscope.formats import EmbeddingsArrays
from worker.suite_runners import ON_EMBEDDINGS as SUITES
from worker.suites.backdoor.suite import montage
from worker.suites.base import no_progress


def test_pool_scan_with_images_adds_image_scores_and_a_ranked_montage():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8)
    z = rng.standard_normal((200, 16)).astype(np.float32)
    z[:4] = rng.standard_normal(16) * 4 + rng.standard_normal((4, 16)) * 0.01  # four planted, clustered rows
    poison = (np.arange(200) < 4).astype(np.int8)
    arrays = EmbeddingsArrays(z, None, None, poison)
    result = SUITES["backdoor"](arrays, {"images": images}, "cpu", no_progress)
    assert {"ctrl_energy_auroc", "grid_energy_auroc", "spectral_auroc"} <= set(result.metrics)
    sheet = np.asarray(result.figures["montage"]["pixels"], dtype=np.uint8)
    top = result.figures["montage"]["indices"]
    assert result.figures["montage"]["score"] == "combined"  # the default label-free ranking
    assert top == result.figures["top_suspicious"]["combined"]["indices"][:16]
    first = images[top[0]].repeat(6, axis=0).repeat(6, axis=1)  # nearest-neighbour upscale 8 -> 48
    np.testing.assert_array_equal(sheet[:48, :48], first)
    without = SUITES["backdoor"](arrays, {}, "cpu", no_progress)
    assert "montage" not in without.figures and "ctrl_energy_auroc" not in without.metrics


def test_montage_leaves_empty_cells_black():
    images = np.full((3, 4, 4, 1), 200, dtype=np.uint8)
    sheet = np.asarray(montage(images, [2, 0], side=2, cell=4), dtype=np.uint8)
    assert sheet.shape == (8, 8, 3)
    assert (sheet[:4, :8] == 200).all() and (sheet[4:, :] == 0).all()
