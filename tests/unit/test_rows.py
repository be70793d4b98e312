"""pread-based row access equals numpy slicing, for every layout it may meet."""

from __future__ import annotations

import numpy as np
import pytest

from worker.suites.common.rows import read_rows, take_rows


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_memmap_rows_equal_slices(tmp_path, dtype):
    z = np.random.default_rng(0).standard_normal((1000, 37)).astype(dtype)
    np.save(tmp_path / "z.npy", z)
    mm = np.load(tmp_path / "z.npy", mmap_mode="r")
    np.testing.assert_array_equal(read_rows(mm, 0, 1000), z)
    np.testing.assert_array_equal(read_rows(mm, 123, 456), z[123:456])
    rows = np.sort(np.random.default_rng(1).choice(1000, 300, replace=False))
    np.testing.assert_array_equal(take_rows(mm, rows), z[rows])
    runs = np.array([0, 1, 2, 10, 11, 999])
    np.testing.assert_array_equal(take_rows(mm, runs), z[runs])


def test_other_arrays_are_sliced(tmp_path):
    z = np.random.default_rng(0).standard_normal((50, 4))
    np.testing.assert_array_equal(read_rows(z, 5, 9), z[5:9])
    fortran = np.asfortranarray(z)
    np.save(tmp_path / "f.npy", fortran)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    assert not mm.flags.c_contiguous
    np.testing.assert_array_equal(take_rows(mm, np.array([1, 2, 40])), z[[1, 2, 40]])
    view = np.load(tmp_path / "f.npy", mmap_mode="r")[10:]
    np.testing.assert_array_equal(read_rows(view, 0, 3), z[10:13])


def test_npz_member_memmap(tmp_path):
    """repscope.formats maps an uncompressed .npz member at an offset inside the zip: rows must still match."""
    from repscope.formats import load_embeddings

    z = np.random.default_rng(2).standard_normal((200, 16)).astype(np.float32)
    np.savez(tmp_path / "z.npz", embeddings=z, labels=np.arange(200))
    arrays = load_embeddings(tmp_path / "z.npz")
    np.testing.assert_array_equal(read_rows(arrays.embeddings, 17, 60), z[17:60])
    np.testing.assert_array_equal(take_rows(arrays.embeddings, np.array([3, 4, 199])), z[[3, 4, 199]])
