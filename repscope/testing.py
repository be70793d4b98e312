"""Real processes for integration tests and benchmarks: a logged subprocess, a free port, a services check.

Shared by tests/integration and benchmarks/bench_load.py so both start and stop the server and worker the same
way. Nothing here is imported by the SDK or the server; psycopg and redis are imported only when checked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The PostgreSQL (admin database, to create and drop test databases in) and Redis that tests and benchmarks use.
PG_ADMIN_URL = os.environ.get("REPSCOPE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("REPSCOPE_TEST_REDIS", "redis://127.0.0.1:6379/0")


class Proc:
    """A subprocess in its own session with its output in a log file; stop() sends SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """SIGTERM/SIGINT: to the process (it stops its children itself). SIGKILL: to its whole process group,
        as when a machine loses the process and everything it started. Returns the exit code."""
        if self.alive():
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
        return f"--- {self.name} log ({self.log_path}) ---\n" + "\n".join(lines[-n:])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services_problem(postgres_url: str = PG_ADMIN_URL, redis_url: str = REDIS_URL) -> str | None:
    """Why PostgreSQL or Redis cannot be used, or None when both answer."""
    problems = []
    try:
        import psycopg

        psycopg.connect(postgres_url, connect_timeout=3).close()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"PostgreSQL at {postgres_url}: {exc}")
    try:
        import redis

        redis.Redis.from_url(redis_url, socket_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        problems.append(f"Redis at {redis_url}: {exc}")
    return "; ".join(problems) or None
