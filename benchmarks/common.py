"""Shared bits of the benchmarks: timing, machine description, RESULTS.md sections."""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def best_of(fn: Callable[[], object], repeats: int = 3) -> tuple[float, object]:
    """Best wall time of `repeats` calls (the usual way to time a deterministic computation)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def best_of_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, tuple[float, object]]:
    """Best wall time of each fn over `rounds` rounds that call every fn once in turn: on a shared (virtual)
    machine whose speed drifts, baseline and contender then see the same drift."""
    best: dict[str, tuple[float, object]] = {name: (float("inf"), None) for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            best[name] = (min(best[name][0], time.perf_counter() - t0), out)
    return best


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} cores"
    try:
        import torch

        desc += f", torch {torch.__version__}, {torch.get_num_threads()} threads"
        if torch.cuda.is_available():
            desc += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


def write_section(name: str, markdown: str) -> None:
    """Replace (or append) the section between <!-- bench:name --> markers in RESULTS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    header = "# Benchmark results\n\nWritten by `make bench`; each script rewrites its own section.\n"
    text = RESULTS.read_text() if RESULTS.exists() else header
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)
