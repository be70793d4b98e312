"""The sandboxed side: ``python -m worker.sandbox.child REQUEST.json`` loads the uploaded checkpoint, runs it
over the images and writes what it computed into the scratch dir.

It has no token, no network and no data dir; it trusts nothing it writes to be believed (the parent validates
every output). Protocol: one JSON object per line on the file descriptor that was stdout at start
({"progress": f, "message": m}, then {"ok": true} or {"error": one line, "type": exception class}); anything
the model code prints goes to stderr instead, so it cannot forge protocol lines by accident.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROTOCOL_LIMIT = 4000  # characters of one message


class Channel:
    """The protocol stream (the original stdout); fd 1 then points at stderr."""

    def __init__(self) -> None:
        self._out = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    def send(self, **msg: Any) -> None:
        self._out.write(json.dumps(msg) + "\n")
        self._out.flush()

    def progress(self, fraction: float, message: str) -> None:
        self.send(progress=float(fraction), message=str(message)[:PROTOCOL_LIMIT])


def _limit_memory(megabytes: int | None) -> None:
    """RLIMIT_AS on this process (torch's libraries are mapped by then), set before the model is touched;
    without CAP_SYS_RESOURCE the model's code cannot raise it again."""
    if megabytes:
        import resource

        limit = int(megabytes) << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _load(req: dict[str, Any]):  # noqa: ANN202 - LoadedEncoder
    from worker.models.loading import load_encoder

    return load_encoder(req["checkpoint"], fmt=req.get("format"), arch=req.get("arch"), pool=req["pool"],
                        output=req["output"], arch_kwargs=req.get("arch_kwargs"),
                        checkpoint_key=req.get("checkpoint_key"), preprocessing=req.get("preprocessing"),
                        device=req["device"], vet_ops=bool(req.get("vet_ops", True)))


def _report(encoder) -> dict[str, Any]:  # noqa: ANN001
    return {"load_report": encoder.report.to_json(), "load_summary": encoder.report.summary(),
            "format": encoder.fmt, "arch": encoder.arch, "pool": encoder.pool, "output": encoder.output,
            "input_size": list(encoder.input_size) if encoder.input_size else None,
            "preprocessing": encoder.preprocessing.to_json(),
            "warnings": list(encoder.report.warnings)}


def run_embed(req: dict[str, Any], channel: Channel) -> None:
    import numpy as np

    from worker.embed import embed

    if req.get("source"):
        return run_embed_stream(req, channel)
    images = np.load(req["images"], mmap_mode="r", allow_pickle=False)
    channel.progress(0.06, "loading checkpoint (sandboxed)")
    encoder = _load(req)
    views = int(req.get("views") or 0)
    span = 0.85 if not views else 0.45
    started = time.perf_counter()
    z = embed(encoder, images, device=req["device"], progress=lambda f, m: channel.progress(0.1 + span * f, m))
    seconds = time.perf_counter() - started
    scratch = Path(req["scratch"])
    np.save(scratch / "embeddings.npy", z)
    if views:
        v = embed(encoder, images, device=req["device"], views=views, seed=int(req.get("seed", 0)),
                  progress=lambda f, m: channel.progress(0.55 + 0.4 * f, f"views: {m}"))
        np.save(scratch / "views.npy", v)
    (scratch / "report.json").write_text(json.dumps({**_report(encoder), "seconds": seconds}))


def run_embed_stream(req: dict[str, Any], channel: Channel) -> None:
    """A folder of image files, bound read-only: decoded and transformed per image (worker.embed_stream)."""
    from worker.datasets.folders import display_name
    from worker.embed_stream import embed_files, folder_preprocessing

    source = req["source"]
    paths = json.loads(Path(source["items"]).read_text())
    channel.progress(0.06, "loading checkpoint (sandboxed)")
    encoder = _load(req)
    encoder.preprocessing = folder_preprocessing(encoder.preprocessing)
    views = int(req.get("views") or 0)
    out_dir = Path(source["resume"]) if source.get("resume") else Path(req["scratch"])
    start, unreadable = _resume_state(out_dir, source.get("resume_key"), len(paths))

    def on_batch(done: int, bad: list[int]) -> None:  # the checkpoint a rerun continues from
        tmp = out_dir / "progress.json.tmp"
        tmp.write_text(json.dumps({"key": source.get("resume_key"), "rows_done": done, "unreadable": bad}))
        tmp.replace(out_dir / "progress.json")

    started = time.perf_counter()
    result = embed_files(encoder.module, source["root"], paths, encoder.preprocessing, out_dir / "embeddings.npy",
                         pool=encoder.pool, workers=int(source.get("workers") or 0), device=req["device"],
                         batch_size=int(source.get("batch_size") or 256),
                         views=views, seed=int(req.get("seed", 0)), views_out=out_dir / "views.npy",
                         max_unreadable=float(source.get("max_unreadable", 0.01)), start=start,
                         unreadable=unreadable, on_batch=on_batch if source.get("resume") else None,
                         progress=lambda f, m: channel.progress(0.1 + 0.85 * f, m))
    seconds = time.perf_counter() - started
    report = {**_report(encoder), "seconds": seconds, "unreadable": result.unreadable, "resumed_from": start}
    if result.unreadable:
        report["warnings"] = [*report["warnings"], f"{len(result.unreadable)} of {len(paths)} images could not be "
                              f"read and were left out, e.g. {display_name(paths[result.unreadable[0]])}"]
    (Path(req["scratch"]) / "report.json").write_text(json.dumps(report))


def _resume_state(out_dir: Path, key: str | None, n: int) -> tuple[int, list[int]]:
    """(rows already embedded, their unreadable indices) from an interrupted run's progress.json, if it is for the
    same job (key); else (0, [])."""
    try:
        state = json.loads((out_dir / "progress.json").read_text())
    except (OSError, ValueError):
        return 0, []
    done, bad = state.get("rows_done"), state.get("unreadable")
    if key is None or state.get("key") != key or type(done) is not int or not 0 <= done <= n \
            or not isinstance(bad, list) or not all(type(i) is int and 0 <= i < done for i in bad):
        return 0, []
    return done, sorted(set(bad))


def run_suite(req: dict[str, Any], channel: Channel) -> None:
    import numpy as np
    import torch

    from worker.datasets.preprocessing import apply, stats
    from worker.models.features import encode as forward
    from worker.suite_runners import runner

    images = np.load(req["images"], allow_pickle=False)
    labels = np.load(req["labels"], allow_pickle=False) if req.get("labels") else None
    channel.progress(0.06, "loading checkpoint (sandboxed)")
    encoder = _load(req)
    module = encoder.module.to(req["device"]).eval()
    prep = encoder.preprocessing
    mean_std = stats(prep, req["device"])

    def encode(x01: torch.Tensor) -> torch.Tensor:
        """float NCHW in [0, 1] on the device -> features, with the preprocessing the embed step uses."""
        return forward(module, apply(x01, prep, mean_std=mean_std), pool=encoder.pool).float()

    result = runner(req["suite"], "encoder")(encode, images, labels, req["device"], channel.progress)
    scratch = Path(req["scratch"])
    (scratch / "result.json").write_text(json.dumps(result.to_json()))
    (scratch / "report.json").write_text(json.dumps(_report(encoder)))


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:PROTOCOL_LIMIT] if text else type(exc).__name__


def main(argv: list[str]) -> int:
    channel = Channel()
    try:
        req = json.loads(Path(argv[0]).read_text())
        import torch  # mapped before the limit: its libraries' address space is not the model's

        _limit_memory(req.get("memory_mb"))
        if req.get("threads"):
            torch.set_num_threads(int(req["threads"]))
        {"embed": run_embed, "suite": run_suite}[req["task"]](req, channel)
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one protocol line
        channel.send(error=one_line(exc), type=type(exc).__name__)
        return 1
    channel.send(ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
