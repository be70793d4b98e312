"""Limits enforced on input (issue 16, findings 6, 7, 9 and the LIKE wildcard of 10), over the real app.

Each case was a 500, a stored row that broke every listing, or a worker taking gigabytes before the fix. Every
test asserts the status, that the message names the problem and its limit, and that nothing partial remains
(no row, no stored file, no temp file) while the server keeps serving.
"""

from __future__ import annotations

import io
import json
import re
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from backend.limits import json_bytes_depth, lone_surrogate
from backend.models import Artifact, Dataset, Evaluation, Run
from backend.services.runs import CLIPPED, get_or_create_run, list_runs
from repscope.formats import FormatError, ZipLimits, inspect_embeddings, load_embeddings
from repscope.schemas import MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH, RunCreate
from tests import malformed_corpus as corpus
from tests.conftest import ADMIN_HEADERS, database_url
from tests.unit.test_api import count, npz_bytes, stored_files, tmp_files, upload

JSON = {"content-type": "application/json"}


def nested(depth: int) -> dict:
    """{"a": {"a": ... {}}} with `depth` dicts in all (the outer one included)."""
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def depth_of(value) -> int:  # noqa: ANN001 - the reference: a depth-first walk with an explicit stack
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth + 1)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def nothing_stored(app, settings) -> None:
    for model in (Run, Artifact, Evaluation):
        assert count(app, model) == 0, model.__name__
    assert stored_files(settings) == [] and tmp_files(settings) == []


# ---- JSON depth and size (finding 6) ---------------------------------------------------------------------

def test_deep_body_is_refused_before_parsing_and_nothing_is_stored(api, app, settings):
    for body in (json.dumps({"project": "p", "name": "deep", "config": nested(400)}).encode(),
                 b"[" * 200_000 + b"]" * 200_000):  # past the parser's own recursion limit
        response = api.post("/api/v1/runs", content=body, headers=JSON)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "levels deep" in detail and f"at most {settings.max_json_depth}" in detail
    nothing_stored(app, settings)
    assert api.get("/api/v1/runs").json()["total"] == 0


def test_config_depth_and_size_limits_name_the_limit(api, app, settings):
    deep = api.post("/api/v1/runs", json={"project": "p", "name": "r", "config": nested(MAX_CONFIG_DEPTH + 1)})
    assert deep.status_code == 422 and f"at most {MAX_CONFIG_DEPTH}" in deep.json()["detail"]
    assert "body.config" in deep.json()["detail"]
    big = api.post("/api/v1/runs", json={"project": "p", "name": "r", "config": {"x": "y" * MAX_CONFIG_BYTES}})
    assert big.status_code == 422 and f"at most {MAX_CONFIG_BYTES}" in big.json()["detail"]
    nan = api.post("/api/v1/runs", content=b'{"project": "p", "name": "r", "config": {"lr": NaN}}', headers=JSON)
    assert nan.status_code == 422 and "NaN or Infinity" in nan.json()["detail"]
    tag = api.post("/api/v1/runs", json={"project": "p", "name": "r", "tags": ["t" * 101]})
    assert tag.status_code == 422 and "body.tags.0" in tag.json()["detail"]
    nothing_stored(app, settings)
    edge = nested(MAX_CONFIG_DEPTH)  # exactly at the limit: stored and read back whole
    made = api.post("/api/v1/runs", json={"project": "p", "name": "edge", "config": edge})
    assert made.status_code == 201, made.text
    assert api.get(f"/api/v1/runs/{made.json()['id']}").json()["config"] == edge


def test_schema_depth_check_is_iterative():
    """The client-side check (RunCreate) must itself survive what it refuses: 50 000 levels, no recursion."""
    value: list = []
    for _ in range(50_000):
        value = [value]
    with pytest.raises(ValueError, match=f"more than {MAX_CONFIG_DEPTH} levels"):
        RunCreate(project="p", name="r", config={"a": value})
    assert json_bytes_depth(b'{"a": "[[[[{{", "b": [{"c": "]]}"}]}') == 3  # brackets in strings do not count
    assert json_bytes_depth(b'{"a\\"[[": [1]}') == 2  # nor after an escaped quote


