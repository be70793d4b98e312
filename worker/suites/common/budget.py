"""Working-memory budget of the chunked loops (similarity blocks, logits) beyond the data itself.

A loop over rows takes ``rows_per_chunk(budget, bytes_per_row)`` rows at a time, so the block it materialises
stays under the budget whatever N is (at least one row per chunk).
"""

from __future__ import annotations

MEMORY_BUDGET = 512 << 20  # bytes


def rows_per_chunk(budget: int, bytes_per_row: int) -> int:
    """max(1, budget // bytes_per_row) (bytes_per_row ≤ 0 counts as 1)."""
    return max(1, int(budget) // max(1, int(bytes_per_row)))
