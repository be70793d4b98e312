"""docker-compose.yml describes the cluster shape and points at commands that exist."""

from __future__ import annotations

import importlib
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
    assert {"postgres", "redis", "api", "worker-gpu0", "migrate"} <= set(services)
    gpu = services["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["api"]["volumes"] == services["worker-gpu0"]["volumes"]  # shared artifact volume


def test_compose_commands_exist():
    services = compose()["services"]
    factory = services["api"]["command"][services["api"]["command"].index("--factory") + 1]
    module, attr = factory.split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    parser = build_parser()
    for name in ("worker-gpu0", "migrate"):
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
    result = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
