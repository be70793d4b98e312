"""Leaderboards per dataset: one row per run, any metric columns, Borda rank across the chosen metrics.

Metric direction (which value is better) comes from the metric catalogue (repscope.catalogue, one entry per
metric) and is used by leaderboards, the runs table's default sort order, the compare page's radar chart and
the label-free selection view:

* higher is better: the default, and every key outside the catalogue (RankMe and the other effective ranks,
  ``condition`` — which is the *inverse* condition number σ_min/σ_max ∈ [0, 1] —, ``collapse_std``, probe
  accuracies, open-set AUROC, equivariance scores, …);
* lower is better: e.g. the uniformity loss, open-set FPR at 95 % TPR, backdoor risk;
* closest to a target is better: α-ReQ, whose optimum is α ≈ 1 (Agrawal et al. 2022);
* no direction: what a suite reports about itself (e.g. the probe's chosen C, the α-ReQ fit's R²) and every
  scalar the training job logged itself (``logged:<name>``: its meaning is the job's, even when its name is a
  metric's) — shown and sortable, but never counted in a Borda rank or drawn on a radar chart.

Leaderboards rank computed metrics only: every value comes from an evaluation of an artifact on the dataset
(the inner joins below), so a scalar a training job logged under a metric's name never enters a row.

Nested-prefix keys ``{key}@d{k}`` take the direction of ``{key}``.

Borda rank (as MTEB's leaderboard): for each chosen metric, a run earns one point for every other run it
beats on that metric; the Borda score is the sum over metrics, and rank 1 is the largest score.
  * a tie (equal values) earns half a point to each of the two runs;
  * a run with a value beats every run without one (a missing value is last); two missing values earn
    nothing;
  * metrics without a direction are not counted.
Equal Borda scores share a rank ("1224" competition ranking); rows are then listed by run name.

Scope (issue #20): a dataset *name* is free text, so two projects may use one name for different data. A board is
scoped to (project, dataset name) by default. The cross-project view mixes only embeddings whose dataset identity
and embedding dimension d (the artifact's meta ``d``) both match, one board per (identity, d):

* embeddings the server derived from a checkpoint on a registered dataset: the dataset's content hash as the
  upload pinned it — a server folder's manifest hash (repscope.dataset_manifest, recorded in the embed step's
  params as ``dataset_manifest``), else the registered dataset's sha256 (an upload's file hash, a built-in's
  generator version); verified;
* uploaded embeddings whose meta carries ``labels_sha256`` (sha256 of the labels array): that hash and N; verified;
* every other upload: the dataset name, N and the number of classes — *unverified* (nothing hashes the content),
  shown as such on the page; two uploads fall in one group only when all three agree.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.models import Artifact, Dataset, Evaluation, Metric, Project, Run
from backend.services.metrics import LOGGED_PREFIX
from repscope import catalogue
from repscope.catalogue import Direction
from repscope.suites import EMBED_STEP

NO_DATASET = "-"  # leaderboard of embeddings uploaded without a dataset name
DEFAULT_COLUMNS = catalogue.LEADERBOARD_COLUMNS
MAX_METRICS = 50

Pick = Literal["best", "last"]


def direction(key: str) -> Direction:
    """The catalogue's direction of `key`; 'none' for a logged scalar."""
    if key.startswith(LOGGED_PREFIX):
        return "none"
    return catalogue.direction(key)


