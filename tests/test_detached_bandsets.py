"""Band sets outside the catalog (Remotior's ``rs.bandset.create``) through a real server:
how each creation form fills the band table, the tools that read them (pixels against
NumPy and rasterio), adding one to the catalog, changes checked by the server, and the
refusals a Remotior user meets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
import rasterio.features
from rasterio.transform import from_origin

from rsgrpc.client import BandSet, Session
from rsgrpc.v1 import bandset_pb2, bandset_pb2_grpc, raster_pb2, raster_pb2_grpc
from tests.compat import references as ref
from tests.conftest import write_geotiff

S2 = {"B02": 0.49, "B03": 0.56, "B04": 0.665, "B08": 0.842, "B8A": 0.865}
MICRO = "µm (1 E-6m)"


@pytest.fixture
def root(server) -> Path:
    return server[0].data_root.root.resolve()


@pytest.fixture
def rs(server) -> Iterator[Session]:
    session = Session(n_processes=1, available_ram=1024, channel=server[1])
    yield session
    session.close()


def _band(seed: int, shape=(40, 50)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.integers(1, 3000, shape).astype(np.uint16)
    array[rng.random(shape) < 0.05] = 0  # nodata
    return array


def _s2(root: Path, folder: str, names=("B04", "B02", "B8A", "B03", "B08")) -> dict:
    arrays = {}
    for i, name in enumerate(names):
        arrays[name] = _band(i + 1)
        write_geotiff(root / folder / f"S2_{name}.tif", arrays[name], nodata=0)
    write_geotiff(root / folder / "L8_B4.tif", _band(99), nodata=0)
    return arrays


def _classes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 4, (5, 6)).astype(np.uint8)
    array = np.kron(coarse, np.ones((8, 8), np.uint8))[:40, :45].copy()
    array[rng.random(array.shape) < 0.08] = 7
    array[30:, :5] = 0
    return array


def _read(path: str | Path) -> tuple[np.ndarray, float | None]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.nodata


def _ndvi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    n, r = nir.astype(np.float32), red.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = (n - r) / (n + r)
        bad = (nir == 0) | (red == 0) | ~np.isfinite(values)
    return np.where(bad, np.float32(-32768), values).astype(np.float32)


def test_create_from_files_fills_the_band_table_as_remotior(rs, root):
    arrays = _s2(root, "dt_files")
    files = [str(root / "dt_files" / f"S2_{b}.tif") for b in ("B08", "B02", "B04")]
    bandset = rs.bandset.create(
        files,
        band_names=["nir", "blue", "red"],
        wavelengths=[0.842, 0.49, 0.665],
        unit=MICRO,
        multiplicative_factors=[1, 2, 3],
        additive_factors=[0, 10, 20],
        dates="2020-01-01",
    )
    assert type(bandset) is rs.bandset and isinstance(bandset, BandSet)
    assert bandset.catalog is None and bandset.number == 0
    assert rs.bandset_catalog.get_bandset_count() == 1  # nothing was added to it
    # sorted by wavelength, each band keeping its own name, factors and file
    assert bandset.get_band_attributes("name") == ["blue", "red", "nir"]
    assert bandset.get_wavelengths() == [0.49, 0.665, 0.842]
    assert bandset.get_wavelength_units() == [MICRO] * 3
    assert bandset.get_band_attributes("multiplicative_factor") == [2, 3, 1]
    assert bandset.get_band_attributes("additive_factor") == [10, 20, 0]
    assert bandset.get_paths() == [files[1], files[2], files[0]]
    assert bandset.get_absolute_paths() == bandset.get_paths()
    assert bandset.get_band_count() == 3 and len(bandset) == 3
    assert (
        bandset.date == "2020-01-01" and bandset.get_band_attributes("date") == ["2020-01-01"] * 3
    )
    assert bandset.get_band_alias() == ["b1", "b2", "b3"]
    assert bandset.name == "bl"  # Remotior's default: the first band's name less two characters
    band = bandset.get_band(1)[0]
    assert (band.x_count, band.y_count, band.nodata, band.data_type) == (50, 40, 0, "uint16")
    assert bandset.crs and band.crs == bandset.crs
    assert bandset.find_values_in_list("wavelength", [0.665, 0.842], "path") == files[2::-2]
    assert bandset.get_bands_by_attributes("name", "red", output_as_number=True) == [2]
    assert arrays  # the files exist


def test_a_folder_with_a_filter_a_sensor_and_the_folders_date(rs, root):
    _s2(root, "S2_2020-01-01")
    folder = str(root / "S2_2020-01-01")
    bandset = rs.bandset.create([folder, "S2_"], wavelengths=["Sentinel-2"], dates="auto")
    order = sorted(S2, key=S2.get)
    assert bandset.get_band_attributes("name") == [f"S2_{b}" for b in order]  # no L8_B4
    assert bandset.get_wavelengths() == pytest.approx([S2[b] for b in order])
    assert set(bandset.get_wavelength_units()) == {MICRO}
    assert bandset.date == "2020-01-01" and bandset.name == "S2_B"
    assert bandset.get_band_attributes("date") == ["2020-01-01"] * 5  # each band's too
    assert bandset.sensor.startswith("Sentinel-2")
    # Values per band go to the folder's files in name order, then sort by wavelength.
    named = rs.bandset.create(
        [folder, "S2_"],
        band_names=["n0", "n1", "n2", "n3", "n4"],
        wavelengths=[5, 4, 3, 2, 1],
        multiplicative_factors=[1, 2, 3, 4, 5],
    )
    assert named.get_band_attributes("name") == ["n4", "n3", "n2", "n1", "n0"]
    assert named.get_paths() == [
        f"{folder}/S2_{b}.tif" for b in ("B8A", "B08", "B04", "B03", "B02")
    ]
    assert named.get_band_attributes("multiplicative_factor") == [5, 4, 3, 2, 1]
    with pytest.raises(ValueError, match="band_names lists 2 values for 5 files"):
        rs.bandset.create([folder, "S2_"], band_names=["n0", "n1"])
    # The sensor named as a string, and the whole folder: every GeoTIFF, by name.
    whole = rs.bandset.create(folder, wavelengths="Sentinel-2", name="all")
    assert whole.name == "all" and whole.get_band_count() == 6
    assert whole.date is None


def test_relative_paths_under_a_root_directory(rs, root):
    _s2(root, "dt_root")
    bandset = rs.bandset.create(
        ["S2_B04.tif", "S2_B03.tif"],
        wavelengths=["Sentinel-2"],
        root_directory=str(root / "dt_root"),
    )
    assert bandset.get_paths() == ["S2_B03.tif", "S2_B04.tif"]
    assert bandset.root_directory == str(root / "dt_root")
    assert bandset.get_absolute_paths() == [
        str(root / "dt_root" / "S2_B03.tif"),
        str(root / "dt_root" / "S2_B04.tif"),
    ]
    assert bandset.get_absolute_path(2) == str(root / "dt_root" / "S2_B04.tif")
    assert bandset.get_wavelengths() == [0.56, 0.665]


def test_a_multiband_file_gives_every_band_with_the_sensors_wavelengths(rs, root):
    path = root / "dt_multi" / "stack.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(3 * 12 * 10, dtype=np.int16).reshape(3, 12, 10)
    profile = dict(driver="GTiff", width=10, height=12, count=3, dtype="int16", crs="EPSG:32633")
    with rasterio.open(path, "w", transform=from_origin(0, 120, 10, 10), **profile) as ds:
        ds.write(data)
    bandset = rs.bandset.create(str(path), wavelengths=["Sentinel-2"])
    assert bandset.get_band_attributes("name") == ["stack#b0", "stack#b1", "stack#b2"]
    assert bandset.get_raster_band_list() == [[1], [2], [3]]
    assert bandset.get_wavelengths() == [0.443, 0.49, 0.56]
    one = rs.bandset.create([str(path)], band_names="first")  # Remotior's one name
    assert one.get_band_count() == 3


def test_band_calc_reads_it_by_band_alias_and_spectral_alias(rs, root):
    arrays = _s2(root, "dt_calc")
    catalog = rs.bandset_catalog
    catalog.create_bandset([str(root / "dt_calc" / "L8_B4.tif")], bandset_name="kept")
    before = [(m.display_name, m.current) for m in catalog._list()]
    bandset = rs.bandset.create([str(root / "dt_calc"), "S2_"], wavelengths=["Sentinel-2"])
    # b1 B02, b2 B03, b3 B04, b4 B08, b5 B8A
    by_alias = rs.band_calc(
        input_bands=bandset,
        output_path=str(root / "dt_out" / "ndvi_alias.tif"),
        expression_string='("#NIR#" - "#RED#") / ("#NIR#" + "#RED#")',
    )
    by_band = bandset.calc(
        output_path=str(root / "dt_out" / "ndvi_bands.tif"),
        expression_string='("b4" - "b3") / ("b4" + "b3")',
    )
    named = rs.band_calc(
        input_bands=bandset,
        output_path=str(root / "dt_out" / "named"),
        expression_string='"b1" * 2 @ double',
    )
    for output in (by_alias, by_band, named):
        assert output.check, output.grpc
    expected = _ndvi(arrays["B08"], arrays["B04"])
    for output in (by_alias, by_band):
        array, nodata = _read(output.paths[0])
        assert nodata == -32768
        np.testing.assert_array_equal(array, expected)
    assert named.paths == [str(root / "dt_out" / "named" / "double.tif")]
    doubled, _ = _read(named.paths[0])
    blue = arrays["B02"].astype(np.float32)
    np.testing.assert_array_equal(doubled, np.where(arrays["B02"] == 0, -32768, blue * 2))
    # The catalog is as it was: nothing was added to it, the current band set unchanged.
    assert [(m.display_name, m.current) for m in catalog._list()] == before
    assert bandset.catalog is None and bandset.get_band_count() == 5


def test_band_tools_read_its_bands(rs, root):
    first, second = _classes(3), _classes(4)
    write_geotiff(root / "dt_lc" / "a.tif", first, nodata=0)
    write_geotiff(root / "dt_lc" / "b.tif", second, nodata=0)
    bandset = rs.bandset.create([str(root / "dt_lc" / "a.tif"), str(root / "dt_lc" / "b.tif")])
    assert (
        bandset.get_wavelengths() == [1, 2]
        and bandset.get_wavelength_units() == ["band number"] * 2
    )
    sieved = rs.band_sieve(
        input_bands=bandset, size=5, output_path=str(root / "dt_sieve"), connected=True
    )
    assert sieved.check, sieved.grpc
    assert sieved.paths == [str(root / "dt_sieve" / "a.tif"), str(root / "dt_sieve" / "b.tif")]
    for path, classes in zip(sieved.paths, (first, second), strict=True):
        expected = rasterio.features.sieve(classes, 5, connectivity=8, mask=classes != 0)
        np.testing.assert_array_equal(_read(path)[0], expected)
    dilated = bandset.dilation(output_path=str(root / "dt_dilate"), value_list=[7], size=1)
    assert dilated.check, dilated.grpc
    for path, classes in zip(dilated.paths, (first, second), strict=True):
        expected = ref.dilation(classes, [7], 1, circular=False, nodata=0)
        np.testing.assert_array_equal(_read(path)[0], expected)


def test_add_bandset_copies_it_into_the_catalog(rs, root):
    arrays = _s2(root, "dt_add")
    catalog = rs.bandset_catalog
    bandset = rs.bandset.create(
        [str(root / "dt_add"), "S2_"], wavelengths=["Sentinel-2"], dates="2021-05-06", name="s2"
    )
    added = catalog.add_bandset(bandset, bandset_number=2)
    assert catalog.get_bandset_count() == 2 and added.number == 2
    assert added.catalog is catalog and bandset.catalog is None
    assert catalog.get(2) is added and type(added) is rs.bandset
    for field in ("name", "wavelength", "path", "multiplicative_factor", "date"):
        assert added.get_band_attributes(field) == bandset.get_band_attributes(field)
    assert (added.name, added.date) == ("s2", "2021-05-06")
    inserted = catalog.add_bandset(bandset, bandset_number=1, insert=True)
    assert catalog.get_bandset_count() == 3 and inserted.number == 1
    assert catalog.get(3).name == "s2" and catalog.get(2).get_band_count() == 0
    output = rs.band_calc(
        input_bands=3,
        output_path=str(root / "dt_out" / "from_catalog.tif"),
        expression_string='("#NIR#" - "#RED#") / ("#NIR#" + "#RED#")',
    )
    assert output.check, output.grpc
    np.testing.assert_array_equal(_read(output.paths[0])[0], _ndvi(arrays["B08"], arrays["B04"]))
    # A band set whose bands are not in wavelength order keeps its order in the catalog.
    bandset.add_new_band(str(root / "dt_add" / "L8_B4.tif"), band_number=1)
    assert bandset.get_band_attributes("name")[:2] == ["L8_B4", "S2_B02"]
    appended = catalog.add_bandset(bandset, bandset_number=9)
    assert appended.number == 4 and catalog.get_bandset_count() == 4
    assert appended.get_band_attributes("name") == bandset.get_band_attributes("name")
    assert appended.get_wavelengths() == bandset.get_wavelengths()


def test_changes_are_checked_by_the_server_and_keep_the_order(rs, root):
    _s2(root, "dt_change")
    folder = root / "dt_change"
    bandset = rs.bandset.create([str(folder / "S2_B04.tif"), str(folder / "S2_B02.tif")])
    assert bandset.get_band_attributes("name") == ["S2_B04", "S2_B02"]
    bandset.add_new_band(str(folder / "L8_B4.tif"), band_number=1)
    assert bandset.get_band_attributes("name") == ["L8_B4", "S2_B04", "S2_B02"]
    assert bandset.get_wavelengths() == [1, 1, 2]
    assert [b.band_number for b in bandset] == [1, 2, 3]
    bandset.sort_bands_by_name(keep_wavelength_order=True)
    assert bandset.get_band_attributes("name") == ["L8_B4", "S2_B02", "S2_B04"]
    assert bandset.get_wavelengths() == [1, 1, 2]
    bandset.name = "renamed"
    bandset.date = "2022-02-02"
    assert (bandset.name, bandset.date) == ("renamed", "2022-02-02")
    with pytest.raises(grpc.RpcError) as bad_date:
        bandset.date = "02/02/2022"
    assert bad_date.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "YYYY-MM-DD" in bad_date.value.details() and bandset.date == "2022-02-02"
    with pytest.raises(grpc.RpcError) as missing:
        bandset.add_new_band(str(folder / "missing.tif"))
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert bandset.get_band_count() == 3  # a refused change changes nothing
    bandset.root_directory = str(folder)
    assert bandset.root_directory == str(folder) and bandset.get_band_count() == 3


def test_bad_arguments_are_refused_clearly(rs, root, tmp_path):
    _s2(root, "dt_bad")
    files = [str(root / "dt_bad" / f"S2_{b}.tif") for b in ("B02", "B03")]
    with pytest.raises(ValueError, match="band_names lists 1 values for 2 files"):
        rs.bandset.create(files, band_names=["one"])
    with pytest.raises(ValueError, match="multiplicative_factors lists 1 values"):
        rs.bandset.create(files, multiplicative_factors=[2])
    with pytest.raises(TypeError, match="paths must be"):
        rs.bandset.create(5)
    with pytest.raises(ValueError, match="wavelengths must list"):
        rs.bandset.create(files, wavelengths=[0.5, "near infrared"])
    with pytest.raises(ValueError, match="box_coordinate_list must be"):
        rs.bandset.create(files, box_coordinate_list=[0, 10, 10])
    with pytest.raises(grpc.RpcError) as box:
        rs.bandset.create(files, box_coordinate_list=[10, 10, 0, 0])  # right of its left
    assert box.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "box [10.0, 10.0, 0.0, 0.0] is not [left, top, right, bottom]" in box.value.details()
    with pytest.raises(TypeError, match=r"rs\.bandset\.create"):
        BandSet.create(files)
    with pytest.raises(grpc.RpcError) as sensor:
        rs.bandset.create(files, wavelengths=["Sentinel-9"])
    assert sensor.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'Sentinel-9' is not known" in sensor.value.details()
    with pytest.raises(grpc.RpcError) as missing:
        rs.bandset.create([*files, str(root / "dt_bad" / "S2_B99.tif")])
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    outside = write_geotiff(tmp_path / "outside.tif", _band(1), nodata=0)
    with pytest.raises(grpc.RpcError) as denied:
        rs.bandset.create([str(outside)])
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    write_geotiff(root / "dt_bad" / "small.tif", _band(2, (20, 20)), nodata=0)
    with pytest.raises(grpc.RpcError) as grid:
        rs.bandset.create([files[0], str(root / "dt_bad" / "small.tif")])
    assert grid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert rs.bandset_catalog.get_bandset_count() == 1  # no refusal left anything behind

    empty = rs.bandset.create()
    assert empty.get_band_count() == 0 and empty.name == "BandSet"
    output_path = str(root / "dt_out" / "e.tif")
    for refused in (
        rs.band_calc(input_bands=empty, output_path=output_path, expression_string='"b1"'),
        rs.band_sieve(input_bands=empty, output_path=output_path, size=2),
    ):
        assert not refused.check and "the BandSet has no bands" in refused.extra["message"]


def test_band_calc_refuses_a_bandset_of_another_session(rs, server, root):
    _s2(root, "dt_other")
    other = Session(n_processes=1, available_ram=1024, channel=server[1])
    try:
        theirs = other.bandset.create([str(root / "dt_other"), "S2_"])
    finally:
        other.close()
    refused = rs.band_calc(
        input_bands=theirs,
        output_path=str(root / "dt_out" / "other.tif"),
        expression_string='"b1"',
    )
    assert not refused.check and "another session" in refused.extra["message"]
    assert rs.bandset_catalog.get_bandset_count() == 1


def _listed(rs: Session) -> list[tuple]:
    """The session's catalog as the server lists it: each band set's name, whether it is
    current, and its bands' files."""
    stub = bandset_pb2_grpc.BandSetServiceStub(rs._channel)
    listed = stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=rs.name))
    return [(m.display_name, m.current, [b.path for b in m.bands]) for m in listed.bandsets]


