"""Start and stop the real processes integration tests need: API (uvicorn), Celery worker, `repscope serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from repscope.cli import worker_command
from tests.conftest import ADMIN_TOKEN, WORKER_TOKEN

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


class Proc:
    """A subprocess with its output in a log file; stop() sends SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """SIGTERM/SIGINT: to the process (it stops its children itself). SIGKILL: to its whole process group,
        as when a machine loses the process and everything it started."""
        if self.proc.poll() is None:
            if sig == signal.SIGKILL:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 60) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return f"--- {self.name} log ---\n" + "\n".join(lines[-n:])


def base_env(data_dir: Path, api_url: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPSCOPE_")}
    env.update({"REPSCOPE_DATA_DIR": str(data_dir), "REPSCOPE_API_URL": api_url, "PYTHONUNBUFFERED": "1",
                "REPSCOPE_SWEEP_INTERVAL_S": "1", "REPSCOPE_DEVICE": "cpu",
                "REPSCOPE_ADMIN_TOKEN": ADMIN_TOKEN, "REPSCOPE_WORKER_TOKEN": WORKER_TOKEN})
    env.update(overrides)
    return env


def start_api(env: dict[str, str], port: int, log_dir: Path) -> Proc:
    cmd = [sys.executable, "-m", "uvicorn", "--factory", "backend.app:create_app", "--host", "127.0.0.1",
           "--port", str(port), "--log-level", "warning"]
    return Proc("api", cmd, env, log_dir)


def start_worker(env: dict[str, str], queue: str, log_dir: Path) -> Proc:
    return Proc("worker", worker_command(queue, f"test-{uuid.uuid4().hex[:6]}@%h"), env, log_dir)


def start_serve(env: dict[str, str], port: int, data_dir: Path, log_dir: Path) -> Proc:
    cmd = [sys.executable, "-m", "repscope.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)]
    return Proc("serve", cmd, env, log_dir)
