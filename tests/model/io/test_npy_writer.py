"""Streaming .npy writer: header first, rows appended, atomic rename, nothing left on error."""

from __future__ import annotations

import numpy as np
import pytest

from model.io.npy_writer import NpyWriter


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_rows_written_in_blocks_load_as_one_array(tmp_path, dtype):
    expected = np.arange(7 * 5).reshape(7, 5).astype(dtype)
    with NpyWriter(tmp_path / "out.npy", expected.shape, dtype) as out:
        for block in (expected[:3], expected[3:4], expected[4:]):
            out.write_rows(block)
    loaded = np.load(tmp_path / "out.npy")
    assert loaded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded, expected)
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_an_error_leaves_no_file_and_keeps_an_existing_one(tmp_path):
    target = tmp_path / "out.npy"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), NpyWriter(target, (4, 4), "float32") as out:
        out.write_rows(np.zeros((2, 4), dtype="float32"))
        raise RuntimeError("inference failed")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


def test_too_few_rows_is_an_error_and_leaves_nothing(tmp_path):
    with (
        pytest.raises(ValueError, match="only 2 of 4"),
        NpyWriter(tmp_path / "o.npy", (4, 4), "uint8") as out,
    ):
        out.write_rows(np.zeros((2, 4), dtype="uint8"))
    assert list(tmp_path.iterdir()) == []


def test_wrong_row_shape_or_too_many_rows_is_refused(tmp_path):
    with pytest.raises(ValueError), NpyWriter(tmp_path / "o.npy", (2, 4), "uint8") as out:
        out.write_rows(np.zeros((1, 5), dtype="uint8"))
    with pytest.raises(ValueError), NpyWriter(tmp_path / "o.npy", (2, 4), "uint8") as out:
        out.write_rows(np.zeros((3, 4), dtype="uint8"))
    assert list(tmp_path.iterdir()) == []
