"""Property-based fuzzing of every operation in the REST API's OpenAPI schema (schemathesis, in-process ASGI).

Three passes over the real app (real SQLite database, artifact store and filesystem broker, seeded with a run, an
artifact and its evaluation so generated ids reach rows): every GET without credentials, then every operation
with the admin token on data that fits the schema (positive) and on data that does not (negative). No response may
be a 5xx; 2xx bodies must match their documented schema and media type; an anonymous GET of a protected
operation must be a 401. DELETE /tokens/{id} runs last: it may revoke the token the fuzzer itself holds.
Generation is derandomized, so a CI failure reproduces locally. Set REPSCOPE_BENCH_RESULTS=1 to record the
tally in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN, WORKER_TOKEN

MAX_EXAMPLES = int(os.environ.get("REPSCOPE_FUZZ_EXAMPLES", "25"))  # per operation and generation mode
MIN_CASES = 1000  # the run must not silently shrink to nothing (1 287 cases today)
LAST = {("DELETE", "/api/v1/tokens/{token_id}")}  # may revoke the fuzzer's own token
PUBLIC = {"/api/v1/health", "/api/v1/whoami"}
FUZZ = hypothesis_settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
                           phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                           print_blob=False)

# Credentials are sent explicitly (the admin token, or none): schemathesis does not generate or drop the bearer
# header itself, so every negative case carries valid credentials and reaches the parameter checks behind them.
# Timestamps read back from SQLite carry no UTC offset ("2026-01-01T12:00:00.123"), which JSON Schema's
# "date-time" format (RFC 3339) refuses; response bodies are checked for structure and types, not formats.
CONFIG = schemathesis.Config.from_dict({
    "generation": {"with-security-parameters": False},
    "checks": {"response_schema_conformance": {"validate-formats": False}},
})
Check = Callable[..., bool | None]
pytestmark = pytest.mark.integration


@pytest.fixture
def fuzz_app(tmp_path):
    """The real app with the per-token rate limit off (the fuzzer sends well over a thousand requests)."""
    from backend.app import create_app
    from repscope.settings import Settings

    settings = Settings(data_dir=tmp_path / "data", max_upload_bytes=5_000_000, admin_token=ADMIN_TOKEN,
                        worker_token=WORKER_TOKEN, rate_limit_per_minute=0)
    return create_app(settings, run_sweeper=False)


def seed(app) -> None:  # noqa: ANN001
    """One run with an uploaded embeddings artifact and its queued evaluation, so small ids hit real rows."""
    from fastapi.testclient import TestClient

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32))
    with TestClient(app, headers=ADMIN_HEADERS) as client:
        run = client.post("/api/v1/runs", json={"project": "fuzz", "name": "seed", "tags": ["a"]}).json()
        upload = client.post(f"/api/v1/runs/{run['id']}/artifacts", data={"step": "1", "suites": "spectrum"},
                             files={"file": ("z.npy", buf.getvalue())})
        assert upload.status_code == 202, upload.text


def conforms_when_successful(ctx, response, case) -> bool | None:  # noqa: ANN001
    """2xx responses match the documented schema and media type (4xx bodies are this API's own
    {"detail": "..."}, which FastAPI's generated schema does not describe)."""
    if 200 <= response.status_code < 300:
        response_schema_conformance(ctx, response, case)
        content_type_conformance(ctx, response, case)
    return None


def requires_credentials(ctx, response, case) -> bool | None:  # noqa: ANN001
    """Without credentials a protected operation answers 401 with a WWW-Authenticate challenge (or the router's
    bare 404 when the generated path matches no route, e.g. a dataset name holding a newline)."""
    if response.status_code == 404 and response.json() == {"detail": "Not Found"}:
        return None
    if case.operation.path in PUBLIC:
        assert response.status_code == 200, f"public {case.operation.path} answered {response.status_code}"
    else:
        assert response.status_code == 401, f"anonymous request answered {response.status_code}, not 401"
        assert response.headers.get("www-authenticate") == ["Bearer"], response.headers
    return None


def fuzz_operation(operation, mode: GenerationMode, headers: dict[str, str], checks: list[Check],  # noqa: ANN001
                   tally: Counter, statuses: Counter) -> str | None:
    """Run up to MAX_EXAMPLES generated cases through the app; the first failure, described, or None."""
    label = f"{operation.label} [{mode.value}{'' if headers else ', anonymous'}]"

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case) -> None:  # noqa: ANN001
        tally[label] += 1
        response = case.call(headers=headers)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=checks, headers=headers)

    try:
        run()
    except Unsatisfiable:
        if mode == GenerationMode.NEGATIVE:  # no parameters and no body: nothing to make invalid
            return None
        raise
    except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - schemathesis raises FailureGroup
        return f"{label}: {type(exc).__name__}: {str(exc)[:3000]}"
    return None


