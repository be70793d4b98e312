"""Start and stop the real processes integration tests need: API (uvicorn), Celery worker, `repscope serve`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from repscope.cli import worker_command
from repscope.testing import ROOT, Proc, free_port
from tests.conftest import ADMIN_TOKEN, WORKER_TOKEN

__all__ = ["ROOT", "Proc", "base_env", "free_port", "start_api", "start_serve", "start_worker", "wait_healthy"]


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
