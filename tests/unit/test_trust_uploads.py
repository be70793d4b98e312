"""Uploads a write token cannot forge (issue 16, findings 3 and 8): the embedding-cache key and the parent
checkpoint are set by the server from the embed evaluation whose claim the uploading worker holds; an
Idempotency-Key binds to its token and request; identical uploads are stored once by a database constraint."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from backend.models import Artifact, Evaluation
from backend.services import artifacts as artifact_service
from tests.conftest import WORKER_TOKEN
from tests.unit.test_api import count, npy_bytes, npz_bytes, queued_messages, stored_files, tmp_files
from tests.unit.test_auth import bearer, make_token

WORKER = bearer(WORKER_TOKEN)


def checkpoint_bytes(seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    module = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 3, 4)))
    buf = io.BytesIO()
    torch.jit.save(module, buf)
    return buf.getvalue()


def post(client, run_id: int, name: str, content: bytes, headers: dict | None = None, **fields):  # noqa: ANN001, ANN201
    return client.post(f"/api/v1/runs/{run_id}/artifacts", headers=headers or {},
                       data={k: str(v) for k, v in fields.items()}, files={"file": (name, content)})


def make_run(api, name: str) -> int:
    return api.post("/api/v1/runs", json={"project": "trust", "name": name}).json()["id"]


def honest_embeddings(seed: int = 0) -> bytes:
    z = np.random.default_rng(seed).standard_normal((40, 6)).astype(np.float32)
    return npz_bytes(embeddings=z, labels=np.arange(40) % 4)


def perfect_embeddings() -> bytes:
    """What the attacker plants: one-hot class codes, a probe's dream."""
    labels = np.arange(40) % 4
    return npz_bytes(embeddings=np.eye(4, dtype=np.float32)[labels], labels=labels)


def embed_step(api, run_id: int, ckpt: bytes, step: int = 1, **fields) -> dict:
    body = post(api, run_id, "enc.pt", ckpt, kind="checkpoint", step=step, **fields)
    assert body.status_code == 202, body.text
    return body.json()


def attach(client, run_id: int, embed_id: int, content: bytes, headers: dict | None = None):  # noqa: ANN001, ANN201
    """The worker's side of an embed step: claim, then upload the embeddings under that claim."""
    lease = client.post(f"/api/v1/evaluations/{embed_id}/claim", json={"worker": "w"}, headers=WORKER)
    assert lease.status_code == 200, lease.text
    claim = lease.json()["claim"]
    response = post(client, run_id, "z.npz", content, headers or WORKER, evaluation=embed_id, claim=claim)
    return claim, response


def nothing_stored(app, settings, artifacts: int) -> bool:
    return count(app, Artifact) == artifacts and tmp_files(settings) == []


# ---- server-only fields --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [{"cache_key": "0" * 64}, {"parent": "1"}, {"cache_key": "", "parent": "1"}],
                         ids=["cache_key", "parent", "both"])
def test_client_cache_key_and_parent_are_refused(api, app, settings, run_id, fields):
    writer = bearer(make_token(api, "writer", "write"))
    response = post(api, run_id, "z.npz", honest_embeddings(), writer, step=1, **fields)
    assert response.status_code == 422
    for name in fields:
        assert name in response.json()["detail"]
    assert "set by the server" in response.json()["detail"]
    assert nothing_stored(app, settings, 0) and stored_files(settings) == []


def test_only_worker_tokens_attach_derived_embeddings(api, app, settings, run_id):
    embed_id = embed_step(api, run_id, checkpoint_bytes())["evaluations"][0]["id"]
    lease = api.post(f"/api/v1/evaluations/{embed_id}/claim", json={"worker": "w"}, headers=WORKER).json()["claim"]
    writer = bearer(make_token(api, "writer", "write"))
    refused = post(api, run_id, "z.npz", perfect_embeddings(), writer, evaluation=embed_id, claim=lease)
    assert refused.status_code == 403 and "worker scope" in refused.json()["detail"]
    half = post(api, run_id, "z.npz", perfect_embeddings(), WORKER, evaluation=embed_id)
    assert half.status_code == 422 and "'claim'" in half.json()["detail"]
    assert nothing_stored(app, settings, 1)


