"""A Remotior band calc script with a calculation extent, run with only its import
changed, against a NumPy reference of the window Remotior's virtual raster reads."""

from __future__ import annotations

import numpy as np
import rasterio
from rasterio.transform import from_origin

from tests.compat.references import NODATA, f32, masked_result, read


def test_extent_list_snaps_to_the_input_pixels(run, scene):
    check, paths = run("calc_extent_list").check()
    assert check is True
    assert paths == [f"{scene.data}/out/calc_extent_list/ndvi.tif"]
    # [500104, 4599797, 500496, 4599503] on the 10 m pixel lines of the first input:
    # [500100, 4599800, 500500, 4599500], rows 20 to 49 and columns 10 to 49.
    window = (slice(20, 50), slice(10, 50))
    nir, red = scene.bands["B08"][window], scene.bands["B04"][window]
    n, r = f32(nir, red)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (n - r) / (n + r)
    array, nodata, dtype = read(paths[0])
    assert (dtype, nodata) == ("float32", NODATA)
    np.testing.assert_array_equal(array, masked_result(values, (nir == 0) | (red == 0)))
    with rasterio.open(paths[0]) as ds:
        assert ds.transform == from_origin(500100, 4599800, 10, 10)