def test_band_calc_never_touches_the_catalog(rs, root):
    arrays = _s2(root, "dt_untouched")
    catalog = rs.bandset_catalog
    catalog.create_bandset([str(root / "dt_untouched" / "L8_B4.tif")], bandset_name="kept")
    bandset = rs.bandset.create(
        [str(root / "dt_untouched"), "S2_"], wavelengths=["Sentinel-2"], name="s2"
    )
    before = _listed(rs)
    # The catalog as another caller sees it while the calculation runs: at each progress
    # report of its operation, from start to end.
    during: list[list[tuple]] = []
    rs.operation_callback = lambda metadata: during.append(_listed(rs))
    script = (
        '"b1" + "bandset#b4" @ sum_#BANDSET#\n'  # B02 + B08, in a file named by the band set
        '"#NDVI#" @ ndvi\n'
        '"bandset1b1" - "b3" @ kept\n'  # band set 1 of the catalog: L8_B4, less B04
    )
    output = rs.band_calc(
        input_bands=bandset,
        output_path=str(root / "dt_out" / "untouched"),
        expression_string=script,
    )
    assert output.check, output.grpc
    assert during and all(seen == before for seen in during)
    assert _listed(rs) == before and catalog.get_bandset_count() == 1
    folder = root / "dt_out" / "untouched"
    assert output.paths == [str(folder / n) for n in ("sum_s2.tif", "ndvi.tif", "kept.tif")]
    blue, nir, red = arrays["B02"], arrays["B08"], arrays["B04"]
    np.testing.assert_array_equal(_read(output.paths[1])[0], _ndvi(nir, red))
    for path, (a, b, sign) in zip(
        (output.paths[0], output.paths[2]),
        ((blue, nir, 1), (_read(root / "dt_untouched" / "L8_B4.tif")[0], red, -1)),
        strict=True,
    ):
        # a band's nodata masks the operation that reads it (NumPy's masked arrays)
        values = a.astype(np.float32) + sign * b.astype(np.float32)
        expected = np.where((a == 0) | (b == 0), np.float32(-32768), values)
        np.testing.assert_array_equal(_read(path)[0], expected)


