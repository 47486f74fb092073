"""BandSets through a real channel: the API (create from files or from a folder, sensor
presets, get, list, update, delete, refusals, ownership and limits) and the Python
client's Remotior catalog, with band tools taking a BandSet or its number."""

from __future__ import annotations

import os
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import rasterio
import rasterio.features
from google.protobuf import field_mask_pb2
from rasterio.transform import from_origin

from rsgrpc.client import Session
from rsgrpc.engine import bandsets as engine_bandsets
from rsgrpc.v1 import bandset_pb2, bandset_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import create_session, make_config, serving, write_geotiff

S2_WAVELENGTHS = {"B02": 0.49, "B03": 0.56, "B04": 0.665, "B08": 0.842, "B8A": 0.865}


@pytest.fixture
def stub(server) -> bandset_pb2_grpc.BandSetServiceStub:
    return bandset_pb2_grpc.BandSetServiceStub(server[1])


@pytest.fixture
def session(server) -> Iterator[str]:
    """A fresh session, so that each test starts from Remotior's one empty band set."""
    name = create_session(server[1])
    yield name
    session_pb2_grpc.SessionServiceStub(server[1]).DeleteSession(
        session_pb2.DeleteSessionRequest(name=name)
    )


def _s2_folder(root, folder: str, names=("B04", "B02", "B8A", "B03", "B08")) -> dict:
    """Sentinel-2-like bands, one file each, and a file that is not a band."""
    arrays = {}
    for i, band in enumerate(names):
        array = (np.arange(40 * 50, dtype=np.uint16).reshape(40, 50) * (i + 1)) % 997
        write_geotiff(root / folder / f"S2_{band}.tif", array, nodata=0)
        arrays[band] = array
    (root / folder / "S2_notes.txt").write_text("not a raster")
    return arrays


def _bands(*paths: str, **fields) -> list[bandset_pb2.Band]:
    return [bandset_pb2.Band(path=path, **fields) for path in paths]


def _create(stub, session: str, **fields) -> bandset_pb2.BandSet:
    request = bandset_pb2.CreateBandSetRequest(parent=session, **fields)
    return stub.CreateBandSet(request)


def _refused(call, *args) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(*args)
    return error.value


def test_a_new_session_has_one_empty_current_bandset(stub, session):
    listed = stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=session))
    assert [b.name for b in listed.bandsets] == [f"{session}/bandsets/1"]
    assert listed.bandsets[0].current and not listed.bandsets[0].bands
    assert listed.bandsets[0].display_name == "BandSet"


def test_create_from_files_records_each_band(server, stub, session):
    root = server[0].data_root.root
    _s2_folder(root, "bs_files")
    created = _create(
        stub,
        session,
        bandset=bandset_pb2.BandSet(
            bands=_bands("bs_files/S2_B03.tif", "bs_files/S2_B02.tif"), date="2021-01-01"
        ),
        bandset_number=1,
    )
    assert created.name == f"{session}/bandsets/1" and created.bandset_number == 1
    assert [b.name for b in created.bands] == ["S2_B03", "S2_B02"]
    assert [b.band_number for b in created.bands] == [1, 2]
    assert [b.wavelength for b in created.bands] == [1.0, 2.0]
    assert {b.wavelength_unit for b in created.bands} == {"band number"}
    first = created.bands[0]
    assert (first.width, first.height, first.raster_band, first.data_type) == (50, 40, 1, "uint16")
    assert first.data_path == "bs_files/S2_B03.tif" and "32633" in first.crs
    assert first.multiplicative_factor == 1 and first.additive_factor == 0
    assert first.HasField("nodata") and first.nodata == 0
    assert created.display_name == "S2_B" and created.date == "2021-01-01"
    assert stub.GetBandSet(bandset_pb2.GetBandSetRequest(name=created.name)) == created