def score(key: str, value: float | None) -> float | None:
    """The value mapped so that larger is always better (None when missing or the key has no direction)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    d = direction(key)
    if d == "higher":
        return value
    if d == "lower":
        return -value
    if d == "target":
        return -abs(value - catalogue.target(key))
    return None


def directions_table() -> list[dict[str, str]]:
    """The direction rules, for the API and the pages (documentation that cannot drift from the code)."""
    specs = sorted(catalogue.METRICS, key=lambda spec: spec.glob)  # patterns as shell wildcards
    rows = [{"pattern": s.glob, "direction": "lower is better"} for s in specs if s.direction == "lower"]
    rows += [{"pattern": s.glob, "direction": f"closest to {s.target:g} is better"}
             for s in specs if s.direction == "target"]
    rows += [{"pattern": s.glob, "direction": "no direction (not ranked)"} for s in specs if s.direction == "none"]
    rows.append({"pattern": LOGGED_PREFIX + "*", "direction": "no direction (scalars the training job logged)"})
    rows.append({"pattern": "everything else", "direction": "higher is better"})
    return rows


# --- Borda ------------------------------------------------------------------------------------------------

def borda_points(values: list[float | None], key: str) -> list[float]:
    """Points per entry for one metric: runs beaten (+0.5 per tie; a value beats a missing value)."""
    scores = [score(key, v) for v in values]
    if direction(key) == "none":
        return [0.0] * len(values)
    present = sorted(s for s in scores if s is not None)
    n_missing = len(scores) - len(present)
    out = []
    for s in scores:
        if s is None:
            out.append(0.0)
            continue
        below = bisect.bisect_left(present, s)
        equal = bisect.bisect_right(present, s) - below - 1  # other runs with the same value
        out.append(below + 0.5 * equal + n_missing)
    return out


def competition_ranks(scores: list[float]) -> list[int]:
    """1 + the number of strictly larger scores ("1224")."""
    ordered = sorted(scores, reverse=True)
    first = {}
    for i, s in enumerate(ordered):
        first.setdefault(s, i + 1)
    return [first[s] for s in scores]


# --- the leaderboard -------------------------------------------------------------------------------------

@dataclass
class Row:
    run_id: int
    project: str
    run: str
    step: int
    values: dict[str, float | None]
    points: dict[str, float] = field(default_factory=dict)
    borda: float = 0.0
    rank: int = 0


@dataclass
class Leaderboard:
    dataset: str
    pick: str
    by: str | None
    metrics: list[str]
    directions: dict[str, str]
    sort: str
    order: str
    rows: list[Row]
    available: list[str]
    project: str | None = None  # the scope: one project's runs (None: every project, or one identity group)
    groups: list[dict] = field(default_factory=list)  # the (identity, d) groups of the embeddings on the board
    definition: str = ("Borda: per metric, a run earns one point per run it beats; a tie earns 0.5 to each; "
                       "a value beats a missing value; metrics without a direction are not counted. "
                       "Rank 1 = largest sum; equal sums share a rank.")

    def to_json(self) -> dict:
        return asdict(self)


def _dataset_filter(stmt, dataset: str):  # noqa: ANN001, ANN202
    return stmt.where(Artifact.dataset.is_(None) if dataset == NO_DATASET else Artifact.dataset == dataset)


def _scope(stmt, dataset: str, project: str | None, artifact_ids: list[int] | None):  # noqa: ANN001, ANN202
    stmt = _dataset_filter(stmt, dataset)
    if project:
        stmt = stmt.join(Run, Metric.run_id == Run.id).join(Project).where(Project.name == project)
    if artifact_ids is not None:
        stmt = stmt.where(Artifact.id.in_(artifact_ids))
    return stmt


def available_keys(session: Session, dataset: str, project: str | None = None,
                   artifact_ids: list[int] | None = None) -> list[str]:
    stmt = (select(Metric.key).join(Evaluation, Metric.evaluation_id == Evaluation.id)
            .join(Artifact, Evaluation.artifact_id == Artifact.id).distinct())
    return sorted(session.scalars(_scope(stmt, dataset, project, artifact_ids)))


def default_metrics(available: list[str]) -> list[str]:
    chosen = [k for k in DEFAULT_COLUMNS if k in available]
    return chosen or [k for k in available if "@d" not in k][:3]


def leaderboard(session: Session, dataset: str, metrics: list[str] | None = None, *, pick: Pick = "last",
                by: str | None = None, sort: str | None = None, order: str | None = None,
                project: str | None = None, artifact_ids: list[int] | None = None) -> Leaderboard:
    """One row per run that has at least one of the chosen metrics on `dataset`.

    pick='last': the run's largest step having any of the chosen metrics. pick='best': the step where the
    `by` metric (default: the first chosen metric with a direction) is best for that run, the earliest such
    step on ties; a run without a value of `by` falls back to its last step. Every value of a row comes
    from that one step (one checkpoint), so missing values are possible (e.g. probes still running).
    `project` keeps one project's runs; `artifact_ids` keeps the evaluations of those embeddings (one
    cross-project (identity, d) group).
    """
    available = available_keys(session, dataset, project, artifact_ids)
    metrics = list(dict.fromkeys(metrics or default_metrics(available)))[:MAX_METRICS]
    if by is None or by not in metrics:
        by = next((m for m in metrics if direction(m) != "none"), metrics[0] if metrics else None)
    stmt = (select(Metric.run_id, Metric.step, Metric.key, Metric.value, Metric.evaluation_id)
            .join(Evaluation, Metric.evaluation_id == Evaluation.id)
            .join(Artifact, Evaluation.artifact_id == Artifact.id)
            .where(Metric.key.in_(metrics)))
    stmt = _scope(stmt, dataset, project, artifact_ids)
    # run -> step -> key -> (evaluation id, value); the newest evaluation wins at equal (run, step, key)
    table: dict[int, dict[int, dict[str, tuple[int, float]]]] = defaultdict(lambda: defaultdict(dict))
    for run_id, step, key, value, eid in session.execute(stmt):
        cell = table[run_id][step]
        if key not in cell or cell[key][0] < eid:
            cell[key] = (eid, value)
    names = {rid: (pname, rname) for rid, rname, pname in session.execute(
        select(Run.id, Run.name, Project.name).join(Project).where(Run.id.in_(list(table))))} if table else {}

    rows = []
    for run_id, steps in table.items():
        step = _pick_step(steps, pick, by)
        values = {m: (steps[step][m][1] if m in steps[step] else None) for m in metrics}
        project_name, run_name = names[run_id]
        rows.append(Row(run_id=run_id, project=project_name, run=run_name, step=step, values=values))
    for m in metrics:
        pts = borda_points([r.values[m] for r in rows], m)
        for r, p in zip(rows, pts, strict=True):
            r.points[m] = p
    for r in rows:
        r.borda = sum(r.points.values())
    for r, rank in zip(rows, competition_ranks([r.borda for r in rows]), strict=True):
        r.rank = rank
    sort = sort if sort in ({"borda", "rank", "run", "step", "project"} | set(metrics)) else "borda"
    order = order if order in ("asc", "desc") else _default_order(sort)
    rows = sort_rows(rows, sort, order)
    return Leaderboard(dataset=dataset, pick=pick, by=by, metrics=metrics,
                       directions={m: direction(m) for m in metrics}, sort=sort, order=order, rows=rows,
                       available=[k for k in available if "@d" not in k], project=project)


def _pick_step(steps: dict[int, dict[str, tuple[int, float]]], pick: str, by: str | None) -> int:
    last = max(steps)
    if pick != "best" or by is None:
        return last
    candidates = [(score(by, cell[by][1]), step) for step, cell in steps.items() if by in cell]
    candidates = [(s, step) for s, step in candidates if s is not None]
    if not candidates:
        return last
    best = max(s for s, _ in candidates)
    return min(step for s, step in candidates if s == best)


def _default_order(sort: str) -> str:
    """Best first: Borda and metric columns descending by score; rank ascending; names ascending."""
    return "asc" if sort in ("rank", "run", "project") else "desc"


def sort_rows(rows: list[Row], sort: str, order: str) -> list[Row]:
    """Metric columns sort by score (direction-aware: 'desc' = best first); missing values always last."""
    reverse = order == "desc"
    by_name = sorted(rows, key=lambda r: (r.project, r.run, r.run_id))
    if sort == "borda":
        return sorted(by_name, key=lambda r: r.borda, reverse=reverse)
    if sort == "rank":
        return sorted(by_name, key=lambda r: r.rank, reverse=reverse)
    if sort in ("run", "project"):
        return sorted(by_name, key=lambda r: (getattr(r, sort), r.run_id), reverse=reverse)
    if sort == "step":
        return sorted(by_name, key=lambda r: r.step, reverse=reverse)
    present = [r for r in by_name if r.values.get(sort) is not None]
    missing = [r for r in by_name if r.values.get(sort) is None]
    keyfn = ((lambda r: score(sort, r.values[sort])) if direction(sort) != "none"
             else (lambda r: r.values[sort]))
    return sorted(present, key=keyfn, reverse=reverse) + missing


def to_csv(board: Leaderboard) -> str:
    """rank, borda, project, run, run_id, step, then one column per metric (empty = missing), full precision."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["rank", "borda", "project", "run", "run_id", "step", *board.metrics])
    for r in board.rows:
        writer.writerow([r.rank, _fmt(r.borda), r.project, r.run, r.run_id, r.step,
                         *("" if r.values[m] is None else repr(float(r.values[m])) for m in board.metrics)])
    return out.getvalue()


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def leaderboard_index(session: Session) -> list[dict]:
    """The default boards, one per (project, dataset name) with embeddings: runs, artifacts (NO_DATASET for
    embeddings uploaded without a name)."""
    rows = session.execute(
        select(Project.name, Artifact.dataset, func.count(func.distinct(Artifact.run_id)), func.count(Artifact.id))
        .join(Run, Artifact.run_id == Run.id).join(Project, Run.project_id == Project.id)
        .where(Artifact.kind == "embeddings").group_by(Project.name, Artifact.dataset)).all()
    out = [{"project": p, "dataset": ds if ds is not None else NO_DATASET, "runs": n_runs, "artifacts": n}
           for p, ds, n_runs, n in rows]
    return sorted(out, key=lambda d: (d["dataset"] == NO_DATASET, d["dataset"], d["project"]))


