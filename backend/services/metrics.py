"""Metric series over training step, read from the flat, indexed Metric table."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import Metric
from repscope.schemas import MetricPoint, MetricSeries


def series(session: Session, run_id: int, key: str) -> MetricSeries:
    rows = session.execute(select(Metric.step, Metric.value, Metric.evaluation_id)
                           .where(Metric.run_id == run_id, Metric.key == key)
                           .order_by(Metric.step, Metric.evaluation_id)).all()
    return MetricSeries(run_id=run_id, key=key,
                        points=[MetricPoint(step=s, value=v, evaluation_id=e) for s, v, e in rows])


def keys(session: Session, run_id: int) -> list[str]:
    return sorted(session.scalars(select(Metric.key).where(Metric.run_id == run_id).distinct()))