def test_a_worker_token_uploads_only_an_embed_steps_embeddings(api, app, settings, run_id):
    """The red team's follow-up: with a worker-only token, upload a victim's checkpoint bytes into any run, claim
    that copy's embed step and attach one-hot embeddings: the victim's later upload hit the planted cache entry."""
    ckpt = checkpoint_bytes()
    worker_only = bearer(make_token(api, "wk2", "worker"))
    for headers in (worker_only, WORKER):
        as_checkpoint = post(api, run_id, "enc.pt", ckpt, headers, kind="checkpoint", step=15)
        plain = post(api, run_id, "z.npz", perfect_embeddings(), headers, step=15)
        for refused in (as_checkpoint, plain):
            assert refused.status_code == 403, refused.text
            assert "lacks the write scope" in refused.json()["detail"]
            assert "'evaluation' and 'claim'" in refused.json()["detail"]
    assert nothing_stored(app, settings, 0) and stored_files(settings) == [] and queued_messages(settings) == []
    # the victim's checkpoint is embedded for real: no planted cache entry exists to reuse
    mine = make_run(api, "victim")
    victim = post(api, mine, "mine.pt", ckpt, bearer(make_token(api, "w2", "write")), kind="checkpoint", step=16)
    assert victim.status_code == 202
    assert [(e["suite"], e["status"]) for e in victim.json()["evaluations"]] == [("embed", "queued")]
    # the controls: a worker still attaches the embeddings of the embed step it holds the claim of, and a token
    # with both scopes uploads plain embeddings too
    _, derived = attach(api, mine, victim.json()["evaluations"][0]["id"], honest_embeddings(), worker_only)
    assert derived.status_code == 202, derived.text
    both = bearer(make_token(api, "ci", "write", "worker"))
    assert post(api, run_id, "z.npz", honest_embeddings(), both, step=1).status_code == 202
    assert count(app, Artifact) == 3


def test_a_worker_with_a_wrong_claim_cannot_attach_derived_embeddings(api, app, settings, run_id):
    ckpt = checkpoint_bytes()
    embed_id = embed_step(api, run_id, ckpt)["evaluations"][0]["id"]
    other_id = embed_step(api, run_id, ckpt, step=2)["evaluations"][0]["id"]
    queued = post(api, run_id, "z.npz", perfect_embeddings(), WORKER, evaluation=embed_id, claim="guess-0123456789")
    assert queued.status_code == 409 and "queued" in queued.json()["detail"]  # nobody holds it yet
    api.post(f"/api/v1/evaluations/{embed_id}/claim", json={"worker": "w"}, headers=WORKER)
    other_lease = api.post(f"/api/v1/evaluations/{other_id}/claim", json={"worker": "w"}, headers=WORKER).json()
    for claim in ("guess-0123456789", other_lease["claim"]):  # a made-up id, and another evaluation's real one
        wrong = post(api, run_id, "z.npz", perfect_embeddings(), WORKER, evaluation=embed_id, claim=claim)
        assert wrong.status_code == 409 and "another claim" in wrong.json()["detail"]
    elsewhere = make_run(api, "elsewhere")
    lease = api.post(f"/api/v1/evaluations/{embed_id}/claim", json={"worker": "w"}, headers=WORKER)
    assert lease.status_code == 409  # still held
    assert nothing_stored(app, settings, 2)
    assert post(api, elsewhere, "z.npz", perfect_embeddings(), WORKER, evaluation=other_id,
                claim=other_lease["claim"]).status_code == 422  # its checkpoint is in another run
    contradicting = post(api, run_id, "z.npz", honest_embeddings(), WORKER, evaluation=other_id,
                         claim=other_lease["claim"], step=99)
    assert contradicting.status_code == 422 and "step" in contradicting.json()["detail"]
    assert nothing_stored(app, settings, 2)


