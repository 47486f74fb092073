"""Remotior scripts that make band sets outside the catalog (``rs.bandset.create``), read
them, give them to the tools and add them to the catalog, run with only their import
changed, against references of Remotior's meaning."""

from __future__ import annotations

import numpy as np

from tests.compat import references as ref
from tests.compat.harness import S2_WAVELENGTHS
from tests.compat.references import NODATA, read


def _assert_classes(path: str, expected: np.ndarray) -> None:
    array, nodata, dtype = read(path)
    assert dtype == "uint8" and nodata == 0
    np.testing.assert_array_equal(array, expected)


def test_ndvi_of_a_bandset_outside_the_catalog_by_its_spectral_aliases(run, scene):
    check, paths, names, wavelengths, date, count = run("detached_bandset_ndvi").check()
    assert check is True
    assert paths == [f"{scene.data}/out/detached_bandset_ndvi/ndvi.tif"]
    order = sorted(S2_WAVELENGTHS, key=S2_WAVELENGTHS.get)
    assert names == [f"S2_{band}" for band in order]
    assert wavelengths == [S2_WAVELENGTHS[band] for band in order]
    assert date == "2020-01-01"
    assert count == 1  # the band set was never in the catalog, nor left in it
    n, r = ref.f32(scene.bands["B08"], scene.bands["B04"])
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (n - r) / (n + r)
    expected = ref.masked_result(values, (scene.bands["B08"] == 0) | (scene.bands["B04"] == 0))
    array, nodata, dtype = read(paths[0])
    assert (dtype, nodata) == ("float32", NODATA)
    np.testing.assert_array_equal(array, expected)


def test_sieve_of_a_bandset_of_files_outside_the_catalog(run, scene):
    check, paths, count, listed, factors, offsets = run("detached_bandset_files_sieve").check()
    assert check is True
    folder = f"{scene.data}/out/detached_bandset_files_sieve"
    assert paths == [f"{folder}/sieve_classes.tif", f"{folder}/sieve_classes2.tif"]
    assert count == 2
    assert listed == [f"{scene.data}/lc/classes.tif", f"{scene.data}/lc/classes2.tif"]
    assert (factors, offsets) == ([1, 2], [0, 5])
    for path, classes in zip(paths, (scene.classes, scene.classes2), strict=True):
        _assert_classes(path, ref.sieve(classes, 4, connected=False, nodata=0))


def test_erosion_of_a_bandset_added_to_the_catalog(run, scene):
    check, paths, count, listed = run("detached_bandset_add_to_catalog").check()
    assert check is True
    folder = f"{scene.data}/out/detached_bandset_add_to_catalog"
    assert paths == [f"{folder}/classes.tif", f"{folder}/classes2.tif"]  # by wavelength
    assert count == 2
    assert listed == ["classes.tif", "classes2.tif"]
    for path, classes in zip(paths, (scene.classes, scene.classes2), strict=True):
        _assert_classes(path, ref.erosion(classes, [7], 1, circular=False, nodata=0))
