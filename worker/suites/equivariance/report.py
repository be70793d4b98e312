"""The suite's result: flat metrics with their summaries, figure data, and the variant that ran.

Metric keys ({fam} a family, head ∈ {linear, mlp}): A `invariance_rel_{fam}` (relative invariance, the
ranked one), `invariance_auc_{fam}`, `invariance_corrected_auc_{fam}`, `invariance_normalized_auc_{fam}`
(cosine-based, reported only); B `r2_{head}_{fam}`, `r2global_{head}_{fam}` (continuous), `balacc_{head}_{fam}`
(discrete), `rot4_single_view_acc[_mlp]`; C `relerr[_identity]_{fam}`, `mrr[_identity]_{fam}`,
`hit{1,5,10}_{fam}`. Summaries (leaderboards, radar): `equi_r2_mean` = mean of `r2_mlp_{fam}` over rotation,
colour, blur, translation (Wang et al. 2025's four; `equi_r2_mean_linear` with the ridge head),
`invariance_rel_mean`, `invariance_auc_mean`, `invariance_corrected_auc_mean` and
`invariance_normalized_auc_mean` over the families run, `equi_mrr_mean` over families with C,
`balacc_mean_linear` / `balacc_mean_mlp` over discrete families. Non-finite values are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from worker.suites.equivariance.families import FAMILIES
from worker.suites.equivariance.heads import (
    MLP_BATCH,
    MLP_HIDDEN,
    MLP_LR,
    MLP_WEIGHT_DECAY,
    RIDGE_ALPHAS_PER_SAMPLE,
)
from worker.suites.equivariance.inputs import Setup
from worker.suites.equivariance.scores import HIT_KS
from worker.suites.equivariance.transforms import BLUR_TRUNCATE

R2_SUMMARY_FAMILIES = ("rotation", "colour", "blur", "translation")  # Wang et al. 2025's four
RADAR_AXES = (
    ("invariance_rel_mean", "invariance, relative to other images"),
    ("equi_r2_mean", "parameter R² (MLP, Wang et al. four)"),
    ("equi_r2_mean_linear", "parameter R² (linear)"),
    ("balacc_mean_linear", "discrete balanced accuracy (linear)"),
    ("rot4_single_view_acc", "4-way rotation, single view"),
    ("equi_mrr_mean", "equivariance-map MRR"),
)
INVARIANCE_FIGURE_KEYS = ("strength", "unit", "relative", "per_element_relative", "relative_mean", "mean_cosine",
                          "corrected", "normalized", "per_element_cosine", "auc", "corrected_auc",
                          "normalized_auc")  # fmt: skip
INVARIANCE_RANKED = (
    "1 − mean_i ‖f(gx_i) − f(x_i)‖² / mean_{i≠j} ‖f(gx_j) − f(x_i)‖² per fixed g (Bouchacourt et al. 2021's "
    "relative invariance: squared L2, every pair i ≠ j as the image-shuffled baseline); "
    "invariance_rel_{family} = mean over strengths of the mean over that strength's g"
)
INVARIANCE_NORMALISATION = (
    "none: features as the encoder returns them; offsets cancel in the differences, a global scale and "
    "orthogonal maps in the ratio (per-dimension scales do not)"
)

PerFamily = dict[str, dict[str, Any]]


def _family_metrics(m: dict[str, float], name: str, res: dict[str, Any]) -> None:
    """The per-family keys of one family's results, written into m."""
    if "invariance" in res:
        m[f"invariance_rel_{name}"] = res["invariance"]["relative_mean"]
        for key in ("auc", "corrected_auc", "normalized_auc"):
            m[f"invariance_{key}_{name}"] = res["invariance"][key]
    if "structure" in res:
        s = res["structure"]["summary"]
        for key in ("relerr", "relerr_identity", "mrr", "mrr_identity"):
            m[f"{key}_{name}"] = s[key]
        for k in HIT_KS:
            m[f"hit{k}_{name}"] = s[f"hit{k}"]
    for head, r in res["prediction"].items():
        if res["kind"] == "discrete":
            m[f"balacc_{head}_{name}"] = r["balanced_accuracy"]
        else:
            m[f"r2_{head}_{name}"] = r["r2"]
            m[f"r2global_{head}_{name}"] = r["r2_global"]
    if "single_view" in res:
        sv = res["single_view"]
        m["rot4_single_view_acc"] = sv["linear"]["accuracy"]
        if "mlp" in sv:
            m["rot4_single_view_acc_mlp"] = sv["mlp"]["accuracy"]