def test_the_server_sets_parent_step_dataset_and_cache_key(api, app, run_id):
    first = embed_step(api, run_id, checkpoint_bytes(), step=7, dataset="shapes")
    embed_id = first["evaluations"][0]["id"]
    _, response = attach(api, run_id, embed_id, honest_embeddings())
    assert response.status_code == 202, response.text
    derived = response.json()
    assert derived["artifact"]["step"] == 7 and derived["artifact"]["dataset"] == "shapes"
    with app.state.sessionmaker() as session:
        row = session.get(Artifact, derived["artifact"]["id"])
        embed = session.get(Evaluation, embed_id)
        assert row.parent_id == first["artifact"]["id"] and row.cache_key == embed.params["cache_key"]
        assert [e.suite for e in row.evaluations] == embed.params["suites"]


# ---- the planted-embeddings attack of finding 3, end to end ---------------------------------------------------
def test_planted_embeddings_are_never_reused_for_another_users_checkpoint(api, app, settings):
    victim, attacker = bearer(make_token(api, "alice", "write")), bearer(make_token(api, "mallory", "write"))
    ckpt = checkpoint_bytes()
    # the attacker computes the cache key of alice's checkpoint from public data ...
    params = {"arch": None, "pool": "cls", "output": "backbone", "views": 0}
    key = artifact_service.embedding_cache_key(hashlib.sha256(ckpt).hexdigest(), "builtin:digits:v1", params)
    own = make_run(api, "mallory-run")
    planted = post(api, own, "z.npz", perfect_embeddings(), attacker, step=1, dataset="digits", cache_key=key)
    assert planted.status_code == 422 and "cache_key" in planted.json()["detail"]
    # ... and the embed step of a copy of it in the attacker's own run is out of reach without a worker's claim
    copy = embed_step(api, own, ckpt, headers=attacker)
    forged = post(api, own, "z.npz", perfect_embeddings(), attacker, evaluation=copy["evaluations"][0]["id"],
                  claim="x" * 32)
    assert forged.status_code == 403
    assert count(app, Artifact) == 1  # the attacker's checkpoint only: nothing planted
    # alice's checkpoint is embedded for real, under the very key the attacker computed
    mine = make_run(api, "alice-run")
    upload = post(api, mine, "enc.pt", ckpt, victim, kind="checkpoint", step=1).json()
    assert [(e["suite"], e["status"]) for e in upload["evaluations"]] == [("embed", "queued")]
    embed_id = upload["evaluations"][0]["id"]
    assert api.get(f"/api/v1/evaluations/{embed_id}").json()["params"]["cache_key"] == key
    _, honest = attach(api, mine, embed_id, honest_embeddings())
    assert honest.status_code == 202
    # the next user of that checkpoint reuses alice's honest embeddings, never the attacker's
    third = make_run(api, "bob-run")
    reused = post(api, third, "enc.pt", ckpt, victim, kind="checkpoint", step=1).json()
    assert {e["suite"]: e["status"] for e in reused["evaluations"]}["embed"] == "succeeded"
    shas = {a["kind"]: a["sha256"] for a in api.get(f"/api/v1/runs/{third}/artifacts").json()}
    assert shas["embeddings"] == hashlib.sha256(honest_embeddings()).hexdigest()
    assert shas["embeddings"] != hashlib.sha256(perfect_embeddings()).hexdigest()


