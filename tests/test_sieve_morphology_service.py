"""Sieve, Dilate and Erode through a real gRPC channel: results, progress, outputs,
cancellation and bad parameters."""

from __future__ import annotations

import errno
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
import rasterio.features
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2
from rsgrpc_kernels import morphology

from rsgrpc.engine import kept_tiles
from rsgrpc.server import raster_servicer
from rsgrpc.v1 import raster_pb2, session_pb2, session_pb2_grpc
from tests.conftest import (
    CRS,
    TRANSFORM,
    operation_metadata,
    operation_updates,
    watch_operation,
    watch_to_response,
    write_geotiff,
)

NODATA = 255


def _bands(*paths: str) -> list[raster_pb2.RasterBand]:
    return [raster_pb2.RasterBand(path=p) for p in paths]


@pytest.fixture(scope="module")
def classes(server):
    running, _ = server
    rng = np.random.default_rng(11)
    coarse = rng.integers(1, 5, (30, 25), dtype=np.uint8)
    array = np.kron(coarse, np.ones((40, 40), np.uint8))
    speckle = rng.random(array.shape) < 0.1
    array[speckle] = rng.integers(1, 7, int(speckle.sum()), dtype=np.uint8)
    array[100:180, 200:700] = NODATA
    root = running.data_root.root
    write_geotiff(root / "lc" / "a.tif", array, nodata=NODATA)
    write_geotiff(root / "lc" / "b.tif", array[::-1].copy(), nodata=NODATA)
    write_geotiff(root / "lc" / "float.tif", array.astype(np.float32), nodata=NODATA)
    return array


def _read(root, path):
    with rasterio.open(root / path) as ds:
        return ds.read(1), ds.profile


def test_sieve_equals_gdal_with_progress_and_counts(server, session_name, raster_stub, classes):
    running, channel = server
    operation = raster_stub.Sieve(
        raster_pb2.SieveRequest(
            session=session_name,
            inputs=_bands("lc/a.tif"),
            size=9,
            connectivity=raster_pb2.CONNECTIVITY_8,
            output=raster_pb2.ToolOutput(path="sieved/a8.tif"),
        )
    )
    updates, response = watch_to_response(channel, operation, raster_pb2.SieveResponse)
    expected = rasterio.features.sieve(classes, 9, connectivity=8, mask=classes != NODATA)
    got, profile = _read(running.data_root.root, "sieved/a8.tif")
    np.testing.assert_array_equal(got, expected)
    assert (profile["nodata"], profile["dtype"], profile["crs"]) == (NODATA, "uint8", CRS)
    assert profile["transform"] == TRANSFORM
    [output] = response.outputs
    assert output.output_path == "sieved/a8.tif"
    assert (output.input.path, output.input.band) == ("lc/a.tif", 1)
    assert output.pixels_changed == np.count_nonzero(got != classes) > 0
    assert 0 < output.regions_changed <= output.pixels_changed
    done = [operation_metadata(u).tiles_done for u in updates]
    assert done == sorted(done) and done[-1] == operation_metadata(updates[-1]).tiles_total > 2


def test_one_output_per_input_in_a_directory_with_prefix(
    server, session_name, raster_stub, classes
):
    running, channel = server
    operation = raster_stub.Dilate(
        raster_pb2.DilateRequest(
            session=session_name,
            inputs=_bands("lc/a.tif", "lc/b.tif"),
            parameters=raster_pb2.MorphologyParameters(value_list=[2, 4], size=2),
            output=raster_pb2.ToolOutput(path="dilated", prefix="dil_"),
        )
    )
    _, response = watch_to_response(channel, operation, raster_pb2.DilateResponse)
    assert [o.output_path for o in response.outputs] == ["dilated/dil_a.tif", "dilated/dil_b.tif"]
    root = running.data_root.root
    for source, output in ((classes, response.outputs[0]), (classes[::-1], response.outputs[1])):
        expected = morphology.dilate(
            np.ascontiguousarray(source), value_list=[2, 4], size=2, nodata=NODATA
        )
        got, _ = _read(root, output.output_path)
        np.testing.assert_array_equal(got, expected)
        assert output.pixels_changed == np.count_nonzero(got != source)


