"""Spectrum suite: label-free metrics of an N×D embedding matrix (RankMe and kin), from one pass over its rows.

The contract is docs/METRICS.md, "Spectrum suite". Modules:

  metrics     RankMe (Garrido et al., ICML 2023), α-ReQ (Agrawal et al., NeurIPS 2022; reptrix `alpha.py`),
              NESum (He & Ozay, ICML 2022), stable rank (Rudelson & Vershynin 2007), inverse condition number;
              METRIC_KEYS
  gram        the float64 D×D Gram matrix and column sums in one streaming, shifted pass (centred spectrum
              without a second pass), eigenvalue floors, ``gram_spectrum``; the N×N row Gram in blocks
  chunks      rows onto the device a chunk at a time (memmaps read with pread, one chunk ahead)
  sphere      the rows normalised onto the unit sphere: uniformity (Wang & Isola, ICML 2020) and SimSiam's
              collapse std (Chen & He, CVPR 2021; lightly's ``std_of_l2_normalized``)
  views       q augmented views per row: LiDAR (Thilak et al., 2023, arXiv 2312.04000)
  suite       ``run_spectrum`` (every metric, Matryoshka prefixes, figures, variant) and the registry's
              ``on_embeddings``

The modules are not named after the functions ``uniformity`` and ``lidar``: the package re-exports those
functions under their own names, which would hide a submodule of the same name.
"""

from worker.suites.spectrum.gram import gram_spectrum
from worker.suites.spectrum.metrics import (
    ALPHA_FIT_RANGE,
    ALPHA_MIN_POINTS,
    METRIC_KEYS,
    RANKME_EPS,
    RANKME_MAX_ROWS,
    AlphaFit,
    alpha_req,
    condition,
    nesum,
    rankme,
    stable_rank,
)
from worker.suites.spectrum.sphere import UNIFORMITY_MAX_SAMPLES, UNIFORMITY_T, collapse_std, uniformity
from worker.suites.spectrum.suite import MATRYOSHKA_MIN_DIM, matryoshka_dims, run_spectrum
from worker.suites.spectrum.views import LIDAR_DELTA, LIDAR_EPS, lidar

__all__ = [
    "ALPHA_FIT_RANGE",
    "ALPHA_MIN_POINTS",
    "LIDAR_DELTA",
    "LIDAR_EPS",
    "MATRYOSHKA_MIN_DIM",
    "METRIC_KEYS",
    "RANKME_EPS",
    "RANKME_MAX_ROWS",
    "UNIFORMITY_MAX_SAMPLES",
    "UNIFORMITY_T",
    "AlphaFit",
    "alpha_req",
    "collapse_std",
    "condition",
    "gram_spectrum",
    "lidar",
    "matryoshka_dims",
    "nesum",
    "rankme",
    "run_spectrum",
    "stable_rank",
    "uniformity",
]
