"""Local outlier factor of the pool scan: each sample's local density against its neighbours' (Breunig, Kriegel,
Ng & Sander, "LOF: Identifying Density-Based Local Outliers", SIGMOD 2000), at several neighbourhood sizes.

Why: in a real unlabeled pool clean images form tight natural clusters (near-duplicate views of a scene), so the
poisons a backdoor gathers are no denser than clean samples and the k-NN density ranks them at chance. What stays
true is that they sit where the density does not match the neighbourhood's: a small group (or a diffuse cloud)
next to a dense clean cluster. LOF measures exactly that ratio, with no assumption on how dense clean data are.

With cosine distance d(p, o) = 1 − cos(p, o) on the given rows (the scan passes the pool-centred embeddings):

    k-dist(o)    distance from o to its k-th nearest neighbour (itself excluded)
    reach_k(p,o) = max(k-dist(o), d(p, o))
    lrd_k(p)     = 1 / (mean_{o ∈ N_k(p)} reach_k(p, o) + 1e-10)      (sklearn's guard against duplicates)
    LOF_k(p)     = mean_{o ∈ N_k(p)} lrd_k(o) / lrd_k(p)

A group of m poisons hides from LOF_k when m > k (each poison's neighbourhood is then all poisons), and a large k
blurs small clusters; Breunig et al. (Sec. 7) rank by the maximum LOF over a range of k. We take k in LOF_KS plus
LOF_K_SHARES of the reference set (so the largest k grows with the pool and outnumbers a few-percent poison
group), put each log LOF_k on the robust-z scale and keep the maximum over k (``multiscale_lof``).

Neighbours are searched in a reference bank: the whole pool up to LOF_BANK rows, else LOF_BANK rows drawn at
random (seeded), so the cost stays N × LOF_BANK and the k's stay shares of one fixed bank whatever N. Every row is
scored against the bank (a bank member without itself), as sklearn's ``LocalOutlierFactor(novelty=True)`` scores
new points; with N ≤ LOF_BANK this is the classic LOF of every row. LOF_BANK = 2 048: on the natural-pool fixtures
(2 400 rows) a 2 048-row bank moved no fixture's mean AUROC by more than 0.03 against the whole pool, at about a
quarter of the neighbour search of a 4 096-row bank (the top-k over the bank dominates the cost).
"""

from __future__ import annotations

import numpy as np
import torch

from worker.suites.common.arrays import l2_normalize
from worker.suites.common.device import resolve_device
from worker.suites.common.topk import iter_topk, plan_chunks

from .combine import robust_z
from .knn import SIMILARITY_BUDGET, as_rows

LOF_KS = (10, 20)  # fixed neighbourhood sizes (20 = the pool scan's k-NN density k)
LOF_K_SHARES = (0.02, 0.04)  # further sizes as shares of the bank: above a poison share of up to ≈ 2–4 %
LOF_BANK = 2048  # reference rows at most (seeded random subset beyond)
LOF_EPS = 1e-10  # added to the mean reach-distance (sklearn.neighbors.LocalOutlierFactor does the same)


def lof_ks(n_bank: int) -> tuple[int, ...]:
    """The neighbourhood sizes for a bank of n_bank rows: LOF_KS and round(share · n_bank) for LOF_K_SHARES, each
    at least min(LOF_KS) and at most n_bank − 1, without repeats, ascending."""
    lo = min(LOF_KS)
    ks = [*LOF_KS, *(round(s * n_bank) for s in LOF_K_SHARES)]
    return tuple(sorted({max(1, min(max(k, lo), n_bank - 1)) for k in ks}))


def bank_rows(n: int, bank: int = LOF_BANK, seed: int = 0) -> np.ndarray:
    """Indices of the reference bank: all rows when n ≤ bank, else `bank` rows drawn without replacement (seed),
    sorted."""
    if n <= bank:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, bank, replace=False))


