"""Metric series over training step, read from the flat, indexed Metric table.

Two namespaces share the table and never mix: **computed** metrics (rows with an evaluation: what repscope's
suites measured) and **logged** scalars (rows without one: what the training job POSTed itself, loss, lr, or
its own "rankme"). A logged scalar may carry a metric's name; it is still a different quantity with another
provenance, so every read path picks one namespace explicitly. Pages and tables name a logged scalar
`logged:<name>` (LOGGED_PREFIX), shown beside the computed metric of the same name, never instead of it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC
from typing import Literal

from sqlalchemy import ColumnElement, delete, exists, func, select
from sqlalchemy.orm import Session

from backend.models import Artifact, Evaluation, Metric
from repscope.catalogue import in_catalogue
from repscope.schemas import MetricPoint, MetricSeries

Source = Literal["computed", "logged"]
LOGGED_PREFIX = "logged:"

def logged_key(key: str) -> str:
    """The display / sort name of a logged scalar: 'loss' -> 'logged:loss'."""
    return LOGGED_PREFIX + key


def split_key(name: str) -> tuple[str, Source]:
    """'logged:loss' -> ('loss', 'logged'); 'rankme' -> ('rankme', 'computed'). One prefix is stripped, so a
    logged scalar whose own name starts with 'logged:' is 'logged:logged:…'."""
    if name.startswith(LOGGED_PREFIX):
        return name[len(LOGGED_PREFIX):], "logged"
    return name, "computed"


def is_logged(name: str) -> bool:
    return name.startswith(LOGGED_PREFIX)


def of_source(source: Source) -> ColumnElement[bool]:
    """The WHERE clause of one namespace."""
    return Metric.evaluation_id.is_(None) if source == "logged" else Metric.evaluation_id.is_not(None)


def qualified(key: str, evaluation_id: int | None) -> str:
    """A row's name in the merged view of a run: computed keys as they are, logged ones prefixed."""
    return key if evaluation_id is not None else logged_key(key)


def default_source(session: Session, run_id: int, key: str) -> Source:
    """`computed` when the key is in the metric catalogue (repscope.catalogue: what the suites compute, so a job
    that logged its own "rankme" never gets it back by default) or an evaluation of this run produced it, else
    `logged`."""
    if in_catalogue(key):
        return "computed"
    has_computed = session.scalar(select(exists().where(Metric.run_id == run_id, Metric.key == key,
                                                        of_source("computed"))))
    return "computed" if has_computed else "logged"


def series(session: Session, run_id: int, key: str, dataset: str | None = None,
           source: Source | None = None) -> MetricSeries:
    """The metric over step from one namespace (`source`, default: default_source), each point with the dataset
    its embeddings came from (None for logged scalars). `dataset` keeps only that dataset's points: one run may
    be evaluated on several (logged scalars have none, so a logged series filtered by dataset is empty)."""
    source = source or default_source(session, run_id, key)
    stmt = (select(Metric.step, Metric.value, Metric.evaluation_id, Artifact.dataset)
            .outerjoin(Evaluation, Evaluation.id == Metric.evaluation_id)
            .outerjoin(Artifact, Artifact.id == Evaluation.artifact_id)
            .where(Metric.run_id == run_id, Metric.key == key, of_source(source)))
    if dataset is not None:
        stmt = stmt.where(Artifact.dataset == dataset)
    rows = session.execute(stmt.order_by(Metric.step, Metric.evaluation_id)).all()
    return MetricSeries(run_id=run_id, key=key, source=source, points=[
        MetricPoint(step=s, value=v, evaluation_id=e, dataset=d) for s, v, e, d in rows])


LOGGED_KEY = re.compile(r"^[A-Za-z0-9_./@:-]{1,200}$")


def log_metrics(session: Session, run_id: int, step: int, values: dict[str, float]) -> int:
    """Store scalars logged by the training job at `step`; a value logged again for the same step replaces
    the earlier one (of the logged namespace only: computed rows are never touched). Returns how many."""
    bad = [k for k in values if not LOGGED_KEY.match(k)]
    if bad:
        raise ValueError(f"metric names must be 1-200 of letters, digits, _ . / @ : -; got {bad[:3]}")
    infinite = [k for k, v in values.items() if not math.isfinite(v)]
    if infinite:
        raise ValueError(f"metric values must be finite; got NaN/Inf for {infinite[:3]}")
    session.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step == step,
                                         of_source("logged"), Metric.key.in_(list(values))))
    session.add_all(Metric(evaluation_id=None, run_id=run_id, step=step, key=k, value=v) for k, v in values.items())
    session.commit()
    return len(values)


def keys(session: Session, run_id: int, source: Source | None = None) -> list[str]:
    """The metric names this run has: of one namespace, or (source None) of both, each name once."""
    stmt = select(Metric.key).where(Metric.run_id == run_id).distinct()
    if source is not None:
        stmt = stmt.where(of_source(source))
    return sorted(session.scalars(stmt))


def step_anchors(session: Session, run_id: int) -> dict[int, float]:
    """{step: unix seconds} of the run's first artifact upload at each step: the wall time of that training step
    (Metric rows carry no time of their own; backend.figures.step_times interpolates logged scalars between)."""
    rows = session.execute(select(Artifact.step, func.min(Artifact.created_at)).where(Artifact.run_id == run_id)
                           .group_by(Artifact.step))
    return {step: (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp() for step, t in rows if t is not None}
