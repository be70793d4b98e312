"""The `embed` step: a checkpoint becomes a derived embeddings artifact, on which the suites then run.

Claim -> load the encoder (load report kept) -> get the dataset (built-in: generated here; uploaded: streamed
from the API; server folder: read under the configured roots) -> embed (and q augmented views for LiDAR) ->
upload the embeddings back as an artifact whose parent is the checkpoint, with the cache key the API chose, so
the API queues the requested suites on it. Talks to the backend only through repscope.Client.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from repscope.client import Client
from repscope.schemas import ClaimResponse
from repscope.settings import Settings
from worker.suites.base import ProgressFn, SuiteResult

VIEW_SEED = 0


def fetch_dataset(name: str, client: Client, settings: Settings):  # noqa: ANN201 - ImageDataset
    from worker.datasets.builtin import BUILTIN, load_builtin
    from worker.datasets.readers import read_dataset_file, read_image_folder

    info = client.dataset(name)
    if info["kind"] == "builtin":
        if name not in BUILTIN:
            raise ValueError(f"this worker cannot generate built-in dataset {name!r}; it has {sorted(BUILTIN)}")
        return load_builtin(name)
    if info["kind"] == "path":
        return read_image_folder(info["meta"]["path"], roots=settings.dataset_root_paths)
    cache = Path(settings.worker_cache_dir or settings.data_dir / "worker-cache") / "datasets"
    dest = cache / f"{info['sha256']}.{'npz' if info['format'] == 'npz' else 'zip'}"
    if not dest.is_file():
        client.download(f"{client.url}/api/v1/datasets/{name}/file", dest)
    return read_dataset_file(dest, name=name)


def load_encoder_and_dataset(claim: ClaimResponse, checkpoint: Path, client: Client, settings: Settings,
                             device: str, progress: ProgressFn):  # noqa: ANN201 - (LoadedEncoder, ImageDataset)
    """The claimed checkpoint as an eval-mode encoder on `device` (load report kept) and the dataset to use."""
    from worker.models.loading import load_encoder

    params = claim.evaluation.params
    progress(0.02, "loading checkpoint")
    encoder = load_encoder(checkpoint, fmt=claim.artifact.format, arch=params.get("arch"),
                           pool=params.get("pool", "cls"), output=params.get("output", "backbone"), device=device)
    progress(0.05, f"loading dataset {params['dataset']}")
    return encoder, fetch_dataset(params["dataset"], client, settings)


def run_embed(claim: ClaimResponse, checkpoint: Path, client: Client, settings: Settings, device: str,
              progress: ProgressFn) -> SuiteResult:
    from worker.embed import embed, embed_precision, preprocessing_spec

    params: dict[str, Any] = dict(claim.evaluation.params)
    encoder, dataset = load_encoder_and_dataset(claim, checkpoint, client, settings, device, progress)
    views = int(params.get("views") or 0)
    span = 0.85 if not views else 0.45

    started = time.perf_counter()
    z = embed(encoder, dataset.images, device=device,
              progress=lambda f, m: progress(0.1 + span * f, m))
    seconds = time.perf_counter() - started
    arrays = {"embeddings": z, "labels": dataset.labels, "split": dataset.split}
    if views:
        arrays["views"] = embed(encoder, dataset.images, device=device, views=views, seed=VIEW_SEED,
                                progress=lambda f, m: progress(0.55 + 0.4 * f, f"views: {m}"))
    progress(0.96, "uploading embeddings")
    with tempfile.TemporaryDirectory(prefix="repscope-embed-") as tmp:
        path = Path(tmp) / "embeddings.npz"
        np.savez(path, **arrays)
        accepted = client.upload_file(
            claim.artifact.run_id, path, step=claim.artifact.step, dataset=params["dataset"],
            suites=params.get("suites"), extra={"parent": str(claim.artifact.id), "cache_key": params["cache_key"]})
    spec = preprocessing_spec(image_size=encoder.input_size, views=views, seed=VIEW_SEED,
                              precision=embed_precision(device), pool=encoder.pool, output=encoder.output)
    return SuiteResult(
        metrics={"embed_images_per_s": len(z) / max(seconds, 1e-9)},
        figures={"load_report": encoder.report.to_json(), "load_summary": encoder.report.summary()},
        variant={"checkpoint_format": encoder.fmt, "arch": encoder.arch, "dataset": params["dataset"],
                 "n_images": int(len(z)), "dim": int(z.shape[1]), "preprocessing": spec,
                 "derived_artifact": accepted.artifact.id,
                 "queued_evaluations": [e.id for e in accepted.evaluations]},
        warnings=list(encoder.report.warnings),
    )


def run_on_encoder(claim: ClaimResponse, checkpoint: Path, client: Client, settings: Settings, device: str,
                   progress: ProgressFn) -> SuiteResult:
    """Suites over the encoder itself and the dataset's images: equivariance, the backdoor encoder scan."""
    import torch

    from worker.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, resize
    from worker.models.features import encode as forward

    params: dict[str, Any] = dict(claim.evaluation.params)
    encoder, dataset = load_encoder_and_dataset(claim, checkpoint, client, settings, device, progress)
    module = encoder.module.to(device).eval()

    def encode(x01: torch.Tensor) -> torch.Tensor:
        """float NCHW in [0, 1] on the device -> features, with the preprocessing the embed step uses."""
        x = normalize(resize(x01, encoder.input_size), IMAGENET_MEAN, IMAGENET_STD)
        return forward(module, x, pool=encoder.pool).float()

    if claim.evaluation.suite == "equivariance":
        from worker.suites.equivariance import run_equivariance

        result = run_equivariance(encode, dataset.images, device=device, progress=progress)
    elif claim.evaluation.suite == "backdoor":
        from worker.suites.backdoor import scan_encoder

        result = scan_encoder(encode, dataset.images, labels=dataset.labels, device=device, progress=progress)
    else:
        raise ValueError(f"suite {claim.evaluation.suite!r} does not run on an encoder")
    result.variant.update({"checkpoint_format": encoder.fmt, "arch": encoder.arch, "dataset": params["dataset"],
                           "preprocessing": "resize to the encoder's input size, ImageNet mean/std"})
    return result
