"""Smoke run of the load benchmark (benchmarks/bench_load.py) so CI exercises it: a few jobs for a few seconds
against the real cluster shape (PostgreSQL, Redis, uvicorn API, Celery worker), as its own process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from tests.integration.conftest import REQUIRE_SERVICES, services_or_skip
from tests.integration.procs import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.services]


def test_bench_load_smoke(tmp_path):
    services_or_skip()
    if importlib.util.find_spec("locust") is None:
        reason = "locust is not installed (pip install -e '.[bench]')"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (REPSCOPE_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    summary_path = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "benchmarks.bench_load", "--users", "5", "--duration", "12", "--no-write",
           "--drain-timeout", "180", "--json", str(summary_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads(summary_path.read_text())
    assert summary["errors"] == 0, summary["error_samples"]
    assert summary["count_problems"] == []
    # every job logged about once a second and uploaded at least once (one upload per 10 steps)
    assert summary["metric_posts_accepted"] >= 5 * 8
    assert summary["uploads_accepted"] >= 5
    evaluations = {k: v for k, v in summary["evaluations"].items() if k != "at_load_end"}
    assert evaluations == {"succeeded": summary["uploads_accepted"]}
    assert "| **all** |" in proc.stdout
