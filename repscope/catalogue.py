"""The metric catalogue: every metric key the suites emit, with what the pages need to show and rank it.

One `MetricSpec` per key or key pattern. A pattern names its varying parts in braces, `knn{k}_top1`,
`openset_fpr95_{score}`, `r2_{head}_{family}`; PLACEHOLDERS says what each part matches, and the label may use
the same names ("{k}-NN top-1"). A nested-prefix key `{key}@d{k}` (the spectrum suite's Matryoshka profile,
metrics of z[:, :k]) shares its base key's entry. The first matching entry wins; no two entries match the same
emitted key (tests/unit/test_catalogue.py runs every suite and checks both).

Fields:
  key        the key or pattern, as the suite writes it into SuiteResult.metrics
  label      the readable name (charts, table headers, leaderboard columns)
  suite      the suite that emits it (repscope.suites.SUITES)
  group      the run page's over-training chart it is drawn in (GROUPS); None: a chart of its own
  direction  which value is better, for leaderboards (Borda rank), default sort orders, radar and selection:
             higher | lower | target (closest to `target`) | none (reported, never ranked)
  target     the best value of a `target` metric (α-ReQ: α ≈ 1, Agrawal et al., NeurIPS 2022)
  unit       unit and range, in words
  fraction   a rate in [0, 1], drawn and hovered as a percentage
  label_free computed without labels or ground truth (the selection view may rank checkpoints with it)

Views (which keys a page shows, in its order) are the tuples HEADLINE, RADAR, TABLE_COLUMNS,
LEADERBOARD_COLUMNS, SELECTION_KEYS and SELECTION_PROBES below. A key outside the catalogue (a scalar the
training job logged, a key of a newer suite) is shown under its own name, ranked higher-is-better.
Wire-level and torch-free: the backend reads it; worker code never needs it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache, lru_cache
from typing import Any, Literal

Direction = Literal["higher", "lower", "target", "none"]
DIRECTIONS: tuple[Direction, ...] = ("higher", "lower", "target", "none")
UNLISTED_DIRECTION: Direction = "higher"  # a key outside the catalogue
NESTED = re.compile(r"^(.*)@d(\d+)$")  # '{key}@d{k}': the metric on the first k dimensions

# Names a pattern's placeholder may take. Enumerated where the suite has a fixed set, so a key a training job
# logs under a similar name ("mrr_val") is not taken for a computed metric.
FAMILIES = ("rotation", "rot90", "translation", "scale", "hflip", "vflip", "brightness", "contrast",
            "saturation", "hue", "colour", "grayscale", "blur")  # worker.suites.equivariance.FAMILY_NAMES
HEADS = ("linear", "mlp")  # equivariance prediction heads
TRIGGERS = ("badencoder", "ssl_patch", "ctrl", "grid", "blend")  # worker.suites.backdoor.triggers.TRIGGERS
POOL_SCORES = ("knn_density", "spectral", "ctrl_energy", "grid_energy", "lof", "spectral_robust", "spectre",
               "combined")  # backdoor pool scan's sample scores (worker.suites.backdoor.POOL_SCORES)
PLACEHOLDERS: dict[str, str] = {
    "k": r"\d+",
    "pct": r"\d+",
    "score": r"\w+",  # open-set known-ness score: knn, msp, energy
    "family": "|".join(FAMILIES),
    "head": "|".join(HEADS),
    "trigger": "|".join(TRIGGERS),
    "pool": "|".join(POOL_SCORES),
}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

FRACTION = "fraction in [0, 1]"
EFFECTIVE_DIMS = "effective dimensions, 1 … min(N, D)"


@dataclass(frozen=True)
class Group:
    """One over-training chart of the run page: title, y-axis title with unit, Plotly y-axis options.
    legend 'catalogue': lines in catalogue order (then by k, then key); 'key': alphabetical by key."""

    name: str
    title: str
    y_title: str
    yaxis: dict[str, Any] = field(default_factory=dict, hash=False)
    legend: Literal["catalogue", "key"] = "catalogue"


PERCENT_AXIS = {"tickformat": ".0%"}
LOG_AXIS = {"type": "log", "exponentformat": "power"}

# In chart order.
GROUPS: tuple[Group, ...] = (
    Group("effective_rank", "Effective rank over training (RankMe and kin)", "effective dimensions"),
    Group("alpha_req", "α-ReQ eigenspectrum decay over training (≈ 1 is best)", "α (power-law exponent, unitless)"),
    Group("condition", "Inverse condition number over training", "σ_min / σ_max (log scale)", LOG_AXIS),
    Group("alpha_req_fit", "α-ReQ fit quality over training", "R² of the power-law fit (unitless)"),
    Group("uniformity", "Uniformity loss over training (lower = more uniform)",
          "uniformity loss (log mean Gaussian potential, t = 2)"),
    Group("collapse", "Collapse indicator over training (0 = collapsed)", "mean std of ℓ₂-normalised dims"),
    Group("linear", "Linear probe accuracy over training", "test accuracy (%)", PERCENT_AXIS),
    Group("knn", "k-NN accuracy over training", "test accuracy (%)", PERCENT_AXIS),
    Group("linear_c", "Linear probe: chosen L2 strength over training", "inverse L2 strength C (log scale)",
          LOG_AXIS),
    Group("openset_auroc", "Open-set detection AUROC over training", "AUROC (%)", PERCENT_AXIS),
    Group("openset_fpr95", "Open-set FPR at 95 % TPR over training (lower is better)", "false-positive rate (%)",
          PERCENT_AXIS),
    Group("equivariance", "Equivariance and invariance over training", "score (R², AUC, MRR; unitless)",
          legend="key"),
    Group("backdoor", "Backdoor risk over training (lower is better)", "risk score (unitless)"),
)
GROUP_INDEX = {g.name: i for i, g in enumerate(GROUPS)}


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    suite: str
    group: str | None = None
    direction: Direction = "higher"
    target: float | None = None
    unit: str = ""
    fraction: bool = False
    label_free: bool = False

    @property
    def is_pattern(self) -> bool:
        return bool(_PLACEHOLDER.search(self.key))

    @property
    def glob(self) -> str:
        """The key as a shell wildcard: 'openset_fpr95_{score}' -> 'openset_fpr95_*'."""
        return _PLACEHOLDER.sub("*", self.key)

    @property
    def regex(self) -> re.Pattern[str]:
        return _compile(self.key)

    def match(self, key: str) -> dict[str, str] | None:
        """The placeholders' values when `key` is this entry's, else None."""
        m = self.regex.match(key)
        return m.groupdict() if m else None


@cache
def _compile(pattern: str) -> re.Pattern[str]:
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        out += [re.escape(pattern[pos:m.start()]), f"(?P<{m.group(1)}>{PLACEHOLDERS[m.group(1)]})"]
        pos = m.end()
    return re.compile("^" + "".join(out) + re.escape(pattern[pos:]) + "$")


_S, _P, _E, _B = "spectrum", "probes", "equivariance", "backdoor"

METRICS: tuple[MetricSpec, ...] = (
    # spectrum (docs/METRICS.md, "Spectrum suite")
    MetricSpec("rankme", "RankMe (effective rank)", _S, "effective_rank", unit=EFFECTIVE_DIMS, label_free=True),
    MetricSpec("rankme_centered", "RankMe, centred", _S, "effective_rank", unit=EFFECTIVE_DIMS, label_free=True),
    MetricSpec("alpha_req", "α-ReQ", _S, "alpha_req", "target", target=1.0,
               unit="power-law exponent of the eigenspectrum, unitless", label_free=True),
    MetricSpec("alpha_req_r2", "α-ReQ fit R²", _S, "alpha_req_fit", "none", unit="R², ≤ 1", label_free=True),
    MetricSpec("nesum", "NESum", _S, "effective_rank", unit="effective dimensions, Σλ / λ₁ ≥ 1", label_free=True),
    MetricSpec("stable_rank", "stable rank", _S, "effective_rank", unit="effective dimensions, Σσ² / σ₁² ≥ 1",
               label_free=True),
    MetricSpec("condition", "inverse condition number", _S, "condition", unit="σ_min / σ_max in [0, 1]",
               label_free=True),
    MetricSpec("uniformity", "uniformity loss", _S, "uniformity", "lower",
               unit="log mean Gaussian potential, ≤ 0", label_free=True),
    MetricSpec("collapse_std", "collapse std", _S, "collapse", unit="[0, 1/√D]; ≈ 1/√D healthy, 0 collapsed",
               label_free=True),
    MetricSpec("lidar", "LiDAR", _S, "effective_rank", unit="effective dimensions", label_free=True),
    # probes
    MetricSpec("linear_top1", "linear probe top-1", _P, "linear", unit=FRACTION, fraction=True),
    MetricSpec("linear_top5", "linear probe top-5", _P, "linear", unit=FRACTION, fraction=True),
    MetricSpec("linear_balanced_acc", "linear probe balanced accuracy", _P, "linear", unit=FRACTION, fraction=True),
    MetricSpec("linear_best_c", "linear probe C", _P, "linear_c", "none", unit="inverse L2 strength, > 0"),
    MetricSpec("knn{k}_top1", "{k}-NN top-1", _P, "knn", unit=FRACTION, fraction=True),
    MetricSpec("knn{k}_top5", "{k}-NN top-5", _P, "knn", unit=FRACTION, fraction=True),
    MetricSpec("openset_auroc_{score}", "open-set AUROC ({score})", _P, "openset_auroc", unit=FRACTION,
               fraction=True),
    MetricSpec("openset_fpr95_{score}", "open-set FPR@95%TPR ({score})", _P, "openset_fpr95", "lower",
               unit=FRACTION, fraction=True),
    # equivariance: summaries
    MetricSpec("equi_r2_mean", "equivariance R² (mean)", _E, "equivariance", unit="R², ≤ 1", label_free=True),
    MetricSpec("equi_r2_mean_linear", "equivariance R² (mean, linear head)", _E, "equivariance", unit="R², ≤ 1",
               label_free=True),
    MetricSpec("invariance_rel_mean", "relative invariance (mean)", _E, "equivariance",
               unit="1 − change under g / distance to other images, ≤ 1 (1 invariant, 0 as far as another image)",
               label_free=True),
    MetricSpec("invariance_auc_mean", "invariance AUC (mean)", _E, "equivariance", "none",
               unit="area under the mean-cosine curve (a feature offset moves it: not ranked)", label_free=True),
    MetricSpec("invariance_corrected_auc_mean", "invariance AUC, shuffle-corrected (mean)", _E, "equivariance",
               "none", unit="area under the corrected curve (not ranked)", label_free=True),
    MetricSpec("invariance_normalized_auc_mean", "invariance AUC, normalised (mean)", _E, "equivariance", "none",
               unit="area under the normalised curve (not ranked)", label_free=True),
    MetricSpec("equi_mrr_mean", "equivariance MRR (mean)", _E, "equivariance", unit="(0, 1]", label_free=True),
    MetricSpec("equi_mrr_identity_mean", "equivariance MRR, identity map (mean)", _E, "equivariance",
               unit="(0, 1]", label_free=True),
    MetricSpec("balacc_mean_{head}", "discrete-family balanced accuracy (mean, {head} head)", _E, unit=FRACTION,
               label_free=True),
    MetricSpec("rot4_single_view_acc", "4-way rotation accuracy, single view", _E, unit=FRACTION, label_free=True),
    MetricSpec("rot4_single_view_acc_mlp", "4-way rotation accuracy, single view (MLP head)", _E, unit=FRACTION,
               label_free=True),
    # equivariance: per family
    MetricSpec("invariance_rel_{family}", "relative invariance ({family})", _E, "equivariance",
               unit="1 − change under g / distance to other images, ≤ 1", label_free=True),
    MetricSpec("invariance_auc_{family}", "invariance AUC ({family})", _E, "equivariance", "none",
               unit="area under the mean-cosine curve (not ranked)", label_free=True),
    MetricSpec("invariance_corrected_auc_{family}", "invariance AUC, shuffle-corrected ({family})", _E,
               "equivariance", "none", unit="area under the corrected curve (not ranked)", label_free=True),
    MetricSpec("invariance_normalized_auc_{family}", "invariance AUC, normalised ({family})", _E, "equivariance",
               "none", unit="area under the normalised curve (not ranked)", label_free=True),
    MetricSpec("relerr_{family}", "equivariance map relative error ({family})", _E,
               unit="‖f(gx) − M_g f(x)‖² / ‖f(gx) − mean‖², ≥ 0", label_free=True, direction="lower"),
    MetricSpec("relerr_identity_{family}", "identity map relative error ({family})", _E, unit="≥ 0",
               label_free=True, direction="none"),
    MetricSpec("mrr_{family}", "equivariance map MRR ({family})", _E, unit="(0, 1]", label_free=True),
    MetricSpec("mrr_identity_{family}", "identity map MRR ({family})", _E, unit="(0, 1]", label_free=True, direction="none"),
    MetricSpec("hit{k}_{family}", "equivariance map Hit@{k} ({family})", _E, unit=FRACTION, label_free=True),
    MetricSpec("r2_{head}_{family}", "parameter R² ({head} head, {family})", _E, unit="R², ≤ 1, mean over outputs",
               label_free=True),
    MetricSpec("r2global_{head}_{family}", "parameter global R² ({head} head, {family})", _E, unit="R², ≤ 1",
               label_free=True),
    MetricSpec("balacc_{head}_{family}", "balanced accuracy ({head} head, {family})", _E, unit=FRACTION,
               label_free=True),
    # backdoor: encoder scan
    MetricSpec("backdoor_risk", "backdoor risk", _B, "backdoor", "lower",
               unit="[0, 1], ≥ 0.5 flagged", label_free=True),
    MetricSpec("collapse_clean", "collapse of clean images", _B, unit="mean pairwise cosine (centred)",
               label_free=True, direction="none"),
    MetricSpec("collapse_raw_clean", "collapse of clean images, uncentred", _B, unit="mean pairwise cosine",
               label_free=True, direction="none"),
    MetricSpec("collapse_max", "known-trigger collapse (max)", _B, unit="mean pairwise cosine (centred)",
               label_free=True, direction="lower"),
    MetricSpec("collapse_excess_max", "known-trigger collapse excess (max)", _B,
               unit="trigger minus control cosine", label_free=True, direction="lower"),
    MetricSpec("collapse_{trigger}", "collapse under {trigger}", _B, unit="mean pairwise cosine (centred)",
               label_free=True, direction="lower"),
    MetricSpec("collapse_{trigger}_control", "collapse under {trigger}'s control", _B,
               unit="mean pairwise cosine (centred)", label_free=True, direction="none"),
    MetricSpec("collapse_{trigger}_excess", "collapse excess of {trigger}", _B,
               unit="trigger minus control cosine", label_free=True, direction="lower"),
    MetricSpec("knn_asr_max", "k-NN attack success (max)", _B, unit=FRACTION, direction="lower"),
    MetricSpec("knn_asr_{trigger}", "k-NN attack success of {trigger}", _B, unit=FRACTION, direction="lower"),
    MetricSpec("knn_asr_{trigger}_control", "k-NN attack success of {trigger}'s control", _B, unit=FRACTION, direction="none"),
    MetricSpec("decree_pl1", "DECREE PL1", _B, unit="mask share ‖m‖₁ / (H·W) in [0, 1]; lower = more suspicious",
               label_free=True),
    MetricSpec("decree_success", "DECREE success", _B, unit="0 or 1", label_free=True, direction="lower"),
    MetricSpec("decree_cos", "DECREE stamped-batch cosine", _B, unit="mean pairwise cosine (centred unless decree_center=False)", label_free=True, direction="lower"),
    MetricSpec("decree_steps", "DECREE steps", _B, unit="optimiser steps", label_free=True, direction="none"),
    MetricSpec("decree_seconds", "DECREE time", _B, unit="seconds", label_free=True, direction="none"),
    MetricSpec("decree_mask_in_region", "DECREE mask mass in the known trigger region", _B,
               unit="share of ‖m‖₁ inside the region", label_free=True, direction="none"),
    MetricSpec("decree_region_share", "known trigger region's share of the image", _B,
               unit="region pixels / (H·W): a uniform mask's mass inside", label_free=True, direction="none"),
    # backdoor: pool scan
    MetricSpec("{pool}_outlier_share", "outlier share by {pool}", _B, unit=FRACTION, label_free=True, direction="lower"),
    MetricSpec("{pool}_auroc", "poison detection AUROC ({pool})", _B, unit=FRACTION, direction="none"),
    MetricSpec("{pool}_tpr_at_{pct}pct_fpr", "poison TPR at {pct} % FPR ({pool})", _B, unit=FRACTION, direction="none"),
    MetricSpec("poison_share", "poisoned share of the pool", _B, unit=FRACTION, direction="none"),
    # projector
    MetricSpec("projector_pca_variance", "variance in the 2-D PCA plane", "projector", direction="none",
               unit="(λ₁ + λ₂) / Σλ of the drawn rows, in [0, 1]", fraction=True, label_free=True),
)

# Views, each in its page's order (every key is a catalogue key).
HEADLINE = ("rankme", "alpha_req", "linear_top1", "knn20_top1", "equi_r2_mean", "invariance_rel_mean",
            "equi_mrr_mean", "backdoor_risk")  # compare page: curves shown first
RADAR = ("rankme", "rankme_centered", "stable_rank", "alpha_req", "uniformity", "linear_top1", "knn20_top1",
         "openset_auroc_msp", "equi_r2_mean", "invariance_rel_mean", "equi_mrr_mean",
         "backdoor_risk")  # compare page: radar axes (those with a direction)
TABLE_COLUMNS = ("rankme", "alpha_req", "linear_top1", "knn20_top1")  # a project's runs table
LEADERBOARD_COLUMNS = ("rankme", "linear_top1", "knn20_top1")  # a leaderboard's default metrics
SELECTION_KEYS = ("rankme", "rankme_centered", "alpha_req", "nesum", "stable_rank", "condition", "uniformity",
                  "collapse_std", "lidar")  # label-free metrics the selection view ranks checkpoints by
SELECTION_PROBES = ("linear_top1", "knn20_top1", "knn10_top1", "knn100_top1", "knn200_top1",
                    "linear_balanced_acc")  # probe accuracies it ranks them against, the first present default
VIEWS: dict[str, tuple[str, ...]] = {"headline": HEADLINE, "radar": RADAR, "table": TABLE_COLUMNS,
                                     "leaderboard": LEADERBOARD_COLUMNS, "selection": SELECTION_KEYS,
                                     "selection_probes": SELECTION_PROBES}


# --- lookups ----------------------------------------------------------------------------------------------

def base_key(key: str) -> str:
    """'rankme@d64' -> 'rankme' (a nested prefix shares its metric's entry)."""
    m = NESTED.match(key)
    return m.group(1) if m else key


@lru_cache(maxsize=4096)
def _find(key: str) -> tuple[int, dict[str, str]] | None:
    for i, spec in enumerate(METRICS):
        values = spec.match(key)
        if values is not None:
            return i, values
    return None


def lookup(key: str, nested: bool = True) -> MetricSpec | None:
    """The entry of `key` (of its base key for `{key}@d{k}` unless nested=False); None when not catalogued."""
    found = _find(base_key(key) if nested else key)
    return METRICS[found[0]] if found else None


def in_catalogue(key: str) -> bool:
    """Whether `key` is a metric repscope computes (nested-prefix keys `{key}@d{k}` as their key)."""
    return lookup(key) is not None


def label(key: str) -> str:
    """The readable name: the entry's label with its placeholders filled; '{label}, d = {k}' for a nested
    prefix; the key itself when not catalogued."""
    found = _find(key)
    if found:
        i, values = found
        return METRICS[i].label.format(**values)
    if m := NESTED.match(key):
        return f"{label(m.group(1))}, d = {m.group(2)}"
    return key


def direction(key: str) -> Direction:
    """Which value is better (nested prefixes as their key); UNLISTED_DIRECTION outside the catalogue."""
    spec = lookup(key)
    return spec.direction if spec else UNLISTED_DIRECTION


def target(key: str) -> float | None:
    """The best value of a `target` metric (nested prefixes as their key)."""
    spec = lookup(key)
    return spec.target if spec else None


def is_fraction(key: str) -> bool:
    """A rate in [0, 1] (drawn as a percentage); a nested-prefix key is not."""
    spec = lookup(key, nested=False)
    return bool(spec and spec.fraction)


def group(key: str) -> Group | None:
    """The over-training chart of `key` (exact key, not a nested prefix); None: a chart of its own."""
    spec = lookup(key, nested=False)
    return GROUPS[GROUP_INDEX[spec.group]] if spec and spec.group else None


def legend_order(key: str) -> tuple[int, int, str]:
    """Sort key of a line in its group's chart: (catalogue position, numeric {k}, key), or by key alone."""
    found = _find(key)
    if not found:
        return (len(METRICS), 0, key)
    i, values = found
    g = METRICS[i].group
    if g and GROUPS[GROUP_INDEX[g]].legend == "key":
        return (0, 0, key)
    return (i, int(values.get("k", 0)), key)

