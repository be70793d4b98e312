"""HTML pages: server-rendered Jinja2, figure JSON from backend.figures, drawn by static JS with Plotly.

Live parts (a run's artifacts and evaluations, the jobs page) are re-rendered by the same Jinja macros
behind small JSON endpoints (`/runs/{id}/live`, `/jobs/live`) that static/live.js polls, so nothing
reloads the whole page while the user reads.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from backend import figures
from backend.api.deps import SessionDep
from backend.api.params import SQL_INT_MAX, SqlInt
from backend.models import Artifact, Evaluation, Metric
from backend.pages_auth import page_reader
from backend.services import compare as compare_service
from backend.services import evaluations as evaluation_service
from backend.services import jobs as job_service
from backend.services import leaderboards as leaderboard_service
from backend.services import runs as run_service
from backend.services import runs_table as table_service
from backend.services import selection as selection_service
from backend.services.datasets import list_datasets
from repscope.schemas import FINISHED, MetricSeries, Status
from repscope.suites import AVAILABLE_SUITES, NEEDS_LABELS

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "frontend" / "templates")
TEMPLATES.env.filters["pretty_json"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
TEMPLATES.env.filters["metric_label"] = figures.metric_label
TEMPLATES.env.filters["source_label"] = figures.source_label
TEMPLATES.env.globals["direction"] = leaderboard_service.direction
PAGE_SIZE = 50
COMPARE_HEADLINE = ("rankme", "alpha_req", "linear_top1", "knn20_top1", "equi_r2_mean", "invariance_auc_mean",
                    "equi_mrr_mean", "backdoor_risk")
RADAR_KEYS = ("rankme", "rankme_centered", "stable_rank", "alpha_req", "uniformity", "linear_top1",
              "knn20_top1", "openset_auroc_msp", "equi_r2_mean", "invariance_auc_mean", "equi_mrr_mean",
              "backdoor_risk")
ARCH_SUGGESTIONS = ("resnet18_cifar", "resnet50", "vit_small", "vit_tiny")

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])
assets_router = APIRouter(include_in_schema=False)  # public: the login page needs them too


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _query(request: Request, **changes: Any) -> str:
    """The current query string with `changes` applied (None removes a key; lists repeat it)."""
    params: dict[str, Any] = {}
    for key in request.query_params:
        values = request.query_params.getlist(key)
        params[key] = values if len(values) > 1 else values[0]
    for key, value in changes.items():
        if value is None or value == "" or value == []:
            params.pop(key, None)
        else:
            params[key] = value
    return "?" + urlencode(params, doseq=True) if params else "?"


def _metric_fmt(value: float | None, key: str) -> str:
    """Accuracies and rates as percentages, other metrics with 3 decimals (or 4 significant digits)."""
    if value is None:
        return "—"
    if figures.is_fraction(key):
        return f"{value:.1%}"
    return f"{value:.3f}" if 1e-3 <= abs(value) < 1e6 else f"{value:.4g}"


TEMPLATES.env.filters["fmt"] = _fmt
TEMPLATES.env.filters["metric_fmt"] = _metric_fmt
TEMPLATES.env.globals["query"] = _query


def _macros():  # noqa: ANN202
    return TEMPLATES.env.get_template("_macros.html").module


@assets_router.get("/static/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    """Plotly.js from the installed plotly package: no CDN, works offline."""
    path = resources.files("plotly") / "package_data" / "plotly.min.js"
    return FileResponse(str(path), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


@router.get("/", response_class=HTMLResponse)
def projects_page(request: Request, session: SessionDep) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "projects.html", {"projects": run_service.list_projects(session)})


# --- a project's runs -------------------------------------------------------------------------------------

@router.get("/projects/{name}", response_class=HTMLResponse)
def project_page(request: Request, name: str, session: SessionDep, q: str | None = None, tag: str | None = None,
                 sort: str = "created", order: Literal["asc", "desc"] | None = None,
                 page: Annotated[int, Query(ge=1, le=SQL_INT_MAX // PAGE_SIZE)] = 1) -> HTMLResponse:
    started = time.perf_counter()
    project = run_service.get_project(session, name)
    table = table_service.runs_table(session, project.id, q=q, tag=tag, sort=sort, order=order, limit=PAGE_SIZE,
                                     offset=(page - 1) * PAGE_SIZE)
    return TEMPLATES.TemplateResponse(request, "project.html", {
        "project": project, "table": table, "runs": table.runs, "q": q or "", "tag": tag or "", "page": page,
        "pages": max(1, -(-table.total // PAGE_SIZE)), "total": table.total,
        "metric_keys": table_service.project_metric_keys(session, project.id),
        "tags": table_service.project_tags(session, project.id),
        "query_ms": (time.perf_counter() - started) * 1000,
        "min_compare": compare_service.MIN_COMPARE, "max_compare": compare_service.MAX_COMPARE})


@router.get("/projects/{name}/selection", response_class=HTMLResponse)
def selection_page(request: Request, name: str, session: SessionDep, probe: str | None = None) -> HTMLResponse:
    project = run_service.get_project(session, name)
    keys = table_service.project_metric_keys(session, project.id, source="computed")  # probes: computed only
    probes = [k for k in selection_service.PROBE_KEYS if k in keys]
    probe = probe if probe in keys else (probes[0] if probes else None)
    results = selection_service.selection(session, project, probe) if probe else []
    charts = [figures.selection_scatter(a.key, a.probe, [(p.run, p.step, p.x, p.y) for p in a.pairs], a.rho, a.tau)
              for a in results]
    return TEMPLATES.TemplateResponse(request, "selection.html", {
        "project": project, "probe": probe, "probes": probes, "results": results, "charts": charts})


# --- a run ------------------------------------------------------------------------------------------------

def _run_live(session, run, since: str | None = None) -> dict[str, Any]:  # noqa: ANN001
    """Artifacts with their evaluations (two queries), status counts, and — unless the caller already has this
    `version` of the run's metric rows — every chart."""
    artifacts = list(session.scalars(select(Artifact).options(selectinload(Artifact.evaluations))
                                     .where(Artifact.run_id == run.id).order_by(Artifact.step, Artifact.id)))
    evaluations = [e for a in artifacts for e in a.evaluations]
    counts = {s.value: sum(e.status == s.value for e in evaluations) for s in Status}
    n, last = session.execute(select(func.count(Metric.id), func.max(Metric.id)).where(Metric.run_id == run.id)).one()
    live: dict[str, Any] = {"artifacts": artifacts, "counts": counts, "version": f"{n}:{last}",
                            "pending": counts["queued"] + counts["running"] > 0}
    if since == live["version"]:
        return live
    charts, nested = figures.run_charts(compare_service.all_series(session, run.id))
    if not charts:  # an empty RankMe chart says what will appear here
        charts = [figures.metric_over_step([(run.name, MetricSeries(run_id=run.id, key="rankme", points=[]))],
                                           "rankme")]
    return {**live, "charts": charts, "nested": nested}


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: SqlInt, session: SessionDep) -> HTMLResponse:
    run = run_service.get_run(session, run_id)
    live = _run_live(session, run)
    return TEMPLATES.TemplateResponse(request, "run.html", {
        "run": run, **live, "metric_keys": sorted(compare_service.all_series(session, run_id))})


