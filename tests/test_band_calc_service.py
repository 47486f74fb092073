"""Band calc through a real gRPC channel: results pixel for pixel, progress, cancel, crashes."""

from __future__ import annotations

import os
import signal

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2

from rsgrpc.server import operation_servicer
from rsgrpc.v1 import operation_pb2, raster_pb2
from tests.conftest import (
    CRS,
    TRANSFORM,
    operation_metadata,
    operation_updates,
    watch_operation,
    watch_to_response,
    write_geotiff,
)


def _request(session, expression, inputs, output, **kwargs) -> raster_pb2.BandCalcRequest:
    return raster_pb2.BandCalcRequest(
        session=session,
        expression=expression,
        inputs=[raster_pb2.RasterInput(name=n, path=p) for n, p in inputs.items()],
        output_path=output,
        **kwargs,
    )


@pytest.fixture(scope="module")
def red_nir(server):
    running, _ = server
    rng = np.random.default_rng(7)
    shape = (1100, 900)
    red = rng.integers(0, 3000, shape, dtype=np.uint16)
    nir = rng.integers(0, 6000, shape, dtype=np.uint16)
    red[:40, :] = 0  # nodata band at the top
    nir[500:560, 300:420] = 0  # nodata hole
    red[700:710, 100:110] = nir[700:710, 100:110] = 0  # both nodata
    root = running.data_root.root
    write_geotiff(root / "s2" / "red.tif", red, nodata=0)
    write_geotiff(root / "s2" / "nir.tif", nir, nodata=0)
    return red, nir


