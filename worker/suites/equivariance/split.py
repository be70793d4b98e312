"""The image split of B and C: test images held out for every reported number, and a validation part of the
train images that picks the ridge α and the MLP's epoch. Split by image, so every pair of an image (B draws)
lands on the image's side."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEST_FRACTION = 0.2  # of the images, held out for every reported number
VAL_FRACTION = 0.2  # of the train images, to pick the ridge α and the MLP's epoch


@dataclass
class Split:
    fit: np.ndarray  # train rows used to fit (train minus validation)
    val: np.ndarray  # train rows used to pick α / the MLP epoch
    train: np.ndarray  # fit ∪ val (refit with the chosen α)
    test: np.ndarray

    def repeat(self, n: int, k: int) -> Split:
        """The same split over k copies of n rows (row d·n + i is copy d of row i)."""

        def rep(rows: np.ndarray) -> np.ndarray:
            return np.concatenate([rows + d * n for d in range(k)])

        return Split(fit=rep(self.fit), val=rep(self.val), train=rep(self.train), test=rep(self.test))


def make_split(n: int, seed: int) -> Split:
    """Images → test (TEST_FRACTION) and train; train → fit and validation (VAL_FRACTION); seeded with
    default_rng([seed, 1]).permutation."""
    rng = np.random.default_rng([seed, 1])
    perm = rng.permutation(n)
    n_test = max(1, int(round(TEST_FRACTION * n)))
    test, train = np.sort(perm[:n_test]), perm[n_test:]
    n_val = max(1, int(round(VAL_FRACTION * len(train))))
    val, fit = np.sort(train[:n_val]), np.sort(train[n_val:])
    return Split(fit=fit, val=val, train=np.sort(train), test=test)