@pytest.fixture(params=["sqlite", "postgresql"])
def db_app(request, settings):
    """The real app on its SQLite file, or on a fresh PostgreSQL database."""
    from backend.app import create_app

    with database_url(request.param) as url:
        if url:
            settings = settings.model_copy(update={"database_url": url})
        app = create_app(settings, run_sweeper=False)
        try:
            with TestClient(app, headers=ADMIN_HEADERS) as api:
                yield app, api
        finally:
            app.state.engine.dispose()


def test_a_stored_deep_config_no_longer_breaks_reads(db_app):
    """A row stored before the limit (400 levels, inserted directly) made GET /runs answer 500 for everyone:
    pydantic's serializer gives up at a few hundred levels. Reads now clip it; the row itself is untouched."""
    app, api = db_app
    with app.state.sessionmaker() as session:
        run, _ = get_or_create_run(session, RunCreate(project="p", name="ok", config={"lr": 0.1}))
        deep = Run(project=run.project, name="deep", config=nested(400), tags=["x"])
        session.add(deep)
        session.commit()
        deep_id, ok_id = deep.id, run.id
    listed = api.get("/api/v1/runs")
    assert listed.status_code == 200, listed.text
    config = {r["name"]: r["config"] for r in listed.json()["items"]}["deep"]
    assert depth_of(config) == MAX_CONFIG_DEPTH
    inner = config
    for _ in range(MAX_CONFIG_DEPTH - 1):
        inner = inner["a"]
    assert inner == {"a": CLIPPED}  # the marker says what happened
    assert api.get(f"/api/v1/runs/{deep_id}").json()["config"] == config
    page = api.get(f"/runs/{deep_id}")
    assert page.status_code == 200 and CLIPPED in page.text
    assert api.get("/projects/p").status_code == 200
    assert api.get("/compare", params={"run": [deep_id, ok_id]}).status_code == 200
    with app.state.engine.connect() as conn:  # reading did not write the clipped value back
        stored = conn.execute(text("SELECT config FROM runs WHERE id = :i"), {"i": deep_id}).scalar_one()
    assert depth_of(json.loads(stored) if isinstance(stored, str) else stored) == 400


