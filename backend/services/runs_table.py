"""A project's runs table: search, tag filter, sort by any metric's latest value, pagination — all in SQL.

"Latest value" of a key for a run is the value at the run's largest step for that key (the newest
evaluation on ties), read from one namespace (backend.services.metrics): a column `rankme` is the computed
RankMe only, a column `logged:rankme` the scalar the training job logged under that name. A default column
that some run on the page also logged gets its `logged:` column right beside it. It is a correlated scalar
subquery per run,

    SELECT value FROM metrics WHERE run_id = runs.id AND key = :k AND evaluation_id IS NOT NULL
    ORDER BY step DESC, evaluation_id DESC LIMIT 1          (logged: evaluation_id IS NULL ... ORDER BY step, id)

which is an index seek on (run_id, key, step) (ix_metric_run_key_step), so sorting 10 000 runs costs
10 000 seeks and the page itself only the rows it shows. Nothing loads every run into Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import String, func, select
from sqlalchemy.orm import Session

from backend.models import Artifact, Metric, Run
from backend.services.leaderboards import direction
from backend.services.metrics import logged_key, of_source, qualified, split_key
from repscope import catalogue

TABLE_COLUMNS = catalogue.TABLE_COLUMNS
SORTS = ("created", "name")


@dataclass
class RunsTable:
    runs: list[Run]
    total: int
    columns: list[str]
    values: dict[int, dict[str, float]] = field(default_factory=dict)
    last_step: dict[int, int] = field(default_factory=dict)
    sort: str = "created"
    order: str = "desc"


def latest_value(name: str):  # noqa: ANN201
    """Correlated scalar subquery: the run's value of `name` (a key, or 'logged:' + key) at its largest step, from
    that namespace only (index seek). Ties at a step: the newest evaluation, or the newest logged row."""
    key, source = split_key(name)
    tiebreak = Metric.id.desc() if source == "logged" else Metric.evaluation_id.desc()
    return (select(Metric.value).where(Metric.run_id == Run.id, Metric.key == key, of_source(source))
            .order_by(Metric.step.desc(), tiebreak).limit(1)
            .correlate(Run).scalar_subquery())


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def default_order(sort: str) -> str:
    if sort == "name":
        return "asc"
    if sort == "created":
        return "desc"
    return "asc" if direction(sort) in ("lower", "target") else "desc"


def runs_table(session: Session, project_id: int, *, q: str | None = None, tag: str | None = None,
               sort: str = "created", order: str | None = None, limit: int = 50, offset: int = 0,
               columns: tuple[str, ...] = TABLE_COLUMNS) -> RunsTable:
    """`sort`: 'created', 'name' or a metric key. For a metric, `order` 'desc' lists large values first and
    'asc' small first; the default is best first by the key's direction (for a target-is-best key such as
    α-ReQ, 'asc' means closest to the target first). Runs without the metric come last either way."""
    order = order if order in ("asc", "desc") else default_order(sort)
    where = [Run.project_id == project_id]
    if q:
        where.append(Run.name.ilike(f"%{_escape_like(q)}%", escape="\\"))
    if tag:  # tags are a JSON list stored as text: match the JSON-encoded element, quotes included
        where.append(Run.tags.cast(String).like(f"%{_escape_like(json.dumps(tag))}%", escape="\\"))
    total = session.scalar(select(func.count(Run.id)).where(*where)) or 0

    ids = select(Run.id).where(*where)
    if sort == "name":
        ids = ids.order_by(Run.name.asc() if order == "asc" else Run.name.desc(), Run.id.desc())
    elif sort == "created":
        ids = ids.order_by(Run.id.asc() if order == "asc" else Run.id.desc())
    else:
        value = latest_value(sort)
        if direction(sort) == "target":
            value = func.abs(value - catalogue.target(sort))
        ids = ids.order_by((value.asc() if order == "asc" else value.desc()).nulls_last(), Run.id.desc())
    page_ids = list(session.scalars(ids.limit(limit).offset(offset)))
    runs_by_id = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(page_ids)))} if page_ids else {}
    runs = [runs_by_id[i] for i in page_ids]

    shown = list(dict.fromkeys([*columns, *([sort] if sort not in SORTS else [])]))
    if page_ids:
        shown = _with_logged_beside(session, page_ids, shown)
    table = RunsTable(runs=runs, total=total, columns=shown, sort=sort, order=order)
    if page_ids:
        table.values = latest_values(session, page_ids, shown)
        table.last_step = dict(session.execute(select(Artifact.run_id, func.max(Artifact.step))
                                               .where(Artifact.run_id.in_(page_ids)).group_by(Artifact.run_id)).all())
    return table


def _with_logged_beside(session: Session, run_ids: list[int], columns: list[str]) -> list[str]:
    """The columns with `logged:k` inserted after each computed column k that a run of the page also logged."""
    computed = [c for c in columns if split_key(c)[1] == "computed"]
    if not computed:
        return columns
    logged = set(session.scalars(select(Metric.key).where(Metric.run_id.in_(run_ids), Metric.key.in_(computed),
                                                          of_source("logged")).distinct()))
    out: list[str] = []
    for c in columns:
        out.append(c)
        if c in logged:
            out.append(logged_key(c))
    return list(dict.fromkeys(out))


def latest_values(session: Session, run_ids: list[int], names: list[str]) -> dict[int, dict[str, float]]:
    """{run: {name: latest value}} for a page of runs (rows of those runs only, via the index); a name is a
    computed key or 'logged:' + a logged key, each read from its own namespace."""
    out: dict[int, dict[str, float]] = {r: {} for r in run_ids}
    wanted = set(names)
    keys = sorted({split_key(n)[0] for n in names})
    if not run_ids or not keys:
        return out
    rows = session.execute(select(Metric.run_id, Metric.key, Metric.evaluation_id, Metric.value)
                           .where(Metric.run_id.in_(run_ids), Metric.key.in_(keys))
                           .order_by(Metric.run_id, Metric.key, Metric.step, Metric.evaluation_id, Metric.id))
    for run_id, key, eid, value in rows:  # ascending per namespace: the last one written is the latest
        name = qualified(key, eid)
        if name in wanted:
            out[run_id][name] = value
    return out


def project_metric_keys(session: Session, project_id: int, source: str | None = None) -> list[str]:
    """Metric names the project's runs have (nested-prefix keys left out), for the sort picker: computed keys,
    then logged scalars as 'logged:' + key. `source` keeps one namespace."""
    rows = session.execute(select(Metric.key, Metric.evaluation_id.is_(None)).join(Run, Metric.run_id == Run.id)
                           .where(Run.project_id == project_id).distinct())
    names = {logged_key(k) if is_logged else k for k, is_logged in rows if "@d" not in k}
    if source is not None:
        names = {n for n in names if split_key(n)[1] == source}
    return sorted(names, key=lambda n: (split_key(n)[1] == "logged", n))


def project_tags(session: Session, project_id: int, limit: int = 2000) -> list[str]:
    """Distinct tags over (at most `limit` of) the project's newest runs, for the tag filter."""
    tags: dict[str, None] = {}
    for run_tags in session.scalars(select(Run.tags).where(Run.project_id == project_id)
                                    .order_by(Run.id.desc()).limit(limit)):
        for t in run_tags or []:
            tags.setdefault(t, None)
    return sorted(tags)
