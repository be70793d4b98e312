"""The `embed` step: a checkpoint becomes a derived embeddings artifact, on which the suites then run.

Claim -> get the dataset (built-in: generated here; uploaded: streamed from the API; server folder: read under
the configured roots) -> in the sandbox (worker.sandbox: no token, no network, no data dir), load the encoder
(load report kept) and embed (and q augmented views for LiDAR) -> read the embeddings back, validated ->
upload them as an artifact derived from the checkpoint, so the API queues the requested suites on it.
The encoder suites (equivariance, the backdoor encoder scan) run whole in the sandbox the same way.
Talks to the backend only through repscope.Client.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from repscope import suites as registry
from repscope.client import Client
from repscope.schemas import ClaimResponse
from repscope.settings import Settings
from repscope.suites import LABELS
from worker.suites.base import ProgressFn, SuiteResult

VIEW_SEED = 0
PREPROCESSING_FIELDS = ("mean", "std", "resize", "crop", "interpolation")  # upload overrides of the model config's


def check_manifest(path: str, expected: str) -> None:
    """A server folder must still hold what it held when the checkpoint was uploaded (its manifest is in the embed
    cache key): otherwise fail, rather than cache embeddings of other images under that key."""
    from repscope.dataset_manifest import folder_manifest

    found = folder_manifest(path)
    if found.key != ":".join(expected.split(":")[:2]):  # the folder part (a class selection may follow)
        raise ValueError(f"dataset folder {path!r} changed since the checkpoint was uploaded (its files' manifest "
                         f"is {found.key[:24]}..., was {expected[:24]}...): upload the checkpoint again to "
                         "evaluate it on the folder's current contents")


def fetch_dataset(name: str, client: Client, settings: Settings,  # noqa: ANN201 - ImageDataset
                  manifest: str | None = None):
    from worker.datasets.builtin import BUILTIN, load_builtin
    from worker.datasets.readers import read_dataset_file, read_image_folder

    info = client.dataset(name)
    if info["kind"] == "builtin":
        if name not in BUILTIN:
            raise ValueError(f"this worker cannot generate built-in dataset {name!r}; it has {sorted(BUILTIN)}")
        return load_builtin(name)
    if info["kind"] == "path":
        if manifest is not None:
            check_manifest(info["meta"]["path"], manifest)
        meta = info["meta"]
        return read_image_folder(meta["path"], roots=settings.dataset_root_paths, classes=meta.get("subset"),
                                 per_class=meta.get("per_class"))
    cache = Path(settings.worker_cache_dir or settings.data_dir / "worker-cache") / "datasets"
    dest = cache / f"{info['sha256']}.{'npz' if info['format'] == 'npz' else 'zip'}"
    if not dest.is_file():
        client.download(f"{client.url}/api/v1/datasets/{name}/file", dest)
    return read_dataset_file(dest, name=name)


def sandbox_job(claim: ClaimResponse, settings: Settings, device: str, task: str, **extra: Any):  # noqa: ANN201
    """The sandbox request for the claimed checkpoint (worker.sandbox.EncoderJob)."""
    import torch

    from worker.sandbox import EncoderJob

    params = claim.evaluation.params
    overrides = {k: params[k] for k in PREPROCESSING_FIELDS if params.get(k) is not None}
    return EncoderJob(task=task, format=claim.artifact.format, arch=params.get("arch"),
                      arch_kwargs=params.get("arch_kwargs"), checkpoint_key=params.get("checkpoint_key"),
                      preprocessing=overrides or None,
                      pool=params.get("pool", "cls"), output=params.get("output", "backbone"), device=device,
                      threads=torch.get_num_threads(),
                      memory_mb=settings.sandbox_memory_mb if not device.startswith("cuda") else None, **extra)


def run_sandboxed(job, checkpoint: Path, dataset, settings: Settings, progress: ProgressFn,  # noqa: ANN001
                  labels: bool = False, resume: tuple[Path, str] | None = None):  # noqa: ANN201 - ChildOutputs
    """Run the job over an ImageDataset in memory, or over a FolderItems the child streams image by image (into
    `resume` = (directory, key) when given, so a rerun after a kill continues where it stopped)."""
    import os

    from worker.datasets.readers import FolderItems
    from worker.sandbox import FolderSource, hidden_paths, run_job

    if isinstance(dataset, FolderItems):
        workers = settings.loader_workers if settings.loader_workers is not None else min(8, os.cpu_count() or 1)
        source = FolderSource(dataset.folder, dataset.paths, workers=workers,
                              max_unreadable=settings.max_unreadable_fraction,
                              resume_dir=resume[0] if resume else None, resume_key=resume[1] if resume else None)
        if source.resume_dir is not None:
            source.resume_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return run_job(job, checkpoint, None, source=source, mode=settings.sandbox, progress=progress,
                       hidden=hidden_paths(settings), start=0.05)
    return run_job(job, checkpoint, dataset.images, labels=dataset.labels if labels else None,
                   mode=settings.sandbox, progress=progress, hidden=hidden_paths(settings), start=0.05)


def stream_or_fetch(name: str, client: Client, settings: Settings, manifest: str | None = None):  # noqa: ANN201
    """For the embed step: a server ImageFolder / DINOv2 folder as FolderItems (listed, not decoded: the sandboxed
    child streams it), anything else as the ImageDataset fetch_dataset gives."""
    from worker.datasets.readers import folder_items

    info = client.dataset(name)
    if info["kind"] == "path":
        if manifest is not None:
            check_manifest(info["meta"]["path"], manifest)
        meta = info["meta"]
        listed = folder_items(meta["path"], settings.dataset_root_paths, name=name, classes=meta.get("subset"),
                              per_class=meta.get("per_class"))
        if listed is not None:
            return listed
    return fetch_dataset(name, client, settings)


def suite_result(obj: Any, suite: str) -> SuiteResult:
    """A SuiteResult from the child's JSON (untrusted): the field types the API and the pages rely on."""
    try:
        result = SuiteResult(**obj)
        result.metrics = {str(k): float(v) for k, v in result.metrics.items()}
        if not isinstance(result.figures, dict) or not isinstance(result.variant, dict):
            raise TypeError("figures and variant must be objects")
        result.warnings = [str(w) for w in result.warnings]
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"the sandboxed {suite} suite returned a malformed result ({exc})") from None
    return result