def test_create_from_a_folder_with_a_filter_and_a_sensor(server, stub, session):
    root = server[0].data_root.root
    _s2_folder(root, "bs_folder")
    write_geotiff(root / "bs_folder" / "L8_B4.tif", np.ones((40, 50), np.uint16))
    os.symlink(root / "bs_folder" / "S2_B02.tif", root / "bs_folder" / "S2_B01_link.tif")
    created = _create(
        stub,
        session,
        bandset=bandset_pb2.BandSet(sensor="sentinel-2", display_name="s2"),
        folder="bs_folder",
        name_filter="S2_",
        bandset_number=2,
    )
    assert created.bandset_number == 2 and not created.current
    # Sorted by wavelength, as Remotior creates a band set; the link is not taken.
    assert [b.name for b in created.bands] == ["S2_B02", "S2_B03", "S2_B04", "S2_B08", "S2_B8A"]
    assert [b.wavelength for b in created.bands] == pytest.approx(
        [S2_WAVELENGTHS[b.name[3:]] for b in created.bands]
    )
    assert {b.wavelength_unit for b in created.bands} == {"µm (1 E-6m)"}
    assert created.sensor.startswith("Sentinel-2 [bands")
    # The same folder under a root directory, unfiltered: the Landsat file joins.
    under_root = _create(
        stub,
        session,
        bandset=bandset_pb2.BandSet(root_directory="bs_folder"),
        folder=".",
        insert=True,
        bandset_number=1,
    )
    assert under_root.bandset_number == 1 and len(under_root.bands) == 6
    assert under_root.bands[0].path == "L8_B4.tif"
    assert under_root.bands[0].data_path == "bs_folder/L8_B4.tif"
    listed = stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=session))
    assert [len(b.bands) for b in listed.bandsets] == [6, 0, 5]


def test_sensor_presets_for_landsat(server, stub, session):
    root = server[0].data_root.root
    for band in (5, 4, 2):
        write_geotiff(root / "bs_l8" / f"LC08_B{band}.tif", np.ones((10, 10), np.uint8))
    created = _create(
        stub,
        session,
        bandset=bandset_pb2.BandSet(sensor="Landsat 8 OLI"),
        folder="bs_l8",
    )
    assert [b.name for b in created.bands] == ["LC08_B2", "LC08_B4", "LC08_B5"]
    assert [b.wavelength for b in created.bands] == pytest.approx([0.48, 0.655, 0.865])
    updated = stub.UpdateBandSet(
        bandset_pb2.UpdateBandSetRequest(
            bandset=bandset_pb2.BandSet(name=created.name, sensor="Landsat 9"),
            update_mask=field_mask_pb2.FieldMask(paths=["sensor"]),
        )
    )
    assert updated.sensor == "Landsat 9 OLI [bands 1, 2, 3, 4, 5, 6, 7]"
    band_order = stub.UpdateBandSet(
        bandset_pb2.UpdateBandSetRequest(
            bandset=bandset_pb2.BandSet(name=created.name, sensor="band order")
        )
    )
    assert [b.wavelength for b in band_order.bands] == [1, 2, 3]
    unknown = _refused(
        stub.UpdateBandSet,
        bandset_pb2.UpdateBandSetRequest(
            bandset=bandset_pb2.BandSet(name=created.name, sensor="Hubble")
        ),
    )
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT and "Hubble" in unknown.details()