@router.get("/runs/{run_id}/live")
def run_live(run_id: SqlInt, session: SessionDep, since: str | None = None) -> JSONResponse:
    """What the run page updates in place: artifact rows with evaluation status and progress, the queue summary,
    and the charts — sent only when the run's metric rows changed since the caller's `since` version."""
    run = run_service.get_run(session, run_id)
    live = _run_live(session, run, since)
    m = _macros()
    body = {"pending": live["pending"], "version": live["version"],
            "html": {"artifacts-body": str(m.artifact_rows(live["artifacts"])),
                     "queue-summary": str(m.queue_summary(live["counts"]))}}
    if "charts" in live:
        body.update(charts=live["charts"], nested=live["nested"])
    return JSONResponse(body)


# --- an evaluation ----------------------------------------------------------------------------------------

def _nested_table(metrics: dict[str, float], full_dim: int | None) -> dict[str, object] | None:
    """Metrics keyed 'name@d64' as rows (metric) x columns (prefix dimension), the full D first."""
    dims = sorted({int(k.split("@d", 1)[1]) for k in metrics if "@d" in k}, reverse=True)
    if not dims:
        return None
    names = sorted({k.split("@d", 1)[0] for k in metrics if "@d" in k})
    columns = ([full_dim] if full_dim else []) + dims
    rows = {name: ([metrics.get(name)] if full_dim else []) + [metrics.get(f"{name}@d{d}") for d in dims]
            for name in names}
    return {"dims": columns, "rows": rows}


@router.get("/evaluations/{evaluation_id}", response_class=HTMLResponse)
def evaluation_page(request: Request, evaluation_id: SqlInt, session: SessionDep) -> HTMLResponse:
    evaluation = evaluation_service.get_evaluation(session, evaluation_id)
    view = evaluation_service.evaluation_read(evaluation)
    figs = (view.result or {}).get("figures", {})
    charts = figures.suite_charts(evaluation.suite, figs)
    main_metrics = {k: v for k, v in view.metrics.items() if "@d" not in k}
    nested = _nested_table(view.metrics, evaluation.artifact.meta.get("d"))
    derived = list(session.scalars(select(Evaluation).join(Artifact, Evaluation.artifact_id == Artifact.id)
                                   .where(Artifact.parent_id == evaluation.artifact_id).order_by(Evaluation.id)))
    return TEMPLATES.TemplateResponse(request, "evaluation.html", {
        "evaluation": view, "artifact": evaluation.artifact, "run": evaluation.artifact.run, "charts": charts,
        "main_metrics": main_metrics, "nested": nested, "finished": view.status in FINISHED,
        "failed": view.status == Status.failed, "derived": derived})


# --- compare ----------------------------------------------------------------------------------------------

