"""Names of the evaluation suites: part of the wire contract shared by backend, worker and client."""

from __future__ import annotations

# Suites a worker can run today. Later issues add equivariance and backdoor.
AVAILABLE_SUITES: tuple[str, ...] = ("spectrum", "probes")
# The worker step that turns a checkpoint into a derived embeddings artifact (not a suite users pick).
EMBED_STEP = "embed"
# Suites that need labels in the uploaded file.
NEEDS_LABELS: frozenset[str] = frozenset({"probes"})


def default_suites(has_labels: bool) -> list[str]:
    """What an embeddings upload runs when the request names no suites: every suite its content allows."""
    return [s for s in AVAILABLE_SUITES if has_labels or s not in NEEDS_LABELS]


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
    """ValueError when a requested suite needs something the file lacks."""
    missing = [s for s in suites if s in NEEDS_LABELS and not has_labels]
    if missing:
        raise ValueError(f"suite(s) {', '.join(missing)} need labels: upload an .npz/.safetensors/.pt with a "
                         "'labels' array (int, one per row), or leave them out")