def test_cache_hit_needs_the_parent_checkpoints_bytes(api, app, settings, run_id):
    """A row already holding the key (planted before the fix) under another checkpoint, or under none, is ignored."""
    ckpt, other = checkpoint_bytes(0), checkpoint_bytes(1)
    stranger = embed_step(api, run_id, other)["artifact"]["id"]
    perfect = post(api, run_id, "p.npz", perfect_embeddings(), step=3).json()["artifact"]["id"]
    params = {"arch": None, "pool": "cls", "output": "backbone", "views": 0}
    key = artifact_service.embedding_cache_key(hashlib.sha256(ckpt).hexdigest(), "builtin:digits:v1", params)
    with app.state.sessionmaker() as session:
        row = session.get(Artifact, perfect)
        row.cache_key, row.parent_id = key, stranger
        session.add(Artifact(run_id=run_id, step=4, kind="embeddings", format=row.format, sha256=row.sha256,
                             bytes=row.bytes, storage_key=row.storage_key, meta=row.meta, dataset="digits",
                             cache_key=key))
        session.commit()
    fresh = embed_step(api, make_run(api, "victim"), ckpt)
    assert [(e["suite"], e["status"]) for e in fresh["evaluations"]] == [("embed", "queued")]
    assert api.get(f"/api/v1/evaluations/{fresh['evaluations'][0]['id']}").json()["params"]["cache_key"] == key


