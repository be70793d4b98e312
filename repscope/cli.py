"""The `repscope` command: serve (API + one worker, embedded defaults), worker, db."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from repscope import __version__


def worker_command(queue: str, name: str | None = None, loglevel: str = "INFO") -> list[str]:
    cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo", "--concurrency=1",
           "-Q", queue, "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", loglevel]
    if name:
        cmd += ["-n", name]
    return cmd


def _apply_overrides(args: argparse.Namespace) -> None:
    """Flags win over REPSCOPE_* variables; exported so the worker subprocess sees the same settings."""
    if getattr(args, "data_dir", None):
        os.environ["REPSCOPE_DATA_DIR"] = str(Path(args.data_dir).resolve())
    if getattr(args, "host", None):
        os.environ["REPSCOPE_HOST"] = args.host
    if getattr(args, "port", None):
        os.environ["REPSCOPE_PORT"] = str(args.port)


def cmd_serve(args: argparse.Namespace) -> int:
    _apply_overrides(args)
    import uvicorn

    from backend.app import create_app
    from backend.migrate import upgrade
    from repscope.settings import Settings

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["REPSCOPE_DATA_DIR"] = str(settings.data_dir.resolve())
    os.environ.setdefault("REPSCOPE_API_URL", f"http://{_connect_host(settings.host)}:{settings.port}")
    upgrade(settings.resolved_database_url)
    print(f"repscope {__version__}: database {_redact(settings.resolved_database_url)}, "
          f"broker {_redact(settings.resolved_broker_url)}, data in {settings.data_dir.resolve()}", flush=True)
    worker = None
    if not args.no_worker:
        worker = subprocess.Popen(worker_command(settings.queue, f"embedded-{os.getpid()}@%h"),
                                  start_new_session=False)
        print(f"worker started (pid {worker.pid})", flush=True)
    try:
        uvicorn.run(create_app(settings, auto_migrate=False), host=settings.host, port=settings.port,
                    log_level=args.log_level.lower())
    finally:
        if worker is not None:
            _stop(worker)
    return 0


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    print("worker stopped", flush=True)


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def cmd_worker(args: argparse.Namespace) -> int:
    _apply_overrides(args)
    from repscope.settings import Settings

    settings = Settings()
    cmd = worker_command(settings.queue, args.name, args.log_level)
    os.execv(cmd[0], cmd)
    return 0  # not reached


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    _apply_overrides(args)
    from backend.migrate import upgrade
    from repscope.settings import Settings

    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    print(f"database at head: {_redact(settings.resolved_database_url)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repscope", description="Measure how good a learned representation is, while it trains.",
        epilog="Settings come from REPSCOPE_* environment variables (see README); flags override them.")
    parser.add_argument("--version", action="version", version=f"repscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API and one worker (embedded defaults: SQLite, files, no Redis)",
                           description="Migrate the database, start the API on HOST:PORT and one Celery worker "
                                       "subprocess. Ctrl-C stops both.")
    serve.add_argument("--host", help="bind address (default 127.0.0.1, env REPSCOPE_HOST)")
    serve.add_argument("--port", type=int, help="port (default 8000, env REPSCOPE_PORT)")
    serve.add_argument("--data-dir", help="artifacts, SQLite database and embedded broker (default ./data)")
    serve.add_argument("--no-worker", action="store_true", help="start only the API (workers run elsewhere)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run one evaluation worker (Celery, solo pool)",
                            description="Consume evaluations from the broker (REPSCOPE_BROKER_URL) and report "
                                        "to the API at REPSCOPE_API_URL. One worker per GPU.")
    worker.add_argument("--data-dir", help="shared data dir, if this machine sees the API's (else downloads)")
    worker.add_argument("--name", help="Celery node name, e.g. gpu0@%%h")
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply Alembic migrations up to head")
    up.add_argument("--data-dir", help="data dir holding the embedded SQLite database")
    up.set_defaults(func=cmd_db_upgrade)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