def _summaries(m: dict[str, float], names: list[str]) -> dict[str, float | None]:
    def mean_of(keys: list[str]) -> float | None:
        vals = [m[k] for k in keys if k in m and np.isfinite(m[k])]
        return float(np.mean(vals)) if vals else None

    def wang(head: str) -> float | None:
        keys = [f"r2_{head}_{f}" for f in R2_SUMMARY_FAMILIES]
        return mean_of(keys) if all(k in m for k in keys) else None

    return {
        "equi_r2_mean": wang("mlp"),
        "equi_r2_mean_linear": wang("linear"),
        "invariance_rel_mean": mean_of([f"invariance_rel_{f}" for f in names]),
        "invariance_auc_mean": mean_of([f"invariance_auc_{f}" for f in names]),
        "invariance_corrected_auc_mean": mean_of([f"invariance_corrected_auc_{f}" for f in names]),
        "invariance_normalized_auc_mean": mean_of([f"invariance_normalized_auc_{f}" for f in names]),
        "equi_mrr_mean": mean_of([f"mrr_{f}" for f in names]),
        "equi_mrr_identity_mean": mean_of([f"mrr_identity_{f}" for f in names]),
        "balacc_mean_linear": mean_of([f"balacc_linear_{f}" for f in names]),
        "balacc_mean_mlp": mean_of([f"balacc_mlp_{f}" for f in names]),
    }


def metrics(per_family: PerFamily) -> dict[str, float]:
    """Flat metrics: per family, then the summaries; only finite values."""
    m: dict[str, float] = {}
    for name, res in per_family.items():
        _family_metrics(m, name, res)
    m.update({k: v for k, v in _summaries(m, list(per_family)).items() if v is not None})
    return {k: float(v) for k, v in m.items() if np.isfinite(v)}


def figures(per_family: PerFamily, metrics: dict[str, float]) -> dict[str, Any]:
    """Invariance curves, R² and balanced accuracy per family and head, C's per-element scores, radar axes."""
    inv = {name: {k: res["invariance"][k] for k in INVARIANCE_FIGURE_KEYS}
           for name, res in per_family.items() if "invariance" in res}  # fmt: skip
    cont = [f for f, r in per_family.items() if r["kind"] == "continuous"]
    disc = [f for f, r in per_family.items() if r["kind"] == "discrete"]

    def get(fams: list[str], head: str, key: str) -> list[float | None]:
        out = []
        for f in fams:
            v = per_family[f]["prediction"].get(head, {}).get(key)
            out.append(None if v is None or not np.isfinite(v) else float(v))
        return out

    r2 = {"families": cont, "linear": get(cont, "linear", "r2"), "mlp": get(cont, "mlp", "r2"),
          "linear_global": get(cont, "linear", "r2_global"), "mlp_global": get(cont, "mlp", "r2_global"),
          "per_output": {f: {"targets": list(FAMILIES[f].targets),
                             **{h: r["r2_outputs"] for h, r in per_family[f]["prediction"].items()}}
                         for f in cont}}  # fmt: skip
    bal = {"families": disc, "linear": get(disc, "linear", "balanced_accuracy"),
           "mlp": get(disc, "mlp", "balanced_accuracy"),
           "chance": [1.0 / len(FAMILIES[f].targets) for f in disc]}  # fmt: skip
    structure = {name: {k: v for k, v in res["structure"].items() if k != "summary"}
                 for name, res in per_family.items() if "structure" in res}  # fmt: skip
    radar = {
        "axes": [{"key": k, "label": label, "value": metrics.get(k), "range": [0.0, 1.0]}
                 for k, label in RADAR_AXES if k in metrics]
    }  # fmt: skip
    return {"invariance": inv, "r2": r2, "balanced_accuracy": bal, "structure": structure, "radar": radar}


def _family_variant(name: str, pred: dict[str, Any]) -> dict[str, Any]:
    f = FAMILIES[name]
    return {
        "kind": f.kind,
        "params": list(f.params),
        "strength_unit": f.unit,
        "elements": [{"strength": s, "params": list(p)} for s, p in f.elements],
        "random": f.random,
        "targets": list(f.targets),
        "mask": f.mask,
        "ridge_alpha": pred["linear"]["alpha"],
        "mlp_best_epoch": pred.get("mlp", {}).get("best_epoch"),
    }


