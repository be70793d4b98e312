"""The sandbox for uploaded model code: a child process with no secrets, no database, no broker, no network.

Everything that loads or runs an uploaded checkpoint (the embed step, the encoder suites) goes through
``run_job``: the child (worker.sandbox.child) runs under bubblewrap (worker.sandbox.bwrap) with user, pid and
network namespaces of its own, read-only system / Python / source binds, the job's inputs read-only and one
scratch dir as its only writable place (plus a private tmpfs /tmp). ``REPSCOPE_SANDBOX=off`` runs the same
child without bubblewrap: an explicit, logged opt-out for kernels that refuse unprivileged user namespaces.

Limits: memory is capped only on CPU runs (REPSCOPE_SANDBOX_MEMORY_MB, RLIMIT_AS; CUDA reserves far more
address space than it uses), wall time by the task time limit (the child's process group is killed), scratch
disk use not at all (it lives under the system temp dir until the job ends). No seccomp filter: the kernel's
system-call surface is what a process without capabilities in its own user namespace has.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from .bwrap import SandboxError, command, state
from .runner import ChildOutputs, EncoderJob, FolderSource, ModelCodeError, run_job

__all__ = ["ChildOutputs", "EncoderJob", "FolderSource", "ModelCodeError", "SandboxError", "check_at_start", "hidden_paths",
           "probe", "run_job"]
log = logging.getLogger(__name__)
PROBE = "import numpy, worker.sandbox.child; print('sandbox-ok')"
OPT_OUT = "REPSCOPE_SANDBOX=off"


def hidden_paths(settings) -> tuple[Path, ...]:  # noqa: ANN001 - repscope.settings.Settings
    """What must never be visible in the sandbox: the data dir and the worker's artifact cache."""
    paths = [Path(settings.data_dir)]
    if settings.worker_cache_dir:
        paths.append(Path(settings.worker_cache_dir))
    return tuple(paths)


def probe(settings, timeout: float = 60.0) -> None:  # noqa: ANN001
    """Start a trivial Python in the sandbox once; raise SandboxError, naming the opt-out, if that fails.
    Where only the fresh /proc is refused (a container masking its own /proc), later runs go without one."""
    try:
        done = _try(settings, timeout, fresh_proc=True)
        if done.returncode != 0 and "Can't mount proc" in done.stderr:
            done = _try(settings, timeout, fresh_proc=False)
            if done.returncode == 0:
                state.fresh_proc = False
                log.warning("the kernel refuses a fresh /proc in the model sandbox (this container masks parts of "
                            "its own /proc): the sandbox runs without /proc. Docker: systempaths=unconfined gives it one")
    except (OSError, subprocess.SubprocessError, SandboxError) as exc:
        raise SandboxError(f"the model sandbox cannot start: {exc}. {_advice()}") from None
    if done.returncode != 0 or "sandbox-ok" not in done.stdout:
        detail = " ".join((done.stderr or done.stdout).split())[-800:]
        raise SandboxError(f"the model sandbox (bubblewrap) cannot start on this machine: {detail}. {_advice()}")


def _try(settings, timeout: float, fresh_proc: bool) -> subprocess.CompletedProcess:  # noqa: ANN001
    argv = command([sys.executable, "-c", PROBE], hidden=hidden_paths(settings), fresh_proc=fresh_proc)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={"PATH": "/usr/bin:/bin"})


def _advice() -> str:
    return ("It needs unprivileged user namespaces (sysctl user.max_user_namespaces > 0, "
            "kernel.unprivileged_userns_clone=1, kernel.apparmor_restrict_unprivileged_userns=0; in Docker "
            "security_opt seccomp=unconfined and apparmor=unconfined, see docker-compose.yml). To run uploaded "
            f"model code without a sandbox, set {OPT_OUT} (not recommended).")


def check_at_start(settings) -> str:  # noqa: ANN001
    """Worker start: the sandbox mode in force, after probing it ("off" is logged as a WARNING)."""
    if settings.sandbox == "off":
        log.warning("REPSCOPE_SANDBOX=off: uploaded model code runs WITHOUT a sandbox, with this worker's files and "
                    "network in reach; use it only where every uploader is trusted")
        return "off"
    probe(settings)
    log.info("model sandbox: bubblewrap works")
    return "bwrap"
