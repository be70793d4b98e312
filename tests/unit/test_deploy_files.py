"""docker-compose.yml describes the cluster shape and points at commands that exist."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from repscope.cli import build_parser
from repscope.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_cluster_shape():
    services = compose()["services"]
    assert {"postgres", "redis", "api", "worker-gpu0", "worker-cpu", "migrate"} <= set(services)
    gpu = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "deploy" not in services["worker-cpu"]  # the CPU worker reserves no GPU
    for worker in ("worker-gpu0", "worker-cpu"):
        assert services["api"]["volumes"] == services[worker]["volumes"]  # shared artifact volume


def test_compose_workers_consume_the_queues_the_api_routes_to(monkeypatch):
    """The GPU worker consumes REPSCOPE_QUEUE (heavy suites), the CPU worker REPSCOPE_LIGHT_QUEUE (spectrum)."""
    from backend.queue import queue_for

    services = compose()["services"]
    for key, value in compose()["x-repscope-env"].items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.light_queue and settings.light_queue != settings.queue

    def consumed(name: str) -> str:
        cmd = services[name]["command"]
        return cmd[cmd.index("--queues") + 1]

    assert consumed("worker-gpu0") == queue_for("probes", settings) == queue_for("embed", settings)
    assert consumed("worker-cpu") == queue_for("spectrum", settings)
    assert services["worker-cpu"]["environment"]["REPSCOPE_DEVICE"] == "cpu"


def test_compose_commands_exist():
    services = compose()["services"]
    factory = services["api"]["command"][services["api"]["command"].index("--factory") + 1]
    module, attr = factory.split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    parser = build_parser()
    for name in ("worker-gpu0", "worker-cpu", "migrate"):
        cmd = services[name]["command"]
        assert cmd[0] == "repscope"
        parser.parse_args(cmd[1:])  # SystemExit if the CLI does not accept it


def test_compose_environment_is_valid_settings(monkeypatch):
    env = compose()["x-repscope-env"]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert not settings.uses_embedded_broker


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_if_available():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker client has no compose plugin")
    secrets = {k: "x" * 32 for k in ("REPSCOPE_ADMIN_TOKEN", "REPSCOPE_WORKER_TOKEN", "REPSCOPE_SECRET_KEY")}
    result = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, **secrets})
    assert result.returncode == 0, result.stderr
    bare = {k: v for k, v in os.environ.items() if k not in secrets}
    missing = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True,
                             env=bare)
    assert missing.returncode != 0 and "REPSCOPE_ADMIN_TOKEN" in missing.stderr


def test_compose_requires_the_auth_secrets():
    """API and workers share the bootstrap secrets; compose refuses to start without them (`:?` in .env)."""
    env = compose()["x-repscope-env"]
    for key in ("REPSCOPE_ADMIN_TOKEN", "REPSCOPE_WORKER_TOKEN", "REPSCOPE_SECRET_KEY"):
        assert env[key].startswith("${" + key + ":?"), key
    services = compose()["services"]
    for name in ("api", "worker-gpu0", "worker-cpu"):
        assert "REPSCOPE_WORKER_TOKEN" in services[name]["environment"], name
