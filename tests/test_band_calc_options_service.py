"""Band calc's calculation options through the gRPC door: checked before any work starts,
and carried to the pixels and the output band's scale and offset."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import rasterio

from rsgrpc.v1 import raster_pb2
from tests.conftest import watch_to_response, write_geotiff

NODATA = -32768.0


@pytest.fixture(scope="module")
def rasters(server):
    running, _ = server
    root = running.data_root.root
    rng = np.random.default_rng(21)
    a = rng.integers(1, 5000, size=(30, 40)).astype(np.uint16)
    b = rng.integers(1, 5000, size=(30, 40)).astype(np.uint16)
    a[:3, :5] = 0
    b[5, :] = 0
    write_geotiff(root / "options" / "a.tif", a, nodata=0)
    write_geotiff(root / "options" / "b.tif", b, nodata=0)
    return root, a, b


def _request(session, expression, output, **fields) -> raster_pb2.BandCalcRequest:
    return raster_pb2.BandCalcRequest(
        session=session,
        expression=expression,
        inputs=[
            raster_pb2.RasterInput(name="a", path="options/a.tif"),
            raster_pb2.RasterInput(name="b", path="options/b.tif"),
        ],
        output_path=output,
        **fields,
    )


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"calc_data_type": raster_pb2.DATA_TYPE_INT16}, "calc_data_type"),
        ({"nodata_mask": 17}, "nodata_mask"),
        ({"output_scale": 0.0}, "output scale"),
        ({"output_scale": float("nan")}, "output scale"),
        ({"output_offset": float("inf")}, "output offset"),
    ],
    ids=["integer calc type", "unknown mask", "zero scale", "NaN scale", "infinite offset"],
)
def test_bad_options_are_invalid_argument_and_write_nothing(
    raster_stub, session_name, rasters, fields, words
):
    root = rasters[0]
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandCalc(_request(session_name, '"a" + "b"', "options/refused.tif", **fields))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()
    assert str(root) not in caught.value.details()
    assert not (root / "options" / "refused.tif").exists()


def test_scaled_ndvi_into_int16_with_the_bands_scale_and_offset(
    server, raster_stub, session_name, rasters
):
    root, a, b = rasters
    operation = raster_stub.BandCalc(
        _request(
            session_name,
            '("a" - "b") / ("a" + "b")',
            "options/ndvi.tif",
            output_data_type=raster_pb2.DATA_TYPE_INT16,
            output_scale=0.0001,
            output_offset=0.5,
        )
    )
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    ndvi = (fa - fb) / (fa + fb)
    stored = (ndvi / np.float32(0.0001) - np.float32(0.5 / 0.0001)).astype(np.float64)
    stored = np.trunc(stored + np.copysign(0.5, stored))  # to nearest, halves away from 0
    expected = np.where((a == 0) | (b == 0), NODATA, stored).astype(np.int16)
    with rasterio.open(root / "options" / "ndvi.tif") as ds:
        assert (ds.scales[0], ds.offsets[0]) == (0.0001, 0.5)
        np.testing.assert_array_equal(ds.read(1), expected)


def test_all_mask_and_float64_reach_the_pixels(server, raster_stub, session_name, rasters):
    root, a, b = rasters
    operation = raster_stub.BandCalc(
        _request(
            session_name,
            'max("a", "b") / 3',
            "options/max.tif",
            output_data_type=raster_pb2.DATA_TYPE_FLOAT64,
            calc_data_type=raster_pb2.DATA_TYPE_FLOAT64,
            nodata_mask=raster_pb2.BAND_CALC_NODATA_MASK_ALL,
        )
    )
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    stack = np.ma.masked_equal(np.stack([a, b]).astype(np.float64), 0)
    expected = (stack.max(axis=0) / 3).filled(NODATA)
    with rasterio.open(root / "options" / "max.tif") as ds:
        assert ds.scales[0] == 1.0 and ds.offsets[0] == 0.0  # none asked for
        np.testing.assert_array_equal(ds.read(1), expected)


def test_the_python_client_sends_remotiors_options_and_defaults():
    from rsgrpc.client import Session
    from tests.test_client_signatures import _RecordingChannel

    channel = _RecordingChannel()
    rs = Session(channel=channel)
    rs.band_calc('"a"', "o/x", [["a.tif", "a"]])
    rs.band_calc(
        '"a"',
        "o/x",
        [["a.tif", "a"]],
        input_nodata_as_value=True,
        use_value_as_nodata=3,
        use_scale=0.1,
        use_offset=0,
        calc_datatype=np.float64,
        any_nodata_mask=None,
    )
    rs.band_calc('"a"', "o/x", [["a.tif", "a"]], calc_datatype="Float32", any_nodata_mask=True)
    default, given, anymask = channel.requests["BandCalc"]
    # Remotior's defaults: float32, nodata where all inputs are (any_nodata_mask=False)
    assert default.calc_data_type == raster_pb2.DATA_TYPE_FLOAT32
    assert default.nodata_mask == raster_pb2.BAND_CALC_NODATA_MASK_ALL
    assert not default.input_nodata_as_value
    assert not any(
        default.HasField(f) for f in ("value_as_nodata", "output_scale", "output_offset")
    )
    assert given.calc_data_type == raster_pb2.DATA_TYPE_FLOAT64
    assert given.nodata_mask == raster_pb2.BAND_CALC_NODATA_MASK_NONE
    assert given.input_nodata_as_value and given.value_as_nodata == 3.0
    assert (given.output_scale, given.output_offset) == (0.1, 0.0)
    assert given.HasField("output_offset")
    assert anymask.nodata_mask == raster_pb2.BAND_CALC_NODATA_MASK_ANY
    refused = rs.band_calc('"a"', "o/x", [["a.tif", "a"]], calc_datatype="Int16")
    assert not refused.check and "calc_datatype" in refused.extra["message"]
    assert len(channel.requests["BandCalc"]) == 3
