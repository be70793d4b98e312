"""HTML pages: server-rendered Jinja2 over backend/services, one router per resource, figure JSON from
backend.figures drawn by static JS with Plotly.

Like the API routers they hold no queries: every read is a service call. The template environment is built once
by the app factory (`app.state.templates`, backend.pages.templates). Every router but `assets` and `auth` needs
read access (auth.page_reader), else the browser is sent to /login.
"""

from __future__ import annotations

from backend.pages import (
           assets,
           auth,
           compare,
           datasets,
           evaluations,
           jobs,
           leaderboards,
           projector,
           projects,
           runs,
           upload,
)

# included by the app in this order: public assets, sign-in, then the pages
ROUTERS = (assets.router, auth.router, projects.router, runs.router, evaluations.router, compare.router,
           leaderboards.router, upload.router, jobs.router, datasets.router, projector.router)
