"""The error an unusable dataset raises (its message becomes the 4xx detail or the failed evaluation's)."""

from __future__ import annotations


class DatasetError(ValueError):
    """An unusable dataset upload; the message names the problem in plain words (becomes the 4xx detail)."""
