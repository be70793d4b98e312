"""The model sandbox, for real (bubblewrap on this kernel): what a payload inside can and cannot reach, and that a
legitimate encoder gives the same embeddings there as in-process."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from repscope.settings import Settings
from repscope.testing import ROOT
from worker.embed import embed
from worker.models.cifar import resnet18_cifar
from worker.models.loading import CheckpointError, load_encoder
from worker.sandbox import EncoderJob, SandboxError, bwrap, check_at_start, probe, run_job
from worker.sandbox.runner import read_array, read_json

SECRET = "rs_admin-secret-4f1c9e"


@pytest.fixture
def layout(tmp_path):
    """A fake data dir with an admin token, and the input / scratch dirs of one job."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin-token").write_text(SECRET)
    (data / "secret_key").write_text(SECRET)
    inputs, scratch = tmp_path / "input", tmp_path / "scratch"
    inputs.mkdir()
    scratch.mkdir()
    (inputs / "images.npy").write_bytes(b"not really images")
    return data, inputs, scratch


def in_sandbox(code: str, layout, **kw) -> dict:
    """Run Python `code` (which fills a dict `out`) in the sandbox; returns `out`."""
    data, inputs, scratch = layout
    script = "import json, os, sys\nout = {}\n" + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
    argv = bwrap.command([sys.executable, "-c", script], inputs=inputs, scratch=scratch, hidden=(data,), **kw)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def attempt(expr: str) -> str:
    """Code that records in out[name] 'ok:<result>' or the exception class of `expr`."""
    return f"""
try:
    _r = {expr}
    out[{expr!r}] = "ok:" + str(_r)[:200]
except Exception as e:
    out[{expr!r}] = type(e).__name__
"""


def test_payload_cannot_read_the_data_dir_or_the_repo(layout):
    data, _, _ = layout
    token = data / "admin-token"
    assert token.read_text() == SECRET  # the host sees it
    paths = [token, data / "secret_key", ROOT / "pyproject.toml", Path.home() / ".bashrc", "/etc/shadow"]
    code = "".join(attempt(f"open({str(p)!r}).read()") for p in paths)
    code += attempt("os.listdir('/')") + attempt("open('/input/images.npy').read()")
    out = in_sandbox(code, layout)
    for p in paths:
        assert out[f"open({str(p)!r}).read()"] in ("FileNotFoundError", "PermissionError"), p
    assert SECRET not in json.dumps(out)
    assert out["open('/input/images.npy').read()"] == "ok:not really images"  # its own inputs, read-only
    top = set(eval(out["os.listdir('/')"][3:]))  # noqa: S307 - our own repr of a list of names
    assert {"usr", "proc", "dev", "tmp", "input", "scratch"} <= top and "data" not in top and "home" not in top


def test_payload_writes_only_to_scratch(layout, tmp_path):
    data, inputs, scratch = layout
    host_tmp = Path("/tmp") / f"repscope-sandbox-probe-{os.getpid()}"
    targets = [data / "planted", tmp_path / "planted", inputs / "planted", ROOT / "worker" / "planted",
               Path(sys.prefix) / "planted", Path("/usr/planted")]
    code = "".join(attempt(f"open({str(p)!r}, 'w').write('x')") for p in targets)
    code += attempt("open('/scratch/result.txt', 'w').write('x')") + attempt(f"open({str(host_tmp)!r}, 'w').write('x')")
    out = in_sandbox(code, layout)
    for p in targets:
        assert out[f"open({str(p)!r}, 'w').write('x')"] in ("FileNotFoundError", "OSError", "PermissionError"), p
        assert not Path(p).exists(), p
    assert out["open('/scratch/result.txt', 'w').write('x')"] == "ok:1"
    assert (scratch / "result.txt").read_text() == "x"
    assert out[f"open({str(host_tmp)!r}, 'w').write('x')"] == "ok:1"  # /tmp is a private tmpfs ...
    assert not host_tmp.exists()  # ... not the host's /tmp


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def test_payload_has_no_network_and_no_secrets_in_its_environment(layout, monkeypatch):
    monkeypatch.setenv("REPSCOPE_ADMIN_TOKEN", SECRET)
    monkeypatch.setenv("REPSCOPE_DATABASE_URL", f"postgresql://u:{SECRET}@127.0.0.1/db")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code = "".join(attempt(f"__import__('socket').create_connection(('127.0.0.1', {p}), timeout=3)")
                   for p in (5432, 6379))
    code += "out['env'] = dict(os.environ)\n"
    code += attempt("__import__('socket').getaddrinfo('pypi.org', 443)")
    code += "out['status'] = open('/proc/self/status').read()\nout['pids'] = [p for p in os.listdir('/proc') if p.isdigit()]\n"
    code += attempt("__import__('ctypes').CDLL(None).unshare(0x10000000)")  # CLONE_NEWUSER
    out = in_sandbox(code, layout)
    for port in (5432, 6379):
        result = out[f"__import__('socket').create_connection(('127.0.0.1', {port}), timeout=3)"]
        assert result in ("ConnectionRefusedError", "OSError"), result  # nothing listens in its own netns
    if _reachable(5432) and _reachable(6379):  # the host's PostgreSQL and Redis are up: the sandbox is why
        print("host reaches PostgreSQL and Redis; the sandbox does not")
    assert out["__import__('socket').getaddrinfo('pypi.org', 443)"] == "gaierror"
    env = out["env"]
    assert not [k for k in env if k.startswith("REPSCOPE_")] and SECRET not in json.dumps(env)
    assert env["HOME"] == "/tmp" and env["OMP_NUM_THREADS"] == "1"
    caps = {line.split(":")[0]: line.split()[1] for line in out["status"].splitlines() if line.startswith("Cap")}
    assert caps["CapEff"] == caps["CapPrm"] == "0000000000000000"
    assert f"Uid:\t{bwrap.SANDBOX_UID}" in out["status"]
    assert len(out["pids"]) <= 3  # its own pid namespace: bwrap's init, python (and nothing of the host)
    assert out["__import__('ctypes').CDLL(None).unshare(0x10000000)"] == "ok:-1"  # no nested user namespaces


