"""Labels that say what ran (issue #23, item 5), each against an independent reference:

2-class C          scikit-learn's binary LogisticRegression(C): same probabilities at the recorded C
k-NN top-5         a numpy re-implementation of DINO's eval_knn.py knn_classifier (all classes ranked)
trivial top-5      omitted, with a warning, with ≤ 5 classes (and knn{k}_top5 with fewer than 5 voters)
k-NN ties          duplicate rows with different labels: the same answer for every chunking, equal to a
                   stable-sort brute force (lowest train row, then lowest class, first)
α-ReQ at d = 16    fitted on ranks 6..16, a weighted numpy polyfit over that range, and warned
tiny open sets     5 unknown test rows: the open-set metrics are omitted, the counts recorded
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from worker.suites.common import duplicates, topk
from worker.suites.probes import fit_logreg_sweep, resolve_split, run_probes, stratified_split, weighted_knn
from worker.suites.probes.openset import OPENSET_MIN_ROWS
from worker.suites.spectrum import run_spectrum

T = 0.07
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def blobs(n: int, d: int, k: int, sep: float, seed: int, weights: np.ndarray | None = None):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * sep
    y = rng.choice(k, n, p=weights)
    return (means[y] + rng.standard_normal((n, d)) + 0.5).astype(np.float32), y


def split_of(n: int, test: np.ndarray) -> np.ndarray:
    s = np.zeros(n, dtype=np.int64)
    s[test] = 1
    return s


# --- 2-class C: scikit-learn's binary convention -----------------------------------------------------


def test_two_class_c_equals_sklearn_binary_logistic_regression():
    x, y = blobs(500, 8, 2, 0.4, seed=1, weights=np.array([0.7, 0.3]))
    xs = StandardScaler().fit_transform(x.astype(np.float64))
    cs = [1e-3, 3e-2, 1.0]
    fit = fit_logreg_sweep(x, y, cs, tol=1e-7, max_iter=2000)
    np.testing.assert_allclose(fit.c, cs)
    np.testing.assert_allclose(fit.c_fit, np.asarray(cs) / 2)
    for j, c in enumerate(cs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LogisticRegression(C=c, tol=1e-10, max_iter=20_000).fit(xs, y)
            twice = LogisticRegression(C=2 * c, tol=1e-10, max_iter=20_000).fit(xs, y)
        p = torch.softmax(fit.logits(x, j).double(), dim=1).numpy()[:, 1]
        p_ref = ref.predict_proba(xs)[:, 1]
        np.testing.assert_allclose(p, p_ref, atol=2e-4, err_msg=f"C={c}")
        np.testing.assert_array_equal(fit.classes[fit.predict(x)[j]], ref.predict(xs))
        # the old label (our C = scikit-learn's C/2) is measurably another model at small C
        if c < 0.1:
            assert np.abs(p - twice.predict_proba(xs)[:, 1]).max() > 1e-2


def test_two_class_probe_records_sklearn_c_and_omits_top5():
    x, y = blobs(400, 6, 2, 0.35, seed=2, weights=np.array([0.65, 0.35]))
    grid = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    res = run_probes(x, y, device="cpu", c_grid=grid, knn_k=(10,), tol=1e-7, max_iter=2000)
    m = res.metrics
    assert "linear_top5" not in m and "knn10_top5" not in m
    assert any("linear_top5 and knn{k}_top5 omitted" in w and "2 classes ≤ 5" in w for w in res.warnings)
    assert "binary" in res.variant["c_convention"]
    # scikit-learn on the same inner split, at every C of the grid: the same holdout accuracies ...
    tr, te, _ = resolve_split(y)
    fit_i, hold_i = stratified_split(y[tr], 0.1, 0)
    x_tr = x[tr].astype(np.float64)
    sc = StandardScaler().fit(x_tr[fit_i])
    hold = np.array(res.figures["c_sweep"]["holdout_top1"])
    sk_hold = []
    for c in grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = LogisticRegression(C=c, tol=1e-10, max_iter=20_000).fit(
                sc.transform(x_tr[fit_i]), y[tr][fit_i]
            )
        sk_hold.append(ref.score(sc.transform(x_tr[hold_i]), y[tr][hold_i]))
    assert np.abs(hold - np.array(sk_hold)).max() <= 1.0 / hold_i.size
    # ... and at the recorded C, scikit-learn's refit on all of train gives the same test predictions
    sc_all = StandardScaler().fit(x_tr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = LogisticRegression(C=m["linear_best_c"], tol=1e-10, max_iter=20_000).fit(
            sc_all.transform(x_tr), y[tr]
        )
    acc_ref = ref.score(sc_all.transform(x[te].astype(np.float64)), y[te])
    assert abs(m["linear_top1"] - acc_ref) <= 1.0 / te.size


# --- k-NN top-5 as DINO, and its omission --------------------------------------------------------------


def dino_knn(train, train_y, query, query_y, k, n_classes, temperature=T):
    """DINO eval_knn.py knn_classifier in numpy (float64): top-k by similarity (a stable sort: lower train row
    first on ties), one-hot retrieval weighted by exp(sim/T) summed into a C-vector, predictions = all classes
    sorted by decreasing vote (stable: lower class first); top-5 = the true class among the first 5.
    Identical train rows get one similarity (np.unique over rows), so they tie exactly."""
    uniq, inverse = np.unique(train.astype(np.float64), axis=0, return_inverse=True)
    t = uniq / np.linalg.norm(uniq, axis=1, keepdims=True)
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    sim = (q.astype(np.float64) @ t.T)[:, inverse.ravel()]
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(sim, idx, axis=1)
    one_hot = np.zeros((q.shape[0], k, n_classes))
    np.put_along_axis(one_hot, train_y[idx][:, :, None], 1.0, axis=2)
    probs = (one_hot * np.exp(dist / temperature)[:, :, None]).sum(axis=1)
    predictions = np.argsort(-probs, axis=1, kind="stable")
    correct = predictions == query_y[:, None]
    return float(correct[:, 0].mean()), float(correct[:, :5].any(axis=1).mean()), probs, predictions


@pytest.mark.parametrize("device", DEVICES)
def test_knn_top5_ranks_all_classes_as_dino(device):
    n_classes = 12
    rng = np.random.default_rng(3)
    x, y = blobs(700, 10, n_classes, 0.6, seed=3)
    te = np.sort(rng.choice(y.size, 200, replace=False))
    tr = np.setdiff1d(np.arange(y.size), te)
    res = weighted_knn(
        x[tr],
        y[tr],
        x[te],
        ks=(5, 10, 20),
        classes=np.arange(n_classes),
        device=device,
        query_chunk=37,
        train_chunk=101,
        return_scores=True,
    )
    for k in (5, 10, 20):
        top1, top5, probs, pred = dino_knn(x[tr], y[tr], x[te], y[te], k, n_classes)
        np.testing.assert_allclose(res.scores[k], probs, rtol=1e-4)
        np.testing.assert_array_equal(res.ranked[k], pred[:, :5])
        assert res.accuracy(y[te], k, 1) == top1 and res.accuracy(y[te], k, 5) == top5
        if k == 5:  # the old label (only classes with votes count) is another number on this data
            voted_only = np.mean([probs[i, y[te][i]] > 0 and y[te][i] in pred[i, :5] for i in range(te.size)])
            assert voted_only < top5
    split = split_of(y.size, te)
    out = run_probes(x, y, split=split, device=device, c_grid=[1.0], knn_k=(5, 20), openset=False)
    for k in (5, 20):
        assert out.metrics[f"knn{k}_top5"] == dino_knn(x[tr], y[tr], x[te], y[te], k, n_classes)[1]
    assert out.variant["top5_trivial"] is False and "DINO" in out.variant["knn"]


@pytest.mark.parametrize("n_classes", [4, 5, 6])
def test_top5_omitted_with_at_most_five_classes(n_classes):
    x, y = blobs(240, 6, n_classes, 1.0, seed=4)
    res = run_probes(x, y, device="cpu", c_grid=[1.0], knn_k=(3, 10), openset=False)
    top5 = {k for k in res.metrics if k.endswith("_top5")}
    if n_classes <= 5:
        assert top5 == set() and res.variant["top5_trivial"] is True
        assert any(f"{n_classes} classes ≤ 5" in w for w in res.warnings)
        assert res.figures["knn"]["top5"] is None  # no top-5 trace drawn
    else:  # k = 3 < 5 voters: its top-5 would be padded with vote-less classes
        assert top5 == {"linear_top5", "knn10_top5"}
        assert any("knn{k}_top5 omitted for k = [3]" in w for w in res.warnings)
        assert res.figures["knn"]["top5"][0] is None
    assert {"linear_top1", "knn3_top1", "knn10_top1"} <= set(res.metrics)


# --- k-NN ties: lowest index first, whatever the chunking ---------------------------------------------


def test_topk_lowest_index_equals_stable_sort():
    rng = np.random.default_rng(5)
    for _ in range(200):
        m, n = int(rng.integers(1, 30)), int(rng.integers(1, 80))
        vals = rng.integers(0, int(rng.integers(1, 5)), (m, n)).astype(np.float32)  # many ties
        k = int(rng.integers(1, n + 1))
        v, i = topk.topk_lowest_index(torch.from_numpy(vals), k)
        ref = np.argsort(-vals, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(i.numpy(), ref)
        np.testing.assert_array_equal(v.numpy(), np.take_along_axis(vals, ref, axis=1))


def test_iter_topk_ties_independent_of_plan():
    """Integer-valued rows: every similarity is exact, so only the tie rule can make plans disagree."""
    rng = np.random.default_rng(6)
    bank = torch.from_numpy(rng.integers(0, 2, (60, 5)).astype(np.float64))  # 32 patterns, many duplicates
    q = torch.from_numpy(rng.integers(0, 2, (12, 5)).astype(np.float64))
    sim = (q @ bank.T).numpy()
    for k in (1, 3, 8, 30):
        ref = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        for qr, br in ((12, 60), (1, 1), (5, 13), (64, 7)):
            got = torch.cat([i for _, _, _, i in topk.iter_topk(q, bank, k, topk.ChunkPlan(qr, max(br, 1)))])
            np.testing.assert_array_equal(got.numpy(), ref, err_msg=f"k={k} plan=({qr}, {br})")


def test_distinct_rows_groups_exact_duplicates_and_expands_in_index_order(monkeypatch):
    rng = np.random.default_rng(10)
    base = rng.standard_normal((30, 6)).astype(np.float32)
    base[3, 2] = 0.0
    pick = rng.integers(0, 30, 200)
    x = base[pick].copy()
    x[pick == 3, 2] = -0.0  # −0.0 and 0.0 are one row
    x[::50, 2] = -0.0
    _, ref_inverse = np.unique(x + np.float32(0.0), axis=0, return_inverse=True)
    ref_inverse = ref_inverse.ravel()

    def check(groups):
        g = groups.group.numpy()
        assert groups.n_distinct == np.unique(ref_inverse).size
        # the same partition as np.unique, numbered by first occurrence
        assert all(np.array_equal(g == g[i], ref_inverse == ref_inverse[i]) for i in range(x.shape[0]))
        np.testing.assert_array_equal(
            groups.first.numpy(), [np.flatnonzero(g == j)[0] for j in range(groups.n_distinct)]
        )
        # expand: neighbour groups in the given order -> their rows, each group's in increasing index
        order = rng.permutation(groups.n_distinct)[None, :7]
        vals = torch.arange(7, 0, -1, dtype=torch.float32)[None, :]
        v, rows = groups.expand(vals, torch.from_numpy(order), 12)
        want = np.concatenate([np.flatnonzero(g == j) for j in order[0]])[:12]
        np.testing.assert_array_equal(rows.numpy()[0], want)
        np.testing.assert_array_equal(
            v.numpy()[0], np.repeat(vals.numpy()[0], [min(12, (g == j).sum()) for j in order[0]])[:12]
        )

    check(duplicates.distinct_rows(torch.from_numpy(x)))
    # every row hashing alike (forced collisions): the exact grouping of the shared rows separates them
    monkeypatch.setattr(duplicates, "_row_hash", lambda t: torch.zeros(t.shape[0], dtype=torch.int32))
    check(duplicates.distinct_rows(torch.from_numpy(x)))


@pytest.mark.parametrize("device", DEVICES)
def test_knn_duplicate_rows_with_different_labels_are_chunking_independent(device):
    """Each train vector appears three times with three different labels: for a query equal to it the top
    similarities tie exactly, and k cuts through the tie group. The answer is the stable-sort brute force
    (lowest train rows first, then lowest class on equal votes) for every chunking and memory budget."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((40, 16)).astype(np.float32)
    train = np.concatenate([base, base, base])  # copies 40 and 80 rows apart: in other train blocks
    train_y = np.concatenate([rng.integers(0, 8, 40), rng.integers(0, 8, 40), rng.integers(0, 8, 40)])
    query = np.concatenate([base[:25], base[25:] + 0.05 * rng.standard_normal((15, 16)).astype(np.float32)])
    query_y = rng.integers(0, 8, query.shape[0])
    ks = (1, 2, 4, 5, 7)
    runs = [
        weighted_knn(
            train,
            train_y,
            query,
            ks=ks,
            classes=np.arange(8),
            device=device,
            query_chunk=qc,
            train_chunk=tc,
            return_scores=True,
        )
        for qc, tc in ((40, 120), (1, 1), (3, 7), (16, 41), (40, 2))
    ]
    runs += [
        weighted_knn(
            train,
            train_y,
            query,
            ks=ks,
            classes=np.arange(8),
            device=device,
            memory_budget_bytes=b,
            return_scores=True,
        )
        for b in (6_000, 30_000)
    ]
    assert len({(r.query_chunk, r.train_chunk) for r in runs}) == len(runs)
    for k in ks:
        _, _, probs, pred = dino_knn(train, train_y, query, query_y, k, 8)
        for r in runs:
            np.testing.assert_array_equal(
                r.ranked[k], pred[:, :5], err_msg=f"k={k} chunks={r.query_chunk, r.train_chunk}"
            )
            # the votes agree to float32 rounding (a GEMM may round one pair differently in another block shape)
            np.testing.assert_allclose(r.scores[k], probs, rtol=1e-5)
    # the construction does exercise the rule: a query's 1-NN is the FIRST copy of its row
    assert all(runs[0].ranked[1][i, 0] == train_y[i] for i in range(25))
    # and the suite's k-NN metrics do not move with the memory budget either
    split = split_of(160, np.arange(120, 160))
    x = np.concatenate([train, query])
    y = np.concatenate([train_y, query_y])
    a = run_probes(x, y, split=split, device=device, c_grid=[1.0], knn_k=ks, openset=False)
    b = run_probes(
        x, y, split=split, device=device, c_grid=[1.0], knn_k=ks, openset=False, memory_budget_bytes=20_000
    )
    assert {k: v for k, v in a.metrics.items() if k.startswith("knn")} == {
        k: v for k, v in b.metrics.items() if k.startswith("knn")
    }
    assert a.variant["knn_chunks"] != b.variant["knn_chunks"]


