"""Derived-embeddings cache keys are pinned: a changed value silently orphans every cached embedding."""

from __future__ import annotations

import pytest

from repscope.cache import embedding_cache_key, preprocessing_key

UPLOAD_PARAMS = {"arch": "resnet18_cifar", "pool": "cls", "output": "backbone", "views": None, "image_size": None,
                 "dataset": "digits", "suites": ["spectrum"]}


def test_embedding_cache_key_is_pinned():
    assert embedding_cache_key("a" * 64, "builtin:digits:v1", UPLOAD_PARAMS) == (
        "ad62a8da130685f8298535c466a23bffb20448acb6af46bc78bf2d6f69d70116")
    assert embedding_cache_key("0123" * 16, "f" * 64, {}) == (
        "c9441d9dc1ae8cf4d397700251cd4575d9d6fc98877b9c2ac9cc8999105d50bc")
    assert embedding_cache_key("0123" * 16, "f" * 64, {"views": "4", "image_size": "224", "pool": "mean"}) == (
        "1121aed14e87c7fd295ac81df4fe75fa7b89fbac39b4475b670845975d84a2e4")


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

    assert embed.preprocessing_key() == "pp2-de6f144b65a6a56e"
    assert embed.preprocessing_key(image_size=224, views=4, seed=1, precision="bf16-autocast") == "pp2-61b4fe5d7e6d530f"
    assert preprocessing_key(embed.preprocessing_spec()) == "pp2-de6f144b65a6a56e"
