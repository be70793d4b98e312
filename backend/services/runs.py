"""Projects and runs: get-or-create, listing with search, tags and pagination; rename, notes, tags, archive and
delete (issue #20).

Get-or-create with a config that differs from the stored one is refused (ConfigConflict, a 409 naming the differing
top-level keys) unless the request says `update`; an empty config means "whatever the run has".
Delete cancels the run's queued and running evaluations, removes its metrics, evaluations, artifacts and the run in
one transaction, then (after the commit) the stored files no remaining artifact or dataset refers to.

A run's config is clipped to MAX_CONFIG_DEPTH levels as it is loaded (see _clip_config): a deeper row, however it
was written, must not break the listings, pages and comparisons that serialize it.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import delete, event, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from backend.limits import clip_json
from backend.models import Artifact, Dataset, Evaluation, Metric, Project, Run
from backend.services import Conflict, NotFound
from backend.storage import ArtifactStore
from repscope.schemas import MAX_CONFIG_DEPTH, ProjectRead, RunCreate, RunRead, RunUpdate, Status, json_depth

Archived = Literal["false", "true", "all"]  # list filter: live runs only (default), archived only, or both

CLIPPED = f"(nested deeper than {MAX_CONFIG_DEPTH} levels: not shown)"


@event.listens_for(Run, "load")
@event.listens_for(Run, "refresh")
def _clip_config(run: Run, *_: Any) -> None:
    """Replace what lies deeper than the accepted depth with CLIPPED, in memory only (the row is untouched,
    nothing is marked dirty)."""
    config = run.__dict__.get("config")
    if isinstance(config, dict | list) and json_depth(config, MAX_CONFIG_DEPTH) > MAX_CONFIG_DEPTH:
        set_committed_value(run, "config", clip_json(config, MAX_CONFIG_DEPTH, CLIPPED))


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(name=name)
        session.add(project)
        try:
            session.flush()
        except IntegrityError:  # another request created it first
            session.rollback()
            project = session.scalars(select(Project).where(Project.name == name)).one()
    return project


class ConfigConflict(Conflict):
    """Get-or-create named an existing run with another config."""

    def __init__(self, run: Run, differing_keys: list[str]) -> None:
        super().__init__(f"run {run.name!r} of project {run.project.name!r} exists with another config (differing "
                         f"keys: {', '.join(differing_keys)}); send update=true to replace its config, or use "
                         "another run name")
        self.differing_keys = differing_keys


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Top-level keys whose values differ (present in one only, or unequal), sorted."""
    missing = object()
    return sorted(k for k in {*old, *new} if old.get(k, missing) != new.get(k, missing))


def get_or_create_run(session: Session, data: RunCreate) -> tuple[Run, bool]:
    """Return (run, created). New tags are merged into an existing run. An existing run with another (non-empty)
    config: ConfigConflict, unless data.update, which replaces the stored config."""
    for _ in range(3):
        project = get_or_create_project(session, data.project)
        run = session.scalar(select(Run).where(Run.project_id == project.id, Run.name == data.name))
        if run is not None:
            differing = config_diff(run.config or {}, data.config) if data.config else []
            if differing and not data.update:
                raise ConfigConflict(run, differing)
            if differing:
                run.config = data.config
            if data.tags and not set(data.tags) <= set(run.tags):
                run.tags = list(dict.fromkeys([*run.tags, *data.tags]))
            if session.dirty:
                session.commit()
            return run, False
        run = Run(project=project, name=data.name, config=data.config, tags=list(dict.fromkeys(data.tags)))
        session.add(run)
        try:
            session.commit()
            return run, True
        except IntegrityError:
            session.rollback()
    raise RuntimeError("could not create run after concurrent inserts")


def get_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"run {run_id} does not exist")
    return run


def run_read(run: Run) -> RunRead:
    return RunRead(id=run.id, project=run.project.name, name=run.name, config=run.config or {},
                   tags=run.tags or [], notes=run.notes, archived=bool(run.archived), created_at=run.created_at)


def archived_clause(archived: Archived) -> Any:
    """The WHERE clause of a list's `archived` filter (None: no filter)."""
    return {"false": Run.archived.is_(False), "true": Run.archived.is_(True), "all": None}[archived]


