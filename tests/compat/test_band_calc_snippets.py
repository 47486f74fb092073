"""Remotior band calc scripts, run with only their import changed, against NumPy
references in float32 (Remotior's default calc_datatype)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.compat.references import NODATA, f32, masked_result, read


def _ndvi(scene, nir="B08", red="B04") -> np.ndarray:
    n, r = f32(scene.bands[nir], scene.bands[red])
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (n - r) / (n + r)
    return masked_result(values, (scene.bands[nir] == 0) | (scene.bands[red] == 0))


def _assert_float_output(path: str, expected: np.ndarray, nodata: float = NODATA) -> None:
    array, found_nodata, dtype = read(path)
    assert dtype == "float32"
    assert found_nodata == nodata
    np.testing.assert_array_equal(array, expected)


def test_ndvi_with_keywords(run, scene):
    check, paths = run("calc_ndvi").check()
    assert check is True
    assert paths == [f"{scene.data}/out/calc_ndvi/ndvi.tif"]
    _assert_float_output(paths[0], _ndvi(scene))


def test_ndvi_with_positional_arguments_in_remotior_order(run, scene):
    check, paths = run("calc_positional").check()
    assert check is True
    assert paths == [f"{scene.data}/out/calc_positional/ndvi.tif"]
    _assert_float_output(paths[0], _ndvi(scene))


def test_path_name_pairs_need_no_name_list(run, scene):
    check, paths = run("calc_pairs").check()
    assert check is True
    _assert_float_output(paths[0], _ndvi(scene, nir="B08", red="B11"))


def test_a_second_run_replaces_the_output(run, scene):
    first, second, paths = run("calc_rerun").check()
    assert first is True and second is True
    _assert_float_output(paths[0], _ndvi(scene, nir="B03", red="B08"))


def test_int16_output_keeps_remotior_nodata(run, scene):
    check, paths = run("calc_int16").check()
    assert check is True
    array, nodata, dtype = read(paths[0])
    assert dtype == "int16" and nodata == NODATA
    n, r = f32(scene.bands["B08"], scene.bands["B04"])
    masked = (scene.bands["B08"] == 0) | (scene.bands["B04"] == 0)
    np.testing.assert_array_equal(array, masked_result(n - r, masked, dtype=np.int16))


def test_byte_output_of_a_comparison(run, scene):
    check, paths = run("calc_byte_threshold").check()
    assert check is True
    array, nodata, dtype = read(paths[0])
    assert dtype == "uint8" and nodata == 255
    (n,) = f32(scene.bands["B08"])
    expected = masked_result((n > 2500).astype(np.float32), scene.bands["B08"] == 0, 255)
    np.testing.assert_array_equal(array, expected.astype(np.uint8))


def test_output_nodata_is_written_where_inputs_are_nodata(run, scene):
    check, paths = run("calc_output_nodata").check()
    assert check is True
    b, r = f32(scene.bands["B02"], scene.bands["B04"])
    with np.errstate(divide="ignore", invalid="ignore"):
        values = b / r
    masked = (scene.bands["B02"] == 0) | (scene.bands["B04"] == 0)
    _assert_float_output(paths[0], masked_result(values, masked, -9999.0), nodata=-9999.0)


def test_numpy_functions(run, scene):
    check, paths = run("calc_functions").check()
    assert check is True
    n, r = f32(scene.bands["B08"], scene.bands["B04"])
    with np.errstate(divide="ignore", invalid="ignore"):
        # float32 throughout, as Remotior computes: a float64 calculation rounded to
        # float32 at the end differs by an ulp or so, hence the tolerance
        values = (
            np.sqrt(n * np.float32(0.0001))
            + np.log(r * np.float32(0.0001))
            - np.exp(n / np.float32(10000))
        )
    masked = (scene.bands["B08"] == 0) | (scene.bands["B04"] == 0)
    array, nodata, _ = read(paths[0])
    expected = masked_result(values, masked)
    np.testing.assert_array_equal(array == nodata, expected == NODATA)
    np.testing.assert_allclose(array, expected, rtol=2e-6, atol=2e-6)


def test_where_of_a_threshold(run, scene):
    check, paths = run("calc_where").check()
    assert check is True
    n, r = f32(scene.bands["B08"], scene.bands["B04"])
    with np.errstate(divide="ignore", invalid="ignore"):
        # float32: a quotient that rounds to float32(0.3) is not above 0.3 (float32(0.3));
        # computed in float64, a quotient a hair above 0.3 would be
        values = np.where((n - r) / (n + r) > np.float32(0.3), 1, 0).astype(np.float32)
    masked = (scene.bands["B08"] == 0) | (scene.bands["B04"] == 0)
    _assert_float_output(paths[0], masked_result(values, masked))


def _by_stem(paths: list[str]) -> dict[str, str]:
    """Outputs by their name without extension: Remotior writes ``@ name`` as name.vrt,
    rsgrpc as name.tif; the pixels are what is compared here."""
    return {Path(p).stem: p for p in paths}


def _vegetation(ndvi: np.ndarray, threshold: float) -> np.ndarray:
    # The threshold line reads the NDVI written as float32. Remotior compares in float32:
    # float32(0.3) > 0.3 is False. In float64, float32(0.3) = 0.30000001 > 0.3 is True:
    # the scene has 26 pixels of NDVI exactly float32(0.3) (20 of them 600 / 2000, on
    # purpose) where the two disagree.
    values = np.where(ndvi > np.float32(threshold), 1, 0).astype(np.float32)
    return masked_result(values, ndvi == NODATA)


def test_script_with_named_outputs_and_comments(run, scene):
    check, paths = run("calc_script_named_outputs").check()
    assert check is True
    folder = f"{scene.data}/out/calc_script_named_outputs"
    assert [str(Path(p).parent) for p in paths] == [folder, folder]
    outputs = _by_stem(paths)
    assert list(outputs) == ["ndvi", "vegetation"]
    ndvi = _ndvi(scene)
    _assert_float_output(outputs["ndvi"], ndvi)
    _assert_float_output(outputs["vegetation"], _vegetation(ndvi, 0.3))


def test_script_with_output_folders(run, scene):
    check, paths = run("calc_script_folder_outputs").check()
    assert check is True
    base = f"{scene.data}/out/calc_script_folder_outputs"
    assert [str(Path(p).parent) for p in paths] == [
        f"{base}/scaled",
        f"{base}/scaled",
        base + "/index",
    ]
    outputs = _by_stem(paths)
    assert list(outputs) == ["nir_reflectance", "swir_reflectance", "ndmi"]
    n, s = f32(scene.bands["B08"], scene.bands["B11"])
    # float32: "nir" * 0.0001 is rounded once, in float32; a product computed in float64
    # and rounded to float32 afterwards differs by one ulp on about a quarter of the pixels
    nir = masked_result(n * np.float32(0.0001), scene.bands["B08"] == 0)
    swir = masked_result(s * np.float32(0.0001), scene.bands["B11"] == 0)
    _assert_float_output(outputs["nir_reflectance"], nir)
    _assert_float_output(outputs["swir_reflectance"], swir)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndmi = (nir - swir) / (nir + swir)
    array, _, _ = read(outputs["ndmi"])
    expected = masked_result(ndmi, (nir == NODATA) | (swir == NODATA))
    np.testing.assert_array_equal(array == NODATA, expected == NODATA)
    np.testing.assert_allclose(array, expected, rtol=1e-6)


def test_script_lines_without_names_write_output_n(run, scene):
    check, paths = run("calc_script_default_names").check()
    assert check is True
    folder = f"{scene.data}/out/calc_script_default_names"
    assert paths == [f"{folder}/output1.tif", f"{folder}/output2.tif"]
    b, g = f32(scene.bands["B02"], scene.bands["B03"])
    masked = (scene.bands["B02"] == 0) | (scene.bands["B03"] == 0)
    _assert_float_output(paths[0], masked_result(b + g, masked))
    _assert_float_output(paths[1], masked_result(b - g, masked))


def test_script_run_again_replaces_its_outputs(run, scene):
    first, second, paths = run("calc_script_rerun").check()
    assert first is True and second is True
    outputs = _by_stem(paths)
    assert list(outputs) == ["ndvi", "mask"]
    ndvi = _ndvi(scene)
    _assert_float_output(outputs["ndvi"], ndvi)
    _assert_float_output(outputs["mask"], _vegetation(ndvi, 0.5))
