"""Remotior sieve, dilation and erosion scripts, run with only their import changed,
against GDAL's sieve (rasterio) and NumPy/SciPy references of Remotior's definitions."""

from __future__ import annotations

import numpy as np

from tests.compat import references as ref
from tests.compat.references import read


def _assert_output(path: str, expected: np.ndarray, nodata: float = 0) -> None:
    array, found_nodata, dtype = read(path)
    assert dtype == "uint8" and found_nodata == nodata
    np.testing.assert_array_equal(array, expected)


def test_sieve_into_a_directory_with_a_prefix(run, scene):
    check, paths = run("sieve_directory").check()
    assert check is True
    folder = f"{scene.data}/out/sieve_directory"
    assert paths == [f"{folder}/sieve_classes.tif", f"{folder}/sieve_classes2.tif"]
    for path, classes in zip(paths, (scene.classes, scene.classes2), strict=True):
        _assert_output(path, ref.sieve(classes, 2, connected=False, nodata=0))


def test_sieve_connected_is_eight_connected(run, scene):
    check, paths = run("sieve_connected").check()
    assert check is True
    expected = ref.sieve(scene.classes, 6, connected=True, nodata=0)
    assert not np.array_equal(expected, ref.sieve(scene.classes, 6, connected=False, nodata=0))
    _assert_output(paths[0], expected)


def test_sieve_with_positional_arguments(run, scene):
    check, paths = run("sieve_positional").check()
    assert check is True
    assert paths == [f"{scene.data}/out/sieve_positional/classes2.tif"]
    _assert_output(paths[0], ref.sieve(scene.classes2, 4, connected=True, nodata=0))


def test_sieve_into_a_list_of_paths(run, scene):
    check, paths = run("sieve_output_list").check()
    assert check is True
    folder = f"{scene.data}/out/sieve_output_list"
    assert paths == [f"{folder}/first.tif", f"{folder}/second.tif"]
    _assert_output(paths[0], ref.sieve(scene.classes, 3, connected=False, nodata=0))
    _assert_output(paths[1], ref.sieve(scene.classes2, 3, connected=False, nodata=0))


def test_sieve_run_again_replaces_its_outputs(run, scene):
    first, second, paths = run("sieve_rerun").check()
    assert first is True and second is True
    _assert_output(paths[0], ref.sieve(scene.classes, 3, connected=False, nodata=0))


def test_dilation_square(run, scene):
    check, paths = run("dilation_square").check()
    assert check is True
    assert paths == [f"{scene.data}/out/dilation_square/dilation_classes.tif"]
    expected = ref.dilation(scene.classes, [7], 1, circular=False, nodata=0)
    _assert_output(paths[0], expected)


def test_dilation_circular_the_later_value_wins(run, scene):
    check, paths = run("dilation_circular_values").check()
    assert check is True
    for path, classes in zip(paths, (scene.classes, scene.classes2), strict=True):
        _assert_output(path, ref.dilation(classes, [3, 7], 2, circular=True, nodata=0))


def test_dilation_with_positional_arguments(run, scene):
    check, paths = run("dilation_positional").check()
    assert check is True
    assert paths == [f"{scene.data}/out/dilation_positional/classes2.tif"]
    # positional: input_bands, value_list, size, output_path, overwrite (True here)
    expected = ref.dilation(scene.classes2, [1, 2], 3, circular=False, nodata=0)
    _assert_output(paths[0], expected)


def test_erosion_square(run, scene):
    check, paths = run("erosion_square").check()
    assert check is True
    assert paths == [f"{scene.data}/out/erosion_square/erosion_classes.tif"]
    _assert_output(paths[0], ref.erosion(scene.classes, [7], 1, circular=False, nodata=0))


def test_erosion_circular_of_two_values(run, scene):
    check, paths = run("erosion_circular_values").check()
    assert check is True
    for path, classes in zip(paths, (scene.classes, scene.classes2), strict=True):
        _assert_output(path, ref.erosion(classes, [1, 2], 2, circular=True, nodata=0))


def test_erosion_with_positional_arguments(run, scene):
    check, paths = run("erosion_positional").check()
    assert check is True
    _assert_output(paths[0], ref.erosion(scene.classes2, [3, 7], 3, circular=False, nodata=0))


def test_dilation_then_erosion_of_its_outputs(run, scene):
    dilated_check, eroded_check, dilated, eroded = run("closing_chain").check()
    assert dilated_check is True and eroded_check is True
    folder = f"{scene.data}/out/closing_chain"
    assert dilated == [f"{folder}/dilated/classes.tif"]
    assert eroded == [f"{folder}/closed/classes.tif"]
    grown = ref.dilation(scene.classes, [4], 1, circular=False, nodata=0)
    _assert_output(dilated[0], grown)
    _assert_output(eroded[0], ref.erosion(grown, [4], 1, circular=False, nodata=0))


def test_workflow_ndvi_classes_sieve_dilation_erosion(run, scene):
    printed = run("workflow").check()
    assert printed[:5] == [True] * 5
    ndvi_paths, classes_paths, sieved, dilated, eroded = printed[5:]
    n, r = ref.f32(scene.bands["B08"], scene.bands["B04"])
    masked = (scene.bands["B08"] == 0) | (scene.bands["B04"] == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = ref.masked_result((n - r) / (n + r), masked)
    np.testing.assert_array_equal(read(ndvi_paths[0])[0], ndvi)
    # float32 comparisons of the float32 NDVI read back, as Remotior makes them: a pixel of
    # NDVI float32(0.45) = 0.44999999 is not below 0.45 in float32 (class 3), and is below
    # 0.45 once widened to float64 (class 2); the scene has a few (see
    # test_band_calc_snippets)
    classes = np.where(ndvi < np.float32(0.2), 1, np.where(ndvi < np.float32(0.45), 2, 3))
    classes = np.where(ndvi == ref.NODATA, 0, classes).astype(np.uint8)
    _assert_output(classes_paths[0], classes)
    sieve = ref.sieve(classes, 8, connected=True, nodata=0)
    _assert_output(sieved[0], sieve)
    grown = ref.dilation(sieve, [3], 2, circular=False, nodata=0)
    _assert_output(dilated[0], grown)
    _assert_output(eroded[0], ref.erosion(grown, [1], 1, circular=False, nodata=0))


def test_sieve_with_extent_list_sieves_the_clipped_classes(run, scene):
    check, paths = run("sieve_extent_list").check()
    assert check is True
    assert paths == [f"{scene.data}/out/sieve_extent_list/sieve_classes.tif"]
    # [500104, 4599797, 500496, 4599503] on the classes' 10 m pixel lines: rows 20 to 49
    # and columns 10 to 49, sieved as a raster of their own.
    window = (slice(20, 50), slice(10, 50))
    clipped = np.ascontiguousarray(scene.classes[window])
    expected = ref.sieve(clipped, 40, connected=False, nodata=0)
    _assert_output(paths[0], expected)
    assert not np.array_equal(
        expected, ref.sieve(scene.classes, 40, connected=False, nodata=0)[window]
    )
