"""The metric catalogue (repscope.catalogue): every key a suite emits is in it exactly once, every entry is
complete, and the consumers (figures, leaderboards, runs table, selection, compare page) read it."""

from __future__ import annotations

import subprocess
import sys
from string import Formatter

import numpy as np
import pytest
import torch

from repscope import catalogue
from repscope import suites as registry
from repscope.formats import EmbeddingsArrays
from repscope.schemas import MetricPoint, MetricSeries


@pytest.fixture(scope="module")
def emitted() -> dict[str, set[str]]:
    """{suite: metric keys} from every suite run on tiny generated inputs (every code path that adds keys:
    labels, open set, views for LiDAR, poison flags and RGB images, every equivariance family with both heads,
    every trigger with labels and a few DECREE steps)."""
    from worker.suite_runners import runner
    from worker.suites.backdoor import scan_encoder
    from worker.suites.equivariance import run_equivariance

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    z = rng.standard_normal((120, 32)).astype(np.float32)
    labels = np.arange(120) % 6
    images = rng.integers(0, 256, (120, 16, 16, 3), dtype=np.uint8)
    arrays = EmbeddingsArrays(embeddings=z, labels=labels, split=None, poison=np.arange(120) % 10 == 0,
                              views=rng.standard_normal((40, 3, 32)).astype(np.float32))
    weights = torch.randn(48, 16, generator=torch.Generator().manual_seed(0))

    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1) @ weights

    def on_embeddings(suite: str, params: dict) -> set[str]:
        return set(runner(suite, "embeddings")(arrays, params, "cpu", lambda f, m: None).metrics)

    try:
        keys = {
            "spectrum": on_embeddings("spectrum", {}),
            "probes": on_embeddings("probes", {"c_grid": [1.0], "openset_min_rows": 1}),  # 4 unknown rows
            "backdoor": on_embeddings("backdoor", {"images": images})
            | set(scan_encoder(encode, images[:24], labels=labels[:24], decree_steps=3, device="cpu").metrics),
            "projector": on_embeddings("projector", {"projection": "pca"}),
            "equivariance": set(run_equivariance(encode, images[:24], n_images=24, n_draws=1, mlp=True,
                                                 mlp_epochs=1, device="cpu").metrics),
        }
    finally:
        torch.set_num_threads(threads)
    return keys


def test_every_registered_suite_is_run_here(emitted):
    assert set(emitted) == set(registry.SUITES), "run the new suite in the `emitted` fixture"


def test_every_emitted_key_is_in_the_catalogue_exactly_once(emitted):
    missing, ambiguous, wrong_suite = [], {}, {}
    for suite, keys in emitted.items():
        for key in sorted(keys):
            matches = [s.key for s in catalogue.METRICS if s.match(catalogue.base_key(key)) is not None]
            if not matches:
                missing.append(key)
            elif len(matches) > 1:
                ambiguous[key] = matches
            elif catalogue.lookup(key).suite != suite:
                wrong_suite[key] = (suite, catalogue.lookup(key).suite)
    assert not missing, f"keys the suites emit but repscope/catalogue.py lacks: {missing}"
    assert not ambiguous, f"keys matched by several catalogue entries: {ambiguous}"
    assert not wrong_suite, f"(emitting suite, catalogue suite): {wrong_suite}"
    assert {"lidar", "rankme@d16", "knn200_top5", "openset_fpr95_energy", "rot4_single_view_acc_mlp",
            "balacc_mlp_hflip", "decree_pl1", "knn_asr_blend_control", "grid_energy_tpr_at_5pct_fpr",
            "poison_share"} <= set().union(*emitted.values())


def test_every_entry_is_complete():
    keys = [s.key for s in catalogue.METRICS]
    assert len(keys) == len(set(keys))
    for spec in catalogue.METRICS:
        assert spec.label and spec.unit, spec.key
        assert spec.direction in catalogue.DIRECTIONS, spec.key
        assert (spec.target is not None) == (spec.direction == "target"), spec.key
        assert spec.group is None or spec.group in catalogue.GROUP_INDEX, spec.key
        assert spec.suite in registry.SUITES, spec.key
        placeholders = {f for _, f, _, _ in Formatter().parse(spec.key) if f}
        assert placeholders <= set(catalogue.PLACEHOLDERS), spec.key
        assert {f for _, f, _, _ in Formatter().parse(spec.label) if f} <= placeholders, spec.key
    groups = [g.name for g in catalogue.GROUPS]
    assert len(groups) == len(set(groups))
    assert set(groups) == {s.group for s in catalogue.METRICS if s.group}, "a group no metric is drawn in"


