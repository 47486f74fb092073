"""Tiles kept between the passes of a multi-pass job come back as they were written."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

from rsgrpc.engine.errors import RsgrpcError
from rsgrpc.engine.kept_tiles import keep_arrays, read_kept

ARRAYS = [
    np.arange(12, dtype="<u2").reshape(3, 4),
    np.array([True, False, True]),
    np.full((2, 3), np.nan, dtype=np.float32),
    np.arange(6, dtype=">i8").reshape(2, 3).T,  # big-endian and not contiguous
    np.zeros((0, 5), dtype=np.int32),
    np.array(7.5),
    np.ones((2, 1, 3, 2), dtype=np.complex64),
]


def test_arrays_of_every_shape_and_dtype_come_back_equal_and_the_file_goes(tmp_path):
    path = tmp_path / "0-0.kept"
    keep_arrays(path, ARRAYS, "test")
    back = read_kept(path, len(ARRAYS))
    assert not path.exists()
    for written, read in zip(ARRAYS, back, strict=True):
        assert read.dtype == written.dtype
        assert read.shape == written.shape
        np.testing.assert_array_equal(read, written)


def test_a_truncated_kept_tile_is_an_error_not_garbage(tmp_path):
    path = tmp_path / "0-0.kept"
    keep_arrays(path, [np.arange(100, dtype=np.uint16)], "test")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(RsgrpcError, match="truncated"):
        read_kept(path, 1)


class _Yields:
    """Garbage whose finalizer lets other threads run: collected in the middle of an AST
    conversion, it switches threads there, as a busy server's finalizers do."""

    def __del__(self):
        time.sleep(0)


def test_tiles_read_back_in_threads_beside_expression_parsing(tmp_path):
    """Kept tiles are read in threads while other threads parse expressions. CPython 3.11
    converts one AST at a time (python/cpython#106905): NumPy's .npy header parser, or two
    unguarded parses, fail here with "AST constructor recursion depth mismatch"."""
    from rsgrpc_kernels.expression import parse_expression

    expression = " + ".join(f"(a - b{i}) / (a + b{i})" for i in range(20))
    names = ["a"] + [f"b{i}" for i in range(20)]
    paths = [tmp_path / f"{index}.kept" for index in range(600)]
    for index, path in enumerate(paths):
        keep_arrays(path, [np.full((2, 2), index, np.int16), np.arange(3)], "test")
    errors = []

    def churn():
        first, second = _Yields(), _Yields()
        first.other, second.other = second, first

    def read(share):
        try:
            for index in share:
                churn()
                array, _ = read_kept(paths[index], 2)
                assert int(array[0, 0]) == index
        except Exception as error:  # noqa: BLE001 - collected for the assertion below
            errors.append(error)

    def parse():
        try:
            for _ in range(300):
                churn()
                parse_expression(expression, names)
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    thresholds = gc.get_threshold()
    gc.set_threshold(20, 1, 1)
    try:
        threads = [threading.Thread(target=parse) for _ in range(2)]
        threads += [threading.Thread(target=read, args=(range(i, 600, 2),)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        gc.set_threshold(*thresholds)
    assert not errors
