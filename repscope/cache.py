"""Keys of the derived-embeddings cache: a checkpoint is embedded once per (checkpoint bytes, dataset content,
preprocessing) (DESIGN.md, data flow step 3).

The backend keys an embed step with `embedding_cache_key` when the checkpoint is uploaded, from the parameters
that choose the preprocessing (`KEYED_PARAMS`); the worker reports the full preprocessing it applied, named by
`preprocessing_key`. Both carry `PREPROCESSING_VERSION`: bump it when the embed pipeline's numbers change, and
every cached embedding stops matching at once. Torch-free, so the backend imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

PREPROCESSING_VERSION = 2  # 2: issue #18, preprocessing from the model's config (timm / HF), real checkpoints
KEYED_PARAMS = ("arch", "pool", "output", "views", "image_size",  # upload fields that change the embeddings
                "arch_kwargs", "checkpoint_key", "mean", "std", "resize", "crop", "interpolation")


def embedding_cache_key(checkpoint_sha: str, dataset_hash: str, params: Mapping[str, Any]) -> str:
    """sha256 (64 hex digits) of the checkpoint's sha256, the dataset's content hash and the `KEYED_PARAMS` of
    `params` (other fields, such as the suites to run, leave the embeddings as they are)."""
    preprocessing = {k: params.get(k) for k in KEYED_PARAMS}
    blob = json.dumps({"checkpoint": checkpoint_sha, "dataset": dataset_hash, "preprocessing": preprocessing,
                       "version": f"v{PREPROCESSING_VERSION}"}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def preprocessing_key(spec: Mapping[str, Any]) -> str:
    """Short stable id of a preprocessing spec (plain JSON): "pp<version>-" + 16 hex digits of its sha256."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return f"pp{PREPROCESSING_VERSION}-{digest[:16]}"
