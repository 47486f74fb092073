"""Workers keep their input files open between tiles, never read a stale file, and
close them between jobs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from rsgrpc.engine.errors import DataLossError
from rsgrpc.engine.executors import LocalProcessExecutor
from rsgrpc.engine.paths import DataPath, DataRoot
from rsgrpc.engine.raster_io import MAX_OPEN_INPUTS, read_window
from rsgrpc.engine.tiles import Tile
from rsgrpc.engine.worker_heap import IDLE_SECONDS
from tests.conftest import write_geotiff

_TILE = Tile(0, 0, 8, 8)


def _source(path: str) -> DataPath:
    """The file at `path` as a worker reads it: a path in a data root that is its folder."""
    return DataRoot.at(Path(path).parent).path(Path(path).name, field="input")


def _read_and_list_open(paths: list[str], tile: Tile = _TILE) -> tuple[list[np.ndarray], list[str]]:
    """Runs in a worker: read each path's tile; return them and the files it has open."""
    arrays = [read_window(_source(path), 1, tile) for path in paths]
    return arrays, [f.path for f in psutil.Process().open_files()]


@pytest.fixture
def executor():
    executor = LocalProcessExecutor(1, threads_per_process=1)
    yield executor
    executor.shutdown()


def _open_in_worker(executor: LocalProcessExecutor) -> list[str]:
    [pid] = executor.pids()
    return [f.path for f in psutil.Process(pid).open_files()]


def test_an_input_stays_open_for_the_next_tile_and_closes_when_idle(executor, tmp_path):
    path = str(write_geotiff(tmp_path / "a.tif", np.full((8, 8), 3, np.uint8)))
    # Queued together, the second task starts as soon as the first ends.
    first = executor.submit(_read_and_list_open, [path])
    second = executor.submit(_read_and_list_open, [path])
    assert path in first.result()[1]
    assert path in second.result()[1]
    deadline = time.monotonic() + IDLE_SECONDS + 10
    while path in _open_in_worker(executor) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path not in _open_in_worker(executor)


def test_the_planner_measures_after_inputs_are_closed(executor, tmp_path):
    path = str(write_geotiff(tmp_path / "a.tif", np.full((8, 8), 3, np.uint8)))
    executor.submit(_read_and_list_open, [path]).result()
    executor.footprint_bytes()
    assert path not in _open_in_worker(executor)


def test_a_file_replaced_between_tiles_is_read_afresh(executor, tmp_path):
    path = tmp_path / "a.tif"
    write_geotiff(path, np.full((8, 8), 3, np.uint8))
    [before], _ = executor.submit(_read_and_list_open, [str(path)]).result()
    write_geotiff(tmp_path / "b.tif", np.full((8, 8), 7, np.uint8))
    os.replace(tmp_path / "b.tif", path)
    [after], _ = executor.submit(_read_and_list_open, [str(path)]).result()
    assert (before == 3).all() and (after == 7).all()


def test_a_file_rewritten_in_place_between_tiles_is_read_afresh(executor, tmp_path):
    path = tmp_path / "a.tif"
    write_geotiff(path, np.full((8, 8), 3, np.uint8))
    [before], _ = executor.submit(_read_and_list_open, [str(path)]).result()
    write_geotiff(path, np.full((8, 8), 9, np.uint8))
    [after], _ = executor.submit(_read_and_list_open, [str(path)]).result()
    assert (before == 3).all() and (after == 9).all()


def test_at_most_max_open_inputs_stay_open(executor, tmp_path):
    paths = [
        str(write_geotiff(tmp_path / f"{i}.tif", np.full((8, 8), i, np.uint8)))
        for i in range(MAX_OPEN_INPUTS + 6)
    ]
    arrays, open_files = executor.submit(_read_and_list_open, paths).result()
    assert [int(a[0, 0]) for a in arrays] == list(range(len(paths)))
    assert len(set(paths) & set(open_files)) == MAX_OPEN_INPUTS
    assert set(paths[-MAX_OPEN_INPUTS:]) <= set(open_files)


def test_a_file_corrupted_between_tiles_fails_clearly_and_is_let_go(executor, tmp_path):
    path = tmp_path / "a.tif"
    write_geotiff(path, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), block=16)
    whole = Tile(0, 0, 64, 64)
    executor.submit(_read_and_list_open, [str(path)], whole).result()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xff" * (size // 2))
    with pytest.raises(DataLossError, match="a.tif band 1"):
        executor.submit(_read_and_list_open, [str(path)], whole).result()
    assert str(path) not in _open_in_worker(executor)


def _read_from_threads(path: str, tiles: list[Tile]) -> list[np.ndarray]:
    """Runs in a worker: read tiles of one file from several threads at once, as the
    sieve's side-by-side tiles do."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(lambda tile: read_window(_source(path), 1, tile), tiles))


def test_threads_of_a_task_read_an_input_side_by_side(executor, tmp_path):
    expected = np.random.default_rng(0).integers(0, 9999, (1024, 1024), dtype=np.uint16)
    path = str(write_geotiff(tmp_path / "a.tif", expected, block=128))
    tiles = [Tile(row, col, 512, 512) for row in (0, 512) for col in (0, 512)] * 40
    executor.submit(_read_and_list_open, [path]).result()  # kept open by the worker
    arrays = executor.submit(_read_from_threads, path, tiles).result()
    for tile, array in zip(tiles, arrays, strict=True):
        window = expected[tile.row : tile.row + 512, tile.col : tile.col + 512]
        np.testing.assert_array_equal(array, window)


def test_a_file_described_again_unchanged_is_not_opened_by_gdal_and_a_changed_one_is(
    tmp_path, monkeypatch
):
    from rsgrpc.engine import raster_io

    path = write_geotiff(tmp_path / "a.tif", np.zeros((8, 8), np.uint8), nodata=3)
    opened = []
    real = raster_io._geotiff_at
    monkeypatch.setattr(
        raster_io, "_geotiff_at", lambda found: opened.append(found.path.path) or real(found)
    )
    first = raster_io.describe(_source(str(path)), 1)
    again = raster_io.describe(_source(str(path)), 1)
    assert opened == ["a.tif"]
    assert again == first and first.nodata == 3 and first.dtype == "uint8"
    with pytest.raises(Exception, match="band 2 does not exist"):
        raster_io.describe(_source(str(path)), 2)
    assert opened == ["a.tif"]
    write_geotiff(path, np.zeros((8, 16), np.int16), nodata=-1)  # rewritten in place
    changed = raster_io.describe(_source(str(path)), 1)
    assert opened == ["a.tif", "a.tif"]
    assert (changed.width, changed.dtype, changed.nodata) == (16, "int16", -1)