def update_run(session: Session, run_id: int, body: RunUpdate) -> Run:
    """Rename (unique within the project: Conflict on a clash), set notes, replace tags, archive or restore."""
    run = get_run(session, run_id)
    if body.name is not None and body.name != run.name:
        clash = session.scalar(select(Run.id).where(Run.project_id == run.project_id, Run.name == body.name))
        if clash is not None:
            raise Conflict(f"project {run.project.name!r} already has a run named {body.name!r} (run {clash})")
        run.name = body.name
    if body.notes is not None:
        run.notes = body.notes or None
    if body.tags is not None:
        run.tags = list(dict.fromkeys(body.tags))
    if body.archived is not None:
        run.archived = body.archived
    try:
        session.commit()
    except IntegrityError:  # renamed concurrently to the same name
        session.rollback()
        raise Conflict(f"project already has a run named {body.name!r}") from None
    session.refresh(run)
    return run


def delete_run(session: Session, store: ArtifactStore, run_id: int, by: str) -> dict[str, int]:
    """Delete a run with its metrics, evaluations and artifacts. Its queued and running evaluations are cancelled
    first (a worker running one stops at its next report, which then finds nothing). The rows go in one
    transaction; stored files that no remaining artifact or dataset references are removed after the commit.
    Returns counts of what was deleted."""
    from backend.services import evaluations as evaluation_service  # evaluations imports nothing of ours

    run = get_run(session, run_id)
    artifact_ids = select(Artifact.id).where(Artifact.run_id == run_id)
    live = session.scalars(select(Evaluation.id).where(
        Evaluation.artifact_id.in_(artifact_ids),
        Evaluation.status.in_((Status.queued.value, Status.running.value)))).all()
    for evaluation_id in live:
        try:
            evaluation_service.cancel(session, evaluation_id, by)
        except Conflict:  # finished in between: deleted below all the same
            pass
    run = get_run(session, run_id)
    keys = set(session.scalars(select(Artifact.storage_key).where(Artifact.run_id == run_id)))
    evaluation_ids = select(Evaluation.id).where(Evaluation.artifact_id.in_(artifact_ids))
    try:
        n_metrics = session.execute(delete(Metric).where(or_(
            Metric.run_id == run_id, Metric.evaluation_id.in_(evaluation_ids)))).rowcount
        n_evaluations = session.execute(delete(Evaluation).where(Evaluation.artifact_id.in_(artifact_ids))).rowcount
        # derived embeddings elsewhere (the embedding cache) may name one of these as parent: they keep their file
        session.execute(update(Artifact).where(Artifact.parent_id.in_(artifact_ids)).values(parent_id=None))
        n_artifacts = session.execute(delete(Artifact).where(Artifact.run_id == run_id)).rowcount
        session.execute(delete(Run).where(Run.id == run_id))
        session.commit()
    except Exception:
        session.rollback()
        raise
    session.expunge(run)
    removed = 0
    for key in sorted(keys):
        if not _key_referenced(session, key):
            store.delete(key)
            removed += 1
    return {"metrics": n_metrics, "evaluations": n_evaluations, "artifacts": n_artifacts, "files": removed}


def _key_referenced(session: Session, key: str) -> bool:
    """Whether any artifact or dataset still stores its bytes under `key` (the store is content-addressed)."""
    return any(session.scalar(select(model.id).where(model.storage_key == key).limit(1)) is not None
               for model in (Artifact, Dataset))


def list_runs(session: Session, *, project: str | None = None, tag: str | None = None, q: str | None = None,
              archived: Archived = "false", limit: int = 50, offset: int = 0) -> tuple[list[Run], int]:
    stmt = select(Run).join(Project)
    if (clause := archived_clause(archived)) is not None:
        stmt = stmt.where(clause)
    if project:
        stmt = stmt.where(Project.name == project)
    if q:
        stmt = stmt.where(Run.name.icontains(q, autoescape=True))  # q is a literal: % and _ match themselves
    runs = session.scalars(stmt.order_by(Run.id.desc())).all() if tag else None
    if tag:  # tags live in a JSON list: filter in Python (portable across SQLite and PostgreSQL)
        matching = [r for r in runs if tag in (r.tags or [])]
        return matching[offset: offset + limit], len(matching)
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    items = session.scalars(stmt.order_by(Run.id.desc()).limit(limit).offset(offset)).all()
    return list(items), total


def count_archived(session: Session, project_id: int) -> int:
    return session.scalar(select(func.count(Run.id)).where(Run.project_id == project_id, Run.archived.is_(True))) or 0


def list_projects(session: Session) -> list[ProjectRead]:
    rows = session.execute(
        select(Project, func.count(Run.id)).outerjoin(Run).group_by(Project.id).order_by(Project.name)
    ).all()
    return [ProjectRead(id=p.id, name=p.name, created_at=p.created_at, n_runs=n) for p, n in rows]


def get_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        raise NotFound(f"project {name!r} does not exist")
    return project