def test_a_bind_that_would_show_the_data_dir_is_refused(tmp_path):
    with pytest.raises(SandboxError, match="would show"):
        bwrap.command(["true"], hidden=(Path(sys.prefix) / "data",))
    with pytest.raises(SandboxError, match="would show"):
        bwrap.command(["true"], hidden=(ROOT / "worker" / "cache",))
    probe(Settings(data_dir=tmp_path / "data"))  # the usual layout starts


def test_the_private_tmp_is_mounted_before_the_python_and_source_binds():
    """bwrap mounts in order: a tmpfs on /tmp after the binds would hide a venv or checkout under /tmp (CI clones
    live there; the sandbox then could not even start Python)."""
    cmd = bwrap.command(["true"])
    tmpfs = cmd.index("--tmpfs")
    bound = [i for i, arg in enumerate(cmd) if arg == "--ro-bind" and cmd[i + 1] in
             {str(p) for p in bwrap.python_dirs() + bwrap.package_dirs()}]
    assert bound and tmpfs < min(bound)


def test_the_kernel_refusing_namespaces_stops_the_worker_naming_the_opt_out(layout):
    """Inside a sandbox (no nested user namespaces: a kernel that refuses them), the worker's start-up check and
    `repscope serve` exit with an error that says what the kernel refused and names REPSCOPE_SANDBOX=off."""
    data, inputs, scratch = layout
    worker = "from worker.celery_app import check_sandbox\ncheck_sandbox()\n"
    serve = "import sys\nfrom repscope.cli import main\nsys.exit(main(['serve', '--data-dir', '/scratch/data']))\n"
    for code in (serve, worker):
        argv = bwrap.command([sys.executable, "-c", code], inputs=inputs, scratch=scratch, hidden=(data,))
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
        assert done.returncode == 3, done.stderr
        assert "REPSCOPE_SANDBOX=off" in done.stderr and "cannot start" in done.stderr
        if code is serve:
            assert not (scratch / "data").exists()  # serve stopped before creating anything


def test_opting_out_is_logged_and_skips_the_probe(caplog):
    with caplog.at_level(logging.WARNING, logger="worker.sandbox"):
        assert check_at_start(Settings(sandbox="off")) == "off"
    assert "WITHOUT a sandbox" in caplog.text
    assert check_at_start(Settings()) == "bwrap"


