"""A deliberately slow suite for the queue-control tests: TICKS progress reports, SLEEP_S apart, then the row count.

`ON_TICK(i)` (set by a test) runs after report i, so a test can cancel at a known tick and see where it stopped.
Live processes (tests/integration/test_cancel_live.py) set TICKS and SLEEP_S through the environment.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch

from worker.suites.base import ProgressFn, SuiteResult

TICKS = int(os.environ.get("REPSCOPE_TEST_SLOW_TICKS", "40"))
SLEEP_S = float(os.environ.get("REPSCOPE_TEST_SLOW_SLEEP_S", "0"))
ON_TICK: Callable[[int], None] | None = None
HOLD_BYTES = 0  # memory the suite holds on its device while it runs (the clean-up tests)
HELD: weakref.ref | None = None  # to that tensor
REACHED: list[int] = []  # the ticks whose progress report returned
TIMES: list[float] = []  # time.monotonic() of each


def on_embeddings(arrays: Any, params: dict[str, Any], device: str, progress: ProgressFn) -> SuiteResult:
    REACHED.clear()
    TIMES.clear()
    global HELD
    held = torch.empty(HOLD_BYTES, dtype=torch.uint8, device=device) if HOLD_BYTES else None
    HELD = weakref.ref(held) if held is not None else None
    for i in range(TICKS):
        progress(i / TICKS, f"tick {i}")
        REACHED.append(i)
        TIMES.append(time.monotonic())
        if ON_TICK is not None:
            ON_TICK(i)
        time.sleep(SLEEP_S)
    return SuiteResult(metrics={"slow_rows": float(len(arrays.embeddings))}, variant={"device": device})
