"""docs/API.md is generated from the OpenAPI schema and must match the code."""

from backend.apidoc import DOC, current


def test_api_reference_is_current():
    assert DOC.read_text() == current(), "run `python -m backend.apidoc` to regenerate docs/API.md"


def test_api_reference_lists_every_route():
    text = DOC.read_text()
    for route in ("POST /api/v1/runs/{run_id}/artifacts", "GET /api/v1/leaderboards/{dataset}",
                  "POST /api/v1/evaluations/{evaluation_id}/claim", "POST /api/v1/datasets"):
        assert f"`{route}`" in text