def test_compose_workers_can_create_the_sandbox():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    workers = [name for name in compose if name.startswith("worker")]
    assert workers
    for name in workers:
        assert {"seccomp=unconfined", "apparmor=unconfined"} <= set(compose[name]["security_opt"]), name
        assert "privileged" not in compose[name] and "cap_add" not in compose[name]
    assert "security_opt" not in compose["api"]  # only the workers run model code


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    path = tmp_path_factory.mktemp("enc") / "r18.pt"
    torch.jit.save(torch.jit.script(model), path)
    return path


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["bwrap", "off"])
def test_sandboxed_embeddings_equal_in_process_ones_exactly(encoder_file, images, mode):
    seen: list[tuple[float, str]] = []
    job = EncoderJob(task="embed", views=2, seed=0, threads=torch.get_num_threads())
    out = run_job(job, encoder_file, images, mode=mode, progress=lambda f, m: seen.append((f, m)))
    loaded = load_encoder(encoder_file)
    np.testing.assert_array_equal(out.arrays["embeddings"], embed(loaded, images, device="cpu"))
    np.testing.assert_array_equal(out.arrays["views"], embed(loaded, images, device="cpu", views=2, seed=0))
    assert out.mode == mode and out.report["format"] == "torchscript"
    assert out.report["load_report"]["loaded"] == list(loaded.report.loaded)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.9 and "embedded 40/40 images" in seen[-2][1]


def test_child_errors_come_back_as_one_line(tmp_path, images):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        run_job(EncoderJob(task="embed"), junk, images, progress=lambda f, m: None)


def test_the_time_limit_kills_the_child(encoder_file, images):
    class Stop(RuntimeError):
        pass

    def progress(fraction: float, message: str) -> None:
        raise Stop("time limit")

    with pytest.raises(Stop):
        run_job(EncoderJob(task="embed"), encoder_file, images, progress=progress)
    assert _children() == set()  # no bwrap or python left behind


def _children() -> set[int]:
    """Every live descendant of this process (bwrap, its init, the sandboxed python...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def test_outputs_are_read_as_untrusted_files(tmp_path):
    secret = tmp_path / "host-secret.json"
    secret.write_text(json.dumps({"token": SECRET}))
    (tmp_path / "report.json").symlink_to(secret)  # what a child could plant in its scratch dir
    with pytest.raises(SandboxError, match="refused to read"):
        read_json(tmp_path / "report.json")
    np.save(tmp_path / "e.npy", np.zeros((3, 4), np.float64))
    with pytest.raises(SandboxError, match="expected float32"):
        read_array(tmp_path / "e.npy", rows=3, ndim=2)
    np.save(tmp_path / "e.npy", np.zeros((3, 4), np.float32))
    with open(tmp_path / "e.npy", "r+b") as f:
        f.truncate(f.seek(0, 2) - 4)
    with pytest.raises(SandboxError, match="truncated"):
        read_array(tmp_path / "e.npy", rows=3, ndim=2)
    np.save(tmp_path / "ok.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(read_array(tmp_path / "ok.npy", rows=3, ndim=2), np.arange(12).reshape(3, 4))


def test_memory_limit_applies_to_the_child(encoder_file):
    """REPSCOPE_SANDBOX_MEMORY_MB caps the child's address space: one batch of 512 px images needs more."""
    big = np.zeros((64, 512, 512, 3), np.uint8)
    started = time.monotonic()

    def progress(fraction: float, message: str) -> None:
        if time.monotonic() - started > 120:
            raise TimeoutError("the memory limit did not stop the child")

    with pytest.raises(MemoryError, match="out of memory in the sandboxed model process"):
        run_job(EncoderJob(task="embed", memory_mb=1200), encoder_file, big, progress=progress)


def test_without_a_fresh_proc_the_sandbox_still_runs(tmp_path, encoder_file, images):
    """A container that masks part of its /proc (Docker's default) makes the kernel refuse a new procfs: the
    probe notices, and jobs run without /proc (only /proc/cpuinfo bound), with the same embeddings."""
    np.save(tmp_path / "images.npy", images)
    code = textwrap.dedent(f"""
        import numpy as np, torch
        from pathlib import Path
        from repscope.settings import Settings
        from worker.sandbox import EncoderJob, bwrap, probe, run_job
        probe(Settings(data_dir={str(tmp_path / "data")!r}))
        out = run_job(EncoderJob(task="embed", threads=1), Path({str(encoder_file)!r}),
                      np.load({str(tmp_path / "images.npy")!r}), progress=lambda f, m: None)
        np.save({str(tmp_path / "z.npy")!r}, out.arrays["embeddings"])
        print("fresh_proc", bwrap.state.fresh_proc)
    """)
    container = [bwrap.bwrap_binary(), "--unshare-user", "--unshare-pid", "--dev-bind", "/", "/", "--proc", "/proc",
                 "--ro-bind", "/dev/null", "/proc/cmdline", "--", sys.executable, "-c", code]
    done = subprocess.run(container, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "fresh_proc False" in done.stdout and "refuses a fresh /proc" in done.stderr
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), embed(load_encoder(encoder_file), images))
    finally:
        torch.set_num_threads(before)