def _mlp_variant(setup: Setup) -> dict[str, Any] | None:
    if not setup.mlp:
        return None
    return {"hidden": list(MLP_HIDDEN), "activation": "ReLU",
            "architecture": "SIE deep-end head (eval_angle_prediction.py)",
            "epochs": setup.mlp_epochs, "batch": MLP_BATCH, "lr": MLP_LR,
            "weight_decay": MLP_WEIGHT_DECAY, "optimizer": "AdamW (= Adam at weight decay 0)",
            "selection": "best validation epoch", "init": "torch.Generator(seed) on CPU"}  # fmt: skip


def _protocol() -> dict[str, Any]:
    """The fixed protocol, in words (the part of the variant that depends on no argument)."""
    return {
        "geometry": "affine_grid/grid_sample bilinear, align_corners=False, padding_mode=border",
        "masking": {"rotation": "inscribed disc on both views (0 outside)", "translation": "none: border "
                    "(edge-replicate) padding", "rot90/flips/scale": "none needed (no sample leaves the image)"},
        "colour": "torch RGB blends clamped to [0, 1]; hue in HSV; luma Rec. 601",
        "blur": f"separable Gaussian, radius ceil({BLUR_TRUNCATE:g}·σ_max), reflect padding",
        "ridge": "closed form with intercept on train-standardised features, float64; α = a·n_fit, "
                 f"a ∈ {list(RIDGE_ALPHAS_PER_SAMPLE)} picked on the validation part, refit on all train",
        "linear_classifier": "ridge on one-hot targets, argmax",
    }  # fmt: skip


def variant(setup: Setup, per_family: PerFamily, passes: int, dim: int) -> dict[str, Any]:
    """What ran: families, images, split, seeds, geometry and heads, device, encoder passes, feature size."""
    split, n_draws = setup.split, setup.n_draws
    return {
        "families": {name: _family_variant(name, per_family[name]["prediction"]) for name in setup.families},
        "n_images_total": setup.n_total,
        "n_images_used": setup.n,
        "subsampled": setup.rows is not None,
        "subsample": "sorted default_rng(seed).choice(N, n_images, replace=False)",
        "seed": setup.seed,
        "split": {"train": len(split.train), "fit": len(split.fit), "val": len(split.val), "test": len(split.test),
                  "rule": "default_rng([seed, 1]).permutation: first 20 % test, then 20 % of train validation"},
        "params_rng": "numpy default_rng([seed, zlib.crc32(family name)]), n_draws × n rows, draw-major",
        "n_draws": n_draws,
        "pairs": {"train": len(split.train) * n_draws, "test": len(split.test) * n_draws},
        "invariance": {"ranked": INVARIANCE_RANKED, "normalisation": INVARIANCE_NORMALISATION,
                       "cosine_curves": "mean cos(f(x), f(gx)) and the dimension-shuffle correction: reported, "
                                        "not ranked"},
        "shuffle_baseline": "one permutation of the D dims per image: argsort(torch.rand(n, D, Generator(seed)))",
        "image_side": setup.side,
        "square_crop": "centre crop to min(H, W)",
        "pixel_scale": setup.pixel_scale,
        "pixel_strengths": "translation and blur σ given at 32 px, multiplied by side / 32",
        **_protocol(),
        "mlp": _mlp_variant(setup),
        "r2": {"r2": "mean over outputs (scikit-learn uniform_average)",
               "r2global": "SIE: 1 − RSS/TSS over all entries, TSS around the mean of all entries"},
        "retrieval": "cosine similarity to f(g'x) of the same image, identity included; ties = random order",
        "structure_relerr": "Σ‖f(gx) − M_g f(x)‖² / Σ‖f(gx) − test mean‖² over test images",
        "r2_summary_families": list(R2_SUMMARY_FAMILIES),
        "equi_r2_mean": "mean of r2_mlp over rotation, colour, blur, translation",
        "device": str(setup.device),
        "batch_size": setup.batch_size,
        "encoder_passes": passes,
        "feature_dim": dim,
    }  # fmt: skip