def projects_with(session: Session, dataset: str) -> list[str]:
    """The projects that have embeddings on `dataset` (by name), sorted."""
    stmt = (select(Project.name).join(Run, Run.project_id == Project.id).join(Artifact, Artifact.run_id == Run.id)
            .where(Artifact.kind == "embeddings").distinct())
    return sorted(session.scalars(_dataset_filter(stmt, dataset)))


# --- dataset identity and the cross-project view -------------------------------------------------------------

@dataclass(frozen=True)
class Identity:
    key: str  # what groups boards: equal keys = the same dataset content (when verified)
    label: str  # for people
    verified: bool  # False: no content hash, only the name, N and the number of classes


def _short(h: str) -> str:
    return h.rsplit(":", 1)[-1][:12]


def artifact_identity(dataset: str | None, meta: dict, derived: bool, registered: Dataset | None,
                      manifest: str | None) -> Identity:
    """The dataset identity of one embeddings artifact (rules in the module docstring)."""
    meta = meta or {}
    n = meta.get("n")
    if derived and manifest:
        return Identity(f"manifest:{manifest}", f"server folder, manifest {_short(manifest)}", True)
    if derived and registered is not None and registered.sha256:
        return Identity(f"dataset-sha256:{registered.sha256}",
                        f"registered dataset, sha256 {registered.sha256[:12]}", True)
    if meta.get("labels_sha256"):
        return Identity(f"labels-sha256:{meta['labels_sha256']}:n={n}",
                        f"labels sha256 {str(meta['labels_sha256'])[:12]}, N={n}", True)
    name = dataset if dataset is not None else NO_DATASET
    k = meta.get("n_classes")
    return Identity(f"name:{name}:n={n}:classes={k}",
                    f"name only: N={n}" + (f", {k} classes" if k else ", no labels"), False)


