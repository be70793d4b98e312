"""DESIGN.md's layering, read off the source: who may import whom, no module cycle, suites small and separate.

The import graph is built from the AST of every module (module-level and function-level imports alike), so a lazy
import inside a function counts too: a cycle hidden behind one is still a cycle of responsibilities.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("repscope", "backend", "worker")
SUITES = ROOT / "worker" / "suites"
MAX_SUITE_FILE_LINES = 350  # issue #17: no file under worker/suites over ~350 lines
MAX_FUNCTION_LINES = 80  # ... and no function over ~80 lines without a stated reason (a comment above it)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
            if "migrations" not in p.parts}


MODULES = all_modules()
CLI_MODULES = {"repscope.cli", "repscope.cli_tokens"}


def imports_of(name: str, path: Path, top_level_only: bool = False) -> set[str]:
    """The project modules (and the third-party top-level names) `name` imports."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES)
    return found


def project_edges(top_level_only: bool) -> dict[str, set[str]]:
    return {m: {i for i in imports_of(m, p, top_level_only) if i in MODULES and i != m} for m, p in MODULES.items()}


def owner(mod: str) -> str:
    return mod.split(".")[0]


def test_backend_never_imports_torch_or_the_worker():
    for mod, path in MODULES.items():
        if owner(mod) == "backend":
            bad = {i for i in imports_of(mod, path) if i.split(".")[0] in ("torch", "worker")}
            assert not bad, f"{mod} imports {sorted(bad)}"


def test_worker_never_imports_the_backend_and_repscope_neither():
    """The CLI is the one composition root: `repscope serve` starts the API, so it may import the backend inside
    its commands (never at module level, so the client and `repscope eval` never load it)."""
    for mod, path in MODULES.items():
        if owner(mod) in ("worker", "repscope"):
            lazy_ok = mod in CLI_MODULES
            bad = {i for i in imports_of(mod, path, top_level_only=lazy_ok) if i.split(".")[0] == "backend"}
            assert not bad, f"{mod} imports {sorted(bad)}"


def test_suites_import_only_the_numeric_stack_common_and_themselves():
    # umap: umap-learn, the projector suite's optional UMAP (worker/suites/projector/umap2d.py), imported lazily
    allowed_third_party = {"numpy", "torch", "scipy", "umap", *sys.stdlib_module_names}
    for mod, path in MODULES.items():
        if not mod.startswith("worker.suites."):
            continue
        parts = mod.split(".")
        own = ".".join(parts[:3])  # worker.suites.<suite>
        for imp in imports_of(mod, path):
            top = imp.split(".")[0]
            if top in ("worker", "repscope"):
                ok = (imp.startswith(own) or imp.startswith("worker.suites.common") or imp == "worker.suites.base"
                      or imp == "worker.suites")
                assert ok, f"{mod} imports {imp}: a suite imports only worker.suites.common/base and itself"
            else:
                assert top in allowed_third_party, f"{mod} imports {imp}"


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_no_module_cycle():
    """A package's __init__ re-exporting its own modules is not a cycle; anything else that loops is."""
    edges = project_edges(top_level_only=False)
    for mod in edges:  # drop package -> own submodule edges (re-exports)
        edges[mod] = {i for i in edges[mod] if not (MODULES[mod].name == "__init__.py" and i.startswith(mod + "."))}
    cycles = strongly_connected(edges)
    assert not cycles, f"module cycles: {cycles}"


def test_suite_files_are_small():
    big = {str(p.relative_to(ROOT)): n for p in SUITES.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_SUITE_FILE_LINES}
    assert not big, f"files over {MAX_SUITE_FILE_LINES} lines: {big}"


@pytest.mark.parametrize("path", sorted(SUITES.rglob("*.py")), ids=lambda p: str(p.relative_to(SUITES)))
def test_suite_functions_are_short_or_say_why(path: Path):
    lines = path.read_text().splitlines()
    long = []
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = node.end_lineno - node.lineno + 1
            reason = lines[first - 2].strip().startswith("#") if first >= 2 else False
            if length > MAX_FUNCTION_LINES and not reason:
                long.append(f"{node.name} ({length} lines)")
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines with no comment saying why: {long}"