def test_ndvi_equals_numpy_masked_reference(server, session_name, raster_stub, red_nir):
    running, channel = server
    red, nir = red_nir
    operation = raster_stub.BandCalc(
        _request(
            session_name,
            '("nir" - "red") / ("nir" + "red")',
            {"nir": "s2/nir.tif", "red": "s2/red.tif"},
            "out/ndvi.tif",
        )
    )
    assert operation.name.startswith("operations/")
    _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    # Reference: numpy masked arrays in float64, cast to float32, -32768 where masked.
    r = np.ma.masked_equal(red.astype(np.float64), 0)
    n = np.ma.masked_equal(nir.astype(np.float64), 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (n - r) / (n + r)
    ndvi = np.ma.masked_invalid(ndvi)
    expected = ndvi.astype(np.float32).filled(-32768)
    with rasterio.open(running.data_root.root / "out" / "ndvi.tif") as ds:
        got = ds.read(1)
        assert ds.crs.to_string() == CRS
        assert ds.transform == TRANSFORM
        assert ds.nodata == -32768
        assert ds.dtypes[0] == "float32"
    np.testing.assert_array_equal(got, expected)
    assert response.output_path == "out/ndvi.tif"
    assert response.statistics.valid_pixel_count == int((~ndvi.mask).sum())
    assert response.statistics.minimum == pytest.approx(float(expected[~ndvi.mask].min()))


def test_watch_operation_streams_tile_progress(server, session_name, raster_stub, red_nir):
    _, channel = server
    operation = raster_stub.BandCalc(
        _request(session_name, "nir * 2", {"nir": "s2/nir.tif"}, "out/progress.tif")
    )
    updates = [operation_metadata(op) for op in watch_operation(channel, operation)]
    done_counts = [m.tiles_done for m in updates]
    assert done_counts == sorted(done_counts)
    assert updates[-1].stage == operation_pb2.OperationMetadata.STAGE_DONE
    assert updates[-1].tiles_total > 1
    assert updates[-1].tiles_done == updates[-1].tiles_total
    assert any(0 < m.tiles_done < m.tiles_total for m in updates)


def test_a_one_tile_job_is_answered_done_and_a_tiled_one_at_once(
    server, session_name, raster_stub, red_nir, monkeypatch
):
    """The start of a one-tile job waits for it to end (up to DONE_WITHIN_SECONDS, long
    here so that the test does not depend on the machine's speed) and answers it done, its
    response in it; a job of several tiles is answered at once, its progress to follow."""
    running, channel = server
    monkeypatch.setattr(operation_servicer, "DONE_WITHIN_SECONDS", 60.0)
    small = np.arange(48 * 40, dtype=np.uint16).reshape(48, 40)
    write_geotiff(running.data_root.root / "small" / "a.tif", small)
    operation = raster_stub.BandCalc(
        _request(session_name, "a * 2", {"a": "small/a.tif"}, "out/small.tif")
    )
    assert operation.done and not operation.HasField("error")
    response = raster_pb2.BandCalcResponse()
    assert operation.response.Unpack(response)
    assert response.statistics.valid_pixel_count == small.size
    with rasterio.open(running.data_root.root / "out" / "small.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), (small * 2.0).astype(np.float32))

    tiled = raster_stub.BandCalc(
        _request(session_name, "nir * 2", {"nir": "s2/nir.tif"}, "out/tiled.tif")
    )
    assert not tiled.done
    updates = [operation_metadata(op) for op in watch_operation(channel, tiled)]
    assert updates[-1].stage == operation_pb2.OperationMetadata.STAGE_DONE
    assert updates[-1].tiles_total > 1


def test_where_and_nodata_over_three_inputs_equals_reference(server, session_name, raster_stub):
    running, channel = server
    rng = np.random.default_rng(3)
    shape = (300, 520)
    a = rng.integers(-200, 400, shape).astype(np.int16)
    b = rng.normal(0, 10, shape).astype(np.float32)
    c = rng.integers(0, 255, shape).astype(np.uint8)
    a[rng.random(shape) < 0.05] = -9999
    b[rng.random(shape) < 0.05] = np.nan
    root = running.data_root.root
    write_geotiff(root / "m" / "a.tif", a, nodata=-9999)
    write_geotiff(root / "m" / "b.tif", b, nodata=float("nan"))
    write_geotiff(root / "m" / "c.tif", c)
    expression = (
        'where(("a" > 100) & ("b" < 5), "b" * 2 + sqrt(abs("a")), "c" - nodata("a") / 1000)'
    )
    operation = raster_stub.BandCalc(
        _request(
            session_name,
            expression,
            {"a": "m/a.tif", "b": "m/b.tif", "c": "m/c.tif"},
            "m/out.tif",
            output_nodata=-1e20,
            output_data_type=raster_pb2.DATA_TYPE_FLOAT32,
            calc_data_type=raster_pb2.DATA_TYPE_FLOAT64,  # the reference computes in float64
        )
    )
    final = watch_operation(channel, operation)[-1]
    assert not final.HasField("error"), final.error
    mask = (a == -9999) | np.isnan(b)
    af, bf, cf = (x.astype(np.float64) for x in (a, b, c))
    with np.errstate(invalid="ignore"):
        value = np.where((af > 100) & (bf < 5), bf * 2 + np.sqrt(np.abs(af)), cf - (-9999) / 1000)
    expected = np.ma.masked_array(value, mask).astype(np.float32).filled(np.float32(-1e20))
    with rasterio.open(root / "m" / "out.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), expected)


def _start_long_job(raster_stub, session_name, root, output):
    """A band calc of many small tiles: long enough to act on while it runs."""
    big = root / "big.tif"
    if not big.exists():
        data = np.arange(4096 * 4096, dtype=np.float32).reshape(4096, 4096)
        write_geotiff(big, data, block=256)
    expression = " + ".join(f"sin(x + {k})" for k in range(40))
    return raster_stub.BandCalc(_request(session_name, expression, {"x": "big.tif"}, output))


def test_cancel_leaves_no_output(server, session_name, raster_stub):
    running, channel = server
    root = running.data_root.root
    operation = _start_long_job(raster_stub, session_name, root, "cancelled/out.tif")
    operations = lro_grpc.OperationsStub(channel)
    for update in operation_updates(channel, operation):
        if operation_metadata(update).tiles_done >= 1:
            operations.CancelOperation(lro.CancelOperationRequest(name=operation.name))
            break
    final = operations.WaitOperation(lro.WaitOperationRequest(name=operation.name))
    assert final.done
    assert final.error.code == code_pb2.CANCELLED
    assert operation_metadata(final).cancel_requested
    assert not (root / "cancelled" / "out.tif").exists()
    assert list((root / "cancelled").iterdir()) == []


def test_killed_worker_fails_operation_and_next_one_succeeds(
    server, session_name, raster_stub, red_nir
):
    running, channel = server
    root = running.data_root.root
    operation = _start_long_job(raster_stub, session_name, root, "killed.tif")
    for update in operation_updates(channel, operation):
        if operation_metadata(update).tiles_done >= 1:
            break
    executor = running.registry.get(session_name).executor
    os.kill(executor.pids()[0], signal.SIGKILL)
    final = lro_grpc.OperationsStub(channel).WaitOperation(
        lro.WaitOperationRequest(name=operation.name)
    )
    assert final.error.code == code_pb2.UNAVAILABLE
    assert "worker process died" in final.error.message
    assert not (root / "killed.tif").exists()
    leftovers = [p for p in root.iterdir() if p.name.startswith(".killed.tif")]
    assert leftovers == []
    again = raster_stub.BandCalc(
        _request(session_name, "nir + 1", {"nir": "s2/nir.tif"}, "after_kill.tif")
    )
    assert not watch_operation(channel, again)[-1].HasField("error")
    assert (root / "after_kill.tif").exists()


def test_operations_are_listed_by_session_and_deleted_when_done(server, session_name):
    _, channel = server
    stub = lro_grpc.OperationsStub(channel)
    listed = stub.ListOperations(
        lro.ListOperationsRequest(name="operations", filter=f'session = "{session_name}"')
    )
    assert listed.operations
    done = next(op for op in listed.operations if op.done)
    stub.DeleteOperation(lro.DeleteOperationRequest(name=done.name))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetOperation(lro.GetOperationRequest(name=done.name))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_wait_operation_returns_at_its_timeout(server, session_name, raster_stub):
    running, channel = server
    operation = _start_long_job(raster_stub, session_name, running.data_root.root, "wait.tif")
    stub = lro_grpc.OperationsStub(channel)
    waited = stub.WaitOperation(lro.WaitOperationRequest(name=operation.name, timeout={"nanos": 1}))
    assert not waited.done
    stub.CancelOperation(lro.CancelOperationRequest(name=operation.name))
    assert stub.WaitOperation(lro.WaitOperationRequest(name=operation.name), timeout=120).done
