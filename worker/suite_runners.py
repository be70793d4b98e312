"""Which function runs each registered suite: `repscope.suites.SUITES` (torch-free, so the API can validate with
it) resolved to the functions of the suite's `module` (worker/suites/<name>/suite.py):
  on_embeddings(arrays, params, device, progress) -> SuiteResult   over an embeddings artifact
  on_encoder(encode, images, labels, device, progress) -> SuiteResult   over an encoder, inside the sandbox
Importing this module imports no suite: each is loaded when first run.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from repscope import suites as registry

INPUTS = ("embeddings", "encoder")


def runner(name: str, on: str) -> Callable[..., Any]:
    """The function that runs suite `name` on input `on` ('embeddings' | 'encoder'); ValueError when the suite is
    unknown or does not take that input."""
    if on not in INPUTS:
        raise ValueError(f"unknown suite input {on!r}; one of {INPUTS}")
    spec = registry.get(name)
    if not getattr(spec, on):
        raise ValueError(f"suite {name!r} does not run on {'an encoder' if on == 'encoder' else 'embeddings'}")
    return getattr(importlib.import_module(spec.module), f"on_{on}")


class Runners(Mapping[str, Callable[..., Any]]):
    """{suite name: its on_<input> function} over the registry as it is now (registered suites included)."""

    def __init__(self, on: str) -> None:
        self.on = on

    def _names(self) -> list[str]:
        return [n for n, s in registry.SUITES.items() if getattr(s, self.on)]

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in self._names():
            raise KeyError(name)
        return runner(name, self.on)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


ON_EMBEDDINGS = Runners("embeddings")
ON_ENCODER = Runners("encoder")
