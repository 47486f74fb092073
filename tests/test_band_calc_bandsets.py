"""Remotior's band set language in band calc, through a real channel and through the Python
client: band set references, lists in aggregations, spectral and expression aliases,
input_bandset, iterations and output placeholders, each against a NumPy reference; and the
refusals (unresolvable aliases, bad ranges, another identity's band sets, expansions past
the limits) at the door, with nothing written.

References are computed so that they hold whether the server calculates in float64 or in
float32: integer results compare exactly, the others in float32 with a relative tolerance.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro

from rsgrpc.client import Session
from rsgrpc.v1 import (
    bandset_pb2,
    bandset_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from tests.conftest import create_session, make_config, serving, watch_to_response, write_geotiff

NODATA = -32768.0
MICRO = "µm (1 E-6m)"
NANO = "nm (1 E-9m)"
SHAPE = (30, 40)
# Band set 1: Sentinel-2 of January (six bands), 2: of late January (four), 3: Landsat in
# nanometres (four), 4: two bands without wavelengths.
CATALOG = {
    1: ("S2_jan", "2020-01-01", MICRO, {"B02": 0.49, "B03": 0.56, "B04": 0.665, "B08": 0.842,
                                       "B11": 1.61, "B12": 2.19}),
    2: ("S2_late", "2020-01-21", MICRO, {"B02": 0.49, "B03": 0.56, "B04": 0.665, "B08": 0.842}),
    3: ("L8_mar", "2020-03-01", NANO, {"B2": 482.0, "B3": 561.0, "B4": 654.0, "B5": 865.0}),
    4: ("plain", "", "", {"X1": None, "X2": None}),
}  # fmt: skip


def _array(seed: int) -> np.ndarray:
    """Positive integers with a nodata (0) stripe of its own."""
    rng = np.random.default_rng(seed)
    array = rng.integers(1, 1000, SHAPE).astype(np.uint16)
    array[seed % SHAPE[0], :] = 0
    return array


@pytest.fixture(scope="module")
def pixels(server) -> dict[int, list[np.ndarray]]:
    """The bands of each band set of CATALOG, written once: {band set: [band arrays]}."""
    root = server[0].data_root.root
    written: dict[int, list[np.ndarray]] = {}
    for number, (name, _, _, bands) in CATALOG.items():
        written[number] = []
        for i, band in enumerate(bands):
            array = _array(number * 10 + i)
            write_geotiff(root / "bsc" / name / f"{name}_{band}.tif", array, nodata=0)
            written[number].append(array)
    return written


def _catalog(channel: grpc.Channel, pixels, *, metadata=()) -> str:
    """A new session whose catalog holds CATALOG's band sets; band set 1 is current."""
    session = create_session(channel, metadata=metadata)
    stub = bandset_pb2_grpc.BandSetServiceStub(channel)
    for number, (name, date, unit, bands) in CATALOG.items():
        listed = [
            bandset_pb2.Band(path=f"bsc/{name}/{name}_{band}.tif", wavelength_unit=unit)
            for band in bands
        ]
        for band, wavelength in zip(listed, bands.values(), strict=True):
            if wavelength is not None:
                band.wavelength = wavelength
        stub.CreateBandSet(
            bandset_pb2.CreateBandSetRequest(
                parent=session,
                bandset_number=number,
                bandset=bandset_pb2.BandSet(
                    bands=listed, display_name=name, date=date, current=number == 1
                ),
            ),
            metadata=metadata,
        )
    return session


@pytest.fixture(scope="module")
def catalog_session(server, pixels) -> str:
    return _catalog(server[1], pixels)


@pytest.fixture
def fresh_session(server, pixels) -> Iterator[str]:
    """A session of its own with CATALOG's band sets, for a test that changes them."""
    session = _catalog(server[1], pixels)
    yield session
    session_pb2_grpc.SessionServiceStub(server[1]).DeleteSession(
        session_pb2.DeleteSessionRequest(name=session)
    )


