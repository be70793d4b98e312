"""Equivariance suite: how an encoder's features respond to known image transformations (label-free).

The contract is docs/METRICS.md, "Equivariance suite". f is the encoder, x an image, T a transformation with
explicit parameters from one of 13 families (geometric, colour, blur). Every transformation runs batched on
the device in plain torch, from parameters drawn with numpy generators seeded by (seed, family), and every
choice is written into the result's variant. Three protocols:

  A. invariance    relative invariance 1 − E‖f(gx) − f(x)‖² / E‖f(gx') − f(x)‖² (x' another image;
                   Bouchacourt et al. NeurIPS 2021) over the strength of fixed transforms g — the ranked
                   summary; also the cosine between f(x) and f(gx) with a dimension-shuffled baseline
                   (reported, not ranked) (invariance.py)
  B. information   a head predicts T's parameters from f(x) and f(Tx) (Wang et al. 2025, arXiv 2503.18753;
                   SIE, Garrido et al. ICML 2023), or rot90 from f(Tx) alone (E-SSL, Dangovski et al. ICLR 2022)
                   (prediction.py)
  C. structure     a linear map M_g with f(gx) ≈ M_g f(x) (Lenc & Vedaldi, CVPR 2015), relative error and
                   retrieval among the family's views (SIE eval_MRR_Hk.py) (structure.py)

Modules:
  families    the families: parameters, fixed elements, random draws, B's targets
  transforms  T(x) in torch: rotate, translate, zoom, rot90, flips, colour, hue, blur; masks
  scores      R², balanced accuracy, retrieval MRR / Hit@k with ties, curve AUC, cosine, relative invariance
  split       the image split (test / fit / validation) shared by B and C
  heads       closed-form ridge and SIE's MLP head
  invariance  A;  prediction  B;  structure  C
  inputs      argument checks, subsample, device, geometry (Setup)
  report      metrics, summaries, figures, variant
  suite       run_equivariance and the registry entry point on_encoder
"""

from worker.suites.common.images import LUMA, luma, to_square_float
from worker.suites.equivariance.families import (
    BLUR_SIGMA,
    FAMILIES,
    FAMILY_NAMES,
    HUE_DELTA,
    JITTER_DELTA,
    REFERENCE_SIZE,
    ROT90_K,
    ROTATION_DEG,
    SCALE_AREA,
    SCALE_RANGE,
    TRANSLATION_PX,
    Family,
    family_rng,
    sample_params,
    targets,
)
from worker.suites.equivariance.heads import (
    MLP_BATCH,
    MLP_EPOCHS,
    MLP_HIDDEN,
    RIDGE_ALPHAS_PER_SAMPLE,
    RidgeSolver,
    mlp_fit_predict,
    ridge_fit,
)
from worker.suites.equivariance.inputs import DEFAULT_N_IMAGES, MIN_IMAGES
from worker.suites.equivariance.invariance import invariance_curve
from worker.suites.equivariance.prediction import B_DRAWS
from worker.suites.equivariance.report import R2_SUMMARY_FAMILIES, RADAR_AXES
from worker.suites.equivariance.scores import (
    HIT_KS,
    balanced_accuracy,
    chance_mrr,
    cosine,
    curve_auc,
    r2_global,
    r2_outputs,
    r2_per_output,
    relative_invariance,
    retrieval_scores,
)
from worker.suites.equivariance.split import TEST_FRACTION, VAL_FRACTION, make_split
from worker.suites.equivariance.structure import structure_scores
from worker.suites.equivariance.suite import run_equivariance
from worker.suites.equivariance.transforms import (
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_transform,
    disc_mask,
    flip,
    gaussian_blur,
    grayscale,
    hsv_to_rgb,
    rgb_to_hsv,
    rot90,
    rotate,
    translate,
    view,
    zoom,
)

_r2_outputs = r2_outputs  # benchmarks/bench_equivariance_ceiling.py reads it as eq._r2_outputs

__all__ = [
    "B_DRAWS", "BLUR_SIGMA", "DEFAULT_N_IMAGES", "FAMILIES", "FAMILY_NAMES", "HIT_KS", "HUE_DELTA", "JITTER_DELTA",
    "LUMA", "MIN_IMAGES", "MLP_BATCH", "MLP_EPOCHS", "MLP_HIDDEN", "R2_SUMMARY_FAMILIES", "RADAR_AXES",
    "REFERENCE_SIZE", "RIDGE_ALPHAS_PER_SAMPLE", "ROT90_K", "ROTATION_DEG", "SCALE_AREA", "SCALE_RANGE",
    "TEST_FRACTION", "TRANSLATION_PX", "VAL_FRACTION", "Family", "RidgeSolver", "adjust_brightness",
    "adjust_contrast", "adjust_hue", "adjust_saturation", "apply_transform", "balanced_accuracy", "chance_mrr",
    "cosine", "curve_auc", "disc_mask", "family_rng", "flip", "gaussian_blur", "grayscale", "hsv_to_rgb",
    "invariance_curve", "luma", "make_split", "mlp_fit_predict", "r2_global", "r2_outputs", "r2_per_output",
    "relative_invariance", "retrieval_scores", "ridge_fit", "rgb_to_hsv", "rot90", "rotate", "run_equivariance",
    "sample_params", "structure_scores", "targets", "to_square_float", "translate", "view", "zoom",
]  # fmt: skip
