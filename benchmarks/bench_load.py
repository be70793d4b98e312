"""Load test on loopback: simulated training jobs logging metrics and small embeddings to the cluster shape.

Starts the cluster shape from DESIGN.md on this machine: a fresh PostgreSQL database (on
$REPSCOPE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432/postgres; dropped at the end), Redis
($REPSCOPE_TEST_REDIS, default redis://127.0.0.1:6379/0) with a queue of its own, the API as a real uvicorn
process (`--workers 2` by default) and one real Celery worker process (solo pool). The API starts with random
admin and worker secrets; one write token per simulated job is created through POST /api/v1/tokens, as a
lab would (the per-token rate limit keeps its default).

Then `--users` training jobs (locust, benchmarks/load_jobs.py, in a process of its own) run for `--duration`
seconds: each gets-or-creates its run, logs loss + lr once a second, uploads a 256 x 64 float32 .npy with
suites=spectrum every ~10 s and reads its loss curve back every ~30 s.

Measures: requests, throughput, p50 / p95 / p99 / max latency per request type and overall, errors; then how
long the worker needs to finish every evaluation queued during the load (and how many succeeded / failed),
and the server-side counts (metric rows and artifacts per run against what each job had accepted).
Bar: 0 errors, every evaluation succeeded, every count matches; the script exits non-zero otherwise.

Usage: python -m benchmarks.bench_load [--users 50] [--duration 120] [--api-workers 2] [--db-pool-size S]
       [--db-max-overflow O] [--no-write] [--json F]
Needs the server and worker extras, the bench extra (locust), and PostgreSQL and Redis running.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import machine, write_section
from repscope.settings import Settings
from repscope.testing import PG_ADMIN_URL, REDIS_URL, Proc, free_port, services_problem

ROOT = Path(__file__).resolve().parents[1]
FINISHED = ("succeeded", "failed", "cancelled")


# ---- processes ---------------------------------------------------------------------------------------------
def wait_until(check, what: str, proc: Proc, timeout: float) -> None:  # noqa: ANN001
    """Poll check() until it is true; fail when `proc` exits first or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode} before {what}\n{proc.log_tail()}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{what}: not after {timeout} s\n{proc.log_tail()}")


# ---- services ----------------------------------------------------------------------------------------------
def service_versions() -> str:
    import psycopg
    import redis

    with psycopg.connect(PG_ADMIN_URL) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    rd = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    return f"PostgreSQL {pg}, Redis {rd}"


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database (its plain libpq URL), dropped on the way out."""
    import psycopg

    name = f"repscope_load_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def forget_queue(queue: str) -> None:
    """Remove what kombu keeps in Redis for our queue: the list itself and its bindings."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = [queue, *client.scan_iter(match=f"_kombu.binding*.{queue}")]
    client.delete(*keys)


@dataclass
class Cluster:
    url: str
    db_url: str  # libpq URL of the database, for server-side counts
    admin_token: str
    api_workers: int
    pool: tuple[int, int]  # PostgreSQL pool per API process: (size, max overflow)
    procs: list[Proc] = field(default_factory=list)

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def logs(self) -> str:
        return "\n".join(p.log_tail() for p in self.procs)

    def roots(self, **more: int) -> dict[str, int]:
        """Process ids whose trees make up each component, for cpu_shares."""
        return {**{f"API (uvicorn --workers {self.api_workers})" if p.name == "api" else "Celery worker": p.proc.pid
                   for p in self.procs}, **more}