def test_a_hostile_inline_bandset_is_refused_as_a_bad_band_and_writes_nothing(rs, root, tmp_path):
    _s2(root, "dt_hostile")
    good = str(root / "dt_hostile" / "S2_B04.tif")
    (root / "dt_hostile" / "notes.tif").write_text("not a GeoTIFF")
    small = write_geotiff(root / "dt_hostile" / "small.tif", _band(2, (20, 20)), nodata=0)
    outside = write_geotiff(tmp_path / "outside.tif", _band(1), nodata=0)
    raster = raster_pb2_grpc.RasterServiceStub(rs._channel)
    bandsets = bandset_pb2_grpc.BandSetServiceStub(rs._channel)
    output = root / "dt_hostile_out" / "out.tif"
    before = _listed(rs)
    for hostile, code, bad_input in (
        (str(outside), grpc.StatusCode.PERMISSION_DENIED, True),
        ("dt_hostile/../../outside.tif", grpc.StatusCode.PERMISSION_DENIED, True),
        (str(root / "dt_hostile" / "notes.tif"), grpc.StatusCode.INVALID_ARGUMENT, True),
        (str(small), grpc.StatusCode.INVALID_ARGUMENT, False),  # another grid than b1
    ):
        # The second band is not even read by the expression; its claimed grid is a lie.
        claimed = dict(width=50, height=40, crs="EPSG:32633", data_type="uint16", nodata=0)
        bands = [bandset_pb2.Band(path=good), bandset_pb2.Band(path=hostile, **claimed)]
        with pytest.raises(grpc.RpcError) as calc:
            raster.BandCalc(
                raster_pb2.BandCalcRequest(
                    session=rs.name,
                    expression='"b1" * 2',
                    output_path=str(output),
                    inline_bandset=bandset_pb2.BandSet(bands=bands),
                )
            )
        # Refused as a new band set with that band is, naming the request's field.
        with pytest.raises(grpc.RpcError) as created:
            bandsets.CreateBandSet(
                bandset_pb2.CreateBandSetRequest(
                    parent=rs.name, bandset=bandset_pb2.BandSet(bands=bands), validate_only=True
                )
            )
        assert calc.value.code() is created.value.code() is code, calc.value.details()
        assert calc.value.details() == created.value.details().replace(
            "bands[", "inline_bandset.bands["
        )
        if not bad_input:  # a file of its own grid is a good input alone
            continue
        # and with the status of the same file given as an input
        with pytest.raises(grpc.RpcError) as as_input:
            raster.BandCalc(
                raster_pb2.BandCalcRequest(
                    session=rs.name,
                    expression='"x" * 2',
                    output_path=str(output),
                    inputs=[raster_pb2.RasterInput(name="x", path=hostile)],
                )
            )
        assert as_input.value.code() is code, as_input.value.details()
    assert not output.parent.exists()  # nothing written
    assert _listed(rs) == before

    # Through the client: a BandSet whose band was changed by hand is checked again.
    bandset = rs.bandset.create([good])
    bandset.message.bands[0].path = "dt_hostile/../../outside.tif"
    refused = rs.band_calc(input_bands=bandset, output_path=str(output), expression_string='"b1"')
    assert not refused.check and refused.grpc.code == "PERMISSION_DENIED"
    assert "inline_bandset.bands[0].path 'dt_hostile/../../outside.tif' contains '..'" in (
        refused.grpc.message
    )
    assert not output.parent.exists() and _listed(rs) == before


