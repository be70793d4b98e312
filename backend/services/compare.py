"""Run series and comparisons: every metric of a run over step, 2–10 runs side by side, config/metric diffs.

A run's series are keyed by name in the two namespaces of backend.services.metrics: computed keys as they are
(`rankme`), scalars the training job logged as `logged:<key>` (`logged:rankme`, `logged:loss`): a logged
scalar with a metric's name is its own curve and diff row, never points of the computed metric."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.models import Artifact, Evaluation, Metric, Run
from backend.services import NotFound
from backend.services.metrics import is_logged, qualified
from repscope.schemas import MetricPoint, MetricSeries, Status

MIN_COMPARE, MAX_COMPARE = 2, 10


class CompareRejected(ValueError):
    """Wrong number of runs picked (the page says so instead of failing)."""


def all_series(session: Session, run_id: int) -> dict[str, MetricSeries]:
    """Every metric of a run over step, in one indexed query (ordered by key, step, evaluation): computed keys
    as they are, logged scalars as 'logged:' + key (each series from its own namespace)."""
    points: dict[str, list[MetricPoint]] = defaultdict(list)
    for key, step, value, eid in session.execute(
            select(Metric.key, Metric.step, Metric.value, Metric.evaluation_id).where(Metric.run_id == run_id)
            .order_by(Metric.key, Metric.step, Metric.evaluation_id, Metric.id)):
        points[qualified(key, eid)].append(MetricPoint(step=step, value=value, evaluation_id=eid))
    return {k: MetricSeries(run_id=run_id, key=k, points=v,
                            source="computed" if v[0].evaluation_id is not None else "logged")
            for k, v in points.items()}


def series_version(session: Session, run_id: int) -> str:
    """"<rows>:<newest id>" of the run's Metric rows: changes whenever a series gains, loses or replaces a point,
    so a page that holds this version knows its charts are current without reading the series."""
    n, last = session.execute(select(func.count(Metric.id), func.max(Metric.id)).where(Metric.run_id == run_id)).one()
    return f"{n}:{last}"


def latest(series: MetricSeries) -> tuple[int, float] | None:
    if not series.points:
        return None
    p = series.points[-1]
    return p.step, p.value


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'opt': {'lr': 0.1}} -> {'opt.lr': 0.1} (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for k, v in (config or {}).items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


@dataclass
class DiffRow:
    section: str          # config | tags | metric
    name: str
    values: list[Any]     # one per compared run (None = absent)
    same: bool
    steps: list[int | None] = field(default_factory=list)


@dataclass
class Spectrum:
    run_id: int
    run: str
    evaluation_id: int
    step: int
    singular_values: list[float]


@dataclass
class Comparison:
    runs: list[Run]
    series: dict[int, dict[str, MetricSeries]]
    diff: list[DiffRow]
    spectra: list[Spectrum]
    keys: list[str]


def _equal(values: list[Any]) -> bool:
    first = values[0]
    for v in values[1:]:
        if isinstance(first, float) and isinstance(v, float):
            if not math.isclose(first, v, rel_tol=1e-12, abs_tol=0.0):
                return False
        elif v != first:
            return False
    return True


def latest_spectrum(session: Session, run_id: int) -> tuple[Evaluation, Artifact] | None:
    """The run's succeeded spectrum evaluation at its largest step (newest evaluation on ties)."""
    row = session.execute(
        select(Evaluation, Artifact).join(Artifact, Evaluation.artifact_id == Artifact.id)
        .where(Artifact.run_id == run_id, Evaluation.suite == "spectrum",
               Evaluation.status == Status.succeeded.value)
        .order_by(Artifact.step.desc(), Evaluation.id.desc()).limit(1)).first()
    return (row[0], row[1]) if row else None


def compare(session: Session, run_ids: list[int]) -> Comparison:
    run_ids = list(dict.fromkeys(run_ids))
    if not MIN_COMPARE <= len(run_ids) <= MAX_COMPARE:
        raise CompareRejected(f"pick between {MIN_COMPARE} and {MAX_COMPARE} runs to compare "
                              f"(got {len(run_ids)})")
    found = {r.id: r for r in session.scalars(select(Run).where(Run.id.in_(run_ids)))}
    missing = [i for i in run_ids if i not in found]
    if missing:
        raise NotFound(f"run {missing[0]} does not exist")
    runs = [found[i] for i in run_ids]
    series = {r.id: all_series(session, r.id) for r in runs}
    keys = sorted({k for s in series.values() for k in s}, key=lambda k: (is_logged(k), k))  # logged ones last

    diff: list[DiffRow] = []
    configs = [flatten(r.config or {}) for r in runs]
    for name in sorted({k for c in configs for k in c}):
        values = [c.get(name) for c in configs]
        diff.append(DiffRow("config", name, values, _equal(values)))
    tags = [", ".join(r.tags or []) for r in runs]
    diff.append(DiffRow("tags", "tags", tags, _equal(tags)))
    for key in keys:
        if "@d" in key:
            continue
        last = [latest(series[r.id][key]) if key in series[r.id] else None for r in runs]
        values = [v[1] if v else None for v in last]
        diff.append(DiffRow("metric", key, values, _equal(values), steps=[v[0] if v else None for v in last]))

    spectra = []
    for r in runs:
        found_spectrum = latest_spectrum(session, r.id)
        if found_spectrum is None:
            continue
        evaluation, artifact = found_spectrum
        sv = ((evaluation.result or {}).get("figures") or {}).get("singular_values") or []
        if sv:
            spectra.append(Spectrum(run_id=r.id, run=r.name, evaluation_id=evaluation.id, step=artifact.step,
                                    singular_values=sv))
    return Comparison(runs=runs, series=series, diff=diff, spectra=spectra, keys=keys)
