"""Projects and runs: get-or-create, listing with search, tags and pagination.

A run's config is clipped to MAX_CONFIG_DEPTH levels as it is loaded (see _clip_config): a deeper row, however it
was written, must not break the listings, pages and comparisons that serialize it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from backend.limits import clip_json
from backend.models import Project, Run
from backend.services import NotFound
from repscope.schemas import MAX_CONFIG_DEPTH, ProjectRead, RunCreate, RunRead, json_depth

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


def get_or_create_run(session: Session, data: RunCreate) -> tuple[Run, bool]:
    """Return (run, created). An existing run keeps its config; new tags are merged in."""
    for _ in range(3):
        project = get_or_create_project(session, data.project)
        run = session.scalar(select(Run).where(Run.project_id == project.id, Run.name == data.name))
        if run is not None:
            if data.tags and not set(data.tags) <= set(run.tags):
                run.tags = list(dict.fromkeys([*run.tags, *data.tags]))
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
                   tags=run.tags or [], created_at=run.created_at)


def list_runs(session: Session, *, project: str | None = None, tag: str | None = None, q: str | None = None,
              limit: int = 50, offset: int = 0) -> tuple[list[Run], int]:
    stmt = select(Run).join(Project)
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
