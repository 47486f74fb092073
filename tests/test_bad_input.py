"""Bad requests get a clear status code, lose nothing, and the server keeps serving."""

from __future__ import annotations

import os

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsgrpc.v1 import raster_pb2, session_pb2, session_pb2_grpc
from tests.conftest import write_geotiff

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture(scope="module")
def inputs(server, tmp_path_factory):
    running, _ = server
    root = running.data_root.root
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    write_geotiff(root / "in" / "a.tif", data, nodata=0)
    write_geotiff(root / "in" / "b.tif", data, nodata=0)
    write_geotiff(root / "in" / "small.tif", data[:32, :32], nodata=0)
    (root / "in" / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(200))
    write_geotiff(root / "existing.tif", data)
    outside = tmp_path_factory.mktemp("outside")
    write_geotiff(outside / "secret.tif", data)
    (root / "in" / "link.tif").symlink_to(outside / "secret.tif")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    return root


def _call(raster_stub, session_name, expression="a + b", inputs=None, output="out/x.tif", **kw):
    inputs = inputs or {"a": "in/a.tif", "b": "in/b.tif"}
    return raster_stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session_name,
            expression=expression,
            inputs=[raster_pb2.RasterInput(name=n, path=p) for n, p in inputs.items()],
            output_path=output,
            **kw,
        )
    )


def _refused(code, fragment, fn, *args, **kwargs):
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args, **kwargs)
    assert caught.value.code() is code, caught.value.details()
    assert fragment in caught.value.details()
    return caught.value


@pytest.fixture(autouse=True)
def still_serving(server, inputs):
    yield
    health = health_pb2_grpc.HealthStub(server[1])
    answer = health.Check(health_pb2.HealthCheckRequest(service=""))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert not (inputs / "out" / "x.tif").exists()


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("../outside.tif", "'..'"),
        ("in/../../outside.tif", "'..'"),
        ("/etc/passwd", "absolute"),
        ("in/link.tif", "outside the data root"),
        ("linkdir/secret.tif", "outside the data root"),
    ],
)
def test_input_paths_outside_the_data_root_are_permission_denied(
    raster_stub, session_name, path, fragment
):
    _refused(DENIED, fragment, _call, raster_stub, session_name, inputs={"a": path, "b": path})


@pytest.mark.parametrize("output", ["../x.tif", "/tmp/x.tif", "linkdir/x.tif"])
def test_output_paths_outside_the_data_root_are_permission_denied(
    raster_stub, session_name, output
):
    _refused(DENIED, "output_path", _call, raster_stub, session_name, output=output)


@pytest.mark.parametrize(
    ("expression", "fragment"),
    [
        ("a.__class__", "attribute access is not allowed (at line 1, column 3, offset 2)"),
        ("__import__('os')", "offset 0"),
        ("(lambda: 1)()", "offset"),
        ("[x for x in a]", "offset 0"),
        ("a + c", "offset 4"),
        ("evil(a)", "offset 0"),
        ("(a + b", "offset"),
        ("a ** 99999", "offset"),
        ("2 ** 2 ** 2 ** 2 ** 2 ** 2", "offset"),
        ("(" * 200 + "a" + ")" * 200, "nest"),
        ("a[0]", "offset"),
        ("", "empty"),
    ],
)
def test_bad_expressions_are_invalid_argument_with_position(
    raster_stub, session_name, expression, fragment
):
    error = _refused(INVALID, fragment, _call, raster_stub, session_name, expression=expression)
    assert error.details().startswith("expression:")


def test_missing_input_is_not_found(raster_stub, session_name):
    _refused(
        grpc.StatusCode.NOT_FOUND,
        "does not exist",
        _call,
        raster_stub,
        session_name,
        inputs={"a": "in/none.tif", "b": "in/b.tif"},
    )


def test_corrupt_input_is_invalid_argument(raster_stub, session_name):
    _refused(
        INVALID,
        "not a readable raster",
        _call,
        raster_stub,
        session_name,
        inputs={"a": "in/corrupt.tif", "b": "in/b.tif"},
    )


def test_input_corrupt_past_its_header_fails_the_operation_with_data_loss(
    server, raster_stub, session_name, inputs
):
    running, channel = server
    data = np.random.default_rng(3).integers(1, 60000, (512, 512), dtype=np.uint16)
    path = write_geotiff(inputs / "in" / "broken_block.tif", data, nodata=0)
    with rasterio.open(path) as ds:  # the header stays good; one block's bytes do not
        offset = int(ds.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(b"\xff" * 64)
    operation = _call(
        raster_stub,
        session_name,
        inputs={"a": "in/broken_block.tif", "b": "in/broken_block.tif"},
        output="out/broken.tif",
    )
    final = lro_grpc.OperationsStub(channel).WaitOperation(
        lro.WaitOperationRequest(name=operation.name, timeout=None)
    )
    assert final.error.code == code_pb2.DATA_LOSS, final.error
    assert "broken_block.tif band 1" in final.error.message
    assert "corrupt or truncated" in final.error.message
    assert str(running.data_root.root) not in final.error.message
    assert not (inputs / "out" / "broken.tif").exists()
    assert not list((inputs / "out").glob(".broken.tif.*"))


def test_inputs_in_different_crss_are_invalid_argument(raster_stub, session_name, inputs):
    data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    write_geotiff(inputs / "in" / "utm32.tif", data, nodata=0, crs="EPSG:32632")
    _refused(
        INVALID,
        "different CRSs",
        _call,
        raster_stub,
        session_name,
        inputs={"a": "in/a.tif", "b": "in/utm32.tif"},
    )


def test_existing_output_without_overwrite_is_already_exists(raster_stub, session_name, inputs):
    before = (inputs / "existing.tif").read_bytes()
    _refused(
        grpc.StatusCode.ALREADY_EXISTS,
        "overwrite",
        _call,
        raster_stub,
        session_name,
        output="existing.tif",
    )
    assert (inputs / "existing.tif").read_bytes() == before


def test_ram_budget_too_small_is_resource_exhausted_naming_the_minimum(server, raster_stub):
    stub = session_pb2_grpc.SessionServiceStub(server[1])
    tiny = stub.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=1, available_ram_mib=64)
        )
    )
    try:
        error = _refused(
            grpc.StatusCode.RESOURCE_EXHAUSTED, "the minimum is", _call, raster_stub, tiny.name
        )
        assert "available_ram_mib 64" in error.details()
    finally:
        stub.DeleteSession(session_pb2.DeleteSessionRequest(name=tiny.name))


def test_unknown_session_is_not_found(raster_stub):
    _refused(grpc.StatusCode.NOT_FOUND, "sessions/nope", _call, raster_stub, "sessions/nope")


def test_bad_output_nodata_for_dtype_is_invalid_argument(raster_stub, session_name):
    _refused(
        INVALID,
        "does not fit",
        _call,
        raster_stub,
        session_name,
        output_data_type=raster_pb2.DATA_TYPE_UINT8,
        output_nodata=-1,
    )