def test_other_preprocessing_or_a_server_folder_is_not_a_cache_hit(settings, tmp_path):
    from backend.app import create_app
    from tests.conftest import ADMIN_HEADERS

    root = tmp_path / "roots"
    (root / "pets" / "cat").mkdir(parents=True)
    (root / "pets" / "cat" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a class folder with no image is refused
    app = create_app(settings.model_copy(update={"dataset_roots": str(root)}), run_sweeper=False)
    with TestClient(app, headers=ADMIN_HEADERS) as api:
        folder = api.post("/api/v1/datasets/folder", json={"name": "pets", "path": str(root / "pets")})
        assert folder.status_code == 201, folder.text
        ckpt = checkpoint_bytes()
        run = make_run(api, "a")
        for dataset in ("digits", "pets"):
            embed_id = embed_step(api, run, ckpt, dataset=dataset)["evaluations"][0]["id"]
            assert attach(api, run, embed_id, honest_embeddings())[1].status_code == 202
        again = make_run(api, "b")
        mean_pool = embed_step(api, again, ckpt, pool="mean")
        on_folder = embed_step(api, again, ckpt, step=2, dataset="pets")
        same = embed_step(api, again, ckpt, step=3)
        assert [e["status"] for e in mean_pool["evaluations"]] == ["queued"]
        # an unchanged folder: the manifest of its files keys the cache (tests/unit/test_dataset_manifest.py)
        assert {e["suite"]: e["status"] for e in on_folder["evaluations"]}["embed"] == "succeeded"
        embed = api.get(f"/api/v1/evaluations/{on_folder['evaluations'][0]['id']}").json()
        assert embed["params"]["cache_key"] and embed["params"]["dataset_manifest"].startswith("manifest-v1:")
        assert {e["suite"]: e["status"] for e in same["evaluations"]}["embed"] == "succeeded"  # the control


# ---- Idempotency-Key --------------------------------------------------------------------------------------------
def test_idempotency_key_reuse_with_another_body_or_token_is_a_409(api, app, settings, run_id):
    alice, bob = bearer(make_token(api, "alice", "write")), bearer(make_token(api, "bob", "write"))
    z, other_z = npy_bytes(np.eye(6, dtype=np.float32)), npy_bytes(2 * np.eye(6, dtype=np.float32))

    def send(headers: dict, content: bytes, step: int = 7):  # noqa: ANN202
        return api.post(f"/api/v1/runs/{run_id}/artifacts", headers={**headers, "Idempotency-Key": "job-1:step-7"},
                        data={"step": str(step)}, files={"file": ("z.npy", content)})

    first = send(alice, z)
    assert first.status_code == 202 and first.json()["deduplicated"] is False
    other_file = send(alice, other_z)
    other_fields = send(alice, z, step=8)
    for response in (other_file, other_fields):
        assert response.status_code == 409 and "different request" in response.json()["detail"]
    other_token = send(bob, z)
    assert other_token.status_code == 409 and "another token" in other_token.json()["detail"]
    again = send(alice, z)
    assert again.status_code == 202 and again.json()["deduplicated"] is True
    assert again.json()["artifact"]["id"] == first.json()["artifact"]["id"]
    assert nothing_stored(app, settings, 1) and len(stored_files(settings)) == 1
    assert len(queued_messages(settings)) == 1


def test_a_revoked_tokens_key_is_not_inherited(api, app, run_id):
    alice = make_token(api, "alice", "write")
    headers = {**bearer(alice), "Idempotency-Key": "job-2:step-1"}
    body = {"data": {"step": "1"}, "files": {"file": ("z.npy", npy_bytes(np.eye(4, dtype=np.float32)))}}
    assert api.post(f"/api/v1/runs/{run_id}/artifacts", headers=headers, **body).status_code == 202
    tid = next(t["id"] for t in api.get("/api/v1/tokens").json() if t["name"] == "alice")
    api.delete(f"/api/v1/tokens/{tid}")
    heir = make_token(api, "heir", "write")  # on SQLite it may get alice's id
    replay = api.post(f"/api/v1/runs/{run_id}/artifacts", headers={**bearer(heir), "Idempotency-Key": "job-2:step-1"},
                      **body)
    assert replay.status_code == 409


# ---- identical concurrent uploads: the constraint decides (PostgreSQL: tests/integration/test_dedupe_live.py) ---
@pytest.mark.parametrize("lose_file", [False, True], ids=["file-kept", "file-restored-by-loser"])
def test_the_loser_of_an_upload_race_answers_with_the_winner(api, app, settings, run_id, monkeypatch, lose_file):
    """The race window opened deterministically: the loser's duplicate check misses, as it does when both
    requests check before either commits; the unique (run, dedupe key) constraint then refuses its insert."""
    content = npz_bytes(embeddings=np.eye(5, dtype=np.float32), labels=np.arange(5))
    winner = post(api, run_id, "z.npz", content, step=1).json()
    if lose_file:  # the winner's object went missing: the loser stores it, and keeps it (the winner's row uses it)
        [path] = stored_files(settings)
        path.unlink()
    real, calls = artifact_service._by_dedupe_key, []

    def racing(session, run_id, key):  # noqa: ANN001, ANN202
        calls.append(key)
        return None if len(calls) == 1 else real(session, run_id, key)

    monkeypatch.setattr(artifact_service, "_by_dedupe_key", racing)
    loser = post(api, run_id, "z.npz", content, step=1)
    assert loser.status_code == 202 and len(calls) == 2  # the pre-check missed, the winner was found after
    assert loser.json()["deduplicated"] is True and loser.json()["artifact"]["id"] == winner["artifact"]["id"]
    assert [e["id"] for e in loser.json()["evaluations"]] == [e["id"] for e in winner["evaluations"]]
    assert count(app, Artifact) == 1 and count(app, Evaluation) == 2 and tmp_files(settings) == []
    assert len(queued_messages(settings)) == 2  # the winner's two evaluations, sent once
    assert api.get(f"/api/v1/artifacts/{winner['artifact']['id']}/file").content == content
    with app.state.sessionmaker() as session:
        keys = session.scalars(select(Artifact.dedupe_key)).all()
    assert keys == [calls[0]]


# ---- Idempotency-Key across runs: a key names one request of one token on one run ---------------------------------
def test_idempotency_key_reused_on_another_run_is_a_409(api, app, settings, run_id):
    alice, bob = bearer(make_token(api, "alice", "write")), bearer(make_token(api, "bob", "write"))
    other_run = make_run(api, "other")
    z, other_z = npy_bytes(np.eye(6, dtype=np.float32)), npy_bytes(2 * np.eye(6, dtype=np.float32))

    def send(headers: dict, run: int, content: bytes):  # noqa: ANN202
        return post(api, run, "z.npy", content, {**headers, "Idempotency-Key": "job-3:step-7"}, step=7)

    first = send(alice, run_id, z)
    assert first.status_code == 202
    for content in (other_z, z):  # another body, and even the very same request, aimed at another run
        moved = send(alice, other_run, content)
        assert moved.status_code == 409, moved.text
        assert moved.json()["detail"] == (f"Idempotency-Key 'job-3:step-7' was already used on run {run_id}, not run "
                                          f"{other_run}; use a new key for a new upload")
    stranger = send(bob, other_run, other_z)
    assert stranger.status_code == 409 and "by another token" in stranger.json()["detail"]
    assert send(alice, run_id, z).json()["deduplicated"] is True  # the control: the true retry
    assert nothing_stored(app, settings, 1) and len(stored_files(settings)) == 1
    assert api.get(f"/api/v1/runs/{other_run}/artifacts").json() == []


def test_a_cross_run_key_race_is_decided_by_the_unique_key(api, app, settings, run_id, monkeypatch):
    """Both requests look the key up before either commits (the pre-check forced to miss): the database's unique
    Idempotency-Key constraint refuses the second insert, which then answers 409 naming the winner's run."""
    alice = bearer(make_token(api, "alice", "write"))
    headers = {**alice, "Idempotency-Key": "race:key-1"}
    assert post(api, run_id, "z.npy", npy_bytes(np.eye(4, dtype=np.float32)), headers, step=1).status_code == 202
    real, calls = artifact_service.find_by_idempotency_key, []

    def racing(session, key):  # noqa: ANN001, ANN202
        calls.append(key)
        return None if len(calls) == 1 else real(session, key)

    monkeypatch.setattr(artifact_service, "find_by_idempotency_key", racing)
    monkeypatch.setattr("backend.api.artifacts.find_by_idempotency_key", racing)
    other_run = make_run(api, "other")
    loser = post(api, other_run, "z.npy", npy_bytes(3 * np.eye(4, dtype=np.float32)), headers, step=1)
    assert loser.status_code == 409 and len(calls) == 2
    assert f"already used on run {run_id}, not run {other_run}" in loser.json()["detail"]
    assert nothing_stored(app, settings, 1) and len(stored_files(settings)) == 1
    assert len(queued_messages(settings)) == 1


def test_migration_makes_idempotency_keys_global_and_matches_the_models(tmp_path):
    """0005 on a database whose key was reused across runs (allowed before): the first row keeps it, then the
    unique key holds, and the migrated schema is exactly models.py's."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine, text

    from backend.migrate import alembic_config
    from backend.models import Base

    url = f"sqlite:///{tmp_path / 'm.db'}"
    command.upgrade(alembic_config(url), "0004")
    engine = create_engine(url)
    with engine.begin() as db:
        db.execute(text("INSERT INTO projects (id, name, created_at) VALUES (1, 'p', CURRENT_TIMESTAMP)"))
        db.execute(text("INSERT INTO runs (id, project_id, name, config, tags, created_at) VALUES "
                        "(1, 1, 'a', '{}', '[]', CURRENT_TIMESTAMP), (2, 1, 'b', '{}', '[]', CURRENT_TIMESTAMP)"))
        for id_, run, key in ((1, 1, "k-shared"), (2, 2, "k-shared"), (3, 2, "k-own")):
            db.execute(text("INSERT INTO artifacts (id, run_id, step, kind, format, sha256, bytes, storage_key, meta, "
                            "idempotency_key, created_at) VALUES (:id, :run, 0, 'embeddings', 'npy', 'x', 1, 's', "
                            "'{}', :key, CURRENT_TIMESTAMP)"), {"id": id_, "run": run, "key": key})
    command.upgrade(alembic_config(url), "head")
    with engine.begin() as db:
        keys = db.execute(text("SELECT id, idempotency_key FROM artifacts ORDER BY id")).all()
        assert [tuple(r) for r in keys] == [(1, "k-shared"), (2, None), (3, "k-own")]
        assert compare_metadata(MigrationContext.configure(db), Base.metadata) == []
        with pytest.raises(IntegrityError):
            db.execute(text("UPDATE artifacts SET idempotency_key = 'k-shared' WHERE id = 3"))