def identity_groups(session: Session, dataset: str, project: str | None = None) -> list[dict]:
    """The embeddings on `dataset` (optionally one project's) grouped by (identity, d), largest group first:
    identity, label, verified, d, projects, runs, artifact_ids."""
    stmt = (select(Artifact.id, Artifact.dataset, Artifact.meta, Artifact.parent_id, Artifact.run_id, Project.name)
            .join(Run, Artifact.run_id == Run.id).join(Project, Run.project_id == Project.id)
            .where(Artifact.kind == "embeddings"))
    stmt = _dataset_filter(stmt, dataset)
    if project:
        stmt = stmt.where(Project.name == project)
    arts = session.execute(stmt).all()
    parents = {a.parent_id for a in arts if a.parent_id is not None}
    manifests: dict[int, str] = {}
    if parents:
        for aid, params in session.execute(select(Evaluation.artifact_id, Evaluation.params).where(
                Evaluation.artifact_id.in_(parents), Evaluation.suite == EMBED_STEP)):
            if (params or {}).get("dataset_manifest"):
                manifests[aid] = params["dataset_manifest"]
    registered = session.scalar(select(Dataset).where(Dataset.name == dataset)) if dataset != NO_DATASET else None
    groups: dict[tuple[str, int | None], dict] = {}
    for a in arts:
        ident = artifact_identity(a.dataset, a.meta, a.parent_id is not None, registered,
                                  manifests.get(a.parent_id) if a.parent_id is not None else None)
        d = (a.meta or {}).get("d")
        g = groups.setdefault((ident.key, d), {"identity": ident.key, "label": ident.label,
                                               "verified": ident.verified, "d": d, "projects": set(),
                                               "runs": set(), "artifact_ids": []})
        g["projects"].add(a.name)
        g["runs"].add(a.run_id)
        g["artifact_ids"].append(a.id)
    out = [{**g, "projects": sorted(g["projects"]), "runs": len(g["runs"])} for g in groups.values()]
    return sorted(out, key=lambda g: (-g["runs"], g["identity"], g["d"] if g["d"] is not None else -1))


