"""The suite registry drives the API, the worker engine and the CLI: a suite added by one SuiteSpec line (and its
package) is accepted at upload, queued, run by the real engine, stored and printed — no suite name in generic code."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from repscope import suites as registry
from repscope.suites import ALWAYS, LABELS, SuiteSpec

EXAMPLE = SuiteSpec("example", "mean row norm (test only)", embeddings=True, module="tests.unit.example_suite")
Z = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)


@pytest.fixture
def example_suite():
    registry.register(EXAMPLE)
    yield EXAMPLE
    registry.unregister(EXAMPLE.name)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_registry_declares_every_builtin_suite_once():
    assert registry.available() == ("spectrum", "probes", "equivariance", "backdoor", "projector")
    assert registry.embedding_suites() == ("spectrum", "probes", "backdoor", "projector")
    assert registry.encoder_suites() == ("equivariance", "backdoor")
    assert registry.needing(LABELS) == ("probes",)
    assert registry.default_suites(False) == ["spectrum"]
    assert registry.default_suites(True, True) == ["spectrum", "probes", "backdoor"]
    assert registry.split_checkpoint_suites(["spectrum", "probes", "backdoor", "equivariance"]) == (
        ["backdoor", "equivariance"], ["spectrum", "probes"])


def test_bad_specs_and_names_are_refused():
    with pytest.raises(ValueError, match="runs on nothing"):
        SuiteSpec("x", "nothing")
    with pytest.raises(ValueError, match="unknown needs"):
        SuiteSpec("x", "bad need", embeddings=True, requires=frozenset({"pixels"}))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(SuiteSpec("spectrum", "again", embeddings=True))
    with pytest.raises(ValueError, match="unknown suite"):
        registry.parse_suites("spectrum,nope")
    with pytest.raises(ValueError, match="need an encoder"):
        registry.check_suites(["equivariance"], has_labels=True)


def test_worker_resolves_each_suite_to_its_package():
    from worker.suite_runners import ON_EMBEDDINGS, ON_ENCODER, runner

    assert list(ON_EMBEDDINGS) == ["spectrum", "probes", "backdoor", "projector"] and list(ON_ENCODER) == [
        "equivariance", "backdoor"]
    assert runner("probes", "embeddings").__module__ == "worker.suites.probes.suite"
    assert runner("backdoor", "encoder").__module__ == "worker.suites.backdoor.suite"
    with pytest.raises(ValueError, match="does not run on an encoder"):
        runner("spectrum", "encoder")


def test_an_added_suite_runs_through_the_api_and_the_real_engine(api, run_id, settings, example_suite):
    """Upload with suites=example -> queued -> worker.engine claims it, resolves the package, runs it, posts the
    metric -> the API serves the value (numpy reference: the mean row norm)."""
    import httpx

    from repscope.client import Client
    from tests.conftest import WORKER_TOKEN
    from tests.unit.test_auth import bearer
    from tests.unit.test_client import FlakyTransport
    from worker.engine import run_evaluation

    response = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "3", "suites": "example,spectrum"},
                        files={"file": ("z.npy", npy_bytes(Z))})
    assert response.status_code == 202, response.text
    evaluations = {e["suite"]: e["id"] for e in response.json()["evaluations"]}
    assert set(evaluations) == {"example", "spectrum"}

    client = Client("http://testserver", retries=0)
    client.http = httpx.Client(base_url="http://testserver/api/v1", transport=FlakyTransport(api._transport),
                               headers=bearer(WORKER_TOKEN))
    assert run_evaluation(evaluations["example"], client, "engine@test",
                          settings.model_copy(update={"device": "cpu"})) == "succeeded"
    view = api.get(f"/api/v1/evaluations/{evaluations['example']}").json()
    expected = float(np.linalg.norm(Z.astype(np.float64), axis=1).mean())
    assert view["status"] == "succeeded"
    assert view["metrics"]["example_mean_norm"] == pytest.approx(expected, rel=1e-12)


def test_an_unregistered_suite_is_refused_at_upload(api, run_id):
    response = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "1", "suites": "example"},
                        files={"file": ("z.npy", npy_bytes(Z))})
    assert response.status_code == 422 and "unknown suite" in response.text


def test_an_added_suite_runs_from_the_cli(tmp_path, capsys, example_suite):
    from repscope.cli import main

    path = tmp_path / "z.npy"
    np.save(path, Z)
    assert main(["eval", str(path), "--suites", "example", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["example"]["metrics"]["example_mean_norm"] == pytest.approx(
        float(np.linalg.norm(Z.astype(np.float64), axis=1).mean()), rel=1e-12)


def test_default_suites_include_an_added_always_suite(example_suite):
    registry.unregister(EXAMPLE.name)
    registry.register(SuiteSpec("example", "always", embeddings=True, default_if=ALWAYS,
                                module="tests.unit.example_suite"))
    assert registry.default_suites(False) == ["spectrum", "example"]


def test_readme_contributor_guide_matches_the_code():
    """The README's "Add a metric" / "Add a suite" steps name fields and functions that exist."""
    import dataclasses
    import importlib
    import re
    from pathlib import Path

    from repscope import catalogue

    text = Path(__file__).resolve().parents[2].joinpath("README.md").read_text()
    guide = text[text.index("### Add a metric"):text.index("## Layout")]
    for name in ("PLACEHOLDERS", "GROUPS", "METRICS", "HEADLINE", "RADAR", "TABLE_COLUMNS", "LEADERBOARD_COLUMNS",
                 "SELECTION_KEYS", "SELECTION_PROBES"):
        assert name in guide and hasattr(catalogue, name), name
    metric_fields = {f.name for f in dataclasses.fields(catalogue.MetricSpec)}
    assert {"key", "label", "suite", "group", "direction", "unit", "fraction", "label_free"} <= metric_fields
    spec_fields = {f.name for f in dataclasses.fields(SuiteSpec)}
    named = set(re.findall(r"(\w+)=", guide[guide.index("### Add a suite"):]))
    assert named <= spec_fields, named - spec_fields
    for spec in registry.SUITES.values():  # every built-in suite has the entry points the guide promises
        module = importlib.import_module(spec.module)
        assert all(hasattr(module, f"on_{on}") for on in ("embeddings", "encoder") if getattr(spec, on)), spec.name
