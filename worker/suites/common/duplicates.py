"""Exact duplicate rows of a bank, so that a k-NN search computes each distinct row's similarity once.

Why: a GEMM may round the product of one query with two identical bank rows differently depending on where
the rows fall in its tiles (OpenBLAS sgemm gave 1.0 and 1.0000001 for one query against two copies of
itself), so "equal similarity -> lower index first" can only hold for duplicates if they share one computed
value. ``distinct_rows`` groups bitwise-identical rows (−0.0 counted as 0.0); the search runs on the first
row of each group, and ``DistinctRows.expand`` turns its neighbours back into the bank's rows, each group's
rows in increasing index right where the group ranks:

    order of bank rows = (similarity of the row's group ↓, first index of the group ↑, index ↑),

i.e. a stable descending sort of the similarities in which a row's duplicates share its value.

Grouping: a 32-bit multiplicative hash of each row's bits (int32 arithmetic, exact and order-free, so
identical rows always hash alike); the rows whose hash is shared (duplicates, plus ≈ n²/2³³ colliding pairs)
are then grouped exactly by ``torch.unique(dim=0)`` on those rows only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HASH_CHUNK_ELEMENTS = 1 << 22  # entries hashed at a time: 16 MiB of int32 temporaries
HASH_SEED = 0x5EED


@dataclass
class DistinctRows:
    """Groups of identical rows. first (n_u,): the first row of each group, increasing; group (n,): each row's
    group (an index into first); members (n,): the rows sorted by (group, index); ptr (n_u + 1,): group g's
    rows are members[ptr[g] : ptr[g + 1]]; counts (n_u,)."""

    first: torch.Tensor
    group: torch.Tensor
    members: torch.Tensor
    ptr: torch.Tensor
    counts: torch.Tensor

    @property
    def n_rows(self) -> int:
        return int(self.group.numel())

    @property
    def n_distinct(self) -> int:
        return int(self.first.numel())

    @property
    def has_duplicates(self) -> bool:
        return self.n_distinct < self.n_rows

    def expand(self, values: torch.Tensor, groups: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(values, rows), each (m, k): the first k bank rows of the neighbour groups `groups` (m, K), given in
        their order with their similarities `values`, each group standing for its rows in increasing index.
        Needs Σ_j counts[groups[:, j]] ≥ k (true when K = min(k, n_distinct))."""
        cnt = self.counts[groups].clamp(max=k)  # a group never fills more than k slots
        end = cnt.cumsum(dim=1)
        slots = torch.arange(k, device=groups.device).expand(groups.shape[0], k).contiguous()
        pos = torch.searchsorted(end, slots, right=True)  # the neighbour group that fills each slot
        offset = slots - (end.gather(1, pos) - cnt.gather(1, pos))
        rows = self.members[self.ptr[groups.gather(1, pos)] + offset]
        return values.gather(1, pos), rows


def distinct_rows(x: torch.Tensor) -> DistinctRows:
    """Groups of bitwise-identical rows of a 2-D float tensor (module docstring), on x's device."""
    _, bucket = torch.unique(_row_hash(x), return_inverse=True)
    shared = torch.nonzero(torch.bincount(bucket)[bucket] > 1).flatten()  # rows whose hash is not unique
    if shared.numel():  # identical rows, or a collision: group those rows exactly
        _, exact = torch.unique(x[shared] + 0.0, dim=0, return_inverse=True)
        bucket = bucket.clone()
        bucket[shared] = int(bucket.max()) + 1 + exact
    return _groups_from_inverse(bucket)


def _row_hash(x: torch.Tensor) -> torch.Tensor:
    """(n,) int32: Σ_j bits_ij·a_j mod 2³² over the float32 bits of each row (odd random a_j), so identical rows
    (−0.0 read as 0.0) hash alike; HASH_CHUNK_ELEMENTS entries at a time."""
    n, d = int(x.shape[0]), int(x.shape[1])
    gen = torch.Generator().manual_seed(HASH_SEED)
    mult = (torch.randint(-(2**31), 2**31 - 1, (d,), generator=gen, dtype=torch.int64) | 1).to(torch.int32)
    mult = mult.to(x.device)
    h = torch.empty(n, dtype=torch.int32, device=x.device)
    rows = max(1, HASH_CHUNK_ELEMENTS // max(d, 1))
    for a in range(0, n, rows):
        bits = (x[a : a + rows].to(torch.float32) + 0.0).view(torch.int32)  # + 0.0: −0.0 -> 0.0
        h[a : a + bits.shape[0]] = (bits * mult).sum(dim=1, dtype=torch.int32)
    return h


def _groups_from_inverse(inverse: torch.Tensor) -> DistinctRows:
    """DistinctRows from any labelling of the rows by group (gaps allowed), renumbered by first occurrence."""
    n = int(inverse.numel())
    dev = inverse.device
    _, inverse = torch.unique(inverse, return_inverse=True)  # labels 0 … n_lab − 1
    idx = torch.arange(n, device=dev)
    n_lab = int(inverse.max()) + 1 if n else 0
    first_of_label = torch.full((n_lab,), n, dtype=torch.int64, device=dev).scatter_reduce(
        0, inverse, idx, reduce="amin"
    )
    first, order = torch.sort(first_of_label)
    relabel = torch.empty_like(order)
    relabel[order] = torch.arange(n_lab, device=dev)
    group = relabel[inverse]
    members = torch.sort(group * n + idx).values % max(n, 1)  # by (group, index)
    counts = torch.bincount(group, minlength=n_lab)
    ptr = torch.zeros(n_lab + 1, dtype=torch.int64, device=dev)
    ptr[1:] = counts.cumsum(0)
    return DistinctRows(first=first, group=group, members=members, ptr=ptr, counts=counts)
