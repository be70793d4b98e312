"""The compare page: 2–10 runs side by side — headline curves, every other metric, a radar of latest values,
overlaid spectra, and the config/metric diff."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from backend import figures
from backend.api.deps import SessionDep
from backend.api.params import SqlInt
from backend.models import Run
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.services import compare as compare_service
from backend.services import leaderboards as leaderboard_service
from repscope import catalogue

COMPARE_HEADLINE = catalogue.HEADLINE
RADAR_KEYS = catalogue.RADAR

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


def _labels(runs: list[Run]) -> list[str]:
    """Run names, prefixed with the project where two compared runs share a name."""
    names = [r.name for r in runs]
    return [r.name if names.count(r.name) == 1 else f"{r.project.name}/{r.name}" for r in runs]


@router.get("/compare", response_class=HTMLResponse)
def compare_page(request: Request, session: SessionDep,
                 run: Annotated[list[SqlInt] | None, Query()] = None) -> HTMLResponse:
    try:
        comparison = compare_service.compare(session, run or [])
    except compare_service.CompareRejected as exc:
        return render(request, "compare.html", {"error": str(exc)}, status_code=400)
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
    return render(request, "compare.html", {
        "comparison": comparison, "labels": labels, "headline": [curves(k) for k in headline],
        "others": [curves(k) for k in others], "radar": radar, "spectra": spectra,
        "n_differ": sum(not d.same for d in comparison.diff), "error": None})
