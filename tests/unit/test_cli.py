"""The `repscope` command as a user runs it: a real subprocess, its output checked against references."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.reference import rankme_numpy, structured_embeddings


def repscope(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "repscope.cli", *args], capture_output=True, text=True,
                          check=check, timeout=120)


@pytest.mark.parametrize("command", ["serve", "worker", "eval", "upload", "runs", "leaderboard", "demo", "db"])
def test_every_command_has_help(command):
    out = repscope(command, "--help").stdout
    assert out.startswith("usage: repscope " + command)


def test_eval_json_matches_numpy(tmp_path):
    z = structured_embeddings(400, 24, seed=4)
    np.save(tmp_path / "z.npy", z)
    out = json.loads(repscope("eval", str(tmp_path / "z.npy"), "--suites", "spectrum", "--json",
                              "--device", "cpu").stdout)
    value = out["spectrum"]["metrics"]["rankme"]
    assert abs(value - rankme_numpy(z)) / rankme_numpy(z) < 1e-6
    assert out["spectrum"]["variant"]["device"] == "cpu"


def test_eval_table_and_errors(tmp_path):
    z = structured_embeddings(300, 20, seed=5)
    np.save(tmp_path / "z.npy", z)
    table = repscope("eval", str(tmp_path / "z.npy"), "--suites", "spectrum", "--device", "cpu").stdout
    assert "300 x 20" in table and f"{rankme_numpy(z):.6g}" in table
    bad = tmp_path / "bad.npy"
    np.save(bad, np.arange(5.0))
    failed = repscope("eval", str(bad), check=False)
    assert failed.returncode == 2 and "2-D" in failed.stderr
    unknown = repscope("eval", str(tmp_path / "z.npy"), "--suites", "nope", check=False)
    assert unknown.returncode == 2 and "unknown suite" in unknown.stderr