@pytest.mark.parametrize(
    ("rpc", "request_type", "parameters", "reference"),
    [
        (
            "Erode",
            raster_pb2.ErodeRequest,
            raster_pb2.MorphologyParameters(value_list=[1, 3], size=2, circular_structure=True),
            lambda a: morphology.erode(a, value_list=[1, 3], size=2, circular=True, nodata=NODATA),
        ),
        (
            "Dilate",
            raster_pb2.DilateRequest,
            raster_pb2.MorphologyParameters(filter=raster_pb2.MORPHOLOGY_FILTER_GREY, size=3),
            lambda a: morphology.grey_filter(a, operation="dilation", size=3, nodata=NODATA),
        ),
        (
            "Dilate",
            raster_pb2.DilateRequest,
            raster_pb2.MorphologyParameters(
                filter=raster_pb2.MORPHOLOGY_FILTER_GREY_CLOSING, size=2
            ),
            lambda a: morphology.grey_filter(a, operation="closing", size=2, nodata=NODATA),
        ),
        (
            "Erode",
            raster_pb2.ErodeRequest,
            raster_pb2.MorphologyParameters(
                filter=raster_pb2.MORPHOLOGY_FILTER_GREY_OPENING, size=2, circular_structure=True
            ),
            lambda a: morphology.grey_filter(
                a, operation="opening", size=2, circular=True, nodata=NODATA
            ),
        ),
    ],
    ids=["erode-value-list", "grey-dilation", "grey-closing", "grey-opening"],
)
def test_each_filter_equals_the_kernel_on_the_whole_raster(
    server, session_name, raster_stub, classes, rpc, request_type, parameters, reference
):
    running, channel = server
    output = f"filters/{rpc}-{parameters.filter}.tif"
    operation = getattr(raster_stub, rpc)(
        request_type(
            session=session_name,
            inputs=_bands("lc/a.tif"),
            parameters=parameters,
            output=raster_pb2.ToolOutput(path=output, overwrite=True),
        )
    )
    watch_to_response(
        channel,
        operation,
        raster_pb2.DilateResponse if rpc == "Dilate" else raster_pb2.ErodeResponse,
    )
    got, _ = _read(running.data_root.root, output)
    np.testing.assert_array_equal(got, reference(classes))


CANCELLED_RUNS = {
    # Erosion of size 60 is slow on every tile; the sieve is cancelled between its passes'
    # tiles, while settled tiles wait in the session's temporary directory.
    "Erode": lambda session: raster_pb2.ErodeRequest(
        session=session,
        inputs=_bands("big_classes.tif"),
        parameters=raster_pb2.MorphologyParameters(value_list=[0, 1], size=60),
        output=raster_pb2.ToolOutput(path="cancelled/out.tif"),
    ),
    "Sieve": lambda session: raster_pb2.SieveRequest(
        session=session,
        inputs=_bands("big_classes.tif"),
        size=10,
        output=raster_pb2.ToolOutput(path="cancelled/out.tif"),
    ),
}


@pytest.mark.parametrize("method", CANCELLED_RUNS)
def test_cancel_leaves_no_output_and_no_temporary_files(server, session_name, raster_stub, method):
    running, channel = server
    root = running.data_root.root
    if not (root / "big_classes.tif").exists():
        rng = np.random.default_rng(5)
        write_geotiff(root / "big_classes.tif", rng.integers(0, 3, (4096, 4096), dtype=np.uint8))
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    temporary = Path(
        sessions.GetSession(session_pb2.GetSessionRequest(name=session_name)).temporary_directory
    )
    before = set(temporary.iterdir())
    operation = getattr(raster_stub, method)(CANCELLED_RUNS[method](session_name))
    operations = lro_grpc.OperationsStub(channel)
    for update in operation_updates(channel, operation):
        if operation_metadata(update).tiles_done >= 1:
            operations.CancelOperation(lro.CancelOperationRequest(name=operation.name))
            break
    final = operations.WaitOperation(lro.WaitOperationRequest(name=operation.name, timeout=None))
    assert final.done and final.error.code == code_pb2.CANCELLED
    assert list(root.glob("cancelled/*")) == []
    assert set(temporary.iterdir()) == before


def test_a_full_temporary_directory_is_resource_exhausted_and_loses_nothing(
    server, session_name, raster_stub, classes, monkeypatch
):
    running, channel = server
    root = running.data_root.root
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    temporary = Path(
        sessions.GetSession(session_pb2.GetSessionRequest(name=session_name)).temporary_directory
    )
    before = set(temporary.iterdir())

    def disk_full(file, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(temporary / "x.kept"))

    # The server runs in this process: its sieve keeps settled tiles in its temporary folder.
    monkeypatch.setattr(kept_tiles, "_write_array", disk_full)
    request = _sieve(session_name, size=9, output=raster_pb2.ToolOutput(path="full/out.tif"))
    final = watch_operation(channel, raster_stub.Sieve(request))[-1]
    assert final.error.code == code_pb2.RESOURCE_EXHAUSTED
    assert "temporary directory is full" in final.error.message
    assert str(temporary) not in final.error.message
    assert list(root.glob("full/*")) == []
    assert set(temporary.iterdir()) == before
    monkeypatch.undo()
    final = watch_operation(channel, raster_stub.Sieve(request))[-1]
    assert not final.HasField("error") and (root / "full" / "out.tif").is_file()


