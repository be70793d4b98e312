"""examples/train_simclr_shapes.py, run for a short budget against a live `repscope serve`."""

from __future__ import annotations

import subprocess
import sys

import pytest

import repscope
from tests.integration.procs import ROOT, base_env, free_port, start_serve, wait_healthy

pytestmark = pytest.mark.integration


def test_example_training_script_logs_every_series(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = start_serve(base_env(tmp_path / "data", url), port, tmp_path / "data", tmp_path)
    try:
        wait_healthy(url, serve.proc, timeout=90)
        out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_simclr_shapes.py"), "--url", url,
                              "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "32", "--run", "short",
                              "--checkpoint-dataset", "digits"],
                             capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr + serve.log_tail()
        client = repscope.Client(url)
        [run] = client.runs(project="examples")["items"]
        handle = client.run(project="examples", name="short")
        assert [s for s, _ in handle.metrics("rankme", dataset="shapes-probe")] == [0, 3, 6]
        assert [s for s, _ in handle.metrics("linear_top1", dataset="shapes-probe")] == [0, 3, 6]
        assert [s for s, _ in handle.metrics("rankme", dataset="digits")] == [0, 3, 6]  # from the checkpoints
        assert [s for s, _ in handle.metrics("loss")] == [3, 6]
        accuracies = [v for _, v in handle.metrics("linear_top1", dataset="shapes-probe")]
        assert all(1 / 6 < a <= 1 for a in accuracies)  # six balanced classes: better than chance
        assert run["config"]["epochs"] == 2
    finally:
        serve.stop()