@contextmanager
def cluster(work: Path, api_workers: int, pool: tuple[int, int]) -> Iterator[Cluster]:
    """PostgreSQL database + Redis queue + uvicorn API (`api_workers` processes, each with a pool of
    `pool` = (size, max overflow) connections) + one Celery worker."""
    from backend.migrate import upgrade
    from repscope.cli import worker_command

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    queue = f"repscope-load-{uuid.uuid4().hex[:8]}"
    admin_token, worker_token = f"rs_{secrets.token_urlsafe(24)}", f"rs_{secrets.token_urlsafe(24)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPSCOPE_")}
    with fresh_database() as db_url:
        sa_url = db_url.replace("postgresql://", "postgresql+psycopg://", 1)
        env.update({"REPSCOPE_DATA_DIR": str(work / "data"), "REPSCOPE_API_URL": url, "PYTHONUNBUFFERED": "1",
                    "REPSCOPE_DATABASE_URL": sa_url, "REPSCOPE_BROKER_URL": REDIS_URL, "REPSCOPE_QUEUE": queue,
                    "REPSCOPE_WORKER_TOKEN": worker_token, "REPSCOPE_DB_POOL_SIZE": str(pool[0]),
                    "REPSCOPE_DB_MAX_OVERFLOW": str(pool[1])})
        upgrade(sa_url)  # once, before the API processes start (they would race on a fresh database)
        api_cmd = [sys.executable, "-m", "uvicorn", "--factory", "backend.app:create_app", "--host", "127.0.0.1",
                   "--port", str(port), "--workers", str(api_workers), "--log-level", "warning"]
        c = Cluster(url, db_url, admin_token, api_workers, pool)
        try:
            c.procs.append(Proc("api", api_cmd, {**env, "REPSCOPE_ADMIN_TOKEN": admin_token}, work))
            wait_until(lambda: httpx.get(f"{url}/api/v1/health", timeout=2).json()["status"] == "ok",
                       "the API is healthy", c.procs[0], timeout=90)
            worker = Proc("worker", worker_command(queue, f"load-{uuid.uuid4().hex[:6]}@%h"), env, work)
            c.procs.append(worker)
            wait_until(lambda: " ready." in worker.log_path.read_text(errors="replace"), "the worker is ready",
                       worker, timeout=120)
            yield c
        finally:
            for proc in reversed(c.procs):
                proc.stop()
            forget_queue(queue)


def make_tokens(c: Cluster, n: int) -> list[str]:
    """One write token per simulated job, created with the admin token."""
    tokens = []
    with httpx.Client(base_url=c.url, headers=c.admin, timeout=30) as client:
        for i in range(n):
            r = client.post("/api/v1/tokens", json={"name": f"load-job-{i:03d}", "scopes": ["write"]})
            r.raise_for_status()
            tokens.append(r.json()["token"])
    return tokens


# ---- where the CPU went (Linux /proc) ----------------------------------------------------------------------
@dataclass
class CpuSnapshot:
    at: float  # time.monotonic()
    busy: float  # machine-wide busy CPU seconds (all cores)
    procs: dict[int, tuple[int, str, float, float]]  # pid -> (ppid, name, own CPU s, CPU s of reaped children)


