"""A Remotior band_neighbor_pixels script, run with only its import changed, against the
mean of each 3x3 window's valid pixels computed with SciPy."""

from __future__ import annotations

import warnings

import numpy as np
from scipy import ndimage

from tests.compat.references import read


def test_neighbor_pixels_mean_of_a_square(run, scene):
    check, paths = run("neighbor_pixels_mean").check()
    assert check is True
    assert paths == [f"{scene.data}/out/neighbor_mean/mean_classes.tif"]
    array, nodata, dtype = read(paths[0])
    assert (dtype, nodata) == ("float32", 0)
    valid = scene.classes != 0
    values = np.where(valid, scene.classes, np.nan)
    with warnings.catch_warnings():  # windows of nodata only, where the output is nodata
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = ndimage.generic_filter(values, np.nanmean, size=3, mode="constant", cval=np.nan)
    np.testing.assert_array_equal(array, np.where(valid, mean, 0).astype(np.float32))
