"""The `repscope` command: serve (API + one worker, embedded defaults), worker, db."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from repscope import __version__
from repscope.checkpoint_upload import add_cli_arguments
from repscope.suites import embedding_suites


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
    from repscope.settings import Settings

    settings = Settings()
    problem = None if args.no_worker else _sandbox_problem(settings)
    if problem:  # before anything is imported, created or started
        print(f"repscope serve: {problem}", file=sys.stderr, flush=True)
        return 3
    import uvicorn

    from backend.app import create_app
    from backend.db import secure_data_dir
    from backend.migrate import upgrade

    secure_data_dir(settings)  # 0700 data dir, 0600 database before anything writes there
    os.environ["REPSCOPE_DATA_DIR"] = str(settings.data_dir.resolve())
    os.environ.setdefault("REPSCOPE_API_URL", f"http://{_connect_host(settings.host)}:{settings.port}")
    upgrade(settings.resolved_database_url)
    settings = _embedded_credentials(settings)
    print(f"repscope {__version__}: database {_redact(settings.resolved_database_url)}, "
          f"broker {_redact(settings.resolved_broker_url)}, data in {settings.data_dir.resolve()}", flush=True)
    worker = None
    if not args.no_worker:
        from repscope.celeryconf import all_queues

        worker = subprocess.Popen(worker_command(",".join(all_queues(settings)), f"embedded-{os.getpid()}@%h"),
                                  start_new_session=False)
        print(f"worker started (pid {worker.pid})", flush=True)
    try:
        uvicorn.run(create_app(settings, auto_migrate=False), host=settings.host, port=settings.port,
                    log_level=args.log_level.lower())
    finally:
        if worker is not None:
            _stop(worker)
    return 0


def _sandbox_problem(settings) -> str | None:  # noqa: ANN001
    """The worker's model sandbox, probed before anything starts (the worker probes again at its own start):
    None when it works or is explicitly off, else the error, which names the opt-out."""
    from worker.sandbox import SandboxError, check_at_start

    try:
        check_at_start(settings)
    except SandboxError as exc:
        return str(exc)
    return None


def _embedded_credentials(settings):  # noqa: ANN001, ANN202
    """The worker subprocess gets a fresh worker token each start (unless REPSCOPE_WORKER_TOKEN is set); the
    first start of an instance without an admin token creates one and keeps it in DATA_DIR/admin-token."""
    import secrets

    from backend.db import make_engine, make_sessionmaker
    from backend.services import tokens as token_service
    from repscope.settings import Settings

    if not settings.worker_token:
        os.environ["REPSCOPE_WORKER_TOKEN"] = token_service.TOKEN_PREFIX + secrets.token_urlsafe(32)
        settings = Settings()
    if settings.admin_token:
        return settings
    path = settings.data_dir / "admin-token"
    engine = make_engine(settings)
    try:
        with make_sessionmaker(engine)() as session:
            if token_service.has_admin(session):
                if path.exists():
                    print(f"admin token: in {path.resolve()} (export REPSCOPE_TOKEN=$(cat {path}))", flush=True)
                return settings
            token, secret = token_service.create_token(session, "admin", ["admin"])
    finally:
        engine.dispose()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    print(f"created the first admin token (saved in {path.resolve()}, mode 600):\n  {secret}\n"
          f"sign in to the web UI with it, or: export REPSCOPE_TOKEN=$(cat {path})", flush=True)
    return settings


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
    cmd = worker_command(args.queues or settings.queue, args.name, args.log_level)
    os.execv(cmd[0], cmd)
    return 0  # not reached


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    _apply_overrides(args)
    from backend.db import secure_data_dir
    from backend.migrate import upgrade
    from repscope.settings import Settings

    settings = Settings()
    secure_data_dir(settings)
    upgrade(settings.resolved_database_url)
    print(f"database at head: {_redact(settings.resolved_database_url)}")
    return 0


def _print_json(obj) -> None:  # noqa: ANN001
    import json

    print(json.dumps(obj, indent=2, default=str))


def _table(rows: list[tuple[str, str]], header: tuple[str, str]) -> str:
    width = max([len(header[0])] + [len(r[0]) for r in rows])
    lines = [f"{header[0]:<{width}}  {header[1]}", f"{'-' * width}  {'-' * len(header[1])}"]
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run suites locally on a file: no server, no database (laptop use)."""
    from repscope.formats import FormatError, load_embeddings
    from repscope.suites import default_suites
    from worker.engine import pick_device
    from worker.suite_runners import ON_EMBEDDINGS as SUITES

    try:
        arrays = load_embeddings(args.file)
    except FormatError as exc:
        print(f"error: {args.file}: {exc}", file=sys.stderr)
        return 2
    suites = ([s.strip() for s in args.suites.split(",") if s.strip()] if args.suites
              else default_suites(arrays.labels is not None, arrays.poison is not None))
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        print(f"error: unknown suite(s) {', '.join(unknown)}; available on an embeddings file: "
              f"{', '.join(SUITES)}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    out = {}
    for suite in suites:
        def progress(fraction: float, message: str, suite: str = suite) -> None:
            if not args.json:
                print(f"\r{suite}: {fraction:6.1%} {message[:60]:<60}", end="", file=sys.stderr, flush=True)

        try:
            result = SUITES[suite](arrays, {}, device, progress)
        except ValueError as exc:
            print(f"\nerror: {suite}: {exc}", file=sys.stderr)
            return 2
        if not args.json:
            print("\r" + " " * 80 + "\r", end="", file=sys.stderr)
        out[suite] = result.to_json()
    if args.json:
        _print_json(out if args.figures else {k: {kk: v[kk] for kk in ("metrics", "variant", "warnings")}
                                              for k, v in out.items()})
        return 0
    n, d = arrays.embeddings.shape
    print(f"{args.file}: {n} x {d} ({arrays.embeddings.dtype}), device {device}")
    for suite, result in out.items():
        keys = sorted(k for k in result["metrics"] if args.all or "@d" not in k)
        print(f"\n[{suite}]")
        print(_table([(k, f"{result['metrics'][k]:.6g}") for k in keys], ("metric", "value")))
        for warning in result["warnings"]:
            print(f"warning: {warning}")
    return 0


def _client(args: argparse.Namespace):  # noqa: ANN202
    from repscope.client import Client

    return Client(args.url)


def _upload_kind(args: argparse.Namespace) -> str:
    """--kind, else checkpoint for a folder or when a checkpoint flag is given, else embeddings."""
    from repscope.checkpoint_upload import cli_fields

    if args.kind:
        return args.kind
    return "checkpoint" if Path(args.file).is_dir() or cli_fields(args) else "embeddings"


def cmd_upload(args: argparse.Namespace) -> int:
    """Upload an embeddings file or a checkpoint to a run (created if needed), with a progress bar; optionally wait."""
    from repscope.checkpoint_upload import checkpoint_file, cli_fields
    from repscope.client import RepscopeError

    kind, extra = _upload_kind(args), cli_fields(args)
    if kind == "embeddings" and (extra or Path(args.file).is_dir()):
        print(f"error: {'a folder' if Path(args.file).is_dir() else ', '.join(extra)} applies to --kind checkpoint "
              "only", file=sys.stderr)
        return 2
    try:
        ckpt = checkpoint_file(args.file, args.arch) if kind == "checkpoint" else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    client = _client(args)
    try:
        run = client.run(project=args.project, name=args.run)
        path = ckpt.path if ckpt else Path(args.file)
        show = None if args.json else _progress_bar(path.stat().st_size)
        accepted = client.upload_file(run.id, path, step=args.step, dataset=args.dataset, kind=kind, extra=extra,
                                      suites=args.suites.split(",") if args.suites else None, progress=show)
        if show:
            print(file=sys.stderr)
        ids = [e.id for e in accepted.evaluations]
        finished = client.wait(ids, timeout=args.timeout, raise_on_failure=False) if args.wait else []
    except RepscopeError as exc:
        print(f"error: {exc.detail} (HTTP {exc.status_code})", file=sys.stderr)
        return 1
    finally:
        if ckpt:
            ckpt.cleanup()
    if args.json:
        _print_json({"run": run.info.model_dump(mode="json"), "upload": accepted.model_dump(mode="json"),
                     "evaluations": [e.model_dump(mode="json") for e in finished]})
        return 0
    print(f"run {run.id} ({args.project}/{args.run}), artifact {accepted.artifact.id} at step {args.step}"
          f"{' (already stored)' if accepted.deduplicated else ''}: evaluations {', '.join(map(str, ids))}")
    for ev in finished:
        print(f"  {ev.suite}: {ev.status}" + (f" — {ev.error.splitlines()[0]}" if ev.error else ""))
        for key in sorted(k for k in ev.metrics if "@d" not in k):
            print(f"    {key:<28} {ev.metrics[key]:.6g}")
    return 0 if all(e.status == "succeeded" for e in finished) else 1


def _progress_bar(total: int):  # noqa: ANN202
    def show(sent: int) -> None:
        frac = sent / total if total else 1.0
        bar = "#" * int(frac * 30)
        print(f"\ruploading [{bar:<30}] {frac:6.1%} {sent / 1e6:,.1f}/{total / 1e6:,.1f} MB", end="",
              file=sys.stderr, flush=True)

    return show


def cmd_runs(args: argparse.Namespace) -> int:
    from repscope.client import RepscopeError

    client = _client(args)
    try:
        page = client.runs(project=args.project, tag=args.tag, q=args.q, archived=args.archived, limit=args.limit,
                           offset=args.offset)
    except RepscopeError as exc:
        print(f"error: {exc.detail} (HTTP {exc.status_code})", file=sys.stderr)
        return 1
    if args.json:
        _print_json(page)
        return 0
    print(f"{page['total']} run(s)")
    for run in page["items"]:
        tags = f" [{', '.join(run['tags'])}]" if run["tags"] else ""
        archived = " (archived)" if run.get("archived") else ""
        print(f"{run['id']:>6}  {run['project']}/{run['name']}{tags}{archived}")
    return 0


def cmd_run_manage(args: argparse.Namespace) -> int:
    """`repscope run rename|notes|tags|archive|restore|delete RUN_ID ...` (write scope)."""
    from repscope.client import RepscopeError

    client = _client(args)
    action = args.run_command
    try:
        if action == "delete":
            if not args.yes:
                info = client.get_run(args.run_id)
                answer = input(f"delete run {info.id} ({info.project}/{info.name}) with its artifacts, evaluations "
                               "and metrics? This cannot be undone. [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    print("not deleted", file=sys.stderr)
                    return 1
            counts = client.delete_run(args.run_id)
            if args.json:
                _print_json(counts)
            else:
                print(f"deleted run {args.run_id}: {counts['artifacts']} artifact(s), {counts['evaluations']} "
                      f"evaluation(s), {counts['metrics']} metric value(s), {counts['files']} stored file(s)")
            return 0
        notes = (sys.stdin.read() if args.text == "-" else args.text) if action == "notes" else None
        fields = {"rename": {"name": getattr(args, "name", None)}, "notes": {"notes": notes},
                  "tags": {"tags": getattr(args, "tags", None)}, "archive": {"archived": True},
                  "restore": {"archived": False}}[action]
        run = client.update_run(args.run_id, **fields)
    except RepscopeError as exc:
        print(f"error: {exc.detail} (HTTP {exc.status_code})", file=sys.stderr)
        return 1
    if args.json:
        _print_json(run.model_dump(mode="json"))
    else:
        tags = f" [{', '.join(run.tags)}]" if run.tags else ""
        print(f"run {run.id}: {run.project}/{run.name}{tags}{' (archived)' if run.archived else ''}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Print a dataset's leaderboard (one row per run, Borda rank across the chosen metrics)."""
    client = _client(args)
    params: dict = {"pick": args.pick, "format": "csv" if args.csv else "json"}
    if args.metric:
        params["metric"] = args.metric
    if args.project:
        params["project"] = args.project
    if args.cross_project:
        params["scope"] = "all"
    response = client.http.get(f"/leaderboards/{args.dataset}", params=params)
    if not response.is_success:
        detail = response.json().get("detail", response.text)
        if isinstance(detail, dict):  # 409: the name is used by several projects
            detail = f"{detail.get('message')}; projects: {', '.join(detail.get('projects', []))}"
        print(f"error: {detail} (HTTP {response.status_code})", file=sys.stderr)
        return 1
    if args.csv:
        print(response.text, end="")
        return 0
    board = response.json()
    if args.json:
        _print_json(board)
        return 0
    if args.cross_project:
        for i, group in enumerate(board.get("boards", [])):
            verified = "" if group.get("verified") else " (unverified: name, N and classes only)"
            print(f"{chr(10) if i else ''}board {i + 1}: d={group.get('d')} · {group.get('label')}{verified} · "
                  f"projects {', '.join(group.get('projects', []))}")
            _print_board(group.get("board", {}))
        return 0
    _print_board(board)
    return 0


def _print_board(board: dict) -> None:
    """One leaderboard as aligned text columns."""
    metrics = board.get("metrics", [])
    header = ["#", "run", "step", *metrics, "borda"]
    rows = [[str(r.get("rank", i + 1)), f"{r.get('project')}/{r.get('run')}", str(r.get("step", "")),
             *[("—" if r.get("values", {}).get(m) is None else f"{r['values'][m]:.4g}") for m in metrics],
             f"{r.get('borda', 0):g}"] for i, r in enumerate(board.get("rows", []))]
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _queue_line(ev) -> str:  # noqa: ANN001 - an EvaluationRead
    """One evaluation's state as `cancel` / `retry` print it."""
    where = (f", position {ev.queue_position} in queue {ev.queue}" if ev.queue_position else "")
    return f"evaluation {ev.id} ({ev.suite}): {ev.status}{where}" + (f" — {ev.message}" if ev.message else "")


def cmd_queue_control(args: argparse.Namespace) -> int:
    """Cancel or retry evaluations by id (write scope); each is tried, refusals are reported and exit 1."""
    from repscope.client import RepscopeError

    client = _client(args)
    done, failed = [], 0
    for evaluation_id in args.ids:
        try:
            ev = client.cancel(evaluation_id) if args.command == "cancel" else client.retry(evaluation_id)
        except RepscopeError as exc:
            print(f"error: evaluation {evaluation_id}: {exc.detail} (HTTP {exc.status_code})", file=sys.stderr)
            failed += 1
            continue
        done.append(ev)
        if not args.json:
            print(_queue_line(ev))
    if args.json:
        _print_json([e.model_dump(mode="json") for e in done])
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Fill a running instance with a realistic demo project (real computed metrics)."""
    from repscope.demo import seed_demo

    summary = seed_demo(args.url, runs=args.runs, steps=args.steps, seed=args.seed,
                        log=None if args.json else (lambda msg: print(msg, file=sys.stderr)))
    if args.json:
        _print_json(summary)
    else:
        print(f"demo project {summary['project']!r}: {len(summary['runs'])} runs, "
              f"{summary['evaluations']} evaluations in {summary['seconds']:.0f} s — open {args.url}/projects/"
              f"{summary['project']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repscope", description="Measure how good a learned representation is, while it trains.",
        epilog="Settings come from REPSCOPE_* environment variables (see README); flags override them. Commands "
               "that talk to a server (upload, runs, leaderboard, cancel, retry, demo, token --url) send the API "
               "token in REPSCOPE_TOKEN.")
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
    worker.add_argument("--queues", help="comma list of queues to consume (default REPSCOPE_QUEUE); e.g. the "
                                         "REPSCOPE_LIGHT_QUEUE on a CPU-only worker")
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.set_defaults(func=cmd_worker)

    ev = sub.add_parser("eval", help="run suites locally on an embeddings file (no server) and print a table",
                        description="Evaluate a .npy/.npz/.safetensors/.pt embeddings file on this machine. "
                                    "Default suites: the same as an upload's — spectrum, plus probes when the file "
                                    "has labels and the backdoor pool scan when it has poison flags.")
    ev.add_argument("file", help="embeddings file")
    ev.add_argument("--suites", help=f"comma list of suites that run on embeddings ({', '.join(embedding_suites())})")
    ev.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    ev.add_argument("--all", action="store_true", help="also print the nested-prefix (Matryoshka) metrics")
    ev.add_argument("--json", action="store_true", help="print JSON (metrics, variant, warnings)")
    ev.add_argument("--figures", action="store_true", help="with --json: include the figure data")
    ev.set_defaults(func=cmd_eval)

    up = sub.add_parser("upload", help="upload an embeddings file or a checkpoint to a run, with a progress bar",
                        description="Get-or-create PROJECT/RUN on the server and upload FILE at STEP. A checkpoint "
                                    "is embedded on --dataset by a worker, then evaluated.")
    up.add_argument("file", help="embeddings file (.npy, .npz, .safetensors, .pt), or a checkpoint: TorchScript, "
                                 ".pt2, state_dict .pt/.pth, .safetensors, or a Hugging Face save_pretrained "
                                 "folder (zipped before the upload) or zip")
    up.add_argument("--kind", choices=["embeddings", "checkpoint"], help="default: checkpoint for a folder or when "
                                                                         "a checkpoint flag is given, else embeddings")
    up.add_argument("--project", required=True)
    up.add_argument("--run", required=True, help="run name")
    up.add_argument("--step", type=int, default=0, help="training step (default 0)")
    up.add_argument("--dataset", help="embeddings: the dataset they were computed on; checkpoint: the dataset to "
                                      "embed (default digits)")
    up.add_argument("--suites", help="comma list; default: every suite the file allows")
    up.add_argument("--wait", action="store_true", help="wait for the evaluations and print their metrics")
    up.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait (default 600)")
    up.add_argument("--json", action="store_true", help="print JSON")
    up.add_argument("--url", default=os.environ.get("REPSCOPE_URL", "http://127.0.0.1:8000"),
                    help="server URL (default $REPSCOPE_URL or http://127.0.0.1:8000)")
    add_cli_arguments(up)
    up.set_defaults(func=cmd_upload)

    runs = sub.add_parser("runs", help="list runs on the server")
    runs.add_argument("--project")
    runs.add_argument("--tag")
    runs.add_argument("-q", help="substring of the run name")
    runs.add_argument("--archived", choices=["false", "true", "all"], default="false",
                      help="false: live runs only (default); true: archived runs only; all: both")
    runs.add_argument("--limit", type=int, default=50)
    runs.add_argument("--offset", type=int, default=0)
    runs.add_argument("--json", action="store_true", help="print JSON")
    runs.add_argument("--url", default=os.environ.get("REPSCOPE_URL", "http://127.0.0.1:8000"),
                      help="server URL (default $REPSCOPE_URL or http://127.0.0.1:8000)")
    runs.set_defaults(func=cmd_runs)

    url_help = "server URL (default $REPSCOPE_URL or http://127.0.0.1:8000)"
    default_url = os.environ.get("REPSCOPE_URL", "http://127.0.0.1:8000")
    run = sub.add_parser("run", help="rename, annotate, tag, archive or delete a run (write scope)",
                         description="Change one run by id (see `repscope runs`; needs a token with the write "
                                     "scope). An archived run is hidden from listings and its project page unless "
                                     "asked for (`repscope runs --archived all`); `restore` brings it back.")
    run_sub = run.add_subparsers(dest="run_command", required=True)
    helps = {"rename": "give the run another name (refused when the project already has a run of that name)",
             "notes": "replace the run's notes (free text; '' clears them, '-' reads them from stdin)",
             "tags": "replace the run's tags with these (none: no tags)",
             "archive": "archive the run: hidden from listings by default, nothing is deleted",
             "restore": "un-archive the run",
             "delete": "delete the run with its artifacts, evaluations and metrics (its queued and running "
                       "evaluations are cancelled first; stored files no other run shares are removed). Asks "
                       "first unless --yes; cannot be undone"}
    for action, text in helps.items():
        p = run_sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("run_id", type=int, metavar="RUN_ID", help="run id")
        if action == "rename":
            p.add_argument("name", help="the new name")
        elif action == "notes":
            p.add_argument("text", help="the notes ('-': read from stdin)")
        elif action == "tags":
            p.add_argument("tags", nargs="*", metavar="TAG")
        elif action == "delete":
            p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--url", default=default_url, help=url_help)
        p.set_defaults(func=cmd_run_manage)

    lb = sub.add_parser("leaderboard", help="print a dataset's leaderboard",
                        description="One row per run evaluated on DATASET, ranked by Borda count across the "
                                    "metrics (per metric, one point per run beaten).")
    lb.add_argument("dataset", help="dataset name ('-' for embeddings uploaded without one)")
    lb.add_argument("--metric", action="append", help="a metric column (repeat); default rankme, linear_top1, "
                                                      "knn20_top1 where present")
    lb.add_argument("--pick", choices=["last", "best"], default="last", help="per run: last step or best step")
    lb.add_argument("--project", help="this project's runs (default: the only project using the name; an "
                                      "error lists the projects when several do)")
    lb.add_argument("--cross-project", action="store_true",
                    help="across projects: one board per (dataset identity, embedding dimension d)")
    lb.add_argument("--csv", action="store_true", help="print CSV")
    lb.add_argument("--json", action="store_true", help="print JSON")
    lb.add_argument("--url", default=default_url, help=url_help)
    lb.set_defaults(func=cmd_leaderboard)

    cancel = sub.add_parser("cancel", help="cancel queued or running evaluations on the server",
                            description="Cancel evaluations by id (needs a token with the write scope). A queued "
                                        "evaluation is taken out of the queue: no worker will run it. A running "
                                        "one is stopped by its worker at the suite's next progress report "
                                        "(cooperative: a step that reports no progress runs to its end first); "
                                        "the worker then takes its next job. Cancelling a cancelled evaluation "
                                        "changes nothing; a succeeded or failed one is refused (exit 1). "
                                        "`repscope retry` queues it again.")
    cancel.add_argument("ids", type=int, nargs="+", metavar="ID", help="evaluation id")
    cancel.add_argument("--json", action="store_true", help="print the evaluations as JSON")
    cancel.add_argument("--url", default=default_url, help=url_help)
    cancel.set_defaults(func=cmd_queue_control)

    retry = sub.add_parser("retry", help="queue failed or cancelled evaluations again",
                           description="Queue failed or cancelled evaluations again from scratch (needs a token "
                                       "with the write scope): attempts, error and any result are cleared and the "
                                       "evaluation goes to the back of its queue; prints its queue position. A "
                                       "queued, running or succeeded evaluation is refused (exit 1).")
    retry.add_argument("ids", type=int, nargs="+", metavar="ID", help="evaluation id")
    retry.add_argument("--json", action="store_true", help="print the evaluations as JSON")
    retry.add_argument("--url", default=default_url, help=url_help)
    retry.set_defaults(func=cmd_queue_control)

    demo = sub.add_parser("demo", help="fill a running instance with a demo project (real computed metrics)",
                          description="Log several runs x steps of generated, labelled embeddings whose spectrum "
                                      "and class separation change with training, and wait for the worker.")
    demo.add_argument("--runs", type=int, default=4)
    demo.add_argument("--steps", type=int, default=6)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--json", action="store_true", help="print JSON")
    demo.add_argument("--url", default=default_url, help=url_help)
    demo.set_defaults(func=cmd_demo)

    from repscope.cli_tokens import add_parser as add_token_parser

    add_token_parser(sub)

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
