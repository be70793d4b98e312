"""Derived-embeddings cache keys are pinned: a changed value silently orphans every cached embedding."""

from __future__ import annotations

import pytest

from repscope.cache import embedding_cache_key, preprocessing_key

UPLOAD_PARAMS = {"arch": "resnet18_cifar", "pool": "cls", "output": "backbone", "views": None, "image_size": None,
                 "dataset": "digits", "suites": ["spectrum"]}


def test_embedding_cache_key_is_pinned():
    assert embedding_cache_key("a" * 64, "builtin:digits:v1", UPLOAD_PARAMS) == (
        "bea91d6f524e26a52bcbc645827f5011f39dc812d48bc0abf2994ace91c1c2e0")
    assert embedding_cache_key("0123" * 16, "f" * 64, {}) == (
        "97c71fe3cfc0f974af20207d478caa42215afe4ee0f552d17effe84be05e873b")
    assert embedding_cache_key("0123" * 16, "f" * 64, {"views": "4", "image_size": "224", "pool": "mean"}) == (
        "6af5fd0c15a6e4a6cca0fbeb654b84a250215d6a27fb9cb5a01cd5480fc54b0b")


def test_embedding_cache_key_ignores_what_does_not_change_the_embeddings():
    base = embedding_cache_key("a" * 64, "d" * 64, UPLOAD_PARAMS)
    assert embedding_cache_key("a" * 64, "d" * 64, {**UPLOAD_PARAMS, "suites": ["probes"], "dataset": "x"}) == base
    assert embedding_cache_key("a" * 64, "d" * 64, {**UPLOAD_PARAMS, "pool": "mean"}) != base


def test_backend_keys_uploads_with_the_shared_function():
    from backend.services import artifacts

    assert artifacts.embedding_cache_key is embedding_cache_key


def test_worker_preprocessing_key_is_pinned():
    pytest.importorskip("torch")
    from worker import embed

    assert embed.preprocessing_key() == "pp1-861d361241928e8e"
    assert embed.preprocessing_key(image_size=224, views=4, seed=1, precision="bf16-autocast") == "pp1-bd4f216b80398038"
    assert preprocessing_key(embed.preprocessing_spec()) == "pp1-861d361241928e8e"