def test_update_replaces_bands_names_and_the_current_bandset(server, stub, session):
    root = server[0].data_root.root
    _s2_folder(root, "bs_update")
    created = _create(stub, session, folder="bs_update", bandset_number=2)
    assert [b.name for b in created.bands][:2] == ["S2_B02", "S2_B03"]
    # Remove the first band and move the last to the front, as the client does.
    kept = [created.bands[-1], *created.bands[1:-1]]
    updated = stub.UpdateBandSet(
        bandset_pb2.UpdateBandSetRequest(
            bandset=bandset_pb2.BandSet(
                name=created.name, bands=kept, display_name="renamed", current=True
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["bands", "display_name", "current"]),
        )
    )
    assert [b.name for b in updated.bands] == [b.name for b in kept]
    assert [b.wavelength for b in updated.bands] == [b.wavelength for b in kept]
    assert [b.band_number for b in updated.bands] == [1, 2, 3, 4]
    assert updated.display_name == "renamed" and updated.current
    first = stub.GetBandSet(bandset_pb2.GetBandSetRequest(name=f"{session}/bandsets/1"))
    assert not first.current
    bad = _refused(
        stub.UpdateBandSet,
        bandset_pb2.UpdateBandSetRequest(
            bandset=bandset_pb2.BandSet(name=created.name),
            update_mask=field_mask_pb2.FieldMask(paths=["bandset_number"]),
        ),
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_delete_renumbers_and_the_last_leaves_an_empty_bandset(server, stub, session):
    root = server[0].data_root.root
    write_geotiff(root / "bs_delete" / "a.tif", np.ones((8, 8), np.uint8))
    for number in (1, 2, 3):
        _create(
            stub,
            session,
            bandset=bandset_pb2.BandSet(
                display_name=f"set {number}", bands=_bands("bs_delete/a.tif")
            ),
            bandset_number=number,
        )
    stub.DeleteBandSet(bandset_pb2.DeleteBandSetRequest(name=f"{session}/bandsets/2"))
    listed = stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=session, page_size=1))
    assert [b.display_name for b in listed.bandsets] == ["set 1"]
    rest = stub.ListBandSets(
        bandset_pb2.ListBandSetsRequest(parent=session, page_token=listed.next_page_token)
    )
    assert [b.name for b in rest.bandsets] == [f"{session}/bandsets/2"]
    assert rest.bandsets[0].display_name == "set 3" and not rest.next_page_token
    gone = _refused(stub.GetBandSet, bandset_pb2.GetBandSetRequest(name=f"{session}/bandsets/3"))
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    for _ in range(2):
        stub.DeleteBandSet(bandset_pb2.DeleteBandSetRequest(name=f"{session}/bandsets/1"))
    listed = stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=session))
    assert len(listed.bandsets) == 1 and not listed.bandsets[0].bands


def test_mismatched_grids_and_bad_paths_are_refused_and_nothing_is_written(server, stub, session):
    root = server[0].data_root.root
    write_geotiff(root / "bs_bad" / "a.tif", np.ones((20, 20), np.uint8))
    write_geotiff(root / "bs_bad" / "small.tif", np.ones((10, 20), np.uint8))
    write_geotiff(
        root / "bs_bad" / "shifted.tif",
        np.ones((20, 20), np.uint8),
        transform=from_origin(500010.0, 4600000.0, 10.0, 10.0),
    )
    (root / "bs_bad" / "text.tif").write_text("not a GeoTIFF")
    before = stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=session))
    cases = {
        "small": (_bands("bs_bad/a.tif", "bs_bad/small.tif"), grpc.StatusCode.INVALID_ARGUMENT),
        "shifted": (
            _bands("bs_bad/a.tif", "bs_bad/shifted.tif"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        "text": (_bands("bs_bad/text.tif"), grpc.StatusCode.INVALID_ARGUMENT),
        "missing": (_bands("bs_bad/none.tif"), grpc.StatusCode.NOT_FOUND),
        "dotdot": (_bands("../outside.tif"), grpc.StatusCode.PERMISSION_DENIED),
        "outside": (_bands("/etc/passwd"), grpc.StatusCode.PERMISSION_DENIED),
        "band": (_bands("bs_bad/a.tif", raster_band=2), grpc.StatusCode.INVALID_ARGUMENT),
    }
    for label, (bands, code) in cases.items():
        error = _refused(
            stub.CreateBandSet,
            bandset_pb2.CreateBandSetRequest(
                parent=session, bandset=bandset_pb2.BandSet(bands=bands)
            ),
        )
        assert error.code() == code, (label, error.details())
        assert str(root) not in error.details(), label
    for folder, code in (
        ("bs_bad/a.tif", grpc.StatusCode.INVALID_ARGUMENT),
        ("bs_nowhere", grpc.StatusCode.NOT_FOUND),
        ("../", grpc.StatusCode.PERMISSION_DENIED),
    ):
        error = _refused(
            stub.CreateBandSet, bandset_pb2.CreateBandSetRequest(parent=session, folder=folder)
        )
        assert error.code() == code, (folder, error.details())
    os.symlink(root / "bs_bad", root / "bs_bad_link")
    linked = _refused(
        stub.CreateBandSet, bandset_pb2.CreateBandSetRequest(parent=session, folder="bs_bad_link")
    )
    assert linked.code() == grpc.StatusCode.PERMISSION_DENIED
    bad_date = _refused(
        stub.CreateBandSet,
        bandset_pb2.CreateBandSetRequest(
            parent=session, bandset=bandset_pb2.BandSet(date="2021-13-01")
        ),
    )
    assert bad_date.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=session)) == before