def bank_neighbours(z: torch.Tensor, bank_idx: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine distances, bank positions), each N × k, ascending: every row's k nearest bank rows, a bank member
    never its own neighbour. z is L2-normalised here; float32 products (chunked under SIMILARITY_BUDGET), so
    distances below ≈ 1e-6 (near-exact duplicates) are at float32 resolution."""
    zn = l2_normalize(z)
    n = zn.shape[0]
    dev = zn.device
    if len(bank_idx) == n:  # the bank is the pool
        plan = plan_chunks(n, k, budget=SIMILARITY_BUDGET, itemsize=4, split_bank=False)
        parts = list(iter_topk(zn, zn, k, plan, exclude_self=True))
        sims, idx = torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts])
    else:
        bank = zn[torch.from_numpy(bank_idx).to(dev)]
        pos = torch.full((n,), -1, dtype=torch.int64, device=dev)
        pos[torch.from_numpy(bank_idx).to(dev)] = torch.arange(len(bank_idx), device=dev)
        plan = plan_chunks(len(bank_idx), k + 1, budget=SIMILARITY_BUDGET, itemsize=4, split_bank=False)
        s_parts, i_parts = [], []
        for a, b, v, i in iter_topk(zn, bank, k + 1, plan):
            v = v.masked_fill(i == pos[a:b, None], float("-inf"))  # a bank member drops itself …
            v, order = torch.topk(v, k, dim=1)  # … the others their (k+1)-th
            s_parts.append(v)
            i_parts.append(i.gather(1, order))
        sims, idx = torch.cat(s_parts), torch.cat(i_parts)
    return (1.0 - sims.to(torch.float64)).clamp_min(0.0), idx


def log_lof(dist: torch.Tensor, idx: torch.Tensor, bank_idx: np.ndarray, k: int) -> torch.Tensor:
    """log LOF_k of every row (module docstring) from its ascending bank-neighbour distances and positions (at
    least k columns); the bank's own k-distances and lrds come from its members' rows."""
    d, i = dist[:, :k], idx[:, :k]
    member = torch.from_numpy(bank_idx).to(dist.device)
    kdist = d[member, k - 1]  # k-dist of each bank row
    lrd_bank = 1.0 / (torch.maximum(kdist[i[member]], d[member]).mean(dim=1) + LOF_EPS)
    lrd = 1.0 / (torch.maximum(kdist[i], d).mean(dim=1) + LOF_EPS)
    return torch.log(lrd_bank[i].mean(dim=1)) - torch.log(lrd)


def local_outlier_factor(embeddings: np.ndarray | torch.Tensor, ks: tuple[int, ...] | None = None, *,
                         bank: int = LOF_BANK, seed: int = 0,
                         device: str | torch.device | None = None) -> dict[int, np.ndarray]:  # fmt: skip
    """{k: log LOF_k per row} over cosine distance (module docstring); ks default ``lof_ks`` of the bank size.
    float32 similarities, float64 distances and ratios."""
    dev = resolve_device(device, embeddings)
    z = as_rows(embeddings, dev)
    n = z.shape[0]
    if n < 3:
        raise ValueError("LOF needs at least 3 rows")
    bank_idx = bank_rows(n, bank, seed)
    ks = lof_ks(len(bank_idx)) if ks is None else tuple(sorted({min(int(k), len(bank_idx) - 1) for k in ks}))
    dist, idx = bank_neighbours(z, bank_idx, max(ks))
    return {k: log_lof(dist, idx, bank_idx, k).cpu().numpy() for k in ks}


def multiscale_lof(embeddings: np.ndarray | torch.Tensor, *, bank: int = LOF_BANK, seed: int = 0,
                   device: str | torch.device | None = None) -> tuple[np.ndarray, tuple[int, ...]]:  # fmt: skip
    """(max over k of the modified z-score of log LOF_k, the k's): a sample is as suspicious as its most
    outlying neighbourhood size says (Breunig et al. 2000, Sec. 7, on the robust-z scale so that the k's are
    comparable)."""
    per_k = local_outlier_factor(embeddings, bank=bank, seed=seed, device=device)
    return np.max([robust_z(v) for v in per_k.values()], axis=0), tuple(per_k)
