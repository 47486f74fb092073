"""Band calc through the gRPC door at the expression limits: long sums and deep nesting that are
legal run and give numpy's pixels; past the limits, INVALID_ARGUMENT says where and which limit."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import rasterio
from rsgrpc_kernels.expression import MAX_DEPTH, MAX_NODES

from rsgrpc.v1 import raster_pb2
from tests.conftest import watch_to_response, write_geotiff


@pytest.fixture(scope="module")
def rasters(server):
    running, _ = server
    root = running.data_root.root
    rng = np.random.default_rng(12)
    a = rng.uniform(0.5, 2.0, size=(40, 30)).astype(np.float32)
    b = rng.uniform(0.5, 2.0, size=(40, 30)).astype(np.float32)
    write_geotiff(root / "limits" / "a.tif", a)
    write_geotiff(root / "limits" / "b.tif", b)
    return root, a, b  # the references compute in float32, the default calculation type


def _band_calc(channel, raster_stub, session_name, expression, output):
    operation = raster_stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session_name,
            expression=expression,
            inputs=[
                raster_pb2.RasterInput(name="a", path="limits/a.tif"),
                raster_pb2.RasterInput(name="b", path="limits/b.tif"),
            ],
            output_path=output,
            output_data_type=raster_pb2.DATA_TYPE_FLOAT64,
        )
    )
    _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    return response


def _read(root, path):
    with rasterio.open(root / path) as dataset:
        return dataset.read(1)


def test_a_500_term_sum_runs_and_equals_numpy(server, raster_stub, session_name, rasters):
    root, a, b = rasters
    terms = ["a" if k % 3 else "b" for k in range(500)]
    response = _band_calc(
        server[1], raster_stub, session_name, " + ".join(terms), "limits/sum500.tif"
    )
    expected = b.copy()
    for name in terms[1:]:
        expected = expected + (a if name == "a" else b)
    np.testing.assert_array_equal(_read(root, response.output_path), expected)


def test_the_deepest_legal_nesting_runs_and_equals_numpy(
    server, raster_stub, session_name, rasters
):
    root, a, _ = rasters
    depth = MAX_DEPTH - 1
    text = "sqrt(" * depth + "a" + ")" * depth
    response = _band_calc(server[1], raster_stub, session_name, text, "limits/deep.tif")
    expected = a
    for _ in range(depth):
        expected = np.sqrt(expected)
    np.testing.assert_array_equal(_read(root, response.output_path), expected)


@pytest.mark.parametrize(
    ("expression", "limit"),
    [
        ("sqrt(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH, f"nests more than {MAX_DEPTH} levels"),
        (" + ".join(["a"] * (MAX_NODES // 2 + 1)), f"more than {MAX_NODES} terms"),
    ],
    ids=["too deep", "too many terms"],
)
def test_past_a_limit_is_invalid_argument_naming_the_limit_and_the_position(
    raster_stub, session_name, rasters, expression, limit
):
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandCalc(
            raster_pb2.BandCalcRequest(
                session=session_name,
                expression=expression,
                inputs=[raster_pb2.RasterInput(name="a", path="limits/a.tif")],
                output_path="limits/refused.tif",
            )
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert limit in caught.value.details()
    assert "offset" in caught.value.details()