def run_embed(claim: ClaimResponse, checkpoint: Path, client: Client, settings: Settings, device: str,
              progress: ProgressFn) -> SuiteResult:
    from worker.embed import embed_precision, preprocessing_spec

    params: dict[str, Any] = dict(claim.evaluation.params)
    progress(0.02, f"loading dataset {params['dataset']}")
    dataset = stream_or_fetch(params["dataset"], client, settings, params.get("dataset_manifest"))
    views = int(params.get("views") or 0)
    resume = _resume_place(claim, settings, dataset, views)
    out = run_sandboxed(sandbox_job(claim, settings, device, "embed", views=views, seed=VIEW_SEED), checkpoint,
                        dataset, settings, progress, resume=resume)
    report = out.report
    keep = np.setdiff1d(np.arange(len(dataset.labels)), out.unreadable) if out.unreadable else slice(None)
    z = out.arrays["embeddings"][keep]
    seconds = float(report.get("seconds") or 0.0)
    arrays = {"embeddings": z, "labels": dataset.labels[keep], "split": dataset.split[keep]}
    if views:
        arrays["views"] = out.arrays["views"][keep]
    progress(0.96, "uploading embeddings")
    with tempfile.TemporaryDirectory(prefix="repscope-embed-") as tmp:
        path = Path(tmp) / "embeddings.npz"
        np.savez(path, **arrays)
        accepted = client.upload_file(
            claim.artifact.run_id, path, step=claim.artifact.step, dataset=params["dataset"],
            suites=params.get("suites"), extra={"evaluation": str(claim.evaluation.id), "claim": claim.claim})
    if resume is not None:
        shutil.rmtree(resume[0], ignore_errors=True)
    spec = preprocessing_spec(preprocessing=_preprocessing(report), views=views, seed=VIEW_SEED,
                              precision=embed_precision(device), pool=report["pool"], output=report["output"])
    return SuiteResult(
        metrics={"embed_images_per_s": len(z) / max(seconds, 1e-9)},
        figures={"load_report": report["load_report"], "load_summary": report["load_summary"]},
        variant={"checkpoint_format": report["format"], "arch": report["arch"], **_load_variant(report),
                 "dataset": params["dataset"],
                 "n_images": int(len(z)), "dim": int(z.shape[1]), "preprocessing": spec,
                 "unreadable_images": len(out.unreadable), "resumed_from": int(report.get("resumed_from") or 0),
                 "streamed": bool(report.get("unreadable") is not None),
                 "derived_artifact": accepted.artifact.id,
                 "queued_evaluations": [e.id for e in accepted.evaluations], "sandbox": out.mode},
        warnings=list(report["warnings"]),
    )


