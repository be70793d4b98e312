"""Label-free checkpoint selection: does a label-free metric (RankMe, α-ReQ, ...) rank checkpoints the way a
probe's accuracy does? Pairs are matched on (run, step) over every checkpoint of a project.

Rank correlations are computed here in pure Python (the backend stays light: no scipy):
  * Spearman ρ: Pearson correlation of the average ranks (ties get the mean of their positions);
  * Kendall τ-b: (C − D) / √((n₀ − n₁)(n₀ − n₂)), n₀ = n(n−1)/2, n₁ / n₂ = pairs tied in x / y, counted
    in O(n log n) (Knight 1966: sort by (x, y), count discordant pairs as merge-sort inversions of y).
Both are None when undefined (n < 2, or either variable constant), where scipy returns NaN.

Metrics and probe accuracies are the computed ones (rows of evaluations). A scalar the training job logged
under a label-free metric's name is a separate row of its own, `logged:<name>` (backend.services.metrics),
never mixed into the computed metric's pairs; the probe side (y) is always computed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.models import Metric, Project, Run
from backend.services.leaderboards import direction, score
from backend.services.metrics import logged_key, qualified
from repscope import catalogue

LABEL_FREE_KEYS = catalogue.SELECTION_KEYS
PROBE_KEYS = catalogue.SELECTION_PROBES


# --- rank correlations --------------------------------------------------------------------------------------

def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing the mean of their positions (scipy.stats.rankdata 'average')."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        mean = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[order[k]] = mean
        i = j + 1
    return ranks


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n < 2 or n != len(y):
        return None
    mx, my = math.fsum(x) / n, math.fsum(y) / n
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx <= 0 or syy <= 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    return pearson(average_ranks(x), average_ranks(y))


def _tied_pairs(sorted_values: Sequence[float]) -> int:
    total, run = 0, 1
    for i in range(1, len(sorted_values) + 1):
        if i < len(sorted_values) and sorted_values[i] == sorted_values[i - 1]:
            run += 1
        else:
            total += run * (run - 1) // 2
            run = 1
    return total


def _count_inversions(values: Sequence[float]) -> int:
    """Pairs i < j with values[i] > values[j] (strict), by bottom-up merge sort: O(n log n)."""
    a = list(values)
    n = len(a)
    buf = a[:]
    inversions = 0
    width = 1
    while width < n:
        for lo in range(0, n, 2 * width):
            mid, hi = min(lo + width, n), min(lo + 2 * width, n)
            i, j, k = lo, mid, lo
            while i < mid and j < hi:
                if a[j] < a[i]:
                    buf[k] = a[j]
                    inversions += mid - i
                    j += 1
                else:
                    buf[k] = a[i]
                    i += 1
                k += 1
            buf[k:hi] = a[i:mid] if i < mid else a[j:hi]
        a, buf = buf, a
        width *= 2
    return inversions


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    n = len(x)
    if n != len(y):
        raise ValueError("x and y differ in length")
    if n < 2:
        return None
    pairs = sorted(zip(x, y, strict=True))
    n0 = n * (n - 1) // 2
    n1 = _tied_pairs([p[0] for p in pairs])                # tied in x
    n3 = _tied_pairs(pairs)                                  # tied in both (pairs sorted: equal tuples adjacent)
    ys = [p[1] for p in pairs]
    discordant = _count_inversions(ys)                       # x ascending, ties in x sorted by y: no inversions
    n2 = _tied_pairs(sorted(ys))                             # tied in y
    denominator = (n0 - n1) * (n0 - n2)
    if denominator <= 0:
        return None
    concordant_minus_discordant = n0 - n1 - n2 + n3 - 2 * discordant
    return max(-1.0, min(1.0, concordant_minus_discordant / math.sqrt(denominator)))


# --- the view ---------------------------------------------------------------------------------------------

@dataclass
class Pair:
    run_id: int
    run: str
    step: int
    x: float
    y: float


@dataclass
class MetricAgreement:
    key: str
    probe: str
    pairs: list[Pair]
    rho: float | None
    tau: float | None
    runs: int = 0
    agree: int = 0            # runs where the metric's best checkpoint is the probe's best checkpoint
    regret: float | None = None   # mean probe accuracy lost by taking the metric's pick instead of the probe's
    picks: list[dict] = field(default_factory=list)


def selection(session: Session, project: Project, probe: str,
              keys: Sequence[str] = LABEL_FREE_KEYS) -> list[MetricAgreement]:
    """For each label-free key the project has: (x = metric, y = probe) over checkpoints, ρ, τ-b, and whether
    the metric's best step per run (by its direction) is the probe's best step. Computed keys first, then the
    same names as logged by the training job (`logged:rankme`), each its own row."""
    wanted = [*keys, probe]
    rows = session.execute(
        select(Metric.run_id, Run.name, Metric.step, Metric.key, Metric.value, Metric.evaluation_id)
        .join(Run, Metric.run_id == Run.id).where(Run.project_id == project.id, Metric.key.in_(wanted))
        .order_by(Metric.run_id, Metric.step, Metric.evaluation_id, Metric.id))
    cells: dict[tuple[int, int], dict[str, float]] = defaultdict(dict)
    names: dict[int, str] = {}
    for run_id, name, step, key, value, eid in rows:  # per namespace, ordered: the newest row wins
        cells[(run_id, step)][qualified(key, eid)] = value
        names[run_id] = name
    out = []
    for key in [*keys, *(logged_key(k) for k in keys)]:
        pairs = [Pair(run_id=r, run=names[r], step=s, x=c[key], y=c[probe]) for (r, s), c in sorted(cells.items())
                 if key in c and probe in c]
        if not pairs:
            continue
        xs, ys = [p.x for p in pairs], [p.y for p in pairs]
        agreement = MetricAgreement(key=key, probe=probe, pairs=pairs, rho=spearman_rho(xs, ys),
                                    tau=kendall_tau_b(xs, ys))
        _agreement(agreement)
        out.append(agreement)
    return out


def _agreement(a: MetricAgreement) -> None:
    by_run: dict[int, list[Pair]] = defaultdict(list)
    for p in a.pairs:
        by_run[p.run_id].append(p)
    regrets = []
    for pairs in by_run.values():
        if len(pairs) < 2 or direction(a.key) == "none":
            continue
        best_probe = max(pairs, key=lambda p: (p.y, -p.step))
        best_metric = max(pairs, key=lambda p: (score(a.key, p.x), -p.step))
        a.runs += 1
        a.agree += best_probe.step == best_metric.step
        regrets.append(best_probe.y - best_metric.y)
        a.picks.append({"run": best_probe.run, "probe_step": best_probe.step, "metric_step": best_metric.step,
                        "probe_best": best_probe.y, "probe_at_metric_pick": best_metric.y})
    a.regret = math.fsum(regrets) / len(regrets) if regrets else None
