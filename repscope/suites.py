"""Names of the evaluation suites: part of the wire contract shared by backend, worker and client."""

from __future__ import annotations

# Suites a worker can run today. Later issues add probes, equivariance, backdoor.
AVAILABLE_SUITES: tuple[str, ...] = ("spectrum",)
# What an embeddings upload runs when the request names no suites.
DEFAULT_EMBEDDING_SUITES: tuple[str, ...] = ("spectrum",)


def parse_suites(text: str | None) -> list[str]:
    """'spectrum, probes' -> ['spectrum', 'probes']; raises ValueError naming unknown suites."""
    if text is None or not text.strip():
        return list(DEFAULT_EMBEDDING_SUITES)
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in AVAILABLE_SUITES]
    if unknown:
        raise ValueError(f"unknown suite(s) {', '.join(unknown)}; available: {', '.join(AVAILABLE_SUITES)}")
    return list(dict.fromkeys(names))
