"""Remotior's band calc ``point_coordinates`` through a real server: the calculation on the
one pixel of the input band set that holds the point, found as Remotior finds it, and the
band table fields of where a band lies (x_size, y_size, top, left, bottom, right)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsgrpc.client import Session
from tests.conftest import write_geotiff

# A grid whose origin and pixel size are not whole numbers, as a UTM tile's are not.
LEFT, TOP, X_SIZE, Y_SIZE = 300010.5, 5000020.25, 10.0, 20.0
SHAPE = (30, 40)


@pytest.fixture
def root(server) -> Path:
    return server[0].data_root.root.resolve()


@pytest.fixture
def rs(server) -> Iterator[Session]:
    session = Session(n_processes=1, available_ram=1024, channel=server[1])
    yield session
    session.close()


def _bands(root: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    red = rng.integers(1, 3000, SHAPE).astype(np.uint16)
    nir = rng.integers(1, 3000, SHAPE).astype(np.uint16)
    transform = from_origin(LEFT, TOP, X_SIZE, Y_SIZE)
    paths = []
    for name, array in (("red", red), ("nir", nir)):
        paths.append(str(write_geotiff(root / "point" / f"{name}.tif", array, transform=transform)))
    return paths, red, nir


def _pixel(x: float, y: float) -> tuple[int, int]:
    """The row and column Remotior's arithmetic picks for a point (it truncates)."""
    return int((TOP - y) / Y_SIZE), int((x - LEFT) / X_SIZE)


def test_the_band_table_says_where_each_band_lies(rs, root):
    paths, _, _ = _bands(root)
    rs.bandset_catalog.create_bandset(paths, bandset_number=1)
    bandset = rs.bandset_catalog.get_bandset(1)
    assert bandset.get_band_attributes("x_size") == [X_SIZE, X_SIZE]
    assert bandset.get_band_attributes("y_size") == [Y_SIZE, Y_SIZE]
    assert bandset.get_band_attributes("left") == [LEFT, LEFT]
    assert bandset.get_band_attributes("top") == [TOP, TOP]
    assert bandset.get_band_attributes("right") == [LEFT + X_SIZE * SHAPE[1]] * 2
    assert bandset.get_band_attributes("bottom") == [TOP - Y_SIZE * SHAPE[0]] * 2


@pytest.mark.parametrize(
    ("x", "y"),
    [
        (LEFT + 0.1, TOP - 0.1),  # the first pixel
        (LEFT + 15 * X_SIZE + 3.7, TOP - 11 * Y_SIZE - 19.9),  # inside, near a corner
        (LEFT + 39 * X_SIZE + 9.99, TOP - 29 * Y_SIZE - 0.01),  # the last pixel
    ],
)
def test_point_coordinates_calculate_the_pixel_that_holds_the_point(rs, root, x, y):
    paths, red, nir = _bands(root)
    rs.bandset_catalog.create_bandset(paths, bandset_number=1)
    output = root / "point" / "ndvi_point.tif"
    result = rs.band_calc(
        input_bands=1,
        output_path=str(output),
        expression_string='("b2" - "b1") / ("b2" + "b1")',
        point_coordinates=[x, y],
    )
    assert result.check, result.extra
    row, column = _pixel(x, y)
    n, r = np.float32(nir[row, column]), np.float32(red[row, column])
    with rasterio.open(result.paths[0]) as ds:
        assert (ds.width, ds.height) == (1, 1)
        assert ds.transform.c == pytest.approx(LEFT + column * X_SIZE, abs=1e-6)
        assert ds.transform.f == pytest.approx(TOP - row * Y_SIZE, abs=1e-6)
        value = ds.read(1)[0, 0]
    assert value == (n - r) / (n + r)


def test_point_coordinates_read_a_bandset_made_outside_the_catalog(rs, root):
    paths, red, nir = _bands(root)
    bandset = rs.bandset.create(paths, band_names=["red", "nir"])
    x, y = LEFT + 7 * X_SIZE + 5, TOP - 3 * Y_SIZE - 5
    output = root / "point" / "sum_point.tif"
    result = rs.band_calc(
        input_bands=bandset,
        output_path=str(output),
        expression_string='"b1" + "b2"',
        point_coordinates=[x, y],
    )
    assert result.check, result.extra
    with rasterio.open(result.paths[0]) as ds:
        assert ds.read(1)[0, 0] == np.float32(red[3, 7]) + np.float32(nir[3, 7])


def test_a_point_outside_the_bandset_is_refused_and_nothing_is_written(rs, root):
    paths, _, _ = _bands(root)
    rs.bandset_catalog.create_bandset(paths, bandset_number=1)
    output = root / "point" / "outside.tif"
    result = rs.band_calc(
        input_bands=1,
        output_path=str(output),
        expression_string='"b1" * 2',
        point_coordinates=[LEFT - 100, TOP + 100],
    )
    assert not result.check
    assert not output.exists()


def test_point_coordinates_must_be_two_numbers(rs, root):
    paths, _, _ = _bands(root)
    rs.bandset_catalog.create_bandset(paths, bandset_number=1)
    result = rs.band_calc(
        input_bands=1,
        output_path=str(root / "point" / "bad.tif"),
        expression_string='"b1" * 2',
        point_coordinates=[LEFT],
    )
    assert not result.check
    assert "point_coordinates must be [x, y]" in str(result.extra)
