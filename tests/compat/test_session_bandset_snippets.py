"""Remotior scripts that use the Session's settings and the BandSet catalog, run with only
their import changed."""

from __future__ import annotations

import numpy as np

from tests.compat import references as ref
from tests.compat.harness import S2_WAVELENGTHS
from tests.compat.references import read


def _assert_output(path: str, expected: np.ndarray) -> None:
    array, nodata, dtype = read(path)
    assert dtype == "uint8" and nodata == 0
    np.testing.assert_array_equal(array, expected)


def test_positional_session_and_a_log_kept_where_the_script_runs(run, scene, tmp_path):
    check, paths = run("session_positional_log").check()
    assert check is True
    (n,) = ref.f32(scene.bands["B08"])
    expected = ref.masked_result(n * 2, scene.bands["B08"] == 0)
    np.testing.assert_array_equal(read(paths[0])[0], expected)
    log = (tmp_path / "session.log").read_text()
    assert log.strip(), "close(log_path=...) wrote an empty log"


def test_set_changes_the_processes(run, scene):
    first, check, sieved, second, check2, dilated = run("session_set").check()
    assert (first, second) == (1, 2)
    assert check is True and check2 is True
    folder = f"{scene.data}/out/session_set"
    assert sieved == [f"{folder}/classes.tif"]
    assert dilated == [f"{folder}/dilation_classes.tif"]
    _assert_output(sieved[0], ref.sieve(scene.classes, 5, connected=True, nodata=0))
    _assert_output(dilated[0], ref.dilation(scene.classes, [7], 1, circular=False, nodata=0))


def test_progress_callback_is_called(run, scene):
    check, paths, ended = run("session_progress_callback").check()
    assert check is True and ended is True
    _assert_output(paths[0], ref.erosion(scene.classes, [3], 1, circular=False, nodata=0))


def test_sieve_of_a_bandset_by_number(run, scene):
    check, paths = run("bandset_files_sieve").check()
    assert check is True
    folder = f"{scene.data}/out/bandset_files_sieve"
    assert paths == [f"{folder}/sieve_classes.tif", f"{folder}/sieve_classes2.tif"]
    for path, classes in zip(paths, (scene.classes, scene.classes2), strict=True):
        _assert_output(path, ref.sieve(classes, 4, connected=False, nodata=0))


def test_dilation_of_a_bandset_object(run, scene):
    check, paths, count = run("bandset_object_dilation").check()
    assert check is True
    assert count == 2  # the empty band set 1 of a new session, and band set 2
    folder = f"{scene.data}/out/bandset_object_dilation"
    assert paths == [f"{folder}/classes2.tif", f"{folder}/classes.tif"]
    for path, classes in zip(paths, (scene.classes2, scene.classes), strict=True):
        _assert_output(path, ref.dilation(classes, [7], 1, circular=True, nodata=0))


def test_bandset_from_a_folder_with_sentinel2_wavelengths(run, scene):
    names, wavelengths, count = run("bandset_folder_sentinel2").check()
    order = sorted(S2_WAVELENGTHS, key=S2_WAVELENGTHS.get)
    assert names == [f"S2_{band}" for band in order]  # QA60 does not match the filter
    assert wavelengths == [S2_WAVELENGTHS[band] for band in order]
    assert count == 5


def test_erosion_of_a_bandset_from_a_filtered_folder(run, scene):
    check, paths = run("bandset_folder_erosion").check()
    assert check is True
    assert paths == [f"{scene.data}/out/bandset_folder_erosion/erosion_classes2.tif"]
    _assert_output(paths[0], ref.erosion(scene.classes2, [7], 1, circular=False, nodata=0))


def test_sieve_of_a_bandset_number_with_the_catalog_given(run, scene):
    check, paths = run("bandset_catalog_argument").check()
    assert check is True
    assert paths == [f"{scene.data}/out/bandset_catalog_argument/classes2.tif"]
    _assert_output(paths[0], ref.sieve(scene.classes2, 5, connected=True, nodata=0))
