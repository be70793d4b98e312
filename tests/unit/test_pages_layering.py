"""Pages are thin routers like the API's: no queries of their own, and no import cycle between page modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PAGES = Path(__file__).resolve().parents[2] / "backend" / "pages"
QUERY = re.compile(r"\bselect\(|\.execute\(|\.scalars?\(|\btext\(|\bselectinload\b|\bjoinedload\b")
# what each page module may import from backend.pages: a router needs sign-in and templates, nothing else
MAY_IMPORT = {"templates": set(), "auth": {"templates"}}
ROUTER_MAY_IMPORT = {"auth", "templates"}


def _page_imports(path: Path) -> set[str]:
    """The backend.pages modules `path` imports (short names)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "backend.pages":
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("backend.pages."):
            found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("backend.pages."))
    return found


def test_pages_hold_no_queries():
    for path in PAGES.glob("*.py"):
        found = QUERY.findall(path.read_text())
        assert not found, f"{path.name} queries the database itself ({found}): call a backend.services function"


def test_page_modules_import_only_the_shared_helpers():
    for path in PAGES.glob("*.py"):
        if path.name != "__init__.py":
            imported = _page_imports(path)
            assert imported <= MAY_IMPORT.get(path.stem, ROUTER_MAY_IMPORT), (path.name, imported)
