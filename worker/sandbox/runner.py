"""The trusted side: run one encoder job in the sandboxed child and read back what it wrote.

The parent writes the images (.npy uint8) and a JSON request into a fresh input dir, starts the child (under
bubblewrap, or plainly when REPSCOPE_SANDBOX=off), forwards its progress lines to the progress callback
(which enforces the time limit: the child's process group is killed when it raises), and reads the outputs
back as untrusted files: regular files only (no symlinks out of scratch), sizes and .npy headers checked
before anything is allocated, never unpickled. Uploads and reports stay with the parent: the child has no
token and no network.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import bwrap

MODES = ("bwrap", "off")
POLL_S = 1.0  # the progress callback (and so the time limit) runs at least this often
MAX_LINE = 64 * 1024
MAX_JSON_BYTES = 256 << 20
MAX_DIM = 1 << 20
STDERR_TAIL = 2000
ProgressFn = Callable[[float, str], None]


@dataclass
class EncoderJob:
    """What the child is asked to do with the checkpoint: "embed" (embeddings, and q views for LiDAR) or
    "suite" (equivariance / backdoor over the images)."""

    task: str
    format: str | None = None
    arch: str | None = None
    arch_kwargs: dict[str, Any] | None = None
    checkpoint_key: str | None = None
    preprocessing: dict[str, Any] | None = None  # overrides: mean, std, resize, crop, interpolation
    pool: str = "cls"
    output: str = "backbone"
    device: str = "cpu"
    views: int = 0
    seed: int = 0
    suite: str | None = None
    vet_ops: bool = True
    threads: int | None = None
    memory_mb: int | None = None


@dataclass
class FolderSource:
    """Image files the child reads itself (worker.embed_stream): `folder` bound read-only at bwrap.DATASET_DIR."""

    folder: Path
    paths: list[str]
    workers: int = 0
    max_unreadable: float = 0.01
    batch_size: int = 256
    # Resumable: a directory that outlives the process (bound read-write at bwrap.RESUME_DIR) holds the outputs
    # and progress.json; a rerun with the same key continues from the last flushed batch.
    resume_dir: Path | None = None
    resume_key: str | None = None


@dataclass
class ChildOutputs:
    report: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    mode: str = "bwrap"
    unreadable: list[int] = field(default_factory=list)  # streamed folders: rows whose image could not be read


class ModelCodeError(RuntimeError):
    """The child failed for a reason of its own (an exception type the parent does not map)."""


def _raise_child_error(kind: str, message: str) -> None:
    from worker.models.loading import CheckpointError

    if kind == "CheckpointError":
        raise CheckpointError(message)
    if kind in ("MemoryError", "OutOfMemoryError") or "can't allocate memory" in message:
        raise MemoryError(f"out of memory in the sandboxed model process: {message}")
    if kind in ("ValueError", "TypeError", "UnreadableImages", "DatasetError"):
        raise ValueError(message)
    raise ModelCodeError(f"{kind}: {message}")


def _open_regular(path: Path, max_bytes: int) -> tuple[Any, int]:
    """Open a child-written file without following a symlink; refuse anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise bwrap.SandboxError(f"the model process did not write {path.name}") from None
    except OSError as exc:
        raise bwrap.SandboxError(f"refused to read {path.name} from the sandbox ({exc.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
        os.close(fd)
        raise bwrap.SandboxError(f"{path.name} from the sandbox is not a regular file of at most {max_bytes} bytes")
    return os.fdopen(fd, "rb"), st.st_size


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    f, _ = _open_regular(path, max_bytes)
    with f:
        try:
            obj = json.loads(f.read())
        except ValueError as exc:
            raise bwrap.SandboxError(f"{path.name} from the sandbox is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise bwrap.SandboxError(f"{path.name} from the sandbox is not a JSON object")
    return obj


def read_array(path: Path, *, rows: int, ndim: int) -> np.ndarray:
    """A float32 .npy with `rows` rows and `ndim` dimensions; header checked against the file size first."""
    f, size = _open_regular(path, 1 << 40)
    with f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header(f)
        except ValueError as exc:
            raise bwrap.SandboxError(f"{path.name} from the sandbox is not an .npy file ({exc})") from None
        if (dtype != np.float32 or fortran or len(shape) != ndim or shape[0] != rows
                or not all(0 < s <= MAX_DIM for s in shape[1:])):
            raise bwrap.SandboxError(f"{path.name} from the sandbox is {dtype} {shape}; expected float32 with "
                                     f"{ndim} dimensions and {rows} rows")
        if size != f.tell() + int(np.prod(shape)) * 4:
            raise bwrap.SandboxError(f"{path.name} from the sandbox is truncated or has trailing bytes")
        out = np.fromfile(f, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)
    return out


def _reader(stream, lines: queue.Queue) -> None:  # noqa: ANN001
    for raw in iter(lambda: stream.readline(MAX_LINE), b""):
        lines.put(raw)
    lines.put(None)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL to the child's process group while it runs (bwrap's --die-with-parent then takes down
    everything inside the sandbox's pid namespace); a reaped child's group id is not ours to signal."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _rmtree(path: Path) -> None:
    def fix(func, p, _exc) -> None:  # noqa: ANN001 - the child may have left a dir without permissions
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)

    shutil.rmtree(path, onerror=fix)


def _follow(proc: subprocess.Popen, progress: ProgressFn, start: float) -> dict[str, Any]:
    """Forward progress until the child closes its protocol stream; returns the final message (or {})."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    last, final = (start, "starting the sandboxed model process"), {}
    while True:
        try:
            raw = lines.get(timeout=POLL_S)
        except queue.Empty:
            progress(*last)
            continue
        if raw is None:
            return final
        try:
            msg = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if "progress" in msg:
            with contextlib.suppress(TypeError, ValueError):
                last = (min(max(float(msg["progress"]), 0.0), 1.0), str(msg.get("message", ""))[:2000])
                progress(*last)
        elif "ok" in msg or "error" in msg:
            final = msg


def child_argv(request: str) -> list[str]:
    return [sys.executable, "-m", "worker.sandbox.child", request]


def run_job(job: EncoderJob, checkpoint: Path, images: np.ndarray | None, *, labels: np.ndarray | None = None,
            source: FolderSource | None = None, mode: str = "bwrap", progress: ProgressFn,
            hidden: tuple[Path, ...] = (), start: float = 0.0) -> ChildOutputs:
    """Run `job` on `checkpoint` over `images` in the sandboxed child; `hidden` (the data dir, the worker cache)
    must not be visible through any bind; `start` is the progress to report until the child reports its own.
    Raises the child's CheckpointError / ValueError / MemoryError as such."""
    if mode not in MODES:
        raise bwrap.SandboxError(f"REPSCOPE_SANDBOX must be one of {MODES}, got {mode!r}")
    tmp = Path(tempfile.mkdtemp(prefix="repscope-sandbox-"))
    try:
        inputs, scratch = tmp / "input", tmp / "scratch"
        inputs.mkdir(mode=0o700)
        scratch.mkdir(mode=0o700)
        if source is None:
            np.save(inputs / "images.npy", np.ascontiguousarray(images))
        else:
            (inputs / "items.json").write_text(json.dumps(source.paths))
        if labels is not None:
            np.save(inputs / "labels.npy", np.ascontiguousarray(labels))
        sandboxed = mode == "bwrap"
        in_dir = Path(bwrap.INPUT_DIR) if sandboxed else inputs
        request = {**job.__dict__, "checkpoint": bwrap.CHECKPOINT if sandboxed else str(Path(checkpoint).resolve()),
                   "images": str(in_dir / "images.npy") if source is None else None,
                   "source": None if source is None else {
                       "root": bwrap.DATASET_DIR if sandboxed else str(source.folder),
                       "items": str(in_dir / "items.json"), "workers": source.workers,
                       "max_unreadable": source.max_unreadable, "resume_key": source.resume_key,
                       "batch_size": source.batch_size,
                       "resume": None if source.resume_dir is None else
                       bwrap.RESUME_DIR if sandboxed else str(source.resume_dir)},
                   "labels": str(in_dir / "labels.npy") if labels is not None else None,
                   "scratch": bwrap.SCRATCH_DIR if sandboxed else str(scratch)}
        (inputs / "request.json").write_text(json.dumps(request))
        argv = child_argv(str(in_dir / "request.json"))
        if sandboxed:
            argv = bwrap.command(argv, inputs=inputs, scratch=scratch, checkpoint=Path(checkpoint).resolve(),
                                 cuda=job.device.startswith("cuda"), hidden=hidden,
                                 dataset=source.folder if source is not None else None,
                                 resume=source.resume_dir if source is not None else None)
        with open(tmp / "stderr.log", "wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                    env=bwrap.child_env() if not sandboxed else {"PATH": "/usr/bin:/bin"},
                                    cwd=scratch, start_new_session=True)
        try:
            final = _follow(proc, progress, start)
            proc.wait()
        finally:
            _kill(proc)  # also what the time limit's exception from progress() leads to
            proc.stdout.close()
        if "error" in final:
            _raise_child_error(str(final.get("type", "")), str(final["error"])[:4000])
        if proc.returncode != 0 or not final.get("ok"):
            tail = (tmp / "stderr.log").read_bytes()[-STDERR_TAIL:].decode(errors="replace")
            code = proc.returncode  # bwrap exits 128 + n when the sandboxed process died of signal n
            signum = -code if code < 0 else code - 128 if code > 128 else None
            how = (f"was killed by signal {signum}" + (" (out of memory?)" if signum == signal.SIGKILL else "")
                   if signum else f"exited with code {code}")
            raise bwrap.SandboxError(f"the sandboxed model process {how} without a result: {tail.strip()}")
        outputs = source.resume_dir if source is not None and source.resume_dir is not None else scratch
        return _collect(job, scratch, rows=len(images) if source is None else len(source.paths), mode=mode,
                        outputs=outputs)
    finally:
        _rmtree(tmp)


def _check_report(report: dict[str, Any], job: EncoderJob) -> dict[str, Any]:
    """The child's description of what it loaded, in the types the parent relies on."""
    from worker.models.loading import FORMATS

    size = report.get("input_size")
    ok = (report.get("format") in FORMATS and report.get("pool") == job.pool and report.get("output") == job.output
          and isinstance(report.get("arch"), str | None) and isinstance(report.get("load_report"), dict)
          and _valid_preprocessing(report.get("preprocessing"))
          and isinstance(report.get("load_summary"), str)
          and isinstance(report.get("warnings"), list) and all(isinstance(w, str) for w in report["warnings"])
          and (size is None or (isinstance(size, list) and len(size) == 2
                                and all(type(s) is int and 0 < s <= 1 << 16 for s in size)))
          and isinstance(report.get("seconds", 0.0), int | float))
    if not ok:
        raise bwrap.SandboxError("the sandboxed model process wrote a malformed load report")
    return report


def _unreadable(rows_list: Any, rows: int) -> list[int]:
    """The child's list of unreadable rows: distinct ints in [0, rows), ascending."""
    if not isinstance(rows_list, list) or not all(type(i) is int and 0 <= i < rows for i in rows_list) \
            or rows_list != sorted(set(rows_list)):
        raise bwrap.SandboxError("the sandboxed model process wrote a malformed list of unreadable images")
    return rows_list


def _valid_preprocessing(spec: Any) -> bool:
    """The child's Preprocessing.to_json(): rebuilt by the dataclass, which checks every field."""
    from worker.datasets.preprocessing import Preprocessing

    if not isinstance(spec, dict):
        return False
    try:
        Preprocessing.from_json(spec)
    except (TypeError, ValueError):
        return False
    return isinstance(spec.get("source"), str) and len(spec["source"]) <= 500


def _collect(job: EncoderJob, scratch: Path, *, rows: int, mode: str, outputs: Path | None = None) -> ChildOutputs:
    out = ChildOutputs(report=_check_report(read_json(scratch / "report.json"), job), mode=mode)
    outputs = outputs or scratch
    if job.task == "embed":
        out.arrays["embeddings"] = read_array(outputs / "embeddings.npy", rows=rows, ndim=2)
        if job.views:
            views = read_array(outputs / "views.npy", rows=rows, ndim=3)
            if views.shape[1] != job.views:
                raise bwrap.SandboxError(f"views.npy from the sandbox has {views.shape[1]} views, not {job.views}")
            out.arrays["views"] = views
        out.unreadable = _unreadable(out.report.get("unreadable", []), rows)
    else:
        out.result = read_json(scratch / "result.json")
    return out
