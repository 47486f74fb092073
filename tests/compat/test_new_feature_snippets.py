"""Remotior scripts for what rsgrpc is being taught now: band set references and aliases
in band calc, forbandsets, calc_datatype, any_nodata_mask, use_scale, virtual outputs.
Run with only their import changed, against references of Remotior's meaning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio

from tests.compat import references as ref
from tests.compat.references import NODATA, read
from tests.test_virtual_raster import gdal_reads


def _ndvi32(scene, nir="B08", red="B04") -> np.ndarray:
    n, r = ref.f32(scene.bands[nir], scene.bands[red])
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (n - r) / (n + r)
    return ref.masked_result(values, (scene.bands[nir] == 0) | (scene.bands[red] == 0))


def _assert_ndvi(run, scene, name: str) -> None:
    check, paths = run(name).check()
    assert check is True
    assert paths == [f"{scene.data}/out/{name}/ndvi.tif"]
    array, nodata, dtype = read(paths[0])
    assert (dtype, nodata) == ("float32", NODATA)
    np.testing.assert_array_equal(array, _ndvi32(scene))


def test_bandset_band_references(run, scene):
    _assert_ndvi(run, scene, "new_bandset_band_alias")


def test_current_bandset_references(run, scene):
    _assert_ndvi(run, scene, "new_current_bandset_alias")


def test_spectral_aliases(run, scene):
    _assert_ndvi(run, scene, "new_spectral_alias")


def test_ndvi_expression_alias(run, scene):
    _assert_ndvi(run, scene, "new_ndvi_alias")


def test_input_bands_of_band_calc(run, scene):
    _assert_ndvi(run, scene, "new_input_bands")


def test_forbandsets_names_outputs_by_bandset(run, scene):
    check, paths = run("new_forbandsets").check()
    assert check is True
    assert [Path(p).stem for p in paths] == ["diff_first", "diff_second"]
    a, b = ref.f32(scene.bands["B08"], scene.bands["B02"])
    masked = (scene.bands["B08"] == 0) | (scene.bands["B02"] == 0)
    for path in paths:
        np.testing.assert_array_equal(read(path)[0], ref.masked_result(a - b, masked))


def test_calc_datatype_float64(run, scene):
    check, paths = run("new_calc_datatype").check()
    assert check is True
    n, r = (scene.bands[b].astype(np.float64) for b in ("B08", "B04"))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (n - r) / (n + r)
    masked = (scene.bands["B08"] == 0) | (scene.bands["B04"] == 0)
    array, nodata, dtype = read(paths[0])
    assert (dtype, nodata) == ("float64", NODATA)
    np.testing.assert_array_equal(array, ref.masked_result(values, masked, dtype=np.float64))


def test_any_nodata_mask(run, scene):
    check, paths = run("new_any_nodata_mask").check()
    assert check is True
    n, r = ref.f32(scene.bands["B08"], scene.bands["B04"])
    masked = (scene.bands["B08"] == 0) | (scene.bands["B04"] == 0)
    np.testing.assert_array_equal(read(paths[0])[0], ref.masked_result(n + r, masked))


def test_use_scale_writes_scaled_integers(run, scene):
    check, paths = run("new_use_scale").check()
    assert check is True
    with rasterio.open(paths[0]) as ds:
        stored, scale, offset = ds.read(1), ds.scales[0], ds.offsets[0]
        assert ds.dtypes[0] == "int16" and ds.nodata == NODATA
    assert (scale, offset) == (0.0001, 0.0)
    ndvi = _ndvi32(scene)
    valid = ndvi != NODATA
    np.testing.assert_array_equal(stored == NODATA, ~valid)
    # Remotior writes value / scale, computed in float32, into Int16: GDAL rounds it to the
    # nearest integer, halves away from zero
    quotient = (ndvi[valid] / np.float32(0.0001)).astype(np.float64)
    expected = np.trunc(quotient + np.copysign(0.5, quotient))
    np.testing.assert_array_equal(stored[valid], expected)


# This process serves the snippets with GDAL confined (no VRT driver): a VRT is read by
# GDAL in a child process with its defaults.


def test_vrt_output_path_is_a_virtual_raster(run, scene, tmp_path):
    check, paths = run("new_vrt_output").check()
    assert check is True
    assert paths == [f"{scene.data}/out/new_vrt_output/ndvi.vrt"]
    [(pixels, meta)] = gdal_reads(tmp_path, Path(paths[0]))
    assert meta[0] == "VRT"
    np.testing.assert_array_equal(pixels, _ndvi32(scene))


def test_virtual_output_of_the_sieve(run, scene, tmp_path):
    check, paths = run("new_virtual_output_sieve").check()
    assert check is True
    assert paths == [f"{scene.data}/out/new_virtual_output_sieve/sieve_classes.vrt"]
    [(pixels, meta)] = gdal_reads(tmp_path, Path(paths[0]))
    assert meta[0] == "VRT"
    expected = ref.sieve(scene.classes, 3, connected=False, nodata=0)
    np.testing.assert_array_equal(pixels, expected)