def cpu_snapshot() -> CpuSnapshot | None:
    """Machine busy time from /proc/stat and every process's CPU time; None where /proc is not Linux's."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / tick  # all but idle and iowait (guest is in user)
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        f = raw[raw.rindex(")") + 2:].split()
        procs[int(d.name)] = (int(f[1]), raw[raw.index("(") + 1:raw.rindex(")")], (int(f[11]) + int(f[12])) / tick,
                              (int(f[13]) + int(f[14])) / tick)
    return CpuSnapshot(time.monotonic(), busy, procs)


def _tree(procs: dict[int, tuple[int, str, float, float]], root: int) -> set[int]:
    pids, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, (ppid, *_) in procs.items() if ppid == parent and p not in pids]
        pids.update(kids)
        frontier.extend(kids)
    return pids & procs.keys()


def cpu_shares(a: CpuSnapshot | None, b: CpuSnapshot | None, roots: dict[str, int]) -> dict[str, float | str]:
    """Average cores used between two snapshots by each process tree in `roots` (with the children they reaped:
    bench_load, last, is left with itself and locust), by PostgreSQL (every backend, whichever database it
    served, and the ones that exited) and Redis, and by everything else on the machine ("other processes": busy
    time less all that, with the busiest of them named)."""
    if a is None or b is None or b.at <= a.at:
        return {}
    groups: dict[str, set[int]] = {}
    for name, pid in roots.items():  # in order: a later root's tree leaves out what an earlier one took
        groups[name] = _tree(b.procs, pid) - set().union(*groups.values())
    services = {name: {p for p, (_, comm, *_) in b.procs.items() if comm.startswith(prefix)}
                for name, prefix in (("PostgreSQL", "postgres"), ("Redis", "redis"))}
    span = b.at - a.at
    zero = (0, "", 0.0, 0.0)
    used = {p: (b.procs[p][2] - a.procs.get(p, zero)[2]) / span for p in b.procs}
    reaped = {p: (b.procs[p][3] - a.procs.get(p, zero)[3]) / span for p in b.procs}
    shares: dict[str, float | str] = {name: sum(used[p] + reaped[p] for p in pids) for name, pids in groups.items()}
    # PostgreSQL with the backends its postmaster reaped: a connection opened and closed under load is work too
    shares["PostgreSQL"] = sum(used[p] + reaped[p] for p in services["PostgreSQL"])
    shares["Redis"] = sum(used[p] for p in services["Redis"])
    groups.update(services)
    shares["other processes"] = max(0.0, (b.busy - a.busy) / span - sum(shares.values()))
    mine = set().union(*groups.values())
    top = sorted((p for p in used if p not in mine and used[p] >= 0.02), key=used.get, reverse=True)[:3]
    shares["busiest other"] = ", ".join(f"{_cmdline(p, b.procs[p][1])} {used[p]:.2f}" for p in top) or "none"
    return shares


def _cmdline(pid: int, comm: str) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"`{comm}`"
    return "`" + (" ".join(a.decode(errors="replace") for a in args if a)[:70] or comm) + "`"


def cpu_line(shares: dict[str, float | str]) -> str:
    if not shares:
        return "not measured"
    cores = ", ".join(f"{name} {v:.2f}" for name, v in shares.items() if isinstance(v, float))
    return f"{cores} (of {os.cpu_count()} cores; busiest other: {shares['busiest other']})"


# ---- the load, the backlog, the counts ---------------------------------------------------------------------
def run_jobs(c: Cluster, tokens: list[str], users: int, duration: float, work: Path) -> dict:
    """benchmarks.load_jobs in its own process (locust monkey-patches the standard library); its JSON."""
    tokens_file, out = work / "tokens.json", work / "load.json"
    tokens_file.write_text(json.dumps(tokens))
    cmd = [sys.executable, "-m", "benchmarks.load_jobs", "--host", c.url, "--tokens", str(tokens_file),
           "--users", str(users), "--duration", str(duration), "--out", str(out)]
    before, sessions = cpu_snapshot(), pg_sessions(c.db_url)
    with (work / "locust.log").open("wb") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=duration + 300).returncode
    after, sessions = cpu_snapshot(), pg_sessions(c.db_url) - sessions - 1  # less the look-up itself
    if rc != 0 or not out.exists():
        tail = "\n".join((work / "locust.log").read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"load_jobs exited with {rc}\n{tail}")
    load = json.loads(out.read_text())
    load["cpu"] = cpu_shares(before, after, c.roots(**{"locust + bench_load": os.getpid()}))
    load["pg_sessions"] = sessions
    return load


def pg_sessions(db_url: str) -> int:
    """Sessions (connections) PostgreSQL has opened to this database so far (pg_stat_database, PostgreSQL 14+)."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        return int(conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
                   .fetchone()[0])


