"""A run's projector results: which steps have one, and the figure data of chosen steps.

The step list reads ids and steps only (a projector result holds up to 20 000 points, about 1 MB of JSON); the
figures are loaded for the steps a page shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.models import Artifact, Evaluation
from backend.services import NotFound
from repscope.schemas import Status

SUITE = "projector"


@dataclass(frozen=True)
class ProjectorStep:
    step: int
    evaluation_id: int


def projector_steps(session: Session, run_id: int) -> list[ProjectorStep]:
    """The run's steps with a succeeded projector evaluation, ascending; the newest evaluation of each step."""
    newest = func.max(Evaluation.id)
    stmt = (select(Artifact.step, newest).join(Evaluation, Evaluation.artifact_id == Artifact.id)
            .where(Artifact.run_id == run_id, Evaluation.suite == SUITE, Evaluation.status == Status.succeeded.value)
            .group_by(Artifact.step).order_by(Artifact.step))
    return [ProjectorStep(int(step), int(eid)) for step, eid in session.execute(stmt).all()]


def projector_figures(session: Session, evaluation_id: int) -> dict[str, Any]:
    """The figure data of one succeeded projector evaluation; NotFound otherwise."""
    evaluation = session.get(Evaluation, evaluation_id)
    if evaluation is None or evaluation.suite != SUITE or evaluation.status != Status.succeeded.value:
        raise NotFound(f"evaluation {evaluation_id} is not a finished projector evaluation")
    return (evaluation.result or {}).get("figures") or {}
