"""Metric series over training step, read from the flat, indexed Metric table."""

from __future__ import annotations

import math
import re

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from backend.models import Artifact, Evaluation, Metric
from repscope.schemas import MetricPoint, MetricSeries


def series(session: Session, run_id: int, key: str, dataset: str | None = None) -> MetricSeries:
    """The metric over step, each point with the dataset its embeddings came from (None for logged scalars).
    `dataset` keeps only that dataset's points: one run may be evaluated on several."""
    stmt = (select(Metric.step, Metric.value, Metric.evaluation_id, Artifact.dataset)
            .outerjoin(Evaluation, Evaluation.id == Metric.evaluation_id)
            .outerjoin(Artifact, Artifact.id == Evaluation.artifact_id)
            .where(Metric.run_id == run_id, Metric.key == key))
    if dataset is not None:
        stmt = stmt.where(Artifact.dataset == dataset)
    rows = session.execute(stmt.order_by(Metric.step, Metric.evaluation_id)).all()
    return MetricSeries(run_id=run_id, key=key, points=[
        MetricPoint(step=s, value=v, evaluation_id=e, dataset=d) for s, v, e, d in rows])


LOGGED_KEY = re.compile(r"^[A-Za-z0-9_./@:-]{1,200}$")


def log_metrics(session: Session, run_id: int, step: int, values: dict[str, float]) -> int:
    """Store scalars logged by the training job at `step`; a value logged again for the same step replaces
    the earlier one. Returns how many were stored."""
    bad = [k for k in values if not LOGGED_KEY.match(k)]
    if bad:
        raise ValueError(f"metric names must be 1-200 of letters, digits, _ . / @ : -; got {bad[:3]}")
    infinite = [k for k, v in values.items() if not math.isfinite(v)]
    if infinite:
        raise ValueError(f"metric values must be finite; got NaN/Inf for {infinite[:3]}")
    session.execute(delete(Metric).where(Metric.run_id == run_id, Metric.step == step,
                                         Metric.evaluation_id.is_(None), Metric.key.in_(list(values))))
    session.add_all(Metric(evaluation_id=None, run_id=run_id, step=step, key=k, value=v) for k, v in values.items())
    session.commit()
    return len(values)


def keys(session: Session, run_id: int) -> list[str]:
    return sorted(session.scalars(select(Metric.key).where(Metric.run_id == run_id).distinct()))