def evaluation_states(db_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(db_url) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM evaluations GROUP BY status").fetchall())


@dataclass
class Backlog:
    drain_s: float  # from the end of the load until no evaluation was queued or running
    states: dict[str, int]
    at_load_end: int  # evaluations queued or running when the load stopped
    latency_s: list[float]  # per evaluation: created (upload) -> finished
    service_s: list[float]  # per evaluation: started (claimed by the worker) -> finished
    cpu: dict[str, float]  # average cores per component while draining


def drain(db_url: str, timeout: float, roots: dict[str, int]) -> Backlog:
    """Wait until every evaluation has finished (or `timeout`); how long it took and how they ended."""
    import psycopg

    t0, before = time.monotonic(), cpu_snapshot()
    states = evaluation_states(db_url)
    at_end = sum(n for s, n in states.items() if s not in FINISHED)
    while sum(n for s, n in states.items() if s not in FINISHED) and time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        states = evaluation_states(db_url)
    drain_s, after = time.monotonic() - t0, cpu_snapshot()
    with psycopg.connect(db_url) as conn:
        rows = conn.execute("SELECT extract(epoch FROM finished_at - created_at), "
                            "extract(epoch FROM finished_at - started_at) FROM evaluations "
                            "WHERE finished_at IS NOT NULL").fetchall()
    return Backlog(drain_s, states, at_end, [float(r[0]) for r in rows], [float(r[1]) for r in rows if r[1] is not None],
                   cpu_shares(before, after, roots))


def count_problems(db_url: str, jobs: list[dict]) -> list[str]:
    """Server-side rows against what each job had accepted: 2 logged metric rows per accepted post, one
    artifact and one evaluation per accepted upload, the evaluation ids the uploads returned."""
    import psycopg

    with psycopg.connect(db_url) as conn:
        metric_rows = dict(conn.execute("SELECT run_id, count(*) FROM metrics WHERE evaluation_id IS NULL "
                                        "GROUP BY run_id").fetchall())
        artifacts = dict(conn.execute("SELECT run_id, count(*) FROM artifacts GROUP BY run_id").fetchall())
        evaluations = {r[0] for r in conn.execute("SELECT id FROM evaluations").fetchall()}
    problems = []
    for job in jobs:
        run = job["run_id"]
        if metric_rows.get(run, 0) != 2 * job["metric_posts_accepted"]:
            problems.append(f"run {run}: {metric_rows.get(run, 0)} metric rows, "
                            f"{job['metric_posts_accepted']} accepted posts of 2 scalars")
        if artifacts.get(run, 0) != job["uploads_accepted"]:
            problems.append(f"run {run}: {artifacts.get(run, 0)} artifacts, {job['uploads_accepted']} accepted uploads")
    returned = {i for job in jobs for i in job["evaluation_ids"]}
    if returned != evaluations:
        problems.append(f"{len(evaluations)} evaluations stored, {len(returned)} returned by the uploads")
    return problems


# ---- report ------------------------------------------------------------------------------------------------
def latency_row(name: str, requests: list[dict], wall: float) -> str:
    ms = np.array([r["ms"] for r in requests], dtype=float)
    errors = sum(not r["ok"] for r in requests)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if len(ms) else (float("nan"),) * 3
    return (f"| {name} | {len(ms)} | {len(ms) / wall:.1f} | {p50:.1f} | {p95:.1f} | {p99:.1f} | "
            f"{ms.max() if len(ms) else float('nan'):.1f} | {errors} |")


def latency_table(load: dict) -> str:
    wall, reqs = load["wall_s"], load["requests"]
    rows = ["| request | count | req/s | p50 ms | p95 ms | p99 ms | max ms | errors |",
            "|---|---|---|---|---|---|---|---|"]
    names = sorted({r["name"] for r in reqs}, key=lambda n: -sum(r["name"] == n for r in reqs))
    for name in names:
        rows.append(latency_row(f"`{name}`", [r for r in reqs if r["name"] == name], wall))
    rows.append(latency_row("**all**", reqs, wall))
    return "\n".join(rows)


def summarize(load: dict, backlog: Backlog, problems: list[str]) -> dict:
    jobs = load["jobs"]
    return {"users": load["users"], "duration_s": load["duration_s"], "wall_s": load["wall_s"],
            "requests": len(load["requests"]), "throughput_rps": len(load["requests"]) / load["wall_s"],
            "errors": sum(not r["ok"] for r in load["requests"]),
            "error_samples": sorted({f"{r['name']}: {r['error']}" for r in load["requests"] if not r["ok"]})[:10],
            "metric_posts_accepted": sum(j["metric_posts_accepted"] for j in jobs),
            "uploads_accepted": sum(j["uploads_accepted"] for j in jobs),
            "evaluations": {**backlog.states, "at_load_end": backlog.at_load_end},
            "drain_s": backlog.drain_s, "count_problems": problems,
            "evaluation_latency_s": backlog.latency_s, "evaluation_service_s": backlog.service_s,
            "locust_cpu_warning": load["cpu_warning"], "pg_sessions_during_load": load["pg_sessions"], "cpu_load": load["cpu"], "cpu_drain": backlog.cpu}


def report(c: Cluster, load: dict, backlog: Backlog, summary: dict, loadavg: str,
           versions: str) -> str:
    lat = np.array(backlog.latency_s or [float("nan")])
    service = np.array(backlog.service_s or [float("nan")])
    states = ", ".join(f"{n} {s}" for s, n in sorted(backlog.states.items()))
    counts = "all match" if not summary["count_problems"] else "; ".join(summary["count_problems"][:5])
    return (
        f"## Load test on loopback (cluster shape)\n\n"
        f"Machine: {machine()}; load average before the run {loadavg}. {time.strftime('%Y-%m-%d')}.\n\n"
        f"{summary['users']} simulated training jobs (locust FastHttpUser, one write token each) for "
        f"{summary['duration_s']:.0f} s against the API as `uvicorn --workers {c.api_workers}` (database pool per process: "
        f"{c.pool[0]} + {c.pool[1]} overflow), {versions}, one "
        f"Celery worker (solo pool, CPU), all on this machine together with locust. Each job: get-or-create its "
        f"run, log loss + lr once a second, upload a 256 x 64 float32 .npy (suites=spectrum, Idempotency-Key) "
        f"every ~10 s, read its loss curve back every ~30 s.\n\n"
        f"{latency_table(load)}\n\n"
        f"Total {summary['requests']} requests in {summary['wall_s']:.1f} s: **{summary['throughput_rps']:.1f} req/s**, "
        f"**{summary['errors']} errors**. CPU during the load, average cores: {cpu_line(load['cpu'])}. "
        f"PostgreSQL sessions opened to the database during the load: {load['pg_sessions']}.\n\n"
        f"Evaluations: {sum(backlog.states.values())} queued during the load ({states}); {backlog.at_load_end} "
        f"were still queued or running when the load stopped and the worker drained them in "
        f"**{backlog.drain_s:.1f} s**. Per evaluation on the worker (claimed -> result stored): p50 "
        f"{np.nanpercentile(service, 50):.2f} s; upload -> finished: p50 {np.nanpercentile(lat, 50):.1f} s, "
        f"p95 {np.nanpercentile(lat, 95):.1f} s, max {np.nanmax(lat):.1f} s. CPU while draining, average cores: "
        f"{cpu_line(backlog.cpu)}.\n\n"
        f"Server-side counts (metric rows per run = 2 x accepted posts, artifacts per run = accepted uploads, "
        f"evaluation ids): {counts}."
    )


def verdict(summary: dict, timed_out: bool) -> list[str]:
    """What makes the run fail: errors, evaluations unfinished or failed, counts that do not match."""
    bad = []
    if summary["errors"]:
        bad.append(f"{summary['errors']} request errors, e.g. {summary['error_samples'][:3]}")
    if timed_out:
        bad.append("the worker did not drain the backlog in time")
    failed = sum(n for s, n in summary["evaluations"].items() if s not in ("succeeded", "at_load_end"))
    if failed:
        bad.append(f"{failed} evaluations did not succeed: {summary['evaluations']}")
    if not summary["uploads_accepted"]:
        bad.append("no upload was accepted")
    return bad + summary["count_problems"]


def main(argv: list[str], *, skip_without_services: bool = False) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_load", description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=50, help="simulated training jobs")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    pool_fields = Settings.model_fields
    parser.add_argument("--db-pool-size", type=int, default=pool_fields["db_pool_size"].default,
                        help="REPSCOPE_DB_POOL_SIZE of the API (default: the server's)")
    parser.add_argument("--db-max-overflow", type=int, default=pool_fields["db_max_overflow"].default,
                        help="REPSCOPE_DB_MAX_OVERFLOW of the API (default: the server's)")
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="seconds to wait for the worker")
    parser.add_argument("--no-write", action="store_true", help="do not write benchmarks/RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    args = parser.parse_args(argv)
    problem = services_problem()
    if problem:
        if skip_without_services:
            print(f"bench_load skipped: {problem}")
            return
        raise SystemExit(f"bench_load needs PostgreSQL and Redis: {problem}")
    loadavg = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    pool = (args.db_pool_size, args.db_max_overflow)
    with tempfile.TemporaryDirectory(prefix="repscope-load-") as tmp, cluster(Path(tmp), args.api_workers, pool) as c:
        try:
            tokens = make_tokens(c, args.users)
            load = run_jobs(c, tokens, args.users, args.duration, Path(tmp))
            backlog = drain(c.db_url, args.drain_timeout, c.roots(**{"bench_load": os.getpid()}))
            problems = count_problems(c.db_url, load["jobs"])
        except Exception:
            print(c.logs(), file=sys.stderr)
            raise
        summary = summarize(load, backlog, problems)
        text = report(c, load, backlog, summary, loadavg, service_versions())
        timed_out = any(s not in FINISHED for s in backlog.states)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    bad = verdict(summary, timed_out)
    if not args.no_write and not bad:
        write_section("load", text)
    if bad:
        raise SystemExit("bench_load FAILED: " + "; ".join(bad))


if __name__ == "__main__":
    main(sys.argv[1:])
