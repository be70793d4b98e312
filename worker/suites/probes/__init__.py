"""Probe suite: linear probe, weighted k-NN and open-set detection on labelled embeddings.

The contract is METRICS.md, "Probe suite"; ``run_probes`` runs all of it. The split is the uploaded one
(0 train / 1 test) or a stratified 80/20; C is chosen on a stratified 10 % holdout of train, the probe refitted
on all of train and the test split touched once. Accuracies are fractions in [0, 1].

Modules:
  suite    run_probes and the registry entry point on_embeddings
  splits   stratified / uploaded train-test splits (TEST_FRACTION, HOLDOUT_FRACTION, SPLIT_SEED)
  linear   select_c: C on the holdout, refit on train
  logreg   fit_logreg_sweep: multinomial logistic regression for a grid of C, standardised and preconditioned
           (scikit-learn's LogisticRegression objective and StandardScaler statistics)
  lbfgs    the batched L-BFGS and the objective it evaluates (Nocedal & Wright, Alg. 7.4)
  losses   the comp-sum losses ce / gce / mae (Mao, Mohri & Zhong, ICML 2023)
  knn      weighted k-NN (DINO, Caron et al., ICCV 2021, eval_knn.py)
  openset  held-out classes scored by max cosine, max softmax and energy; AUROC, FPR at 95 % TPR
  metrics  top-1 / top-5, balanced accuracy, confusion matrix
  inputs   labels, checked features, chunked row loading
  gemm     the matrix product through numpy's BLAS on the CPU
"""

from worker.suites.common.roc import auroc, fpr_at_tpr

from .knn import KNN_K, KnnResult, max_cosine_similarity, weighted_knn
from .lbfgs import LBFGS_HISTORY, LBFGS_MAX_ITER, LBFGS_TOL
from .linear import LinearProbeResult, select_c
from .logreg import DEFAULT_C_GRID, PRECONDITION_POWER, LogRegFit, fit_logreg_sweep, standardize_stats
from .losses import GCE_Q, LOSSES, comp_sum_loss
from .metrics import TOPK, classification_metrics
from .openset import ENERGY_T, OPENSET_SHARE, OPENSET_TPR, choose_holdout_classes, openset_scores
from .splits import HOLDOUT_FRACTION, SPLIT_SEED, TEST_FRACTION, resolve_split, stratified_split
from .suite import on_embeddings, run_probes

__all__ = [
    "DEFAULT_C_GRID", "ENERGY_T", "GCE_Q", "HOLDOUT_FRACTION", "KNN_K", "LBFGS_HISTORY", "LBFGS_MAX_ITER",
    "LBFGS_TOL", "LOSSES", "OPENSET_SHARE", "OPENSET_TPR", "PRECONDITION_POWER", "SPLIT_SEED", "TEST_FRACTION",
    "TOPK", "KnnResult", "LinearProbeResult", "LogRegFit", "auroc", "choose_holdout_classes",
    "classification_metrics", "comp_sum_loss", "fit_logreg_sweep", "fpr_at_tpr",
    "max_cosine_similarity", "on_embeddings", "openset_scores", "resolve_split", "run_probes", "select_c",
    "standardize_stats", "stratified_split", "weighted_knn",
]