def describe(statuses: Counter) -> str:
    return ", ".join(f"{code} × {n}" for code, n in sorted(statuses.items()))


def ordered_operations(schema) -> list:  # noqa: ANN001
    operations = [result.ok() for result in schema.get_all_operations()]
    return sorted(operations, key=lambda op: ((op.method.upper(), op.path) in LAST, op.path, op.method))


def record(tally: Counter, statuses: Counter, n_operations: int, seconds: float) -> None:
    """benchmarks/RESULTS.md section (only when asked: CI leaves the file alone)."""
    if os.environ.get("REPSCOPE_BENCH_RESULTS") != "1":
        return
    from benchmarks.common import machine, write_section

    by_pass = Counter(label.rsplit("[", 1)[1].rstrip("]") for label in tally.elements())
    rows = "\n".join(f"| {name} | {count} |" for name, count in sorted(by_pass.items()))
    write_section("schemathesis", f"""## Fuzzing the REST API (schemathesis {schemathesis.__version__})

tests/integration/test_schemathesis.py: every operation of /openapi.json ({n_operations}), in-process over ASGI,
derandomized, at most {MAX_EXAMPLES} cases per operation and mode. Checks: no 5xx; 2xx bodies match the documented
schema and media type; anonymous GETs of protected operations answer 401.
Machine: {machine()}. {time.strftime('%Y-%m-%d')}.

| pass | cases |
|---|---|
{rows}
| **total** | **{sum(tally.values())}** |

Responses by status: {describe(statuses)}.

Result: 0 server errors in {seconds:.0f} s. The first runs found one class of 500: an id, offset or step past
the signed 64-bit range (e.g. `GET /api/v1/runs/18446744073709551616`) reached SQLite, which cannot bind it
(OverflowError) — on every route taking an id, `offset`, `?run=` and the metrics `step`. They are now a 422 naming
the parameter (backend/api/params.py, tests/unit/test_api.py). A longer run, REPSCOPE_FUZZ_EXAMPLES=150
(7 662 cases, 2.5 min), found nothing more.""")


@pytest.mark.timeout(600)
def test_no_operation_answers_5xx(fuzz_app):
    started = time.monotonic()
    seed(fuzz_app)
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app, config=CONFIG)
    operations = ordered_operations(schema)
    tally: Counter = Counter()
    statuses: Counter = Counter()
    admin_checks: list[Check] = [not_a_server_error, conforms_when_successful]
    failures = []
    for operation in [op for op in operations if op.method.upper() == "GET"]:  # anonymous: no token needed
        failures.append(fuzz_operation(operation, GenerationMode.POSITIVE, {}, [not_a_server_error,
                                                                               requires_credentials], tally,
                                       statuses))
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures.append(fuzz_operation(operation, mode, ADMIN_HEADERS, admin_checks, tally, statuses))
    failures = [f for f in failures if f]
    seconds = time.monotonic() - started
    total = sum(tally.values())
    print(f"schemathesis {schemathesis.__version__}: {total} cases over {len(operations)} operations "
          f"in {seconds:.1f} s; {len(failures)} failing operation passes; statuses {describe(statuses)}")
    for label, count in sorted(tally.items()):
        print(f"  {count:4d}  {label}")
    assert not failures, "\n\n".join(failures)
    assert total >= MIN_CASES, f"only {total} cases were generated"
    untested = {op.label for op in operations} - {label.split(" [")[0] for label in tally}
    assert not untested, f"operations never exercised: {sorted(untested)}"
    record(tally, statuses, len(operations), seconds)
