"""Public assets served from installed packages (the login page needs them too, so no sign-in)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)


@router.get("/static/vendor/plotly.min.js")
def plotly_js() -> FileResponse:
    """Plotly.js from the installed plotly package: no CDN, works offline."""
    path = resources.files("plotly") / "package_data" / "plotly.min.js"
    return FileResponse(str(path), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


FAVICON = Path(__file__).resolve().parents[2] / "frontend" / "static" / "favicon.svg"


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    """Browsers ask for /favicon.ico whatever the page links: answer with the SVG icon instead of a 404."""
    return FileResponse(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})