def _labels(runs) -> list[str]:  # noqa: ANN001
    names = [r.name for r in runs]
    return [r.name if names.count(r.name) == 1 else f"{r.project.name}/{r.name}" for r in runs]


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep,
                 run: Annotated[list[SqlInt] | None, Query()] = None) -> HTMLResponse:
    try:
        comparison = compare_service.compare(session, run or [])
    except compare_service.CompareRejected as exc:
        return TEMPLATES.TemplateResponse(request, "compare.html", {"error": str(exc)}, status_code=400)
    labels = _labels(comparison.runs)
    keys = [k for k in comparison.keys if "@d" not in k]
    headline = [k for k in COMPARE_HEADLINE if k in keys]
    others = [k for k in keys if k not in headline]

    def curves(key: str) -> dict[str, Any]:
        return figures.metric_over_step([(label, comparison.series[r.id][key]) for label, r
                                         in zip(labels, comparison.runs, strict=True)
                                         if key in comparison.series[r.id]], key)

    latest = [{k: (compare_service.latest(s)[1]) for k, s in comparison.series[r.id].items()} for r in comparison.runs]
    radar_keys = [k for k in RADAR_KEYS if leaderboard_service.direction(k) != "none"]
    radar = figures.radar(list(zip(labels, latest, strict=True)), radar_keys, leaderboard_service.score)
    label_of = dict(zip([r.id for r in comparison.runs], labels, strict=True))
    spectra = figures.overlaid_spectra([(label_of[s.run_id], s.step, s.singular_values)
                                        for s in comparison.spectra]) if comparison.spectra else None
    return TEMPLATES.TemplateResponse(request, "compare.html", {
        "comparison": comparison, "labels": labels, "headline": [curves(k) for k in headline],
        "others": [curves(k) for k in others], "radar": radar, "spectra": spectra,
        "n_differ": sum(not d.same for d in comparison.diff), "error": None})


# --- leaderboards -----------------------------------------------------------------------------------------

@router.get("/leaderboards", response_class=HTMLResponse)
def leaderboards_page(request: Request, session: SessionDep) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "leaderboards.html", {
        "boards": leaderboard_service.leaderboard_index(session), "rules": leaderboard_service.directions_table(),
        "no_dataset": leaderboard_service.NO_DATASET})


@router.get("/leaderboards/{dataset:path}", response_class=HTMLResponse)
def leaderboard_page(request: Request, dataset: str, session: SessionDep,
                     metric: Annotated[list[str] | None, Query()] = None,
                     pick: Literal["best", "last"] = "last", by: str | None = None, sort: str | None = None,
                     order: Literal["asc", "desc"] | None = None, project: str | None = None) -> HTMLResponse:
    board = leaderboard_service.leaderboard(session, dataset, metric, pick=pick, by=by, sort=sort, order=order,
                                            project=project or None)
    params = {"metric": board.metrics, "pick": board.pick, "sort": board.sort, "order": board.order}
    if by:
        params["by"] = board.by
    if project:
        params["project"] = project
    api = f"/api/v1/leaderboards/{dataset}?"
    return TEMPLATES.TemplateResponse(request, "leaderboard.html", {
        "board": board, "project": project or "", "rules": leaderboard_service.directions_table(),
        "csv_url": api + urlencode({**params, "format": "csv"}, doseq=True),
        "json_url": api + urlencode({**params, "format": "json"}, doseq=True),
        "dataset_label": "(no dataset named)" if dataset == leaderboard_service.NO_DATASET else dataset})


# --- upload, jobs, datasets -------------------------------------------------------------------------------

@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request, session: SessionDep, project: str | None = None,
                run: str | None = None) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "upload.html", {
        "projects": [p.name for p in run_service.list_projects(session)], "project": project or "",
        "run": run or "", "suites": AVAILABLE_SUITES, "needs_labels": sorted(NEEDS_LABELS),
        "archs": ARCH_SUGGESTIONS})


def _jobs(session) -> dict[str, Any]:  # noqa: ANN001
    return {"counts": job_service.status_counts(session),
            "running": job_service.evaluations(session, status=Status.running),
            "queued": job_service.evaluations(session, status=Status.queued),
            "failed": job_service.evaluations(session, status=Status.failed),
            "retried": job_service.evaluations(session, retried=True),
            "recent": job_service.recent(session),
            "workers": job_service.workers(session)}


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, session: SessionDep) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, "jobs.html", _jobs(session))


@router.get("/jobs/live")
def jobs_live(session: SessionDep) -> JSONResponse:
    jobs = _jobs(session)
    pending = jobs["counts"]["queued"] + jobs["counts"]["running"] > 0
    return JSONResponse({"pending": pending, "workers": [w.to_json() for w in jobs["workers"]],
                         "html": {"jobs-body": str(_macros().jobs_body(**jobs))}})


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(request: Request, session: SessionDep) -> HTMLResponse:
    boards = {b["dataset"]: b for b in leaderboard_service.leaderboard_index(session)}
    return TEMPLATES.TemplateResponse(request, "datasets.html", {
        "datasets": list_datasets(session), "boards": boards, "no_dataset": leaderboard_service.NO_DATASET})