def test_views_name_catalogue_keys():
    for view, keys in catalogue.VIEWS.items():
        assert len(keys) == len(set(keys)), view
        for key in keys:
            assert catalogue.lookup(key, nested=False) is not None, (view, key)
    for key in (*catalogue.RADAR, *catalogue.SELECTION_KEYS, *catalogue.SELECTION_PROBES):
        assert catalogue.direction(key) != "none", key
    assert all(catalogue.lookup(k).label_free for k in catalogue.SELECTION_KEYS)
    assert all(catalogue.is_fraction(k) and not catalogue.lookup(k).label_free for k in catalogue.SELECTION_PROBES)


def test_placeholder_vocabularies_match_the_suites():
    from worker.suites.backdoor import triggers
    from worker.suites.equivariance import FAMILY_NAMES

    assert catalogue.FAMILIES == FAMILY_NAMES
    assert catalogue.TRIGGERS == tuple(triggers.TRIGGERS)


def test_spectrum_metric_keys_are_catalogued():
    from worker.suites.spectrum import METRIC_KEYS

    for key in METRIC_KEYS:
        spec = catalogue.lookup(key, nested=False)
        assert spec is not None and spec.suite == "spectrum" and spec.label_free and spec.group, key
        assert catalogue.lookup(f"{key}@d16") is spec


def test_lookups():
    assert catalogue.label("knn20_top1") == "20-NN top-1" and catalogue.label("knn200_top5") == "200-NN top-5"
    assert catalogue.label("openset_fpr95_msp") == "open-set FPR@95%TPR (msp)"
    assert catalogue.label("rankme@d64") == "RankMe (effective rank), d = 64"
    assert catalogue.label("r2_mlp_colour") == "parameter R² (mlp head, colour)"
    assert catalogue.label("loss") == "loss"
    assert catalogue.direction("uniformity@d16") == "lower" and catalogue.direction("loss") == "higher"
    assert catalogue.direction("alpha_req") == "target" and catalogue.target("alpha_req@d32") == 1.0
    assert catalogue.is_fraction("knn10_top1") and not catalogue.is_fraction("knn10_top1@d16")
    assert catalogue.in_catalogue("collapse_grid_excess") and catalogue.in_catalogue("uniformity@d16")
    for key in ("loss", "val_auroc", "mrr_val", "collapse_foo", "knn_asr_foo", "hit1_val"):
        assert not catalogue.in_catalogue(key), key
    assert catalogue.group("knn10_top5").name == "knn" and catalogue.group("relerr_blur") is None
    assert catalogue.lookup("collapse_grid").match("collapse_grid") == {"trigger": "grid"}


def test_the_catalogue_is_wire_level():
    code = "import sys, repscope.catalogue; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_consumers_read_the_catalogue(emitted):
    from backend import figures
    from backend.pages import compare as compare_page
    from backend.services import leaderboards, runs_table, selection
    from backend.services import metrics as metric_service

    keys = sorted(set().union(*emitted.values()))
    for key in keys:
        assert leaderboards.direction(key) == catalogue.direction(key), key
        assert figures.metric_label(key) == catalogue.label(key), key
        assert figures.is_fraction(key) == catalogue.is_fraction(key), key
        assert metric_service.in_catalogue(key), key
    assert leaderboards.direction("logged:uniformity") == "none"
    assert runs_table.TABLE_COLUMNS == catalogue.TABLE_COLUMNS
    assert leaderboards.DEFAULT_COLUMNS == catalogue.LEADERBOARD_COLUMNS
    assert selection.LABEL_FREE_KEYS == catalogue.SELECTION_KEYS
    assert selection.PROBE_KEYS == catalogue.SELECTION_PROBES
    assert compare_page.COMPARE_HEADLINE == catalogue.HEADLINE
    assert compare_page.RADAR_KEYS == catalogue.RADAR
    rules = {r["pattern"]: r["direction"] for r in leaderboards.directions_table()}
    for spec in catalogue.METRICS:
        assert (spec.glob in rules) == (spec.direction != "higher"), spec.key

    # the run page draws each grouped key in its group's chart, the rest one chart each
    series = {k: MetricSeries(run_id=1, key=k, source="computed",
                              points=[MetricPoint(step=1, value=0.5, evaluation_id=1)]) for k in keys}
    charts, nested = figures.run_charts(series)
    by_title = {c["layout"]["title"]["text"]: c for c in charts}
    titles = [c["layout"]["title"]["text"] for c in charts]
    grouped = [g.title for g in catalogue.GROUPS if g.title in by_title]
    assert titles[:len(grouped)] == grouped  # charts in GROUPS order
    for key in keys:
        if "@d" in key:
            continue
        group = catalogue.group(key)
        chart = by_title[group.title if group else f"{key} over training"]
        assert figures.metric_label(key) in [t["name"] for t in chart["data"]] or group is None, key
    knn = [t["name"] for t in by_title["k-NN accuracy over training"]["data"]]
    assert knn == [f"{k}-NN top-{n}" for n in (1, 5) for k in (10, 20, 100, 200)]
    assert [c["layout"]["title"]["text"] for c in nested][0].startswith("RankMe (effective rank) of nested")