def test_an_unexpected_job_error_is_internal_and_names_no_server_path(
    server, session_name, raster_stub, classes, monkeypatch
):
    running, channel = server
    secret = str(running.data_root.root / "private" / "state.bin")

    def broken(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error", secret)

    # The server runs in this process: its sieve job fails as a bug would.
    monkeypatch.setattr(raster_servicer, "run_sieve", broken)
    request = _sieve(session_name, size=9, output=raster_pb2.ToolOutput(path="bug/out.tif"))
    final = watch_operation(channel, raster_stub.Sieve(request))[-1]
    assert final.error.code == code_pb2.INTERNAL
    assert final.error.message.startswith("internal error, request id ")
    assert final.error.message.endswith("; see the server log")
    log = session_pb2_grpc.SessionServiceStub(channel).ListLogEntries(
        session_pb2.ListLogEntriesRequest(parent=session_name)
    )
    assert all(secret not in entry.message for entry in log.log_entries)
    assert list(running.data_root.root.glob("bug/*")) == []
    monkeypatch.undo()
    assert not watch_operation(channel, raster_stub.Sieve(request))[-1].HasField("error")


def _sieve(session, **fields):
    fields.setdefault("inputs", _bands("lc/a.tif"))
    fields.setdefault("size", 4)
    fields.setdefault("output", raster_pb2.ToolOutput(path="bad/out.tif"))
    return raster_pb2.SieveRequest(session=session, **fields)


def _dilate(session, **parameters):
    parameters.setdefault("size", 2)
    return raster_pb2.DilateRequest(
        session=session,
        inputs=_bands("lc/a.tif"),
        parameters=raster_pb2.MorphologyParameters(**parameters),
        output=raster_pb2.ToolOutput(path="bad/out.tif"),
    )


BAD_REQUESTS = {
    "sieve size 0": ("Sieve", lambda s: _sieve(s, size=0), "size must be at least 1"),
    "sieve size negative": ("Sieve", lambda s: _sieve(s, size=-3), "size must be at least 1"),
    "sieve of a float raster": (
        "Sieve",
        lambda s: _sieve(s, inputs=_bands("lc/float.tif")),
        "is float32; sieve takes integer classes",
    ),
    "unknown connectivity": ("Sieve", lambda s: _sieve(s, connectivity=7), "unknown connectivity"),
    "no inputs": ("Sieve", lambda s: _sieve(s, inputs=[]), "at least one input band"),
    "file output for two inputs": (
        "Sieve",
        lambda s: _sieve(s, inputs=_bands("lc/a.tif", "lc/b.tif")),
        "names a file, but there are 2 inputs",
    ),
    "two inputs, one output name": (
        "Sieve",
        lambda s: _sieve(
            s, inputs=_bands("lc/a.tif", "lc/a.tif"), output=raster_pb2.ToolOutput(path="bad")
        ),
        "would both be written",
    ),
    "bad prefix": (
        "Sieve",
        lambda s: _sieve(s, output=raster_pb2.ToolOutput(path="bad", prefix="../x")),
        "prefix '../x' is not valid",
    ),
    "dilation size 0": ("Dilate", lambda s: _dilate(s, size=0, value_list=[1]), "size must be"),
    "dilation size negative": (
        "Dilate",
        lambda s: _dilate(s, size=-1, value_list=[1]),
        "size must be",
    ),
    "dilation size too large": (
        "Dilate",
        lambda s: _dilate(s, size=513, value_list=[1]),
        "size must be from 1 to 512",
    ),
    "empty value list": ("Dilate", lambda s: _dilate(s), "value_list is empty"),
    "NaN in value list": ("Dilate", lambda s: _dilate(s, value_list=[float("nan")]), "NaN"),
    "value list for a grey filter": (
        "Dilate",
        lambda s: _dilate(s, filter=raster_pb2.MORPHOLOGY_FILTER_GREY, value_list=[1]),
        "uses no value_list",
    ),
    "opening asked of Dilate": (
        "Dilate",
        lambda s: _dilate(s, filter=raster_pb2.MORPHOLOGY_FILTER_GREY_OPENING),
        "dilation has no opening filter",
    ),
    "unknown filter": ("Dilate", lambda s: _dilate(s, filter=9, value_list=[1]), "unknown filter"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_parameters_are_invalid_argument(server, session_name, raster_stub, classes, case):
    running, channel = server
    rpc, make, fragment = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        getattr(raster_stub, rpc)(make(session_name))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


def test_paths_outside_the_data_root_are_permission_denied(raster_stub, session_name, classes):
    for request in (
        _sieve(session_name, inputs=_bands("../a.tif")),
        _sieve(session_name, output=raster_pb2.ToolOutput(path="/tmp/out.tif")),
        _sieve(session_name, output=raster_pb2.ToolOutput(path="../outside")),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.Sieve(request)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_existing_output_is_already_exists(server, session_name, raster_stub, classes):
    running, _ = server
    (running.data_root.root / "exists.tif").write_bytes(b"keep")
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.Erode(
            raster_pb2.ErodeRequest(
                session=session_name,
                inputs=_bands("lc/a.tif"),
                parameters=raster_pb2.MorphologyParameters(value_list=[1], size=1),
                output=raster_pb2.ToolOutput(path="exists.tif"),
            )
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (running.data_root.root / "exists.tif").read_bytes() == b"keep"
