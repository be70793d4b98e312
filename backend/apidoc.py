"""Write the REST API reference (docs/API.md) from the app's OpenAPI schema: `python -m backend.apidoc`.

A test checks the committed file matches, so the reference cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "API.md"


def _params(op: dict[str, Any]) -> list[str]:
    rows = []
    for p in op.get("parameters", []):
        schema = p.get("schema", {})
        kind = schema.get("type") or "/".join(s.get("type", "?") for s in schema.get("anyOf", []))
        rows.append(f"| `{p['name']}` | {p['in']} | {kind} | {'yes' if p.get('required') else ''} | "
                    f"{(p.get('description') or '').replace('|', '/')} |")
    body = op.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        props = content.get("schema", {}).get("properties", {})
        ref = content.get("schema", {}).get("$ref")
        if ref:
            rows.append(f"| body | {media} | `{ref.rsplit('/', 1)[-1]}` | yes | |")
        for name, schema in props.items():
            rows.append(f"| `{name}` | {media} | {schema.get('type', '')} | | "
                        f"{(schema.get('description') or '').replace('|', '/')} |")
    return rows


def _responses(op: dict[str, Any]) -> str:
    """`Responses: 200 ...; errors: 401, 404, 409 (why) ...`: an error's description only where it is the route's."""
    from backend.api.openapi import DESCRIPTIONS, MULTIPART_400

    ok, errors = [], []
    for code, r in op.get("responses", {}).items():
        description = r.get("description", "")
        if code.isdigit() and 400 <= int(code) < 500:
            usual = description in (DESCRIPTIONS.get(int(code)), MULTIPART_400)
            errors.append(code if usual else f"{code} ({description})")
        else:
            ok.append(f"{code} {description}")
    return f"Responses: {', '.join(ok)}" + (f"; errors: {', '.join(errors)}." if errors else ".")


def render(spec: dict[str, Any]) -> str:
    from backend.api.openapi import DESCRIPTIONS

    lines = [f"# {spec['info']['title']} REST API {spec['info']['version']}", "",
             "Generated from the OpenAPI schema by `python -m backend.apidoc` (also served live at `/docs`).",
             "Authentication: `Authorization: Bearer <token>` (see the README's Access section); each endpoint says",
             "the scope it needs.", "",
             "Errors are JSON `{\"detail\": \"...\"}` (schema `Error`) with a 4xx status that names the problem; a 422",
             "from request validation adds `errors`, one `{\"loc\", \"msg\", \"type\"}` per problem. Each endpoint lists",
             "the codes it can return; a code means this unless the endpoint says otherwise:", "",
             "| status | meaning |", "|---|---|",
             *(f"| {code} | {text} |" for code, text in sorted(DESCRIPTIONS.items())), ""]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            lines += [f"## `{method.upper()} {path}`", ""]
            doc = (op.get("description") or op.get("summary") or "").strip()
            if doc:
                lines += [doc, ""]
            rows = _params(op)
            if rows:
                lines += ["| name | in | type | required | description |", "|---|---|---|---|---|", *rows, ""]
            lines += [_responses(op), ""]
    return "\n".join(lines).rstrip() + "\n"


def current() -> str:
    import tempfile

    from backend.app import create_app
    from repscope.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        return render(create_app(Settings(data_dir=Path(tmp)), run_sweeper=False).openapi())


if __name__ == "__main__":
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(current())
    print(f"wrote {DOC}", file=sys.stderr)
