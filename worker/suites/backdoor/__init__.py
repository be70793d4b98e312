"""Backdoor suite: is an encoder backdoored, and which samples of a pool look poisoned?

Two entry points (pure: tensors and arrays in, a SuiteResult out; no I/O), the contract of docs/METRICS.md,
"Backdoor suite":

  scan_encoder(encode, images, ...)   an encoder and unlabeled clean images (labels optional): known-trigger
      collapse against equal-energy control stamps, k-NN attack success with labels, DECREE trigger inversion
      (Feng et al., CVPR 2023), and `backdoor_risk`, one number in [0, 1] for leaderboards.
  scan_pool(embeddings, images=None, poison=None, ...)   a possibly poisoned pool, no labels needed: k-NN
      density, multi-scale LOF, spectral signature (Tran et al., NeurIPS 2018) on k-means and on robust
      pseudo-labels, a SPECTRE-style score, their label-free combination (the default) and, with images, CTRL
      frequency and grid Nyquist energy; the top-k suspicious samples; AUROC and TPR at 1 % / 5 % FPR per
      score when ground-truth `poison` flags are given.

Modules:
  triggers      the attacks' stamps (BadEncoder, SSL-Backdoor, CTRL, grid, blend) and their control stamps
  dct           CTRL's frequency domain: kornia's YUV and the orthonormal block DCT
  collapse      mean pairwise cosine, known-trigger collapse and k-NN attack success
  decree        DECREE trigger inversion (PL1)
  decree_schedule  DECREE's lr schedule, λ rule, stop rule, search state and trigger-region shares
  risk          the verdict backdoor_risk
  encoder       scan_encoder
  knn           weighted k-NN classifier and k-NN density (chunked cosine top-k)
  spectral      k-means pseudo-labels, robust pseudo-classes and the spectral signature
  lof           multi-scale local outlier factor
  spectre       SPECTRE-style QUE score after robust whitening
  combine       robust z-scores and the default combination
  image_scores  CTRL frequency energy and grid Nyquist energy
  pool          scan_pool
  figures       page figures (mask / pattern images, trigger table, histograms)
  suite         the registry's entry points (on_embeddings, on_encoder) and the pool montage

The heavy parts (encoding, pairwise similarities, k-means, DECREE's optimisation) run on `device` (a GPU when
present); the same code runs on the CPU. Pairwise work is chunked so memory stays bounded at any pool size.
"""

from worker.suites.common.roc import auroc, roc_points, tpr_at_fpr

from . import triggers
from .collapse import TriggerScore, knn_attack_success, known_trigger_scores, mean_pairwise_cosine
from .combine import COMBINED_FROM, combine
from .decree import DECREE_COS_THRESHOLD, DECREE_PL1_THRESHOLD, DecreeResult, decree, decree_lr
from .encoder import DEFAULT_TRIGGERS, MAX_SCAN_IMAGES, scan_encoder
from .figures import image_figure
from .image_scores import ctrl_energy, grid_nyquist_energy
from .knn import KNN_K, POOL_K, knn_density, knn_predict
from .lof import local_outlier_factor, multiscale_lof
from .pool import DEFAULT_CLUSTERS, DEFAULT_SCORE, POOL_SCORES, TOP_K, TPR_AT_FPR, robust_z, scan_pool, zscore
from .risk import EXCESS_FLAG, RISK_FLAG, backdoor_risk
from .spectral import kmeans, merge_small_clusters, spectral_signature
from .spectre import spectre_scores

__all__ = [
    "COMBINED_FROM", "DECREE_COS_THRESHOLD", "DECREE_PL1_THRESHOLD", "DEFAULT_CLUSTERS", "DEFAULT_SCORE",
    "DEFAULT_TRIGGERS", "DecreeResult", "EXCESS_FLAG", "KNN_K", "MAX_SCAN_IMAGES", "POOL_K", "POOL_SCORES",
    "RISK_FLAG", "TOP_K", "TPR_AT_FPR", "TriggerScore", "auroc", "backdoor_risk", "combine", "ctrl_energy",
    "decree", "decree_lr", "grid_nyquist_energy", "image_figure", "kmeans", "knn_attack_success", "knn_density",
    "knn_predict", "known_trigger_scores", "local_outlier_factor", "mean_pairwise_cosine", "merge_small_clusters",
    "multiscale_lof", "robust_z", "roc_points", "scan_encoder", "scan_pool", "spectral_signature", "spectre_scores",
    "tpr_at_fpr", "triggers", "zscore",
]  # fmt: skip
