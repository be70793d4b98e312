"""A folder described by label lists (train.txt / val.txt lines '<path> <label>', classes.txt): registered,
listed in list order with the lists' integer labels, streamed; malformed lists are clear 422s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import ADMIN_HEADERS
from worker.datasets.readers import folder_items


def listed_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "images" / "x").mkdir(parents=True)
    names = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / "images" / "x" / f"{i}.jpg")
        names.append(f"images/x/{i}.jpg")
    (root / "train.txt").write_text(f"/{names[0]} 2\n{names[1]} 0\n{names[2]} 1\n{names[3]} 2\n")
    (root / "val.txt").write_text(f"{names[4]} 1\n\n{names[5]} 0\n")
    (root / "classes.txt").write_text("airfield\nbarn\ncanyon\n")
    return root


def test_label_lists_are_read_as_written(tmp_path):
    root = listed_folder(tmp_path / "places")
    items = folder_items(root, [tmp_path])
    assert items.paths == [f"images/x/{i}.jpg" for i in range(6)]
    assert items.labels.tolist() == [2, 0, 1, 2, 1, 0] and items.split.tolist() == [0, 0, 0, 0, 1, 1]
    assert items.classes == ["airfield", "barn", "canyon"]
    capped = folder_items(root, [tmp_path], classes=["canyon", "barn"], per_class=1)
    assert capped.paths == ["images/x/0.jpg", "images/x/2.jpg", "images/x/4.jpg"]


def test_registration_and_refusals(settings, tmp_path):
    from fastapi.testclient import TestClient

    from backend.app import create_app

    roots = tmp_path / "roots"
    good = listed_folder(roots / "places")
    bad_line = listed_folder(roots / "bad")
    (bad_line / "val.txt").write_text("images/x/4.jpg one\n")
    escape = listed_folder(roots / "escape")
    (escape / "val.txt").write_text("../places/images/x/4.jpg 1\n")
    app = create_app(settings.model_copy(update={"dataset_roots": str(roots)}), run_sweeper=False)
    with TestClient(app, headers=ADMIN_HEADERS) as api:
        def post(name: str):
            return api.post("/api/v1/datasets/folder", json={"name": name, "path": str(roots / name)})

        body = post("places").json()
        assert (body["format"], body["n"], body["classes"]) == ("filelist", 6, ["airfield", "barn", "canyon"])
        assert body["meta"]["counts"] == {"train": 4, "test": 2}
        for name, words in {"bad": "val.txt line 1: expected '<image path> <label>'",
                            "escape": "is not a path inside the dataset folder"}.items():
            response = post(name)
            assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert good.is_dir()
