"""worker.suites.common against independent references: numpy brute force, scikit-learn, hand counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from worker.suites.common import arrays, budget, device, encode, images, roc, sampling, topk
from worker.suites.common.arrays import l2_normalize

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# --- device -------------------------------------------------------------------------------------------


def test_resolve_device_order_and_pick_device():
    from worker.embed import resolve_device as embed_resolve
    from worker.engine import pick_device
    from worker.suites.base import resolve_device as base_resolve

    default = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert device.default_device() == default
    assert device.resolve_device("cpu", torch.zeros(1)) == torch.device("cpu")
    assert device.resolve_device(None, torch.zeros(1, device="meta")) == torch.device("meta")
    assert device.resolve_device(None, np.zeros(1)) == default and device.resolve_device() == default
    assert base_resolve is device.resolve_device and embed_resolve is device.resolve_device
    assert pick_device("cuda:3") == "cuda:3"
    assert pick_device(None) == pick_device("") == default.type


# --- arrays -------------------------------------------------------------------------------------------


def test_matrix_shape_and_dtype_check():
    assert arrays.matrix_shape(np.zeros((3, 4), dtype=np.float16), real=True) == (3, 4)
    assert arrays.matrix_shape(torch.zeros(2, 5, dtype=torch.int32), real=True) == (2, 5)
    with pytest.raises(ValueError, match=r"2-D \(N, D\) matrix, got shape \(2, 3, 4\)"):
        arrays.matrix_shape(np.zeros((2, 3, 4)))
    for bad in (np.zeros((2, 2), dtype=complex), np.zeros((2, 2), dtype=bool), torch.zeros(2, 2, dtype=torch.bool),
                torch.zeros(2, 2, dtype=torch.complex64)):  # fmt: skip
        assert arrays.matrix_shape(bad) == (2, 2)  # no dtype check unless asked
        with pytest.raises(TypeError, match="real numbers"):
            arrays.matrix_shape(bad, real=True)


def test_native_and_to_tensor():
    big = np.arange(6, dtype=">f4").reshape(2, 3)
    assert arrays.native(big).dtype == np.float64 and arrays.native(big.astype(np.float16)).dtype == np.float16
    assert arrays.native(np.arange(3)).dtype == np.float64
    np.testing.assert_array_equal(arrays.native(big), big)
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    shared = arrays.to_tensor(x, torch.device("cpu"), torch.float64)
    copied = arrays.to_tensor(x, torch.device("cpu"), torch.float64, copy=True)
    x[0, 0] = 99.0
    assert shared[0, 0] == 99.0 and copied[0, 0] == 0.0  # shares only when allowed to
    ro = x.copy()
    ro.flags.writeable = False
    assert not np.shares_memory(arrays.to_tensor(ro, torch.device("cpu"), torch.float64).numpy(), ro)
    f = arrays.to_tensor(np.asfortranarray(x), torch.device("cpu"), torch.float32)
    assert f.dtype == torch.float32 and torch.equal(f, torch.from_numpy(x).float())
    t = torch.ones(2, 2, requires_grad=True)
    assert not arrays.to_tensor(t, torch.device("cpu"), torch.float64).requires_grad


def test_check_finite_and_l2_normalize():
    arrays.check_finite(torch.ones(3))
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="embeddings contain NaN or infinite values"):
            arrays.check_finite(torch.tensor([1.0, bad]))
    with pytest.raises(ValueError, match="custom"):
        arrays.check_finite(torch.tensor([math.nan]), "custom")
    x = np.random.default_rng(0).standard_normal((20, 7))
    x[3] = 0.0
    x[4] = 1e-14  # norm below eps: divided by eps, not by the norm
    got = l2_normalize(torch.from_numpy(x)).numpy()
    ref = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), arrays.NORMALIZE_EPS)
    np.testing.assert_allclose(got, ref, rtol=1e-14, atol=0)
    assert np.all(got[3] == 0)
    ft = torch.from_numpy(x).float()
    assert torch.equal(l2_normalize(ft), torch.nn.functional.normalize(ft, dim=1, eps=arrays.NORMALIZE_EPS))


def test_to_list_keeps_or_drops_non_finite():
    a = np.array([[1.5, math.nan], [math.inf, -math.inf]], dtype=np.float32)
    kept = arrays.to_list(a)
    assert kept[0] == 1.5 and math.isnan(kept[1]) and kept[2:] == [math.inf, -math.inf]
    assert all(type(v) is float for v in kept)
    assert arrays.to_list(a, nonfinite_as_none=True) == [1.5, None, None, None]
    assert arrays.to_list(torch.tensor([2.0])) == [2.0] and arrays.to_list([]) == []


def test_rows_per_chunk():
    assert budget.MEMORY_BUDGET == 512 << 20
    assert budget.rows_per_chunk(1000, 300) == 3
    assert budget.rows_per_chunk(100, 300) == 1  # at least one row
    assert budget.rows_per_chunk(100, 0) == 100


# --- sampling -----------------------------------------------------------------------------------------


def test_subsample_rows():
    assert sampling.subsample_rows(10, 10, 0) is None and sampling.subsample_rows(5, 10, 0) is None
    rows = sampling.subsample_rows(1000, 37, 3)
    np.testing.assert_array_equal(rows, np.sort(np.random.default_rng(3).choice(1000, 37, replace=False)))
    assert rows.size == 37 and np.all(np.diff(rows) > 0)
    # a separate draw size (the equivariance suite draws max(n_images, MIN_IMAGES) rows when N > n_images)
    big = sampling.subsample_rows(25, 10, 1, size=20)
    np.testing.assert_array_equal(big, np.sort(np.random.default_rng(1).choice(25, 20, replace=False)))


def _counts(labels: np.ndarray, test: np.ndarray) -> list[int]:
    return [int(np.sum(labels[test] == c)) for c in np.unique(labels)]


def test_stratified_split_hand_counts():
    y = np.repeat(np.arange(5), [10, 5, 1, 3, 2])  # n_c = 10, 5, 1, 3, 2
    # half_up, both sides: 0.5 -> round(5, 2.5, 0.5, 1.5, 1) = 5, 3, 1, 2, 1, then clipped to [1, n_c − 1],
    # the one-row class stays in train
    tr, te = sampling.stratified_split(y, 0.5, 0)
    assert _counts(y, te) == [5, 3, 0, 2, 1]
    assert tr.dtype == te.dtype == np.int64 and np.all(np.diff(te) > 0) and np.all(np.diff(tr) > 0)
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), np.arange(y.size))
    # half_even, one side allowed: round(5, 2.5, 0.5, 1.5, 1.0) = 5, 2, 0, 2, 1
    _, te_even = sampling.stratified_split(y, 0.5, 0, rounding="half_even", both_sides=False)
    assert _counts(y, te_even) == [5, 2, 0, 2, 1]
    # clipping: 0.9 of 3 rows rounds to 3, clipped to 2; 0.1 of 3 rounds to 0, clipped to 1
    y3 = np.repeat([7, 9], [3, 3])
    assert _counts(y3, sampling.stratified_split(y3, 0.9, 0)[1]) == [2, 2]
    assert _counts(y3, sampling.stratified_split(y3, 0.1, 0)[1]) == [1, 1]
    assert _counts(y3, sampling.stratified_split(y3, 0.9, 0, both_sides=False)[1]) == [3, 3]
    assert _counts(y3, sampling.stratified_split(y3, 0.1, 0, both_sides=False)[1]) == [0, 0]


def test_stratified_split_draws_are_the_seeded_permutations():
    y = np.random.default_rng(5).integers(0, 4, 200)
    for rounding, both in (("half_up", True), ("half_even", False)):
        _, te = sampling.stratified_split(y, 0.3, 11, rounding=rounding, both_sides=both)
        rng = np.random.default_rng(11)  # replay: classes in sorted order, one permutation each
        expect = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[: round(0.3 * np.sum(y == c))]
                                         for c in range(4)]))  # fmt: skip
        np.testing.assert_array_equal(te, expect)
    a, b = sampling.stratified_split(y, 0.3, 1)[1], sampling.stratified_split(y, 0.3, 2)[1]
    assert not np.array_equal(a, b)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\)"):
            sampling.stratified_split(y, bad)
    with pytest.raises(ValueError, match="rounding"):
        sampling.stratified_split(y, 0.2, rounding="up")
    assert [part.size for part in sampling.stratified_split(np.zeros(0, dtype=int), 0.2)] == [0, 0]


def test_builtin_split_is_the_int8_view():
    from worker.datasets.builtin import stratified_split as builtin_split

    y = np.repeat(np.arange(3), [10, 5, 1])
    split = builtin_split(y, 0.5, seed=4)
    assert split.dtype == np.int8
    _, te = sampling.stratified_split(y, 0.5, 4, rounding="half_even", both_sides=False)
    np.testing.assert_array_equal(np.flatnonzero(split), te)


# --- top-k --------------------------------------------------------------------------------------------


def _brute_topk(q: np.ndarray, b: np.ndarray, k: int, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    sim = q @ b.T
    if exclude_self:
        np.fill_diagonal(sim, -np.inf)
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, idx, axis=1), idx


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("n_q", "n_b", "k", "budget_bytes", "split_bank"), [
    (50, 40, 5, 1 << 20, True),  # one chunk
    (103, 97, 7, 4_000, True),  # many ragged query chunks and bank blocks
    (103, 97, 7, 4_000, False),  # many query chunks against the whole bank
    (10, 6, 50, 1 << 20, True),  # k > bank: clamped
])  # fmt: skip
def test_topk_similarity_brute_force(device, n_q, n_b, k, budget_bytes, split_bank):
    rng = np.random.default_rng(n_q + n_b)
    q, b = rng.standard_normal((n_q, 9)), rng.standard_normal((n_b, 9))
    plan = topk.plan_chunks(n_b, k, budget=budget_bytes, itemsize=8, split_bank=split_bank)
    if budget_bytes == 4_000:
        assert plan.query_rows < n_q and (plan.bank_rows < n_b) == split_bank
    v, i = topk.topk_similarity(torch.from_numpy(q).to(device), torch.from_numpy(b).to(device), k,
                                budget=budget_bytes, split_bank=split_bank)  # fmt: skip
    ref_v, ref_i = _brute_topk(q, b, min(k, n_b))
    np.testing.assert_allclose(v.cpu().numpy(), ref_v, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(i.cpu().numpy(), ref_i)
    assert i.dtype == torch.int64 and v.device.type == device


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("budget_bytes", [1 << 20, 3_000])
def test_topk_exclude_self(device, budget_bytes):
    z = np.random.default_rng(1).standard_normal((61, 5))
    zt = torch.from_numpy(z).to(device)
    v, i = topk.topk_similarity(zt, zt, 8, budget=budget_bytes, exclude_self=True)
    ref_v, ref_i = _brute_topk(z, z, 8, exclude_self=True)
    np.testing.assert_allclose(v.cpu().numpy(), ref_v, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(i.cpu().numpy(), ref_i)
    assert not np.any(i.cpu().numpy() == np.arange(61)[:, None])
    v_all, _ = topk.topk_similarity(zt, zt, 100, budget=budget_bytes, exclude_self=True)
    assert v_all.shape == (61, 60) and bool(torch.isfinite(v_all).all())  # k clamped to n − 1
    with pytest.raises(ValueError, match="exclude_self"):
        next(topk.iter_topk(zt[:5], zt, 3, topk.plan_chunks(61, 3), exclude_self=True))


def test_topk_ties_and_chunk_plan():
    # duplicated bank rows: every tie has the same value; the chosen rows must carry those values
    b = np.repeat(np.random.default_rng(2).standard_normal((6, 4)), 3, axis=0)
    q = np.random.default_rng(3).standard_normal((11, 4))
    for budget_bytes in (1 << 20, 600):
        v, i = topk.topk_similarity(torch.from_numpy(q), torch.from_numpy(b), 5, budget=budget_bytes)
        ref_v, _ = _brute_topk(q, b, 5)
        np.testing.assert_allclose(v.numpy(), ref_v, rtol=1e-12)
        np.testing.assert_allclose(np.take_along_axis(q @ b.T, i.numpy(), axis=1), v.numpy(), rtol=1e-12)
        assert all(len(set(row)) == 5 for row in i.numpy().tolist())  # no row twice
    # the plan: whole bank when ≥ 64 queries fit, else blocks of max(k, (budget // 64 − extra) // itemsize)
    assert topk.plan_chunks(100, 5, budget=64 * 400, itemsize=4) == topk.ChunkPlan(64, 100)
    assert topk.plan_chunks(100, 5, budget=64 * 399, itemsize=4) == topk.ChunkPlan(64, 99)
    assert topk.plan_chunks(100, 50, budget=1000, itemsize=4, per_query_bytes=10) == topk.ChunkPlan(4, 50)
    assert topk.plan_chunks(100, 5, budget=1000, itemsize=4, split_bank=False) == topk.ChunkPlan(2, 100)
    assert topk.plan_chunks(100, 5, query_rows=0, bank_rows=500) == topk.ChunkPlan(1, 100)
    empty_v, empty_i = topk.topk_similarity(torch.zeros((0, 4)), torch.from_numpy(b).float(), 3)
    assert empty_v.shape == empty_i.shape == (0, 3)


def test_iter_topk_prepare_and_matmul_hooks():
    q = torch.randn(20, 6, dtype=torch.float64)
    b = l2_normalize(torch.randn(30, 6, dtype=torch.float64))
    calls = []

    def gemm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return x @ y

    plan = topk.ChunkPlan(query_rows=7, bank_rows=30)
    out = list(topk.iter_topk(q, b, 4, plan, matmul=gemm, prepare=l2_normalize))
    assert [(a, s) for a, s, _, _ in out] == [(0, 7), (7, 14), (14, 20)] and calls == [7, 7, 6]
    ref_v, ref_i = _brute_topk(l2_normalize(q).numpy(), b.numpy(), 4)
    np.testing.assert_allclose(torch.cat([o[2] for o in out]).numpy(), ref_v, rtol=1e-12)
    np.testing.assert_array_equal(torch.cat([o[3] for o in out]).numpy(), ref_i)


def _brute_knn_scores(bank, labels, queries, k, t, n_classes):
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sim = q @ b.T
    out = np.zeros((len(q), n_classes))
    for r in range(len(q)):
        for j in np.argsort(-sim[r])[:k]:
            out[r, labels[j]] += math.exp(sim[r, j] / t)
    return out


def test_knn_votes_and_predict_brute_force():
    rng = np.random.default_rng(4)
    bank, queries = rng.standard_normal((80, 6)), rng.standard_normal((33, 6))
    labels = rng.integers(0, 5, 80)
    ref = _brute_knn_scores(bank, labels, queries, 10, topk.KNN_TEMPERATURE, 5)
    bt = l2_normalize(torch.from_numpy(bank))
    v, i = topk.topk_similarity(l2_normalize(torch.from_numpy(queries)), bt, 10)
    votes = topk.knn_votes(v, torch.from_numpy(labels)[i], 5)
    assert votes.dtype == torch.float64
    np.testing.assert_allclose(votes.numpy(), ref, rtol=1e-12)
    smaller = topk.knn_votes(v[:, :3], torch.from_numpy(labels)[i][:, :3], 5, temperature=0.5)
    np.testing.assert_allclose(smaller.numpy(), _brute_knn_scores(bank, labels, queries, 3, 0.5, 5), rtol=1e-12)
    for budget_bytes in (1 << 20, 2_000):  # one chunk, then one query row per chunk
        pred = topk.knn_predict(torch.from_numpy(bank), torch.from_numpy(labels), torch.from_numpy(queries), 10,
                                budget=budget_bytes)  # fmt: skip
        np.testing.assert_array_equal(pred.numpy(), ref.argmax(axis=1))
    # vote ties go to the lower class index; k larger than the bank is clamped
    tie = topk.knn_predict(torch.eye(2, 3), torch.tensor([1, 0]), torch.tensor([[1.0, 1.0, 0.0]]), 50)
    assert tie.tolist() == [0]


# --- ROC ----------------------------------------------------------------------------------------------


def _cases():
    rng = np.random.default_rng(6)
    for n in (2, 7, 50, 300):
        pos = rng.random(n) < 0.4
        pos[0], pos[-1] = True, False
        yield rng.standard_normal(n) + pos, pos  # continuous
        yield rng.integers(0, 4, n).astype(float), pos  # many ties
    yield np.ones(6), np.array([1, 0, 1, 0, 0, 1], dtype=bool)  # all tied


def test_roc_functions_match_sklearn():
    for s, pos in _cases():
        assert roc.auroc(s, pos) == pytest.approx(roc_auc_score(pos, s), abs=1e-12)
        fpr, tpr, _ = roc_curve(pos, s, drop_intermediate=False)
        for level in (0.5, 0.9, 0.95, 1.0):
            assert roc.fpr_at_tpr(s, pos, level) == pytest.approx(fpr[np.argmax(tpr >= level)], abs=1e-12)
        assert roc.fpr_at_tpr(s, pos) == roc.fpr_at_tpr(s, pos, 0.95)
        for level in (0.0, 0.01, 0.05, 0.5):
            assert roc.tpr_at_fpr(s, pos, level) == pytest.approx(tpr[fpr <= level].max(), abs=1e-12)
        curve = roc.roc_points(s, pos, max_points=10_000)
        np.testing.assert_allclose(curve["fpr"], fpr, atol=1e-12)
        np.testing.assert_allclose(curve["tpr"], tpr, atol=1e-12)
        thin = roc.roc_points(s, pos, max_points=3)
        assert len(thin["fpr"]) <= 3 and thin["fpr"][0] == 0.0 and thin["fpr"][-1] == 1.0


def test_roc_degenerate_inputs():
    for f in (roc.auroc, roc.fpr_at_tpr):
        assert math.isnan(f([1.0, 2.0], [True, True])) and math.isnan(f([1.0, 2.0], [False, False]))
    assert math.isnan(roc.tpr_at_fpr([1.0, 2.0], [True, True], 0.1))
    assert roc.roc_points([1.0, 2.0], [True, True]) == {"fpr": [0.0, 0.0, 0.0], "tpr": [0.0, 0.5, 1.0]}
    for f in (roc.auroc, lambda s, p: roc.tpr_at_fpr(s, p, 0.1), roc.roc_points, roc.fpr_at_tpr):
        with pytest.raises(ValueError, match="scores must be finite"):
            f([1.0, math.nan], [True, False])
        with pytest.raises(ValueError, match="3 scores but 2 labels"):
            f([1.0, 2.0, 3.0], [True, False])


# --- images and encoding ------------------------------------------------------------------------------


def test_image_conversions():
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (4, 6, 9, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (4, 6, 9, 1), dtype=np.uint8)
    x = images.to_float(torch.from_numpy(rgb))
    np.testing.assert_array_equal(x.numpy(), rgb.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255))
    assert images.to_float(torch.from_numpy(grey)).shape == (4, 1, 6, 9)
    g3 = images.to_float(torch.from_numpy(grey), 3)
    assert g3.shape == (4, 3, 6, 9) and torch.equal(g3[:, 0], g3[:, 2])
    assert torch.equal(images.to_float_images(rgb[:, ::-1], torch.device("cpu")),
                       images.to_float(torch.from_numpy(rgb[:, ::-1].copy())))  # fmt: skip
    sq = images.to_square_float(torch.from_numpy(grey))
    assert sq.shape == (4, 3, 6, 6)  # W 9 -> centred columns 1..6
    np.testing.assert_array_equal(sq[:, 0].numpy() * 255, grey[:, :, 1:7, 0].astype(np.float32))
    tall = torch.from_numpy(rng.integers(0, 256, (2, 7, 4, 3), dtype=np.uint8))
    assert torch.equal(images.center_square(tall), tall[:, 1:5])
    lum = images.luma(x.double()).numpy()
    np.testing.assert_allclose(lum, np.tensordot(np.array(images.LUMA), x.double().numpy(), axes=([0], [1]))[:, None])


def test_encode_batched_ragged_batches_and_checks():
    rng = np.random.default_rng(8)
    imgs = rng.integers(0, 256, (37, 5, 5, 3), dtype=np.uint8)
    lin = torch.nn.Linear(75, 4).double()
    seen = []

    def enc(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return lin(x.reshape(x.shape[0], -1).double())

    z = encode.encode_batched(enc, imgs, torch.device("cpu"), 8)
    assert seen == [8, 8, 8, 8, 5] and z.shape == (37, 4) and z.dtype == torch.float64 and not z.requires_grad
    with torch.no_grad():
        ref = lin(torch.from_numpy(imgs).permute(0, 3, 1, 2).double().div(255).reshape(37, -1))
    torch.testing.assert_close(z, ref, rtol=1e-6, atol=1e-6)  # float32 [0, 1] images, then float64
    spans = []

    def prepare(x_u8: torch.Tensor, a: int, b: int) -> torch.Tensor:
        spans.append((a, b))
        return images.to_float(x_u8) * 0.0 + a

    z2 = encode.encode_batched(lambda x: x.mean(dim=(1, 2, 3), keepdim=True), torch.from_numpy(imgs),
                               torch.device("cpu"), 10, prepare=prepare, dtype=torch.float32)  # fmt: skip
    assert spans == [(0, 10), (10, 20), (20, 30), (30, 37)] and z2.dtype == torch.float32
    np.testing.assert_array_equal(z2[:, 0].numpy(), np.repeat([0, 10, 20, 30], [10, 10, 10, 7]))
    with pytest.raises(TypeError, match="encode must return a tensor, got list"):
        encode.encode_batched(lambda x: [x], imgs, torch.device("cpu"), 8, check=True)
    with pytest.raises(ValueError, match="encode returned 1 rows for a batch of 8 images"):
        encode.encode_batched(lambda x: x[:1], imgs, torch.device("cpu"), 8, check=True)