# --- α-ReQ on truncated rank ranges -------------------------------------------------------------------


def weighted_alpha(lam: np.ndarray, first: int, last: int) -> float:
    i = np.arange(first, last + 1, dtype=np.float64)
    slope, _ = np.polyfit(-np.log(i), np.log(lam[first - 1 : last]), 1, w=np.sqrt(1.0 / i))  # weights 1/i
    return float(slope)


def test_alpha_req_at_d16_is_fitted_on_ranks_6_to_16_and_warned():
    rng = np.random.default_rng(8)
    z = rng.standard_normal((300, 256)) * np.arange(1, 257) ** -0.7
    res = run_spectrum(z, device="cpu")
    ranges = res.variant["alpha_fit_ranges"]
    assert ranges == {
        "alpha_req": [6, 100],
        "alpha_req@d128": [6, 100],
        "alpha_req@d64": [6, 64],
        "alpha_req@d32": [6, 32],
        "alpha_req@d16": [6, 16],
    }
    for d in (16, 32, 64, 128):
        lam = np.sort(np.linalg.eigvalsh(np.cov(z[:, :d], rowvar=False)))[::-1]
        first, last = ranges[f"alpha_req@d{d}"]
        assert res.metrics[f"alpha_req@d{d}"] == pytest.approx(weighted_alpha(lam, first, last), rel=1e-8)
    (w,) = [w for w in res.warnings if "truncated rank ranges" in w]
    assert "alpha_req@d16 on ranks 6..16" in w and "alpha_req@d64 on ranks 6..64" in w and "d128" not in w
    # no prefix truncated, no warning
    assert not any(
        "truncated" in w for w in run_spectrum(z[:, :200], device="cpu", matryoshka=False).warnings
    )