def _run(channel, session, expression, output, **fields) -> raster_pb2.BandCalcResponse:
    operation = raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
        raster_pb2.BandCalcRequest(
            session=session, expression=expression, output_path=output, overwrite=True, **fields
        )
    )
    _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    return response


def _refused(channel, session, expression, output="refused/out.tif", **fields) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
            raster_pb2.BandCalcRequest(
                session=session, expression=expression, output_path=output, **fields
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return caught.value.details()


def _read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _masked(values: np.ndarray, *inputs: np.ndarray, dtype=np.float32) -> np.ndarray:
    """`values` where every input has data and the result is finite in float32, else the
    output nodata, in `dtype`."""
    mask = np.zeros(SHAPE, bool)
    for array in inputs:
        mask |= array == 0
    with np.errstate(over="ignore", invalid="ignore"):
        mask |= ~np.isfinite(np.asarray(values, np.float64).astype(np.float32))
        return np.where(mask, dtype(NODATA), np.nan_to_num(values).astype(dtype))


def _f(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float64)


def _ndvi(nir: np.ndarray, red: np.ndarray) -> np.ndarray:
    return (_f(nir) - _f(red)) / (_f(nir) + _f(red))


def _close(path, expected: np.ndarray) -> None:
    """Float32 outputs against a float64 reference cast to float32: equal within float32's
    rounding whichever precision the server calculates in."""
    np.testing.assert_allclose(_read(path), expected, rtol=2e-5, atol=1e-6)


# references to bands


def test_references_name_bands_of_any_bandset_and_hash_the_chosen_one(
    server, catalog_session, pixels
):
    running, channel = server
    root = running.data_root.root
    script = '"bandset1b2" + 2 * "bandset#b1" @ current\n"bandset3b4" - "bandset#b1" @ second'
    response = _run(
        channel,
        catalog_session,
        script,
        "bsc_out/refs",
        output_data_type=raster_pb2.DATA_TYPE_INT32,
    )
    assert [o.output_path for o in response.outputs] == [
        "bsc_out/refs/current.tif",
        "bsc_out/refs/second.tif",
    ]
    one, three = pixels[1], pixels[3]
    expected = _masked(one[1].astype(np.int32) + 2 * one[0], one[1], one[0], dtype=np.int32)
    np.testing.assert_array_equal(_read(root / "bsc_out/refs/current.tif"), expected)
    expected = _masked(three[3].astype(np.int32) - one[0], three[3], one[0], dtype=np.int32)
    np.testing.assert_array_equal(_read(root / "bsc_out/refs/second.tif"), expected)

    # bandset_number names the band set '#' reads: here band set 2.
    _run(
        channel,
        catalog_session,
        '"bandset#b1" * 3',
        "bsc_out/refs/hash2.tif",
        bandset_number=2,
        output_data_type=raster_pb2.DATA_TYPE_INT32,
    )
    two = pixels[2]
    expected = _masked(two[0].astype(np.int32) * 3, two[0], dtype=np.int32)
    np.testing.assert_array_equal(_read(root / "bsc_out/refs/hash2.tif"), expected)


@pytest.mark.parametrize(
    ("expression", "reference"),
    [
        ('max("bandset1b*")', lambda p: (np.max(p[1], axis=0), p[1])),
        ('sum("bandset*b1")', lambda p: (sum(_f(p[n][0]) for n in p), [p[n][0] for n in p])),
        ('min("bandset{1:3}b4")', lambda p: (np.minimum.reduce([p[1][3], p[2][3], p[3][3]]),
                                             [p[1][3], p[2][3], p[3][3]])),
        ('max("bandset{1,3}b2", "bandset4b2")', lambda p: (
            np.maximum.reduce([p[1][1], p[3][1], p[4][1]]), [p[1][1], p[3][1], p[4][1]])),
        ('sum("bandset{2020-01-01:2020-01-31}b3") + max("bandset{2020-03-01}b1")', lambda p: (
            _f(p[1][2]) + p[2][2] + p[3][0], [p[1][2], p[2][2], p[3][0]])),
        # Band sets without the band are left out, as in Remotior: only band set 1 has b5.
        ('sum("bandset*b5") * 2', lambda p: (_f(p[1][4]) * 2, [p[1][4]])),
    ],
)  # fmt: skip
def test_lists_of_bands_expand_inside_aggregations_as_integers(
    server, catalog_session, pixels, expression, reference
):
    running, channel = server
    values, inputs = reference(pixels)
    inputs = inputs if isinstance(inputs, list) else list(inputs)
    output = f"bsc_out/lists/{abs(hash(expression))}.tif"
    _run(
        channel,
        catalog_session,
        expression,
        output,
        output_data_type=raster_pb2.DATA_TYPE_INT32,
    )
    expected = _masked(np.asarray(values, np.float64), *inputs, dtype=np.int32)
    np.testing.assert_array_equal(_read(running.data_root.root / output), expected)


def test_mean_median_and_percentile_of_a_list(server, catalog_session, pixels):
    running, channel = server
    root = running.data_root.root
    script = (
        'mean("bandset#b*") @ mean\n'
        'median("bandset{1:2}b1", "bandset3b1") @ median\n'
        'percentile("bandset*b2", 25) @ p25\n'
    )
    _run(channel, catalog_session, script, "bsc_out/stats")
    bands = pixels[1]
    _close(root / "bsc_out/stats/mean.tif", _masked(np.mean(_f(np.array(bands)), 0), *bands))
    firsts = [pixels[1][0], pixels[2][0], pixels[3][0]]
    expected = _masked(np.median(_f(np.array(firsts)), 0), *firsts)
    _close(root / "bsc_out/stats/median.tif", expected)
    seconds = [pixels[n][1] for n in (1, 2, 3, 4)]
    expected = _masked(np.percentile(_f(np.array(seconds)), 25, axis=0), *seconds)
    _close(root / "bsc_out/stats/p25.tif", expected)


# aliases


def test_spectral_and_expression_aliases_read_the_bands_in_remotiors_ranges(
    server, catalog_session, pixels
):
    running, channel = server
    root = running.data_root.root
    script = (
        '"#NDVI#" @ ndvi\n'
        '"#EVI#" @ evi\n'
        '"#BLUE#" + "#GREEN#" * 2 + "#SWIR1#" * 3 - "#SWIR2#" @ bands\n'
        '1 / "#ndvi#" @ inverse\n'  # any case; an alias is one operand
    )
    _run(channel, catalog_session, script, "bsc_out/alias")
    blue, green, red, nir, swir1, swir2 = pixels[1]
    ndvi = _ndvi(nir, red)
    _close(root / "bsc_out/alias/ndvi.tif", _masked(ndvi, nir, red))
    with np.errstate(divide="ignore", invalid="ignore"):  # non-finite pixels are nodata
        evi = 2.5 * (_f(nir) - red) / (_f(nir) + 6 * _f(red) - 7.5 * _f(blue) + 1)
    _close(root / "bsc_out/alias/evi.tif", _masked(evi, nir, red, blue))
    sums = _f(blue) + _f(green) * 2 + _f(swir1) * 3 - swir2
    np.testing.assert_array_equal(
        _read(root / "bsc_out/alias/bands.tif"), _masked(sums, blue, green, swir1, swir2)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        _close(root / "bsc_out/alias/inverse.tif", _masked(1 / ndvi, nir, red))

    # Band set 3 is in nanometres: the ranges scale with it.
    _run(channel, catalog_session, '"#NDVI#"', "bsc_out/alias/ndvi_nm.tif", bandset_number=3)
    _, _, red3, nir3 = pixels[3]
    _close(root / "bsc_out/alias/ndvi_nm.tif", _masked(_ndvi(nir3, red3), nir3, red3))


def test_input_bandset_reads_its_bands_as_b1_b2_and_the_aliases(server, catalog_session, pixels):
    running, channel = server
    root = running.data_root.root
    script = '"b1" + "b4" @ sum14\nmax("b*") @ top\n"#NDVI#" @ ndvi\n"b2" @ b2_#BANDSET#\n'
    response = _run(channel, catalog_session, script, "bsc_out/own", input_bandset=2)
    # #BANDSET# is input_bands' band set, as in Remotior, not the current one (S2_jan)
    assert [o.name for o in response.outputs] == ["sum14", "top", "ndvi", "b2_S2_late"]
    b1, _, b3, b4 = pixels[2]
    np.testing.assert_array_equal(
        _read(root / "bsc_out/own/sum14.tif"), _masked(_f(b1) + b4, b1, b4)
    )
    np.testing.assert_array_equal(
        _read(root / "bsc_out/own/top.tif"), _masked(np.max(pixels[2], 0), *pixels[2])
    )
    _close(root / "bsc_out/own/ndvi.tif", _masked(_ndvi(b4, b3), b4, b3))


# a band set given inline, outside the catalog


def _inline(number: int, **claims) -> bandset_pb2.BandSet:
    """Band set `number` of CATALOG given inline, under another name; its bands also
    claim `claims` (sizes, CRS...), which the server does not believe."""
    name, date, unit, bands = CATALOG[number]
    listed = []
    for band, wavelength in bands.items():
        given = bandset_pb2.Band(
            path=f"bsc/{name}/{name}_{band}.tif", wavelength_unit=unit, **claims
        )
        if wavelength is not None:
            given.wavelength = wavelength
        listed.append(given)
    return bandset_pb2.BandSet(bands=listed, display_name=f"inline_{name}", date=date)


def test_an_inline_bandset_takes_the_place_of_input_bandset_and_bandset_number(
    server, catalog_session, pixels
):
    running, channel = server
    root = running.data_root.root
    stub = bandset_pb2_grpc.BandSetServiceStub(channel)
    listing = bandset_pb2.ListBandSetsRequest(parent=catalog_session)
    before = stub.ListBandSets(listing)
    script = (
        '"b1" + "bandset#b4" @ sum_#BANDSET#\n'
        'max("bandset#b*") - min("b*") @ spread\n'
        '"#NDVI#" @ ndvi\n'
        '"b2" - "bandset3b1" @ mixed\n'  # a band set of the catalog, by number, still
        '"sum_#BANDSET#" * 2 @ #BANDSET# @ inline_twice\n'  # beside its first band
    )
    inline = _inline(2, width=1, height=1, crs="not a CRS", data_type="float64")
    response = _run(channel, catalog_session, script, "bsc_out/inline", inline_bandset=inline)
    assert [(o.name, o.output_path) for o in response.outputs] == [
        ("sum_inline_S2_late", "bsc_out/inline/sum_inline_S2_late.tif"),
        ("spread", "bsc_out/inline/spread.tif"),
        ("ndvi", "bsc_out/inline/ndvi.tif"),
        ("mixed", "bsc_out/inline/mixed.tif"),
        ("inline_twice", "bsc/S2_late/inline_twice.tif"),
    ]
    assert stub.ListBandSets(listing) == before  # the catalog never held it
    two = pixels[2]
    b1, b2, b3, b4 = two
    np.testing.assert_array_equal(
        _read(root / "bsc_out/inline/sum_inline_S2_late.tif"), _masked(_f(b1) + b4, b1, b4)
    )
    np.testing.assert_array_equal(
        _read(root / "bsc_out/inline/spread.tif"),
        _masked(_f(np.max(two, 0)) - np.min(two, 0), *two),
    )
    _close(root / "bsc_out/inline/ndvi.tif", _masked(_ndvi(b4, b3), b4, b3))
    landsat = pixels[3][0]
    np.testing.assert_array_equal(
        _read(root / "bsc_out/inline/mixed.tif"), _masked(_f(b2) - landsat, b2, landsat)
    )
    np.testing.assert_array_equal(
        _read(root / "bsc/S2_late/inline_twice.tif"), _masked((_f(b1) + b4) * 2, b1, b4)
    )


@pytest.mark.parametrize(
    ("expression", "fields", "message"),
    [
        ('"b5"', {}, "line 1, column 1: the inline band set has 4 band(s): there is no band 5"),
        ('"bandset0b1"', {}, "band set 0 does not exist: the session's catalog holds 4"),
        ('"#SWIR2#"', {}, '"#SWIR2#" has no band in the inline band set: it reads the band'),
        ('forbandsets[1]\n"b1"', {},
         "an iteration reads the band sets of the catalog: leave inline_bandset unset"),
        ('"b1" @ x%#', {}, "'%#' adds the output to the band set '#' names, here the inline"),
        ('"b1"', {"bandset_number": 1}, "bandset_number is 1: with inline_bandset, the band"),
        ('"b1"', {"input_bandset": 2}, "input_bandset is 2: with inline_bandset, the band set"),
    ],
)  # fmt: skip
def test_what_an_inline_bandset_cannot_expand_is_invalid_argument(
    server, catalog_session, expression, fields, message
):
    root = server[0].data_root.root
    details = _refused(
        server[1],
        catalog_session,
        expression,
        "bsc_refused_inline/out.tif",
        inline_bandset=_inline(2),
        **fields,
    )
    assert message in details
    assert not (root / "bsc_refused_inline").exists()


# iterations and placeholders


def test_forbandsets_repeats_the_script_for_each_bandset_with_its_name(
    server, pixels, fresh_session
):
    session = fresh_session
    running, channel = server
    root = running.data_root.root
    script = (
        "# NDVI of every Sentinel-2 band set, then twice it\n"
        "forbandsets[1:3]S2\n"
        '"#NDVI#" @ ndvi_#BANDSET#\n'
        '"ndvi_#BANDSET#" * 2 @ bsc_out/iter @ twice_#BANDSET#\n'
    )
    response = _run(channel, session, script, "bsc_out/iter")
    assert [(o.name, o.output_path, o.line) for o in response.outputs] == [
        ("ndvi_S2_jan", "bsc_out/iter/ndvi_S2_jan.tif", 3),
        ("twice_S2_jan", "bsc_out/iter/twice_S2_jan.tif", 4),
        ("ndvi_S2_late", "bsc_out/iter/ndvi_S2_late.tif", 3),
        ("twice_S2_late", "bsc_out/iter/twice_S2_late.tif", 4),
    ]
    for number, name in ((1, "S2_jan"), (2, "S2_late")):
        red, nir = pixels[number][2], pixels[number][3]
        ndvi = _masked(_ndvi(nir, red), nir, red)
        _close(root / f"bsc_out/iter/ndvi_{name}.tif", ndvi)
        twice = np.where(ndvi == NODATA, np.float32(NODATA), ndvi.astype(np.float64) * 2)
        _close(root / f"bsc_out/iter/twice_{name}.tif", twice)
    assert not (root / "bsc_out/iter/ndvi_L8_mar.tif").exists()


def test_forbandsets_by_dates_and_list(server, pixels, fresh_session):
    session = fresh_session
    running, channel = server
    root = running.data_root.root
    script = 'forbandsets[2020-01-15:2020-03-31, 1]\n"bandset#b1" + 1 @ plus_#BANDSET#\n'
    response = _run(
        channel, session, script, "bsc_out/dates", output_data_type=raster_pb2.DATA_TYPE_INT32
    )
    assert [o.name for o in response.outputs] == ["plus_S2_jan", "plus_S2_late", "plus_L8_mar"]
    for number, name in ((1, "S2_jan"), (2, "S2_late"), (3, "L8_mar")):
        first = pixels[number][0]
        expected = _masked(first.astype(np.int32) + 1, first, dtype=np.int32)
        np.testing.assert_array_equal(_read(root / f"bsc_out/dates/plus_{name}.tif"), expected)


def test_forbandsinbandset_writes_one_output_per_band_and_joins_them_to_a_bandset(
    server, pixels, fresh_session
):
    session = fresh_session
    running, channel = server
    root = running.data_root.root
    script = 'forbandsinbandset[2]\n"#BAND#" * 2 @ bsc_out/each @ x%4\n'
    response = _run(
        channel, session, script, "bsc_out/each", output_data_type=raster_pb2.DATA_TYPE_INT32
    )
    assert [o.name for o in response.outputs] == ["1x", "2x", "3x", "4x"]
    for band, array in enumerate(pixels[2], start=1):
        expected = _masked(array.astype(np.int32) * 2, array, dtype=np.int32)
        np.testing.assert_array_equal(_read(root / f"bsc_out/each/{band}x.tif"), expected)
    # '%4': each output joined band set 4, after its two bands.
    joined = bandset_pb2_grpc.BandSetServiceStub(channel).GetBandSet(
        bandset_pb2.GetBandSetRequest(name=f"{session}/bandsets/4")
    )
    assert [b.path for b in joined.bands] == [
        "bsc/plain/plain_X1.tif",
        "bsc/plain/plain_X2.tif",
        *(f"bsc_out/each/{band}x.tif" for band in range(1, 5)),
    ]
    # and a later request reads them as bands of band set 4
    _run(
        channel,
        session,
        '"bandset4b6" - "bandset2b4"',
        "bsc_out/each/zero.tif",
        output_data_type=raster_pb2.DATA_TYPE_INT32,
    )
    four = pixels[2][3]
    expected = _masked(four.astype(np.int32), four, dtype=np.int32)  # 2 * four - four
    np.testing.assert_array_equal(_read(root / "bsc_out/each/zero.tif"), expected)


def test_date_placeholder_is_the_time_of_the_calculation(server, catalog_session, pixels):
    running, channel = server
    script = '"bandset1b1" @ a_#DATE#\n"bandset1b1" @ b_#date#\n'
    response = _run(channel, catalog_session, script, "bsc_out/date")
    names = [o.name for o in response.outputs]
    assert all(re.fullmatch(r"[ab]_\d{8}_\d{12}", n) for n in names), names
    assert names[0][2:] < names[1][2:]  # one moment each, in order, as Remotior's
    for output in response.outputs:
        assert (running.data_root.root / output.output_path).exists()


# through the Python client, as Remotior's documentation writes it


def test_the_python_client_takes_bandset_number_and_input_bands(server, pixels):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=1, available_ram=1024, channel=channel)
    try:
        catalog = rs.bandset_catalog()
        bands = CATALOG[1][3]
        bandset = catalog.create_bandset(
            [f"bsc/S2_jan/S2_jan_{b}.tif" for b in bands],
            wavelengths=list(bands.values()),
            unit=MICRO,
            bandset_number=1,
            date="2020-01-01",
            bandset_name="S2_jan",
        )
        catalog.create_bandset(
            [f"bsc/L8_mar/L8_mar_{b}.tif" for b in CATALOG[3][3]],
            wavelengths=list(CATALOG[3][3].values()),
            unit=NANO,
            bandset_number=2,
        )
        ndvi = rs.band_calc(
            expression_string='"#NDVI#"',
            output_path="bsc_out/client/ndvi.tif",
            bandset_catalog=catalog,
            bandset_number=2,
        )
        assert ndvi.check, ndvi.grpc
        _, _, red, nir = pixels[3]
        _close(root / "bsc_out/client/ndvi.tif", _masked(_ndvi(nir, red), nir, red))

        top = rs.band_calc(
            expression_string='max("b*") @ top', output_path="bsc_out/client", input_bands=bandset
        )
        assert top.check and top.paths == ["bsc_out/client/top.tif"], top.grpc
        # Remotior's any_nodata_mask=False: max leaves the nodata bands out, and a pixel is
        # nodata where every band is
        bands = np.ma.masked_equal(np.stack(pixels[1]), 0)
        top_expected = bands.max(axis=0).astype(np.float32).filled(np.float32(NODATA))
        np.testing.assert_array_equal(_read(root / "bsc_out/client/top.tif"), top_expected)
        by_number = rs.band_calc(
            expression_string='"b2" - "b1"', output_path="bsc_out/client/d.tif", input_bands=1
        )
        assert by_number.check, by_number.grpc
        b1, b2 = pixels[1][0], pixels[1][1]
        np.testing.assert_array_equal(
            _read(root / "bsc_out/client/d.tif"), _masked(_f(b2) - b1, b1, b2)
        )

        loop = rs.band_calc(
            expression_string='forbandsets[1,2]\n"#NIR#" @ nir_#BANDSET#',
            output_path="bsc_out/client",
            bandset_catalog=catalog,
        )
        assert loop.check, loop.grpc
        assert loop.paths == [
            "bsc_out/client/nir_S2_jan.tif",
            "bsc_out/client/nir_L8_mar_.tif",
        ]  # Remotior's default name

        missing = rs.band_calc(expression_string='"#SWIR2#"', output_path="x.tif", input_bands=2)
        assert not missing.check and missing.grpc.code == "INVALID_ARGUMENT"
        assert '"#SWIR2#" has no band in band set 2' in missing.extra["message"]
        bad = rs.band_calc(expression_string='"b1"', output_path="x.tif", input_bands="b1")
        assert not bad.check and "input_bands must be" in bad.extra["message"]
    finally:
        rs.close()


# refusals


@pytest.mark.parametrize(
    ("expression", "fields", "message"),
    [
        ('"#SWIR2#" * 1', {"bandset_number": 2},
         'line 1, column 1: "#SWIR2#" has no band in band set 2: it reads the band nearest 2.2 '
         "µm, less than 0.2 µm from it, and the nearest is at 0.842 µm"),
        ('"#NIR#"', {"bandset_number": 4},
         "\"#NIR#\" needs the center wavelengths of band set 4, whose bands are in 'band number'"),
        ('1 + "#NDVI#"', {"input_bandset": 4},
         'line 1, column 5: "#NDVI#" reads "#NIR#": "#NIR#" needs the center wavelengths of '
         "band set 4"),
        ('"#NBR#"', {}, 'unknown alias "#NBR#"; the aliases are "#BLUE#"'),
        ('max("bandset{3:1}b1")', {}, "line 1, column 14: the range 3:1 runs backwards"),
        ('max("bandset{1:9}b1")', {}, "band set 9 does not exist"),
        ('max("bandset{1,x}b1")', {}, "'x' is not a band set number, a range (1:3), a date"),
        ('max("bandset{2021-01-01}b1")', {}, '"bandset{2021-01-01}b1" names no band'),
        ('"bandset1b*" + 1', {}, '"bandset1b*" is a list of bands: it is read only as an argument'),
        ('"bandset2b5"', {}, "band set 2 has 4 band(s): there is no band 5"),
        ('"bandset1b1" @ x\n"bandset1x2" @ y', {},
         'line 2, column 1: "bandset1x2" is not a band set reference'),
        ('max("bandset{1;2}b1")', {}, "line 1, column 14: '1;2' is not a band set number"),
        ('"#BAND#" * 2', {}, "#BAND# is the band of a forbandsinbandset iteration"),
        ('forbandsets[4:2]\n"bandset#b1"', {}, "line 1, column 13: the range 4:2 runs backwards"),
        ('forbandsets[1:2]nothing\n"bandset#b1"', {}, "the iteration names no band set"),
        ('forbandsets[1]\n"bandset#b1" @ x\n"bandset#b9" @ y', {},
         "line 3, column 1: band set 1 has 6 band(s): there is no band 9"),
        ('forbandsets[1:2]\n"bandset#b1" @ same', {},
         'line 2, column 14: output name "same" is also the output of line 2 (forbandsets '
         "iteration: band set 2)"),
        ('forbandsets[1:2]\n"bandset#b1" + nope @ x_#BANDSET#', {},
         "line 2, column 16: unknown name 'nope'"),
        ('"bandset1b1" @ x%7', {}, "line 1, column 14: band set 7 does not exist"),
        ('"bandset1b1" @ x%y', {}, "after '%' comes the number of the band set"),
        ('"b1"', {"bandset_number": 9}, "bandset_number 9 is not a band set of the session's"),
        ('"b1"', {"input_bandset": -1}, "input_bandset -1 is not a band set"),
        ('forbandsets[1]\n"b1"', {"input_bandset": 1}, "leave input_bandset at 0"),
    ],
)  # fmt: skip
def test_what_cannot_expand_is_invalid_argument_and_writes_nothing(
    server, catalog_session, expression, fields, message
):
    root = server[0].data_root.root
    details = _refused(server[1], catalog_session, expression, "bsc_refused/out.tif", **fields)
    assert message in details
    assert not (root / "bsc_refused").exists()


def test_expansions_past_the_limits_are_refused(server, pixels, fresh_session):
    session = fresh_session
    running, channel = server
    root = running.data_root.root
    many = [bandset_pb2.Band(path="bsc/plain/plain_X1.tif") for _ in range(101)]
    bandset_pb2_grpc.BandSetServiceStub(channel).CreateBandSet(
        bandset_pb2.CreateBandSetRequest(
            parent=session, bandset_number=5, bandset=bandset_pb2.BandSet(bands=many)
        )
    )
    calculations = _refused(channel, session, 'forbandsinbandset[5]\n"#BAND#" * 2 @ x')
    assert "the iteration makes more than 100 calculations" in calculations
    listed = _refused(channel, session, 'max("bandset5b*")')
    assert '"bandset5b*" names more than 64 bands; an aggregation takes at most 64 values' in listed
    inputs = _refused(channel, session, " + ".join(f'"bandset5b{b}"' for b in range(1, 70)))
    assert "band calc reads at most 64 inputs and band set bands" in inputs
    assert "band 65 of band set 5 would be one more" in inputs
    long = _refused(channel, session, " + ".join(['"#NDVI#"'] * 200))
    assert "with its band set references and aliases expanded, this expression is" in long
    assert not (root / "refused").exists()


def test_another_identitys_bandsets_are_not_read(tmp_path, pixels):
    tokens = tmp_path / "tokens"
    tokens.write_text("alice a1ice-token\nbob b0b-token\n")
    alice = (("authorization", "Bearer a1ice-token"),)
    bob = (("authorization", "Bearer b0b-token"),)
    with serving(make_config(tmp_path, auth_token_file=str(tokens))) as (running, channel):
        root = running.data_root.root
        for number, (name, _, _, bands) in CATALOG.items():
            for i, band in enumerate(bands):
                write_geotiff(
                    root / "bsc" / name / f"{name}_{band}.tif", pixels[number][i], nodata=0
                )
        alices = _catalog(channel, pixels, metadata=alice)
        bobs = create_session(channel, metadata=bob)
        stub = raster_pb2_grpc.RasterServiceStub(channel)
        request = raster_pb2.BandCalcRequest(
            session=bobs, expression='"bandset2b1" * 2', output_path="stolen.tif"
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.BandCalc(request, metadata=bob)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "band set 2 does not exist: the session's catalog holds 1" in caught.value.details()
        request.session = alices  # Alice's session, band sets and all, is not Bob's
        with pytest.raises(grpc.RpcError) as caught:
            stub.BandCalc(request, metadata=bob)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert not (root / "stolen.tif").exists()
        # Alice reads her own.
        request.session = alices
        operation = stub.BandCalc(request, metadata=alice)
        done = lro_grpc.OperationsStub(channel).WaitOperation(
            lro.WaitOperationRequest(name=operation.name, timeout={"seconds": 60}),
            metadata=alice,
        )
        assert done.done and not done.HasField("error"), done.error
        assert (root / "stolen.tif").exists()