# ---- unicode and ids (finding 9) -------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b'{"project": "p", "name": "a\\ud800"}',  # a lone high surrogate escape
    b'{"project": "p", "name": "a\\udc00b"}',  # a lone low one
    b'{"project": "p", "name": "r", "config": {"k": "\\ud800x\\udc00"}}',  # both, but not a pair
])
def test_lone_surrogate_escape_is_a_400(api, app, settings, body):
    response = api.post("/api/v1/runs", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert "unpaired UTF-16 surrogate" in response.json()["detail"]
    nothing_stored(app, settings)


def test_surrogates_everywhere_json_is_read(api, app):
    """The check is on every JSON body, not per route: a token name too."""
    made = api.post("/api/v1/tokens", content=b'{"name": "\\udfff", "scopes": ["read"]}', headers=JSON)
    assert made.status_code == 400 and "surrogate" in made.json()["detail"]
    raw = api.post("/api/v1/runs", content=b'{"project": "p", "name": "a\xed\xa0\x80"}', headers=JSON)
    assert raw.status_code == 400 and "not valid UTF-8" in raw.json()["detail"]  # an encoded surrogate
    assert count(app, Run) == 0


def test_valid_escapes_still_round_trip(api):
    pair = api.post("/api/v1/runs", content=b'{"project": "p", "name": "smile \\ud83d\\ude00"}', headers=JSON)
    assert pair.status_code == 201 and pair.json()["name"] == "smile \U0001f600"
    literal = api.post("/api/v1/runs", content=b'{"project": "p", "name": "back\\\\ud800"}', headers=JSON)
    assert literal.status_code == 201 and literal.json()["name"] == "back\\ud800"  # an escaped backslash
    assert lone_surrogate(b'"\\\\\\ud800"') == 3  # escaped backslash, then a real lone escape


def test_bad_utf8_in_urls_and_forms_is_a_400(api, app):
    for url in ("/api/v1/runs?q=%ED%A0%80", "/projects/%ff", "/api/v1/runs?project=%C3"):
        response = api.get(url)
        assert response.status_code == 400 and "not valid UTF-8" in response.json()["detail"], url
    login = api.post("/login", content=b"token=%ff", headers={"content-type": "application/x-www-form-urlencoded"})
    assert login.status_code == 400 and "form body" in login.json()["detail"]
    run_id = api.post("/api/v1/runs", json={"project": "p", "name": "r"}).json()["id"]
    bad = api.post(f"/api/v1/runs/{run_id}/artifacts", data={"step": "1"},
                   files={"file": ("z.npy", b"x"), "suites": (None, b"\xff\xfe")})
    assert bad.status_code == 400 and "form field 'suites' is not valid UTF-8" in bad.json()["detail"]
    assert count(app, Artifact) == 0 and api.get("/api/v1/runs?q=caf%C3%A9").status_code == 200


BIG = 10**20  # past a signed 64-bit integer: SQLite could not even bind it (OverflowError -> 500 before)
ID_MAX = 2**31 - 1  # ids are INTEGER columns: 32-bit on PostgreSQL


@pytest.mark.parametrize(("method", "url"), [
    ("get", f"/runs/{BIG}"), ("get", f"/runs/{BIG}/live"), ("get", f"/evaluations/{BIG}"),
    ("get", f"/compare?run={BIG}&run=1"), ("get", f"/projects/p?page={BIG}"),
    ("post", f"/admin/tokens/{BIG}/revoke"),
])
def test_out_of_range_page_ids_are_refused_not_500(api, method, url):
    api.post("/api/v1/runs", json={"project": "p", "name": "r"})
    response = getattr(api, method)(url)
    assert response.status_code == 422, response.text
    assert re.search(r"(path|query)\.\w+(\.0)?: Input should be less than or equal to \d+", response.json()["detail"])
    assert api.get("/runs/1").status_code == 200  # in range: still served
    assert api.get(f"/runs/{ID_MAX}").status_code == 404  # the largest id names no row
    assert api.get(f"/runs/{ID_MAX + 1}").status_code == 422  # past INTEGER: refused before PostgreSQL sees it


# ---- the LIKE wildcard (finding 10) ----------------------------------------------------------------------

def test_search_is_a_literal_substring_on_sqlite_and_postgresql(db_app):
    app, api = db_app
    names = ["a_b", "axb", "a%b", "a\\b", "a/b_", "plain"]
    with app.state.sessionmaker() as session:
        for name in names:
            get_or_create_run(session, RunCreate(project="q", name=name.replace("/", "-")))
    names = [n.replace("/", "-") for n in names]
    for q in ("_", "%", "\\", "a_", "%b", "A_B", "x"):
        expected = sorted(n for n in names if q.lower() in n.lower())  # the reference: Python's `in`
        got = sorted(r["name"] for r in api.get("/api/v1/runs", params={"q": q, "project": "q"}).json()["items"])
        assert got == expected, q
        with app.state.sessionmaker() as session:
            assert sorted(r.name for r in list_runs(session, project="q", q=q)[0]) == expected
        page = api.get("/projects/q", params={"q": q}).text
        assert sorted(n for n in names if f">{n}<" in page) == expected, q


# ---- decompression caps (finding 7) ----------------------------------------------------------------------

def zeros_npz(rows: int, d: int = 64, **extra: np.ndarray) -> bytes:
    """savez_compressed of float32 zeros: ~1000x smaller than the arrays (what took a worker to 1.4 GB)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, embeddings=np.zeros((rows, d), np.float32), **extra)
    return buf.getvalue()


@pytest.fixture
def ratio_app(settings):
    """Limits small enough to reach in a unit test: ratio checked from 1 MiB, 100 MB expanded in all."""
    from backend.app import create_app

    return create_app(settings.model_copy(update={"zip_ratio_min_bytes": 1 << 20, "max_zip_ratio": 200.0,
                                                  "max_npz_expanded_bytes": 100_000_000}), run_sweeper=False)


def test_npz_bomb_is_refused_at_upload_by_its_ratio(ratio_app):
    settings = ratio_app.state.settings
    with TestClient(ratio_app, headers=ADMIN_HEADERS) as api:
        run_id = api.post("/api/v1/runs", json={"project": "p", "name": "r"}).json()["id"]
        bomb = zeros_npz(40_000)  # 10 MB of zeros
        assert len(bomb) < 60_000
        response = upload(api, run_id, "z.npz", bomb)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        ratio = re.search(r"'embeddings\.npy' expands (\d+)x \((\d+) bytes compressed to (\d+)\)", detail)
        info = zipfile.ZipFile(io.BytesIO(bomb)).getinfo("embeddings.npy")
        assert ratio and int(ratio[2]) == info.compress_size and int(ratio[3]) == info.file_size, detail
        assert int(ratio[1]) == round(info.file_size / info.compress_size) and "at most 200x" in detail
        assert count(ratio_app, Artifact) == count(ratio_app, Evaluation) == 0
        assert stored_files(settings) == [] and tmp_files(settings) == []
        # real data compresses ~1.1x; sorted labels, which compress like the bomb, stay under ratio_min_bytes
        rng = np.random.default_rng(0)
        arrays = {"embeddings": rng.standard_normal((100_000, 4)).astype(np.float32),
                  "labels": np.repeat(np.arange(10), 10_000)}
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        labels = zipfile.ZipFile(io.BytesIO(buf.getvalue())).getinfo("labels.npy")
        assert labels.file_size / labels.compress_size > 200 and labels.file_size < settings.zip_ratio_min_bytes
        for content in (npz_bytes(**arrays), buf.getvalue()):
            accepted = upload(api, run_id, "z.npz", content, step=1)
            assert accepted.status_code == 202, accepted.text
        assert api.get("/api/v1/health").status_code == 200


def test_npz_total_expanded_size_is_capped(api, app, settings, run_id):
    """Default total: max_upload_bytes (5 MB in the test settings), whatever the compression."""
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    np.savez_compressed(buf, embeddings=rng.integers(0, 4, (22_000, 64)).astype(np.float32))  # 5.6 MB inflated
    assert len(buf.getvalue()) < settings.max_upload_bytes / 4  # a ratio no bomb check would refuse
    response = upload(api, run_id, "z.npz", buf.getvalue())
    assert response.status_code == 422
    assert re.search(r"\.npz expands to 5632128 bytes, more than the limit of 5000000", response.json()["detail"])
    assert count(app, Artifact) == 0 and stored_files(settings) == [] and tmp_files(settings) == []


def test_dataset_npz_bomb_is_refused_by_its_ratio(ratio_app):
    settings = ratio_app.state.settings
    with TestClient(ratio_app, headers=ADMIN_HEADERS) as api:
        buf = io.BytesIO()
        np.savez_compressed(buf, images=np.zeros((5_000, 32, 32, 3), np.uint8), labels=np.arange(5_000) % 10)
        response = api.post("/api/v1/datasets", data={"name": "bomb"}, files={"file": ("d.npz", buf.getvalue())})
        assert response.status_code == 422, response.text
        assert re.search(r"'images\.npy' expands \d{3,}x \(\d+ bytes compressed to 15360128\); at most 200x",
                         response.json()["detail"])
        assert count(ratio_app, Dataset) == 2  # the two built-ins only
        assert stored_files(settings) == [] and tmp_files(settings) == []


def test_worker_side_refuses_the_bomb_too(tmp_path, monkeypatch):
    """Defence in depth: the worker's readers apply the limits of its own REPSCOPE_* settings."""
    from repscope.settings import get_settings
    from worker.datasets.readers import DatasetError, read_npz

    path = tmp_path / "bomb.npz"
    path.write_bytes(zeros_npz(40_000))
    monkeypatch.setenv("REPSCOPE_ZIP_RATIO_MIN_BYTES", str(1 << 20))
    get_settings.cache_clear()
    try:
        with pytest.raises(FormatError, match=r"'embeddings\.npy' expands \d+x .*at most 200x"):
            load_embeddings(path, "artifact.npz", check_finite=False)  # what worker.engine calls
    finally:
        get_settings.cache_clear()
    dataset = tmp_path / "d.npz"
    np.savez_compressed(dataset, images=np.zeros((5_000, 32, 32, 3), np.uint8), labels=np.arange(5_000) % 10)
    with pytest.raises(DatasetError, match=r"'images\.npy' expands \d+x"):
        read_npz(dataset, zip_limits=ZipLimits(ratio_min_bytes=1 << 20))
    assert read_npz(dataset, zip_limits=ZipLimits()).images.shape == (5_000, 32, 32, 3)  # under ratio_min_bytes


def test_worker_reader_checks_headers_against_declared_sizes_before_allocating(tmp_path):
    """An .npy header claiming 8 TB in a member that declares 200 bytes: np.load would allocate from the header."""
    huge = corpus.npy_header((10**9, 1000), "|u1")
    labels = corpus.npy(np.zeros(4, np.int64))
    path = tmp_path / "lying.npz"
    path.write_bytes(corpus.raw_zip([corpus.stored("images.npy", huge + bytes(72)),
                                     corpus.stored("labels.npy", labels)]))
    from worker.datasets.readers import DatasetError, read_npz

    with pytest.raises(DatasetError, match="inconsistent"):
        read_npz(path)


def lying_member(prefix: bytes, declared: int, n_zeros: int) -> bytes:
    """An .npz whose one member's deflate stream holds `prefix` + `n_zeros` zeros while the zip directory
    declares only `declared` bytes (and the CRC of exactly those bytes)."""
    stream, _, _ = corpus.deflate_bomb(prefix, n_zeros)
    crc = zlib.crc32((prefix + bytes(n_zeros))[:declared])
    return corpus.raw_zip([corpus.RawMember("embeddings.npy", stream, zipfile.ZIP_DEFLATED, crc, declared)])


def test_reading_never_expands_past_the_declared_size(tmp_path):
    """zipfile stops at a member's declared file_size; the bounds above rely on it, so it is checked here."""
    header = corpus.npy_header((10, 10))
    declared = len(header) + 400
    path = tmp_path / "liar.npz"
    path.write_bytes(lying_member(header, declared, 200_000_000))  # a 200 MB stream that declares 528 bytes
    with zipfile.ZipFile(path) as zf, zf.open("embeddings.npy") as f:
        assert len(f.read()) == declared
    tracemalloc.start()
    try:
        info = inspect_embeddings(path, "liar.npz")
        arrays = load_embeddings(path, "liar.npz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (info.n, info.d) == (10, 10) and arrays.embeddings.shape == (10, 10)
    assert peak < 5_000_000, peak  # the 200 MB never materialize


def test_header_disagreeing_with_declared_size_is_refused_at_upload(api, app, settings, run_id):
    header = corpus.npy_header((1000, 1000))  # 4 MB by its header, 528 bytes by the directory
    response = upload(api, run_id, "z.npz", lying_member(header, len(header) + 400, 4_000_000))
    assert response.status_code == 422 and "inconsistent" in response.json()["detail"]
    assert count(app, Artifact) == 0 and stored_files(settings) == [] and tmp_files(settings) == []


def test_zip_directory_total_sums_every_member(tmp_path):
    """Extra members count too: the limit is on what the archive could make anyone inflate."""
    a = zeros_npz(1_000)
    extra = corpus.raw_zip([corpus.stored("embeddings.npy", corpus.npy(np.ones((4, 4), np.float32))),
                            corpus.stored("junk.bin", bytes(3_000_000))])
    path = tmp_path / "extra.npz"
    path.write_bytes(extra)
    total = sum(i.file_size for i in zipfile.ZipFile(path).infolist())
    assert total > 3_000_000
    with pytest.raises(FormatError, match=f"expands to {total} bytes, more than the limit of 1000000"):
        inspect_embeddings(path, zip_limits=ZipLimits(max_expanded_bytes=1_000_000))
    (tmp_path / "a.npz").write_bytes(a)  # 256 kB inflated: within the limit, and its ratio below ratio_min_bytes
    assert inspect_embeddings(tmp_path / "a.npz", zip_limits=ZipLimits(max_expanded_bytes=1_000_000)).n == 1_000


def test_limits_in_the_settings_default_sensibly():
    from repscope.settings import Settings

    limits = ZipLimits.from_settings(Settings(max_upload_bytes=123_456))
    assert limits == ZipLimits(max_expanded_bytes=123_456, max_ratio=200.0, ratio_min_bytes=16 * 1024**2)
    assert ZipLimits.from_settings(Settings(max_npz_expanded_bytes=7)).max_expanded_bytes == 7
