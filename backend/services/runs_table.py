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

from backend.models import Artifact, Evaluation, Metric, Run
from backend.services.leaderboards import direction
from backend.services.metrics import logged_key, of_source, qualified, split_key
from repscope import catalogue

TABLE_COLUMNS = catalogue.TABLE_COLUMNS
SORTS = ("created", "name")
MODES = ("latest", "best")  # a column's value: at the run's latest evaluated step, or its best over steps
ACTIVE = ("queued", "running")  # evaluation statuses that make a shown computed value stale (pending badge)


@dataclass
class RunsTable:
    runs: list[Run]
    total: int
    columns: list[str]
    values: dict[int, dict[str, float]] = field(default_factory=dict)
    last_step: dict[int, int] = field(default_factory=dict)
    sort: str = "created"
    order: str = "desc"
    mode: str = "latest"
    steps: dict[int, dict[str, int]] = field(default_factory=dict)  # the step each shown value comes from
    # {run: {suite: largest step with a queued / running evaluation of that suite}}
    pending_step: dict[int, dict[str, int]] = field(default_factory=dict)

    def pending(self, run_id: int, name: str) -> int | None:
        """The later step whose evaluation (of the suite that computes `name`, per the catalogue; any suite for an
        uncatalogued key) is queued or running, when it is later than the shown value's step; else None.
        Logged scalars are never pending."""
        key, source = split_key(name)
        by_suite = self.pending_step.get(run_id)
        if not by_suite or source == "logged":
            return None
        spec = catalogue.lookup(key)
        later = by_suite.get(spec.suite) if spec else max(by_suite.values())
        step = self.steps.get(run_id, {}).get(name)
        return later if later is not None and (step is None or later > step) else None


def latest_value(name: str):  # noqa: ANN201
    """Correlated scalar subquery: the run's value of `name` (a key, or 'logged:' + key) at its largest step, from
    that namespace only (index seek). Ties at a step: the newest evaluation, or the newest logged row."""
    key, source = split_key(name)
    tiebreak = Metric.id.desc() if source == "logged" else Metric.evaluation_id.desc()
    return (select(Metric.value).where(Metric.run_id == Run.id, Metric.key == key, of_source(source))
            .order_by(Metric.step.desc(), tiebreak).limit(1)
            .correlate(Run).scalar_subquery())


def best_value(name: str):  # noqa: ANN201
    """Correlated scalar subquery: the run's best value of `name` over its steps by the catalogue direction
    (max, min; for a target metric the distance to the target, smallest first); latest_value for no direction."""
    key, source = split_key(name)
    d = direction(name)
    if d == "none":
        return latest_value(name)
    col = {"higher": func.max(Metric.value), "lower": func.min(Metric.value)}.get(d)
    if col is None:
        col = func.min(func.abs(Metric.value - catalogue.target(name)))
    return (select(col).where(Metric.run_id == Run.id, Metric.key == key, of_source(source))
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
               columns: tuple[str, ...] = TABLE_COLUMNS, mode: str = "latest",
               archived: bool | None = False) -> RunsTable:
    """`sort`: 'created', 'name' or a metric key. For a metric, `order` 'desc' lists large values first and
    'asc' small first; the default is best first by the key's direction (for a target-is-best key such as
    α-ReQ, 'asc' means closest to the target first). Runs without the metric come last either way.
    `mode` 'latest' shows (and sorts by) each value at the run's latest evaluated step, 'best' its best over
    steps by the catalogue direction; either way with the step it comes from (`steps`)."""
    mode = mode if mode in MODES else "latest"
    order = order if order in ("asc", "desc") else default_order(sort)
    where = [Run.project_id == project_id]
    if archived is not None:  # False: live runs only (the default); True: archived only; None: both
        where.append(Run.archived.is_(archived))
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
        value = best_value(sort) if mode == "best" else latest_value(sort)
        if direction(sort) == "target" and mode != "best":
            value = func.abs(value - catalogue.target(sort))
        ids = ids.order_by((value.asc() if order == "asc" else value.desc()).nulls_last(), Run.id.desc())
    page_ids = list(session.scalars(ids.limit(limit).offset(offset)))
    runs_by_id = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(page_ids)))} if page_ids else {}
    runs = [runs_by_id[i] for i in page_ids]

    shown = list(dict.fromkeys([*columns, *([sort] if sort not in SORTS else [])]))
    if page_ids:
        shown = _with_logged_beside(session, page_ids, shown)
    table = RunsTable(runs=runs, total=total, columns=shown, sort=sort, order=order, mode=mode)
    if page_ids:
        points = table_points(session, page_ids, shown, mode)
        table.values = {r: {n: v for n, (v, _) in p.items()} for r, p in points.items()}
        table.steps = {r: {n: st for n, (_, st) in p.items()} for r, p in points.items()}
        for run_id, suite, step in session.execute(
                select(Artifact.run_id, Evaluation.suite, func.max(Artifact.step))
                .join(Evaluation, Evaluation.artifact_id == Artifact.id)
                .where(Artifact.run_id.in_(page_ids), Evaluation.status.in_(ACTIVE))
                .group_by(Artifact.run_id, Evaluation.suite)):
            table.pending_step.setdefault(run_id, {})[suite] = step
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


def _better(name: str, value: float, best: float) -> bool:
    """Strictly better by the direction of `name` (so the earliest step reaching the best value is kept)."""
    d = direction(name)
    if d == "higher":
        return value > best
    if d == "lower":
        return value < best
    if d == "target":
        t = catalogue.target(name)
        return abs(value - t) < abs(best - t)
    return True  # no direction: the latest


def table_points(session: Session, run_ids: list[int], names: list[str],
                 mode: str = "latest") -> dict[int, dict[str, tuple[float, int]]]:
    """{run: {name: (value, step)}} for a page of runs: the latest value (as latest_values) or, mode 'best', the
    best over steps by the catalogue direction (a logged scalar has none: its latest)."""
    out: dict[int, dict[str, tuple[float, int]]] = {r: {} for r in run_ids}
    wanted = set(names)
    keys = sorted({split_key(n)[0] for n in names})
    if not run_ids or not keys:
        return out
    rows = session.execute(select(Metric.run_id, Metric.key, Metric.evaluation_id, Metric.value, Metric.step)
                           .where(Metric.run_id.in_(run_ids), Metric.key.in_(keys))
                           .order_by(Metric.run_id, Metric.key, Metric.step, Metric.evaluation_id, Metric.id))
    for run_id, key, eid, value, step in rows:
        name = qualified(key, eid)
        if name not in wanted:
            continue
        seen = out[run_id].get(name)
        if mode != "best" or seen is None or _better(name, value, seen[0]):
            out[run_id][name] = (value, step)
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
