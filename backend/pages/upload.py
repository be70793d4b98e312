"""The upload form: embeddings or a checkpoint for a run, with the suites to queue."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse

from backend.api.deps import SessionDep
from backend.pages.auth import page_reader
from backend.pages.templates import render
from backend.services import runs as run_service
from repscope import suites as registry

ARCH_SUGGESTIONS = ("resnet50", "vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2", "vit_base_patch16_224",
                    "torchvision:resnet101", "hf", "resnet18_cifar", "resnet50_cifar")  # any timm name is accepted

router = APIRouter(include_in_schema=False, dependencies=[Depends(page_reader)])


@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request, session: SessionDep, project: str | None = None,
                run: str | None = None) -> HTMLResponse:
    return render(request, "upload.html", {
        "projects": [p.name for p in run_service.list_projects(session)], "project": project or "",
        "run": run or "", "suites": registry.available(), "needs_labels": sorted(registry.needing(registry.LABELS)),
        "archs": ARCH_SUGGESTIONS})
