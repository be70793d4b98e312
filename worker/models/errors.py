"""The one error an unusable checkpoint raises (its message becomes the failed evaluation's / the 4xx detail)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """An uploaded checkpoint cannot be used; the message says why in plain words."""


def short(e: BaseException, limit: int = 300) -> str:
    """One line of at most ``limit`` characters from an exception's message."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit] + "..."
