"""Names of the evaluation suites: part of the wire contract shared by backend, worker and client."""

from __future__ import annotations

# Every suite a worker can run.
AVAILABLE_SUITES: tuple[str, ...] = ("spectrum", "probes", "equivariance", "backdoor")
# Suites over an embeddings file (backdoor: the pool scan of possibly poisoned samples).
EMBEDDING_SUITES: tuple[str, ...] = ("spectrum", "probes", "backdoor")
# Suites over an encoder and a dataset's images (backdoor: the encoder scan with triggers and DECREE).
CHECKPOINT_SUITES: tuple[str, ...] = ("equivariance", "backdoor")
# The worker step that turns a checkpoint into a derived embeddings artifact (not a suite users pick).
EMBED_STEP = "embed"
# Suites that need labels in the uploaded file.
NEEDS_LABELS: frozenset[str] = frozenset({"probes"})


def default_suites(has_labels: bool, has_poison: bool = False) -> list[str]:
    """What an embeddings upload runs when the request names no suites: every cheap suite its content allows
    (probes with labels, the backdoor pool scan with poison flags)."""
    suites = ["spectrum"] + (["probes"] if has_labels else [])
    return suites + (["backdoor"] if has_poison else [])


def parse_suites(text: str | None) -> list[str] | None:
    """'spectrum, probes' -> ['spectrum', 'probes']; None when not given; ValueError naming unknown suites."""
    if text is None or not text.strip():
        return None
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in AVAILABLE_SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(AVAILABLE_SUITES)}")
    return list(dict.fromkeys(names))


def check_suites(suites: list[str], has_labels: bool) -> None:
    """ValueError when a requested suite needs something an embeddings file lacks."""
    encoder_only = [s for s in suites if s not in EMBEDDING_SUITES]
    if encoder_only:
        raise ValueError(f"suite(s) {', '.join(encoder_only)} need an encoder: upload a checkpoint "
                         "(kind=checkpoint) with a dataset of images")
    missing = [s for s in suites if s in NEEDS_LABELS and not has_labels]
    if missing:
        raise ValueError(f"suite(s) {', '.join(missing)} need labels: upload an .npz/.safetensors/.pt with a "
                         "'labels' array (int, one per row), or leave them out")


def split_checkpoint_suites(suites: list[str]) -> tuple[list[str], list[str]]:
    """(suites run on the encoder itself, suites run on its derived embeddings) for a checkpoint upload."""
    on_encoder = [s for s in suites if s in CHECKPOINT_SUITES]
    on_embeddings = [s for s in suites if s in EMBEDDING_SUITES and s not in CHECKPOINT_SUITES]
    return on_encoder, on_embeddings