def _resume_place(claim: ClaimResponse, settings: Settings, dataset: Any, views: int) -> tuple[Path, str] | None:
    """Where a streamed embed step keeps its outputs across worker restarts, and the key that says they belong to
    this very job (checkpoint bytes, file list, parameters): (directory, key), or None for in-memory datasets."""
    import hashlib
    import json

    from worker.datasets.readers import FolderItems

    if not isinstance(dataset, FolderItems):
        return None
    key = hashlib.sha256(json.dumps({"checkpoint": claim.artifact.sha256, "paths": dataset.paths, "views": views,
                                     "params": claim.evaluation.params}, sort_keys=True, default=str).encode())
    cache = Path(settings.worker_cache_dir or settings.data_dir / "worker-cache")
    return cache / "embed-resume" / f"evaluation-{claim.evaluation.id}", key.hexdigest()


def _load_variant(report: dict[str, Any]) -> dict[str, Any]:
    """What of the load report names the variant: layout, nested key, stripped prefix, architecture kwargs."""
    load = report["load_report"]
    arch = load.get("architecture") if isinstance(load.get("architecture"), dict) else {}
    return {"layout": load.get("layout"), "checkpoint_key": load.get("source_key"), "prefix": load.get("prefix"),
            "arch_kwargs": arch.get("kwargs") or {}, "arch_library": arch.get("library")}


def _preprocessing(report: dict[str, Any]):  # noqa: ANN202 - Preprocessing
    """The Preprocessing the sandboxed child applied (its report was validated by worker.sandbox)."""
    from worker.datasets.preprocessing import Preprocessing

    return Preprocessing.from_json(report["preprocessing"])


def run_on_encoder(claim: ClaimResponse, checkpoint: Path, client: Client, settings: Settings, device: str,
                   progress: ProgressFn) -> SuiteResult:
    """A suite over the encoder itself and the dataset's images (registry: `encoder=True`); the whole suite runs
    in the sandbox, since it calls the model's forward throughout. The dataset's labels go along when it uses them."""
    params: dict[str, Any] = dict(claim.evaluation.params)
    suite = claim.evaluation.suite
    spec = registry.get(suite)
    if not spec.encoder:
        raise ValueError(f"suite {suite!r} does not run on an encoder")
    progress(0.02, f"loading dataset {params['dataset']}")
    dataset = fetch_dataset(params["dataset"], client, settings, params.get("dataset_manifest"))
    out = run_sandboxed(sandbox_job(claim, settings, device, "suite", suite=suite), checkpoint, dataset, settings,
                        progress, labels=LABELS in spec.uses)
    result = suite_result(out.result, suite)
    result.variant.update({"checkpoint_format": out.report["format"], "arch": out.report["arch"],
                           "dataset": params["dataset"], "sandbox": out.mode,
                           "preprocessing": out.report["preprocessing"]})
    return result
