"""The OpenAPI contract: documented error codes and model, parameters as sent on the wire, `Allow` on 405s, and
request rules the schema states being the rules the server enforces (backend/api/openapi.py, params.py)."""

from __future__ import annotations

import jsonschema_rs
import pytest
from pydantic import ValidationError

ERROR_CODES = {  # by shape: auth -> 401/403/429, path id -> 404, params or body -> 400, body -> 413, form -> 408
    ("get", "/api/v1/health"): set(),
    ("get", "/api/v1/whoami"): {401},
    ("get", "/api/v1/projects"): {401, 403, 429},
    ("get", "/api/v1/runs/{run_id}"): {400, 401, 403, 404, 422, 429},
    ("get", "/api/v1/artifacts/{artifact_id}/file"): {400, 401, 403, 404, 410, 422, 429},
    ("post", "/api/v1/tokens"): {400, 401, 403, 409, 413, 422, 429},
    ("post", "/api/v1/runs/{run_id}/artifacts"): {400, 401, 403, 404, 408, 409, 413, 422, 429},
    ("post", "/api/v1/evaluations/{evaluation_id}/claim"): {400, 401, 403, 404, 409, 413, 422, 429},
}


@pytest.fixture
def spec(app) -> dict:
    return app.openapi()


def error_validator(spec: dict):  # noqa: ANN201
    return jsonschema_rs.validator_for({"$ref": "#/components/schemas/Error", "components": spec["components"]})


def test_each_operation_documents_the_codes_its_shape_allows(spec):
    for (method, path), codes in ERROR_CODES.items():
        responses = spec["paths"][path][method]["responses"]
        assert {int(c) for c in responses if 400 <= int(c) < 500} == codes, (method, path)


def test_every_error_response_has_the_one_error_model(spec):
    ops = [op for item in spec["paths"].values() for op in item.values()]
    assert len(ops) >= 27
    for op in ops:
        for code, response in op["responses"].items():
            if 400 <= int(code) < 500:
                assert response["content"] == {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                assert response["description"]
            if code == "401":
                assert response["headers"]["WWW-Authenticate"]["required"] is True
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    assert "#/components/schemas/HTTPValidationError" not in str(spec)


def test_real_error_bodies_match_the_documented_model(api, spec):
    from fastapi.testclient import TestClient

    validator = error_validator(spec)
    run = api.post("/api/v1/runs", json={"project": "p", "name": "r"}).json()
    answers = {
        422: api.post("/api/v1/runs", json={"project": "p"}),  # request validation: detail + errors
        404: api.get("/api/v1/runs/987654"),
        409: [api.post("/api/v1/tokens", json={"name": "twice", "scopes": ["read"]}) for _ in range(2)][1],
        405: api.put(f"/api/v1/runs/{run['id']}"),
        401: TestClient(api.app).get("/api/v1/runs"),
    }
    for code, response in answers.items():
        assert response.status_code == code, (code, response.text)
        validator.validate(response.json())
    errors = answers[422].json()["errors"]
    assert errors[0]["loc"] == ["body", "name"] and errors[0]["type"] == "missing"
    assert answers[401].headers["www-authenticate"] == "Bearer"
    with pytest.raises(jsonschema_rs.ValidationError):  # the model is not vacuous
        validator.validate({"detail": [{"loc": ["body"], "msg": "x", "type": "y"}]})


def test_allow_names_every_method_of_the_url(api):
    for method, path, allowed in (("OPTIONS", "/api/v1/runs", {"GET", "POST"}),
                                  ("PUT", "/api/v1/evaluations/1", {"GET", "PATCH"}),
                                  ("DELETE", "/api/v1/runs/1/metrics", {"GET", "POST"})):
        response = api.request(method, path)
        assert response.status_code == 405
        assert {m.strip() for m in response.headers["allow"].split(",")} == allowed, path


def test_parameters_are_documented_as_sent_no_null(spec):
    params = [p for item in spec["paths"].values() for op in item.values() for p in op.get("parameters", [])]
    assert params and all("null" not in str(p["schema"].get("anyOf", "")) for p in params)
    board = {p["name"]: p["schema"] for p in spec["paths"]["/api/v1/leaderboards/{dataset}"]["get"]["parameters"]}
    assert board["metric"]["type"] == "array" and board["by"]["type"] == "string"


def test_a_single_valued_query_parameter_sent_twice_is_422(api):
    twice = api.get("/api/v1/runs?q=a&q=b")
    assert twice.status_code == 422 and twice.json()["errors"][0]["loc"] == ["query", "q"]
    assert "given 2 times" in twice.json()["detail"]
    board = api.get("/api/v1/leaderboards/digits?metric=rankme&metric=linear_top1")  # an array repeats
    assert board.status_code == 200 and board.json()["metrics"] == ["rankme", "linear_top1"]


def test_request_numbers_are_json_numbers(api):
    run = api.post("/api/v1/runs", json={"project": "p", "name": "numbers"}).json()
    url = f"/api/v1/runs/{run['id']}/metrics"
    for body in ({"step": False, "metrics": {"loss": 1.0}}, {"step": "3", "metrics": {"loss": 1.0}},
                 {"step": 3, "metrics": {"loss": True}}, {"step": 3, "metrics": {"bad name": 1.0}}):
        assert api.post(url, json=body).status_code == 422, body
    assert api.post(url, json={"step": 3.0, "metrics": {"loss": 2}}).status_code == 201  # 3.0 is an integer
    series = api.get(url, params={"key": "loss"}).json()
    assert [(p["step"], p["value"]) for p in series["points"]] == [(3, 2.0)]


def test_documented_rules_are_the_enforced_ones():
    from backend.services import metrics, tokens
    from repscope import schemas

    assert schemas.TOKEN_NAME == tokens.TOKEN_NAME.pattern
    assert schemas.LOGGED_METRIC_NAME == metrics.LOGGED_KEY.pattern
    assert set(schemas.Scope.__args__) == set(tokens.SCOPES)
    # A run name the documented pattern allows (an ECMA-262 regex, as JSON Schema tools read it) is one the
    # server takes, for every leading character of the Basic Multilingual Plane.
    documented = jsonschema_rs.validator_for(schemas.RunCreate.model_json_schema()["properties"]["name"])
    refused = []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or not documented.is_valid(f"{chr(code)}x"):
            continue
        try:
            schemas.RunCreate(project="p", name=f"{chr(code)}x")
        except ValidationError:
            refused.append(hex(code))
    assert refused == []
    assert not documented.is_valid("\x85x") and not documented.is_valid(" x") and not documented.is_valid("a/b")


def test_public_read_makes_credentials_optional_on_reads_only(tmp_path):
    from backend.app import create_app
    from repscope.settings import Settings

    spec = create_app(Settings(data_dir=tmp_path / "d", public_read=True), run_sweeper=False).openapi()
    assert {} in spec["paths"]["/api/v1/runs"]["get"]["security"]
    assert "security" not in spec["paths"]["/api/v1/runs"]["post"]  # writes keep the global bearer requirement
