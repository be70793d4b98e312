"""Damaged copies of valid files: whatever the damage, the validators raise their own error (a 4xx) or accept.

Seeded mutants (tests/malformed_corpus.py: flipped bytes, truncations, inserted and deleted runs, header fields set
to extremes) of well-formed embeddings, checkpoints and datasets. Before this test, zipfile's NotImplementedError
(zip version, flag bits), OSError (negative seek), IndexError (empty member name) and UnicodeDecodeError escaped
the dataset and checkpoint checks: 500s.
"""

from __future__ import annotations

import pytest

from repscope.checkpoints import CheckpointError, inspect_checkpoint
from repscope.datasets import DatasetError, DatasetLimits, inspect_dataset
from repscope.formats import FormatError, inspect_embeddings
from tests.malformed_corpus import mutants, valid_files

PER_FILE = 400
CHECKS = {
    "embeddings": (lambda path, name: inspect_embeddings(path, name, max_elements=10_000_000), FormatError),
    "checkpoint": (inspect_checkpoint, CheckpointError),
    "dataset": (lambda path, name: inspect_dataset(path, name, DatasetLimits(max_expanded_bytes=50_000_000)),
                DatasetError),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(CHECKS))
def test_mutated_files_raise_only_the_validators_error(tmp_path, kind):
    check, error = CHECKS[kind]
    escaped, refused = [], 0
    for n, (name, content) in enumerate(valid_files()[kind]):
        check(_write(tmp_path, content), name)  # the seed itself is valid
        for i, mutant in enumerate(mutants(content, PER_FILE, seed=n)):
            try:
                check(_write(tmp_path, mutant), name)
            except error:
                refused += 1
            except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
                escaped.append(f"{name} mutant {i} (seed {n}): {type(exc).__name__}: {exc}")
    assert not escaped, "\n".join(escaped[:20])
    assert refused > PER_FILE // 2  # the damage is real: most mutants are refused


def _write(tmp_path, content: bytes):  # noqa: ANN001, ANN202
    path = tmp_path / "upload"
    path.write_bytes(content)
    return path
