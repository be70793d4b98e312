"""The suite registry: every evaluation suite, what it runs on, what it needs, and where its code is.

This is the one place a suite is declared. The API validates uploads with it, the pages list it, the worker's
engine, derive step and sandbox child dispatch on it, and `repscope eval` runs from it; none of them names a suite.
It lives in `repscope/` (torch-free) because the backend must validate suite names without importing the worker;
the worker resolves `SuiteSpec.module` to the functions that run it (worker.suite_runners).

Adding a suite: a package `worker/suites/<name>/` whose `suite.py` defines `on_embeddings(arrays, params, device,
progress)` and/or `on_encoder(encode, images, labels, device, progress)` returning a SuiteResult, plus one `SuiteSpec`
line in `SUITES` below (README, "Add a suite").
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What a suite can require of an embeddings file, or use when the worker can supply it.
LABELS = "labels"  # an int class label per row (required: probes; used by the backdoor encoder scan)
IMAGES = "images"  # the images of the rows' registered dataset, when it has exactly one image per row
POISON = "poison"  # per-row 0/1 flags of planted samples (scores the pool scan against ground truth)
NEEDS = frozenset({LABELS, IMAGES, POISON})
ALWAYS: frozenset[str] = frozenset()

# The worker step that turns a checkpoint into a derived embeddings artifact (not a suite users pick).
EMBED_STEP = "embed"


@dataclass(frozen=True)
class SuiteSpec:
    """One suite.

    embeddings -- runs on an embeddings artifact (uploaded, or derived from a checkpoint by the embed step).
    encoder    -- runs on the encoder itself (a checkpoint and a dataset's images), inside the sandbox; for a
                  checkpoint upload this input wins over `embeddings`.
    requires   -- what an embeddings file must carry for this suite (subset of NEEDS).
    uses       -- what the worker feeds the suite when it can (the rows' dataset images, the dataset's labels).
    default_if -- an upload that names no suites runs this one when its content has all of these (ALWAYS: every
                  upload); None: only when asked for.
    module     -- the module with on_embeddings / on_encoder; default worker.suites.<name>.suite.
    """

    name: str
    summary: str
    embeddings: bool = False
    encoder: bool = False
    requires: frozenset[str] = ALWAYS
    uses: frozenset[str] = ALWAYS
    default_if: frozenset[str] | None = None
    module: str = field(default="")

    def __post_init__(self) -> None:
        if not (self.embeddings or self.encoder):
            raise ValueError(f"suite {self.name!r} runs on nothing: set embeddings and/or encoder")
        unknown = (self.requires | self.uses | (self.default_if or ALWAYS)) - NEEDS
        if unknown:
            raise ValueError(f"suite {self.name!r}: unknown needs {sorted(unknown)}; known: {sorted(NEEDS)}")
        if not self.module:
            object.__setattr__(self, "module", f"worker.suites.{self.name}.suite")


SUITES: dict[str, SuiteSpec] = {s.name: s for s in (
    SuiteSpec("spectrum", "label-free spectrum metrics: RankMe, alpha-ReQ, NESum, uniformity, LiDAR, ...",
              embeddings=True, default_if=ALWAYS),
    SuiteSpec("probes", "linear (L-BFGS logistic regression) and weighted k-NN probes, open-set scores",
              embeddings=True, requires=frozenset({LABELS}), default_if=frozenset({LABELS})),
    SuiteSpec("equivariance", "invariance curves and equivariance predictors over image transformation families",
              encoder=True),
    SuiteSpec("backdoor", "backdoor scans: the pool scan of possibly poisoned samples, or the encoder scan "
              "(known triggers and DECREE)", embeddings=True, encoder=True, uses=frozenset({IMAGES, LABELS}),
              default_if=frozenset({POISON})),
    # Opt-in: its figure holds up to 20 000 points (about 1 MB of result JSON per upload), so uploads that name no
    # suites do not run it; PCA of the sample is cheap, UMAP runs only when umap-learn is installed (see the suite).
    SuiteSpec("projector", "embedding projector: 2-D PCA (and UMAP) of a seeded sample of <= 20 000 rows, coloured "
              "by label, split, poison flag or k-NN density", embeddings=True),
)}


def register(spec: SuiteSpec) -> None:
    """Add a suite at run time (plugins, tests); the name must be new."""
    if spec.name in SUITES or spec.name == EMBED_STEP:
        raise ValueError(f"suite {spec.name!r} is already registered")
    SUITES[spec.name] = spec


def unregister(name: str) -> None:
    SUITES.pop(name, None)


def get(name: str) -> SuiteSpec:
    """The spec of suite `name`; ValueError naming the available ones."""
    try:
        return SUITES[name]
    except KeyError:
        raise ValueError(f"unknown suite {name!r}; available: {', '.join(SUITES)}") from None


def available() -> tuple[str, ...]:
    return tuple(SUITES)


def embedding_suites() -> tuple[str, ...]:
    return tuple(n for n, s in SUITES.items() if s.embeddings)


def encoder_suites() -> tuple[str, ...]:
    return tuple(n for n, s in SUITES.items() if s.encoder)


def needing(need: str) -> tuple[str, ...]:
    """The suites that require `need` of an embeddings file (e.g. LABELS)."""
    return tuple(n for n, s in SUITES.items() if need in s.requires)


def default_suites(has_labels: bool, has_poison: bool = False) -> list[str]:
    """What an upload runs when the request names no suites: every suite whose `default_if` its content meets
    (spectrum always, probes with labels, the backdoor pool scan with poison flags)."""
    content = {LABELS} if has_labels else set()
    if has_poison:
        content.add(POISON)
    return [n for n, s in SUITES.items() if s.default_if is not None and s.default_if <= content]


def parse_suites(text: str | None) -> list[str] | None:
    """'spectrum, probes' -> ['spectrum', 'probes']; None when not given; ValueError naming unknown suites."""
    if text is None or not text.strip():
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(SUITES)}")
    return list(dict.fromkeys(names))


def check_suites(suites: list[str], has_labels: bool) -> None:
    """ValueError when a requested suite cannot run on an embeddings file, or needs something it lacks."""
    encoder_only = [s for s in suites if not get(s).embeddings]
    if encoder_only:
        raise ValueError(f"suite(s) {', '.join(encoder_only)} need an encoder: upload a checkpoint "
                         "(kind=checkpoint) with a dataset of images")
    missing = [s for s in suites if LABELS in get(s).requires and not has_labels]
    if missing:
        raise ValueError(f"suite(s) {', '.join(missing)} need labels: upload an .npz/.safetensors/.pt with a "
                         "'labels' array (int, one per row), or leave them out")


def split_checkpoint_suites(suites: list[str]) -> tuple[list[str], list[str]]:
    """(suites run on the encoder itself, suites run on its derived embeddings) for a checkpoint upload."""
    on_encoder = [s for s in suites if get(s).encoder]
    on_embeddings = [s for s in suites if get(s).embeddings and not get(s).encoder]
    return on_encoder, on_embeddings