def test_limits_are_resource_exhausted(server, stub, session, monkeypatch):
    root = server[0].data_root.root
    write_geotiff(root / "bs_limits" / "a.tif", np.ones((8, 8), np.uint8))
    monkeypatch.setattr(engine_bandsets, "MAX_BANDSETS", 3)
    monkeypatch.setattr(engine_bandsets, "MAX_BANDS", 2)
    for _ in range(2):
        _create(stub, session, bandset=bandset_pb2.BandSet(bands=_bands("bs_limits/a.tif")))
    full = _refused(stub.CreateBandSet, bandset_pb2.CreateBandSetRequest(parent=session))
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Replacing one is no new band set.
    _create(stub, session, bandset_number=3)
    many = _refused(
        stub.CreateBandSet,
        bandset_pb2.CreateBandSetRequest(
            parent=session,
            bandset_number=1,
            bandset=bandset_pb2.BandSet(bands=_bands(*["bs_limits/a.tif"] * 3)),
        ),
    )
    assert many.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_another_identity_gets_not_found(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice a1ice-token\nbob b0b-token\n")
    alice = (("authorization", "Bearer a1ice-token"),)
    bob = (("authorization", "Bearer b0b-token"),)
    with serving(make_config(tmp_path, auth_token_file=str(tokens))) as (running, channel):
        stub = bandset_pb2_grpc.BandSetServiceStub(channel)
        session = create_session(channel, metadata=alice)
        name = f"{session}/bandsets/1"
        assert stub.GetBandSet(bandset_pb2.GetBandSetRequest(name=name), metadata=alice)
        calls = [
            (stub.GetBandSet, bandset_pb2.GetBandSetRequest(name=name)),
            (stub.ListBandSets, bandset_pb2.ListBandSetsRequest(parent=session)),
            (stub.CreateBandSet, bandset_pb2.CreateBandSetRequest(parent=session)),
            (
                stub.UpdateBandSet,
                bandset_pb2.UpdateBandSetRequest(
                    bandset=bandset_pb2.BandSet(name=name, display_name="mine")
                ),
            ),
            (stub.DeleteBandSet, bandset_pb2.DeleteBandSetRequest(name=name)),
        ]
        for call, request in calls:
            with pytest.raises(grpc.RpcError) as error:
                call(request, metadata=bob)
            assert error.value.code() == grpc.StatusCode.NOT_FOUND, call
        listed = stub.ListBandSets(bandset_pb2.ListBandSetsRequest(parent=session), metadata=alice)
        assert len(listed.bandsets) == 1 and listed.bandsets[0].display_name == "BandSet"


def _classes(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = np.kron(rng.integers(1, 5, (6, 8), dtype=np.uint8), np.ones((10, 10), np.uint8))
    array[rng.random(array.shape) < 0.08] = 7
    return array


def test_a_remotior_style_script_with_a_catalog_and_band_tools(server):
    running, channel = server
    root = running.data_root.root
    arrays = {}
    for band in ("B8A", "B04", "B02", "B03"):
        arrays[band] = _classes(len(arrays) + 3)
        write_geotiff(root / "S2_2020-01-01" / f"S2_{band}.tif", arrays[band], nodata=0)
    write_geotiff(root / "S2_2020-01-01" / "L8_B4.tif", _classes(9), nodata=0)

    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        catalog = rs.bandset_catalog()
        assert catalog is rs.bandset_catalog and catalog.get_bandset_count() == 1
        bandset = catalog.create_bandset(
            ["S2_2020-01-01", "S2_"], date="auto", bandset_number=1, bandset_name="s2"
        )
        assert catalog.get_bandset_count() == 1 and catalog.current_bandset == 1
        assert [b.name for b in bandset] == ["S2_B02", "S2_B03", "S2_B04", "S2_B8A"]
        assert bandset.get_wavelengths() == [1, 2, 3, 4] and bandset.date == "2020-01-01"
        catalog.set_satellite_wavelength("Sentinel-2", bandset_number=1)
        assert bandset.get_wavelengths() == pytest.approx([0.49, 0.56, 0.665, 0.865])
        assert set(bandset.get_wavelength_units()) == {"µm (1 E-6m)"}
        assert catalog.get_bandset_bands_by_attribute(
            1, "wavelength", 0.665, output_number=True
        ) == [3]
        assert bandset.get_band_alias() == ["b1", "b2", "b3", "b4"]
        assert catalog.create_band_string_list(1)[0] == '"bandset1b1"'
        assert catalog.get(1, "name") == bandset.bands["name"]

        # Bands added, removed, moved and sorted, as Remotior's catalog does it.
        catalog.add_band_to_bandset("S2_2020-01-01/L8_B4.tif", bandset_number=1, band_number=1)
        assert [b.name for b in bandset][:2] == ["L8_B4", "S2_B02"] and len(bandset) == 5
        catalog.sort_bands_by_wavelength(1)
        assert bandset.bands[0].name == "S2_B02" and bandset.bands[-1].name == "L8_B4"
        catalog.remove_band_in_bandset(5, bandset_number=1)
        assert [b.name for b in bandset] == ["S2_B02", "S2_B03", "S2_B04", "S2_B8A"]
        catalog.move_band_in_bandset(4, 1, bandset_number=1)
        assert bandset.bands[0].name == "S2_B8A" and bandset.bands[0].wavelength == 0.49
        catalog.sort_bands_by_name(1)
        assert bandset.bands[0].name == "S2_B02"

        # A second band set from files, under a root directory; made current.
        second = catalog.create_bandset(
            ["S2_B04.tif", "S2_B03.tif"],
            wavelengths=[0.665, 0.56],
            unit="µm (1 E-6m)",
            bandset_number=2,
            root_directory="S2_2020-01-01",
        )
        assert second.get_paths() == ["S2_B03.tif", "S2_B04.tif"]
        assert second.get_absolute_paths() == [
            "S2_2020-01-01/S2_B03.tif",
            "S2_2020-01-01/S2_B04.tif",
        ]
        catalog.current_bandset = 2
        assert catalog.current_bandset == 2 and catalog.get().number == 2
        catalog.current_bandset = 1

        # The band tools take the band set by number, or as a BandSet.
        by_number = rs.band_sieve(input_bands=1, size=6, output_path="bs_out", prefix="n_")
        assert by_number.check, by_number.grpc
        assert by_number.paths == [f"bs_out/n_S2_{b}.tif" for b in ("B02", "B03", "B04", "B8A")]
        by_object = rs.band_sieve(
            input_bands=second, size=6, output_path="bs_out", prefix="o_", connected=True
        )
        assert by_object.check, by_object.grpc
        for path, band, connectivity in [
            *zip(by_number.paths, ("B02", "B03", "B04", "B8A"), [4] * 4, strict=True),
            *zip(by_object.paths, ("B03", "B04"), [8] * 2, strict=True),
        ]:
            classes = arrays[band]
            expected = rasterio.features.sieve(
                classes, 6, connectivity=connectivity, mask=classes != 0
            )
            with rasterio.open(root / path) as ds:
                np.testing.assert_array_equal(ds.read(1), expected)

        missing = rs.band_sieve(input_bands=9, size=6, output_path="bs_out")
        assert not missing.check and "band set 9" in missing.extra["message"]
        catalog.remove_bandset(2)
        assert catalog.get_bandset_count() == 1 and catalog.get_bandset(2) is None
    finally:
        rs.close()


def test_one_multiband_file_gives_all_its_bands(server, stub, session):
    root = server[0].data_root.root
    path = root / "bs_multi" / "stack.tif"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(3 * 12 * 10, dtype=np.int16).reshape(3, 12, 10)
    profile = dict(driver="GTiff", width=10, height=12, count=3, dtype="int16", crs="EPSG:32633")
    with rasterio.open(path, "w", transform=from_origin(0, 120, 10, 10), **profile) as ds:
        ds.write(data)
    created = _create(
        stub, session, bandset=bandset_pb2.BandSet(bands=_bands("bs_multi/stack.tif"))
    )
    assert [(b.name, b.raster_band) for b in created.bands] == [
        ("stack#b0", 1),
        ("stack#b1", 2),
        ("stack#b2", 3),
    ]
    picked = _create(
        stub,
        session,
        bandset=bandset_pb2.BandSet(bands=_bands("bs_multi/stack.tif", raster_band=3)),
    )
    assert [(b.name, b.raster_band) for b in picked.bands] == [("stack", 3)]
