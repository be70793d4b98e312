"""Operator allowlist on compiled TorchScript graphs (replaces a regex over the archive's source text).

A TorchScript archive is code: its methods run at load (``__setstate__``) and in forward. What that code can
do is exactly the set of operators its compiled graphs call, whatever spelling the source used
(``getattr(torch, "from_" "file")``, a submodule method, a TorchScript class). So after loading (inside the
sandbox: loading already runs ``__setstate__``) every function of the archive's compilation unit and every
method of every submodule is copied, inlined and walked, blocks and subgraphs included, and a node is refused
when its operator's namespace is not ALLOWED_NAMESPACES, when it is in DENIED_OPS, or when it touches a C++
custom class (``__torch__.torch.classes.*``: process groups, RPC workers, profiler handles).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch

from repscope.checkpoints import DENIED_OPS

ALLOWED_NAMESPACES = ("aten", "prim")
# DENIED_OPS: inside aten / prim, the operators whose schemas reach files, processes or the network (save,
# from_file, the RPC ops, PythonOp); derived from torch._C._jit_get_all_schemas(), see repscope.checkpoints.
CUSTOM_CLASS_PREFIX = "__torch__.torch.classes."
STATE_METHODS = ("__setstate__", "__getstate__")


class ForbiddenOp(ValueError):
    """A TorchScript graph calls an operator outside the allowlist; names the op and the method."""

    def __init__(self, op: str, where: str, why: str):
        self.op, self.where = op, where
        super().__init__(
            f"TorchScript method {where} calls {op} ({why}); file, process and network operations are not "
            "allowed in uploaded models: only aten / prim tensor operators"
        )


def refusal(kind: str) -> str | None:
    """Why an operator kind (``namespace::name``) is refused, or None when it is allowed."""
    namespace = kind.split("::", 1)[0]
    if namespace not in ALLOWED_NAMESPACES:
        return f"operator namespace {namespace!r} is not allowed"
    if kind in DENIED_OPS:
        return "it reads or writes files, processes or the network"
    return None


def _nodes(graph: torch._C.Graph) -> Iterator[torch._C.Node]:
    stack = list(graph.nodes())
    while stack:
        node = stack.pop()
        yield node
        for block in node.blocks():
            stack.extend(block.nodes())
        if node.hasAttribute("Subgraph"):
            stack.extend(node.g("Subgraph").nodes())


def check_graph(graph: torch._C.Graph, where: str) -> None:
    """Raise ForbiddenOp for the first node of a copy of `graph` (calls inlined) outside the allowlist."""
    graph = graph.copy()
    torch._C._jit_pass_inline(graph)
    for node in _nodes(graph):
        kind = node.kind()
        why = refusal(kind)
        if why:
            raise ForbiddenOp(kind, where, why)
        for value in (*node.inputs(), *node.outputs()):
            if CUSTOM_CLASS_PREFIX in value.type().annotation_str:
                raise ForbiddenOp(f"{kind} on {value.type().annotation_str}", where,
                                  "C++ custom classes (process groups, RPC, profiler) are not allowed")


def _module_methods(module: torch.jit.ScriptModule) -> Iterator[tuple[str, torch._C.Graph]]:
    for path, sub in module.named_modules():
        c = sub._c
        names = list(c._method_names()) + [m for m in STATE_METHODS if c._has_method(m)]
        for name in dict.fromkeys(names):
            yield f"{c._type().qualified_name()}.{name} (module {path or '<root>'})", c._get_method(name).graph


def check_module(module: torch.jit.ScriptModule | None, cu: torch._C.CompilationUnit | None = None) -> int:
    """Vet every function of `cu` (all compiled code of an archive: modules, classes, free functions) and every
    method of every submodule of `module`. Returns the number of graphs checked."""
    checked = 0
    for fn in cu.get_functions() if cu is not None else ():
        check_graph(fn.graph, fn.qualified_name)
        checked += 1
    for where, graph in _module_methods(module) if module is not None else ():
        check_graph(graph, where)
        checked += 1
    return checked


def load_vetted(path: str | os.PathLike, map_location: torch.device | str | None = None
                ) -> torch.jit.ScriptModule:
    """``torch.jit.load`` with our own compilation unit, then the allowlist over all of it.

    When loading fails (e.g. ``__setstate__`` tried a file the sandbox does not have), the code compiled so far
    is vetted first, so the refusal names the operator rather than the symptom."""
    from torch.jit._recursive import wrap_cpp_module
    from torch.jit._serialization import validate_map_location

    cu = torch._C.CompilationUnit()
    try:
        cpp = torch._C.import_ir_module(cu, os.fspath(path), validate_map_location(map_location), {}, False)
    except Exception:
        check_module(None, cu)
        raise
    module = wrap_cpp_module(cpp)
    check_module(module, cu)
    return module