# --- open-set metrics need enough rows ------------------------------------------------------------------


def openset_data(n_unknown_test: int, seed: int = 9):
    """4 known classes of 60 rows (12 of each in test) and unknown class 4 with n_unknown_test test rows,
    living in two dimensions the known classes never use."""
    rng = np.random.default_rng(seed)
    yk = np.repeat(np.arange(4), 60)
    xk = (rng.standard_normal((4, 8)) * 1.5)[yk] + rng.standard_normal((240, 8))
    xu = np.zeros((20 + n_unknown_test, 10))
    xu[:, 8:] = rng.standard_normal((xu.shape[0], 2)) + 3.0
    x = np.concatenate([np.pad(xk, ((0, 0), (0, 2))), xu]).astype(np.float32)
    y = np.concatenate([yk, np.full(xu.shape[0], 4)])
    test = np.concatenate(
        [
            np.concatenate([np.flatnonzero(yk == c)[:12] for c in range(4)]),
            240 + 20 + np.arange(n_unknown_test),
        ]
    )
    return x, y, split_of(y.size, test)


def test_openset_omitted_with_five_unknown_rows_and_counts_recorded():
    x, y, split = openset_data(5)
    res = run_probes(x, y, split=split, device="cpu", c_grid=[1.0], knn_k=(10,), holdout_classes=[4])
    assert not any(k.startswith("openset_") for k in res.metrics)
    assert res.variant["openset_n_known_test"] == 48 and res.variant["openset_n_unknown_test"] == 5
    assert res.variant["openset_min_rows"] == OPENSET_MIN_ROWS == 20
    assert any("open-set metrics omitted" in w and "5 unknown-class rows" in w for w in res.warnings)
    assert "openset" not in res.figures
    # asked for explicitly, the same 5 rows are scored: the known-answer separation
    low = run_probes(
        x, y, split=split, device="cpu", c_grid=[1.0], knn_k=(10,), holdout_classes=[4], openset_min_rows=5
    )
    assert low.metrics["openset_auroc_knn"] == 1.0 and low.variant["openset_min_rows"] == 5


def test_openset_reported_at_twenty_unknown_rows_equals_sklearn():
    x, y, split = openset_data(20)
    res = run_probes(x, y, split=split, device="cpu", c_grid=[1.0], knn_k=(10,), holdout_classes=[4])
    assert res.variant["openset_n_unknown_test"] == 20 and res.variant["openset_n_known_test"] == 48
    tr, te = np.flatnonzero(split == 0), np.flatnonzero(split == 1)
    known_tr = tr[y[tr] != 4]
    t = x[known_tr] / np.linalg.norm(x[known_tr], axis=1, keepdims=True)
    q = x[te] / np.linalg.norm(x[te], axis=1, keepdims=True)
    score = (q.astype(np.float64) @ t.astype(np.float64).T).max(axis=1)
    assert res.metrics["openset_auroc_knn"] == pytest.approx(roc_auc_score(y[te] != 4, score), abs=1e-12)