def cross_project_index(session: Session) -> list[dict]:
    """Every (dataset name, identity, d) group across projects: the cross-project boards."""
    names = sorted({b["dataset"] for b in leaderboard_index(session)}, key=lambda n: (n == NO_DATASET, n))
    return [{"dataset": name, **{k: v for k, v in g.items() if k != "artifact_ids"},
             "artifacts": len(g["artifact_ids"])} for name in names for g in identity_groups(session, name)]


def cross_project_boards(session: Session, dataset: str, metrics: list[str] | None = None, **kwargs) -> list[dict]:
    """One board per (identity, d) group of `dataset` across projects: the group's fields plus `board`. Every
    board has the same metric columns (default: chosen from the keys of all groups)."""
    metrics = metrics or default_metrics(available_keys(session, dataset))
    return [{**{k: v for k, v in g.items() if k != "artifact_ids"},
             "board": leaderboard(session, dataset, metrics, artifact_ids=g["artifact_ids"], **kwargs)}
            for g in identity_groups(session, dataset)]


def scoped_leaderboard(session: Session, dataset: str, project: str, metrics: list[str] | None = None,
                       **kwargs) -> Leaderboard:
    """The default board: one project's runs on `dataset`, with the (identity, d) groups it holds."""
    board = leaderboard(session, dataset, metrics, project=project, **kwargs)
    board.groups = [{k: v for k, v in g.items() if k not in ("artifact_ids", "projects")}
                    for g in identity_groups(session, dataset, project)]
    return board


def cross_csv(boards: list[dict]) -> str:
    """The cross-project boards as one CSV: identity and d first, then to_csv's columns."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for i, g in enumerate(boards):
        lines = list(csv.reader(io.StringIO(to_csv(g["board"]))))
        if i == 0:
            writer.writerow(["identity", "d", *lines[0]])
        for line in lines[1:]:
            writer.writerow([g["identity"], "" if g["d"] is None else g["d"], *line])
    return out.getvalue()
