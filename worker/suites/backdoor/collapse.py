"""Known-trigger collapse: how tightly each trigger of the library (triggers.py) gathers an encoder's
embeddings, against a control stamp of equal energy, and the k-NN attack success of each trigger when the
scan images have labels (docs/METRICS.md, "Backdoor suite", encoder-level scores).

A backdoored encoder maps every triggered image near one point (BadEncoder, Jia et al., IEEE S&P 2022), so the
stamped embeddings' mean pairwise cosine rises; the attack success follows BadEncoder's downstream check with
DINO's weighted k-NN (Caron et al., ICCV 2021) as the classifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from worker.suites.base import EncodeFn, ProgressFn, no_progress
from worker.suites.common.arrays import NORMALIZE_EPS
from worker.suites.common.encode import encode_batched

from . import triggers as trig
from .knn import knn_predict

ENCODE_BATCH = 256  # images per encode() call
# The labelled scan images are split in half (seeded): a clean k-NN bank and the queries.
KNN_BANK_FRACTION = 0.5

# (bank rows, query rows, class index of every scan image) for the k-NN attack success
KnnSplit = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def mean_pairwise_cosine(z: torch.Tensor | np.ndarray, center: torch.Tensor | np.ndarray | None = None) -> float:
    """Mean cosine over ordered pairs i ≠ j of the rows of z − c (c = `center`, or 0):

        ẑ_i = (z_i − c) / ‖z_i − c‖,   C = (‖Σ_i ẑ_i‖² − Σ_i ‖ẑ_i‖²) / (n (n − 1)),

    in float64, O(n·D) (no n×n matrix). Rows equal to c count as zero vectors (cosine 0 with everything).
    """
    z = torch.as_tensor(z).to(torch.float64)
    if center is not None:
        z = z - torch.as_tensor(center).to(device=z.device, dtype=torch.float64)
    n = z.shape[0]
    if n < 2:
        raise ValueError("mean pairwise cosine needs at least 2 rows")
    norms = z.norm(dim=1, keepdim=True)
    zh = torch.where(norms > NORMALIZE_EPS, z / norms.clamp_min(NORMALIZE_EPS), torch.zeros_like(z))
    s = zh.sum(dim=0)
    return float((s @ s - (zh * zh).sum()) / (n * (n - 1)))


@dataclass
class TriggerScore:
    """Known-trigger scores of one trigger (``known_trigger_scores``)."""

    name: str
    control_name: str
    collapse: float
    control: float
    raw_collapse: float
    asr: float | None = None
    asr_control: float | None = None
    asr_clean: float | None = None
    target: Any = None  # the label value of the most common prediction on the stamped images

    @property
    def excess(self) -> float:
        return self.collapse - self.control


def knn_attack_success(bank: torch.Tensor, bank_labels: torch.Tensor, z_clean: torch.Tensor,
                       z_stamped: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, int]:  # fmt: skip
    """k-NN attack success of a stamp (METRICS.md): the bank's weighted k-NN classifies the stamped queries;
    target = their most common predicted class (ties: lowest index);

        ASR = #{i : y_i ≠ target, pred(stamped_i) = target} / #{i : y_i ≠ target}.

    Also returns the same share for the clean queries (the rate at which clean non-target images already land
    in that class) and the target. NaN when every query belongs to the target class."""
    pred = knn_predict(bank, bank_labels, z_stamped)
    target = int(torch.bincount(pred).argmax())
    non_target = labels != target
    if not bool(non_target.any()):
        return math.nan, math.nan, target
    asr = float((pred[non_target] == target).double().mean())
    pred_clean = knn_predict(bank, bank_labels, z_clean)
    return asr, float((pred_clean[non_target] == target).double().mean()), target


def known_trigger_scores(
    encode: EncodeFn,
    images: np.ndarray,
    names: Sequence[str],
    *,
    labels: np.ndarray | None = None,
    seed: int = 0,
    device: torch.device,
    progress: ProgressFn = no_progress,
) -> tuple[list[TriggerScore], dict[str, Any]]:
    """Collapse of each trigger and its control (and k-NN attack success when labels are given).

        μ = mean_i f(x_i)   (clean images),
        collapse(T) = mean pairwise cosine of {f(T(x_i)) − μ}   (``mean_pairwise_cosine`` with center μ),
        excess(T) = collapse(T) − collapse(control of T).

    ReLU features share a large positive offset, so raw cosines are high even for clean images; centring with
    the clean mean removes it (clean images then score ≈ −1/(n − 1) ≈ 0). Any strong stamp pulls a clean
    encoder's embeddings together a little; the control stamp (same footprint, same energy, not the trigger)
    measures that, so the excess isolates trigger-specific collapse. Returns the scores and clean-side facts.
    """
    z = encode_batched(encode, images, device, ENCODE_BATCH)
    mu = z.mean(dim=0)
    info: dict[str, Any] = {
        "collapse_clean": mean_pairwise_cosine(z, mu),
        "collapse_raw_clean": mean_pairwise_cosine(z),
        "dim": int(z.shape[1]),
        "mean": mu,
    }
    classes, split = None, None
    if labels is not None:
        classes, split = _knn_split(labels, len(images), seed, device)
        info["knn_bank"], info["knn_queries"] = int(split[0].numel()), int(split[1].numel())
    out = []
    for j, name in enumerate(names):
        t = trig.get_trigger(name)
        zt = encode_batched(encode, t.apply(images, seed), device, ENCODE_BATCH)
        zc = encode_batched(encode, t.control(images, seed), device, ENCODE_BATCH)
        score = TriggerScore(name, t.control_name, mean_pairwise_cosine(zt, mu), mean_pairwise_cosine(zc, mu),
                             mean_pairwise_cosine(zt))  # fmt: skip
        if split is not None:
            _attack_success(score, z, zt, zc, split, classes)
        out.append(score)
        progress((j + 1) / len(names), f"known triggers: {name}")
    return out, info


def _knn_split(labels: np.ndarray, n: int, seed: int, device: torch.device) -> tuple[np.ndarray, KnnSplit]:
    """The label values, and a seeded split of the n scan images: KNN_BANK_FRACTION bank, the rest queries."""
    classes, inverse = np.unique(labels, return_inverse=True)
    y = torch.from_numpy(inverse.reshape(-1).astype(np.int64)).to(device)
    perm = np.random.default_rng(seed).permutation(n)
    n_bank = int(round(KNN_BANK_FRACTION * n))
    bank_idx = torch.from_numpy(np.sort(perm[:n_bank])).to(device)
    query_idx = torch.from_numpy(np.sort(perm[n_bank:])).to(device)
    return classes, (bank_idx, query_idx, y)


def _attack_success(score: TriggerScore, z: torch.Tensor, zt: torch.Tensor, zc: torch.Tensor, split: KnnSplit,
                    classes: np.ndarray) -> None:  # fmt: skip
    """Fill score's k-NN attack success of the trigger (zt) and of its control (zc) over the query rows."""
    bank_idx, query_idx, y = split
    bank, bank_y, yq = z[bank_idx], y[bank_idx], y[query_idx]
    score.asr, score.asr_clean, score.target = knn_attack_success(bank, bank_y, z[query_idx], zt[query_idx], yq)
    score.asr_control = knn_attack_success(bank, bank_y, z[query_idx], zc[query_idx], yq)[0]
    score.target = classes[score.target].item()  # back from class index to the label value