def test_validate_only_returns_a_bandset_without_adding_it(server, root):
    from rsgrpc.v1 import bandset_pb2_grpc
    from tests.conftest import create_session

    _s2(root, "dt_api")
    stub = bandset_pb2_grpc.BandSetServiceStub(server[1])
    session = create_session(server[1])
    built = stub.CreateBandSet(
        bandset_pb2.CreateBandSetRequest(
            parent=session,
            bandset=bandset_pb2.BandSet(sensor="Sentinel-2"),
            folder="dt_api",
            name_filter="S2_",
            bandset_number=3,
            validate_only=True,
        )
    )
    assert built.name == "" and built.bandset_number == 0 and not built.current
    assert [b.name for b in built.bands] == [f"S2_{b}" for b in sorted(S2, key=S2.get)]
    listed = stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=session))
    assert len(listed.bandsets) == 1 and not listed.bandsets[0].bands


# 20 x 16 pixels of the 45 x 40 classes, on their pixel lines (10 m pixels from 500000, 4600000).
BOX = [500100.0, 4599920.0, 500300.0, 4599760.0]


def test_band_tools_clip_a_band_sets_bands_to_its_box_as_remotior(rs, root):
    write_geotiff(root / "dt_box" / "classes.tif", _classes(5), nodata=0)
    path = str(root / "dt_box" / "classes.tif")
    detached = rs.bandset.create([path], box_coordinate_list=BOX)
    assert detached.box_coordinate_list == BOX
    catalog = rs.bandset_catalog
    number = catalog.create_bandset([path], bandset_number=99, box_coordinate_list=BOX).number
    assert catalog.get_box_coordinate_list(number) == BOX
    # The box takes the place of extent_list, as Remotior's prepare_process_files does.
    for name, input_bands in (("detached", detached), ("numbered", number)):
        out = root / "dt_box" / f"{name}.tif"
        assert rs.band_dilation(
            input_bands=input_bands,
            output_path=str(out),
            value_list=[2],
            size=1,
            extent_list=[500000.0, 4600000.0, 500450.0, 4599600.0],
        ).check
        clipped = root / "dt_box" / f"{name}_by_extent.tif"
        assert rs.band_dilation(
            input_bands=path, output_path=str(clipped), value_list=[2], size=1, extent_list=BOX
        ).check
        with rasterio.open(out) as got, rasterio.open(clipped) as expected:
            assert (got.width, got.height) == (20, 16)
            assert got.bounds == (BOX[0], BOX[3], BOX[2], BOX[1])
            np.testing.assert_array_equal(got.read(1), expected.read(1))
    # Changed, kept by the server, and cleared.
    band_set = catalog.get_bandset(number)
    band_set.box_coordinate_list = [500000.0, 4600000.0, 500200.0, 4599800.0]
    assert catalog.get_box_coordinate_list(number) == [500000.0, 4600000.0, 500200.0, 4599800.0]
    band_set.box_coordinate_list = None
    assert catalog.get_box_coordinate_list(number) is None
    detached.box_coordinate_list = None
    assert detached.box_coordinate_list is None
