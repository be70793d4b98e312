"""schemathesis over the whole REST API with every check it has: no 5xx and no contract violation (issue 16).

The real app in-process (ASGI) over its real SQLite database, artifact store and filesystem broker, seeded with a
run, an artifact and its evaluation so generated ids reach rows, driven by schemathesis' own engine, the one
behind `schemathesis run --checks all`: examples, coverage (boundary values, missing and extra parameters,
unsupported methods), fuzzing and stateful (chains of linked operations) phases, derandomized so a CI failure
reproduces locally. Three passes:

1. admin token, every operation except token revocation, every check;
2. the token operations, with an admin token whose id no generated DELETE /tokens/{id} reaches (the bootstrap
   admin's id is 1: revoking it would turn the rest of the pass into 401s);
3. no credentials, every GET with valid data: a protected operation answers exactly 401 with a Bearer challenge.

Every registered check is on (the test asserts it, so a check a new schemathesis adds is on too), with two
narrow, reasoned relaxations in RELAXED. `object_level_authorization` is on but idle: it replays one identity's
objects as another, and repscope has no per-token ownership (any read token reads every run, DESIGN.md), so no
second identity is configured. Strings are generated without NUL (NO_NUL says why). Set REPSCOPE_FUZZ_EXAMPLES for more cases per operation and phase, and
REPSCOPE_BENCH_RESULTS=1 to record the tally in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.engine import Status, events, from_schema

from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN, WORKER_TOKEN

MAX_EXAMPLES = int(os.environ.get("REPSCOPE_FUZZ_EXAMPLES", "50"))  # per operation and phase
MIN_CASES = 3000 if MAX_EXAMPLES >= 50 else 1000  # the run must not silently shrink (3 389 cases at 50)
SEED = int(os.environ.get("REPSCOPE_FUZZ_SEED", "16"))  # another seed explores other cases
PUBLIC = {"/api/v1/health", "/api/v1/whoami"}
TOKEN_OPERATIONS = "^/api/v1/tokens"  # pass 2
# far above the ids the fuzzer creates or guesses, yet an id the API accepts (ids are INTEGER: at most 2**31 - 1)
FUZZER_TOKEN_ID, FUZZER_SECRET = 2_000_000_001, "rs_fuzzer-admin-0123456789abcdef"
UPLOADS = ("POST /api/v1/runs/{run_id}/artifacts", "POST /api/v1/datasets")

# (check, operations, reason): the only departures from schemathesis' defaults.
RELAXED = [
    ("positive_data_acceptance: 422 also expected", [*UPLOADS, "POST /api/v1/datasets/folder"],
     "whether a schema-valid upload is a readable .npy/.npz/.safetensors/.pt/ImageFolder zip, or a schema-valid "
     "`path` an ImageFolder under REPSCOPE_DATASET_ROOTS, is decided by the bytes and the server's disk, which no "
     "JSON Schema can describe: a generated PNG is refused with a 422 naming the problem, as it should be"),
    ("allow_header_conformance: off", ["POST /api/v1/datasets/folder"],
     "OpenAPI matches the concrete /datasets/folder before the template /datasets/{name}, but the router sends "
     "GET /datasets/folder to the dataset named 'folder': `Allow: GET, POST` is the truth for that URL"),
]
NO_NUL = ("strings are generated without NUL (`allow-x00: false`): every path, query and body holding one is "
          "refused with a 400 before auth or parsing (PostgreSQL text cannot store it), which no JSON Schema can "
          "state for free-form fields; tests/unit/test_input_limits_more.py covers those answers")
CONFIG = {
    "seed": SEED,
    "generation": {"deterministic": True, "max-examples": MAX_EXAMPLES, "database": "none", "allow-x00": False,
                   # credentials are sent explicitly (the admin token, or none), never generated
                   "with-security-parameters": False},
    "checks": {},  # response bodies are validated with their formats too (RFC 3339 date-times with an offset)
    "operations": [
        *({"include-name": op, "checks": {"positive_data_acceptance": {"expected-statuses": [
            "2xx", "3xx", "401", "403", "404", "409", "422", "429"]}}} for op in RELAXED[0][1]),
        *({"include-name": op, "checks": {"allow_header_conformance": {"enabled": False}}} for op in RELAXED[1][1]),
    ],
}
pytestmark = pytest.mark.integration


@schemathesis.check
def requires_credentials(ctx, response, case) -> bool | None:  # noqa: ANN001
    """Without credentials a protected operation answers 401 with a Bearer challenge (or the router's bare 404
    when the generated path matches no route, e.g. a dataset name holding a slash); /health and /whoami 200."""
    if response.request.headers.get("authorization"):
        return None  # a probe of another check that sent credentials of its own
    if response.status_code == 404 and response.json() == {"detail": "Not Found"}:
        return None
    if case.operation.path in PUBLIC:
        assert response.status_code == 200, f"public {case.operation.path} answered {response.status_code}"
    else:
        assert response.status_code == 401, f"anonymous request answered {response.status_code}, not 401"
        assert response.headers.get("www-authenticate") == ["Bearer"], response.headers
    return None


@pytest.fixture
def fuzz_app(tmp_path):
    """The real app with the per-token rate limit off (the fuzzer sends thousands of requests)."""
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


def fuzzer_headers(app) -> dict[str, str]:  # noqa: ANN001
    """An admin token stored under an id far from the small and boundary ids the fuzzer draws."""
    from backend.models import ApiToken
    from backend.services.tokens import hash_secret

    with app.state.sessionmaker() as session:
        session.add(ApiToken(id=FUZZER_TOKEN_ID, name="fuzzer", sha256=hash_secret(FUZZER_SECRET), scopes=["admin"]))
        session.commit()
    return {"Authorization": f"Bearer {FUZZER_SECRET}"}


@dataclass
class Tally:
    """What one engine run did: cases per operation, responses per status, failures (deduplicated)."""

    cases: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    failures: dict[tuple[str, str, str], str] = field(default_factory=dict)
    checked: Counter = field(default_factory=Counter)  # check name -> responses it passed or failed

    def scenario(self, event: events.ScenarioFinished) -> None:
        recorder = event.recorder
        for case_id, interaction in recorder.interactions.items():
            node = recorder.cases.get(case_id)
            label = node.value.operation.label if node else str(event.label)
            self.cases[label] += 1
            self.statuses[interaction.response.status_code if interaction.response else "no response"] += 1
        for case_id, checks in recorder.checks.items():
            node = recorder.cases.get(case_id)
            for check in checks:
                self.checked[check.name] += check.status in (Status.SUCCESS, Status.FAILURE)
                if check.status == Status.FAILURE and check.failure_info is not None:
                    failure = check.failure_info.failure
                    label = node.value.operation.label if node else str(event.label)
                    self.failures.setdefault((label, check.name, failure.title), (
                        f"[{event.phase.value}] {failure.message}\n{check.failure_info.code_sample}"))

    def error(self, where: str, text: str) -> None:
        self.failures.setdefault((where, "error", text.splitlines()[0] if text else ""), text)


def run_engine(app, *, name: str, headers: dict[str, str], mode: str, disabled: tuple[str, ...] = (),  # noqa: ANN001
               exclude_path_regex: str | None = None, exclude_methods: tuple[str, ...] = ()) -> Tally:
    """One schemathesis engine run (every phase) over the operations left after the exclusions; its tally.
    (Exclusions only: `include` filters are dropped by the engine once the config has per-operation sections.)"""
    config = {**CONFIG, "headers": headers, "generation": {**CONFIG["generation"], "mode": mode},
              "checks": {**CONFIG["checks"], **{check: {"enabled": False} for check in disabled}}}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=schemathesis.Config.from_dict(config))
    assert_every_check_enabled(schema, disabled)
    if exclude_path_regex:
        schema = schema.exclude(path_regex=exclude_path_regex)
    if exclude_methods:
        schema = schema.exclude(method=list(exclude_methods))
    tally = Tally()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            tally.scenario(event)
        elif isinstance(event, events.NonFatalError):
            tally.error(f"{name}: {event.label}", event.info.format())
        elif isinstance(event, events.FatalError):
            tally.error(f"{name}: fatal", repr(event.exception))
        elif isinstance(event, events.EngineFinished):
            for failure in event.failures:
                tally.error(f"{name}: after run", f"{failure.title}: {failure.message}")
    untested = {op.ok().label for op in schema.get_all_operations()} - set(tally.cases)
    if untested:
        tally.error(f"{name}: coverage", f"operations never exercised: {sorted(untested)}")
    return tally


def assert_every_check_enabled(schema, disabled: tuple[str, ...]) -> None:  # noqa: ANN001
    """Every check schemathesis registers runs (but the pass's own `disabled`); RELAXED is per operation."""
    load_all_checks()
    checks = schema.config.checks_config_for()
    off = [name for name in CHECKS.get_all_names() if name not in disabled
           and not checks.get_by_name(name=name).enabled]
    assert not off, f"checks not enabled: {off}"
    assert {"use_after_free", "ensure_resource_availability", "ignored_auth", "negative_data_rejection",
            "positive_data_acceptance", "missing_required_header", "unsupported_method",
            "status_code_conformance", "response_headers_conformance"} <= set(CHECKS.get_all_names())


def describe(counter: Counter) -> str:
    return ", ".join(f"{code} × {n}" for code, n in sorted(counter.items(), key=lambda kv: str(kv[0])))


def record(passes: dict[str, Tally], statuses: Counter, seconds: float) -> None:
    """benchmarks/RESULTS.md section (only when asked: CI leaves the file alone)."""
    if os.environ.get("REPSCOPE_BENCH_RESULTS") != "1":
        return
    from benchmarks.common import machine, write_section

    rows = "\n".join(f"| {name} | {len(t.cases)} | {sum(t.cases.values())} |" for name, t in passes.items())
    relaxed = "\n".join(f"- {check} for {', '.join(f'`{op}`' for op in ops)}: {why}." for check, ops, why in RELAXED)
    write_section("schemathesis", f"""## Fuzzing the REST API (schemathesis {schemathesis.__version__}, every check)

tests/integration/test_schemathesis.py: schemathesis' engine (examples, coverage, fuzzing and stateful phases)
over every operation of /openapi.json, in-process over ASGI, derandomized (seed {SEED}), at most {MAX_EXAMPLES}
cases per operation and phase, with all {len(CHECKS.get_all_names())} registered checks on (response formats too):
{', '.join(sorted(CHECKS.get_all_names()))}. Relaxed, per operation:
{relaxed}
- everywhere, {NO_NUL}.

Machine: {machine()}. {time.strftime('%Y-%m-%d')}.

| pass | operations | cases |
|---|---|---|
{rows}
| **total** | | **{sum(sum(t.cases.values()) for t in passes.values())}** |

Responses by status: {describe(statuses)}.

Result: 0 server errors and 0 check failures in {seconds:.0f} s (REPSCOPE_FUZZ_EXAMPLES=300 with seeds 16 and 1,
about 12 900 cases and 2 min each, and 100 with seeds 1-7: none either). Raising the checks from "no 5xx, 2xx
bodies conform" to all of them found, and the code now fixes: 4xx codes and bodies the schema did not document
(one `Error` model, codes derived per operation: backend/api/openapi.py); 422 `errors[].loc` sent as a string;
405s whose `Allow` named one route's methods, not the URL's; `false`/`"1"` read as numbers in request bodies;
documented patterns looser than the enforced ones (token names and scopes, logged metric names, run names
starting with U+0085); a step bound (2**62) that float-based JSON tools cannot compare exactly (now 2**53 - 1);
a repeated single-valued query parameter silently read as one value (now 422); an upload naming an unknown
dataset answered 404 for a run that exists (now 422); `null` documented for query parameters.""")


@pytest.mark.timeout(900)
def test_every_check_passes_on_every_operation(fuzz_app):
    started = time.monotonic()
    seed(fuzz_app)
    passes = {
        "admin": run_engine(fuzz_app, name="admin", headers=dict(ADMIN_HEADERS), mode="all",
                            disabled=("requires_credentials",), exclude_path_regex=TOKEN_OPERATIONS),
        "admin, tokens": run_engine(fuzz_app, name="tokens", headers=fuzzer_headers(fuzz_app), mode="all",
                                           disabled=("requires_credentials",),
                                           exclude_path_regex=f"^(?!{TOKEN_OPERATIONS.lstrip('^')})"),
        "anonymous GETs": run_engine(fuzz_app, name="anonymous", headers={}, mode="positive",
                                     exclude_methods=("POST", "PUT", "PATCH", "DELETE")),
    }
    seconds = time.monotonic() - started
    statuses = sum((t.statuses for t in passes.values()), Counter())
    total = sum(sum(t.cases.values()) for t in passes.values())
    print(f"schemathesis {schemathesis.__version__}: {total} cases in {seconds:.1f} s; statuses {describe(statuses)}")
    for name, t in passes.items():
        print(f"  {name}: {sum(t.cases.values())} cases over {len(t.cases)} operations; {describe(t.statuses)}")
        for label, count in sorted(t.cases.items()):
            print(f"    {count:5d}  {label}")
    checked = sum((t.checked for t in passes.values()), Counter())
    print(f"  responses each check judged: {describe(checked)}")
    failures = [f"{name}: {key}\n{text[:3000]}" for name, t in passes.items() for key, text in t.failures.items()]
    assert not failures, "\n\n".join(failures)
    assert not [code for code in statuses if isinstance(code, int) and code >= 500]
    assert total >= MIN_CASES, f"only {total} cases were generated"
    assert passes["admin, tokens"].statuses[401] < 0.05 * sum(passes["admin, tokens"].cases.values())
    record(passes, statuses, seconds)
