"""RasterReport (Remotior's raster_report) through a real gRPC channel, the Python client
and the command line: tables against a NumPy reference (np.unique) for several types,
nodata and odd sizes, Remotior's CSV text, tiled equals untiled, cancellation, and
requests refused at the door."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2

from rsgrpc.client import Session
from rsgrpc.engine.band_tool import BandInput
from rsgrpc.engine.errors import CancelledError
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.table_job import TableRequest, prepare_table_job, run_table_job
from rsgrpc.engine.tiles import TilePlan
from rsgrpc.tools.report import RASTER_REPORT, ReportParameters
from rsgrpc.v1 import bandset_pb2, raster_pb2
from tests.conftest import (
    operation_metadata,
    operation_response,
    watch_operation,
    write_geotiff,
)

PIXEL_AREA = 10.0 * 10.0  # conftest's TRANSFORM: 10 m pixels


def reference(array: np.ndarray, *nodata: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values that are neither NaN nor any `nodata`, and their counts."""
    valid = array[~np.isnan(array.astype(np.float64))]
    for value in nodata:
        if value is not None:
            valid = valid[valid != value]
    return np.unique(valid, return_counts=True)


def _request(session: str, path: str, output: str, *, nodata_value=None, extent=None, **kw):
    parameters = raster_pb2.RasterReportParameters()
    if nodata_value is not None:
        parameters.nodata_value = nodata_value
    grid = raster_pb2.InputGrid()
    if extent is not None:
        grid.extent.CopyFrom(bandset_pb2.Extent(**extent))
    inputs = kw.pop("inputs", [raster_pb2.RasterBand(path=path)])
    return raster_pb2.RasterReportRequest(
        session=session,
        inputs=inputs,
        parameters=parameters,
        output=raster_pb2.TableOutput(path=output, overwrite=kw.pop("overwrite", True)),
        input_grid=grid,
    )


def _run(server, stub, request, *, tiles: int = 1) -> raster_pb2.RasterReportResponse:
    """The operation's response, once it has run at least `tiles` tiles."""
    _, channel = server
    final = watch_operation(channel, stub.RasterReport(request))[-1]
    assert operation_metadata(final).tiles_done >= tiles
    return operation_response(final, raster_pb2.RasterReportResponse)


def _assert_rows(response, values: np.ndarray, counts: np.ndarray, area: float | None) -> None:
    got_values = np.array([r.value for r in response.rows])
    got_counts = np.array([r.pixel_count for r in response.rows], dtype=np.int64)
    np.testing.assert_array_equal(got_values, values.astype(np.float64))
    np.testing.assert_array_equal(got_counts, counts)
    total = counts.sum()
    np.testing.assert_array_equal([r.percentage for r in response.rows], 100 * counts / total)
    areas = [r.area for r in response.rows]
    if area is None:
        assert np.isnan(areas).all()
    else:
        np.testing.assert_array_equal(areas, counts * area)


def _rasters() -> dict[str, tuple[np.ndarray, float | None]]:
    """Odd-sized bands of each type, each over several 512-pixel tiles, with nodata pixels
    (and NaN in floats)."""
    rng = np.random.default_rng(2024)
    u8 = rng.integers(0, 12, (1031, 777), dtype=np.uint8)
    u8[rng.random(u8.shape) < 0.15] = 255
    i16 = rng.integers(-300, 300, (777, 1031), dtype=np.int16)
    i16[100:140, :] = -9999
    i32 = rng.choice(np.array([-(10**9), -7, 0, 5, 10**9, 2**31 - 1], np.int32), (613, 1029))
    f32 = (rng.integers(-20, 20, (1029, 613)) / 4).astype(np.float32)
    f32[rng.random(f32.shape) < 0.1] = np.nan
    f32[0, :10] = -0.0
    float_nodata = float(np.finfo(np.float32).min)
    f32[5, 5:30] = float_nodata
    return {
        "uint8": (u8, 255),
        "int16": (i16, -9999),
        "int32": (i32, None),
        "float32": (f32, float_nodata),
    }


@pytest.fixture(scope="module")
def rasters(server):
    running, _ = server
    root = running.data_root.root
    made = _rasters()
    for name, (array, nodata) in made.items():
        write_geotiff(root / "rr" / f"{name}.tif", array, nodata=nodata, block=64)
    tiny = np.array([[1, 1, 2], [2, 2, 255], [3, 1, 1]], np.uint8)
    write_geotiff(root / "rr" / "tiny.tif", tiny, nodata=255)
    write_geotiff(root / "rr" / "tiny-4326.tif", tiny, nodata=255, crs="EPSG:4326")
    return made


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float32"])
def test_each_type_reports_the_numpy_reference(server, session_name, raster_stub, rasters, dtype):
    running, _ = server
    array, nodata = rasters[dtype]
    request = _request(session_name, f"rr/{dtype}.tif", f"rr/{dtype}")
    response = _run(server, raster_stub, request, tiles=2)
    values, counts = reference(array, nodata)
    _assert_rows(response, values, counts, PIXEL_AREA)
    assert response.output_path == f"rr/{dtype}.csv"
    assert response.area_unit == "metre"
    lines = (running.data_root.root / "rr" / f"{dtype}.csv").read_text().splitlines()
    assert lines[0] == "RasterValue,PixelSum,Percentage %,Area [metre^2]"
    assert len(lines) == 2 + len(values) and lines[-1] == ""
    written = np.array([[float(x) for x in line.split(",")] for line in lines[1:-1]])
    np.testing.assert_array_equal(written[:, 0], np.round(values.astype(np.float64), 2))
    np.testing.assert_array_equal(written[:, 1], counts)
    np.testing.assert_allclose(written[:, 2], 100 * counts / counts.sum(), atol=0.005)
    np.testing.assert_allclose(written[:, 3], counts * PIXEL_AREA, atol=0.005)


def test_float_zero_and_negative_zero_are_one_value(server, session_name, raster_stub, rasters):
    response = _run(server, raster_stub, _request(session_name, "rr/float32.tif", "rr/zero"))
    zeros = [r for r in response.rows if r.value == 0]
    array, _ = rasters["float32"]
    assert len(zeros) == 1 and zeros[0].pixel_count == np.count_nonzero(array == 0)


def test_the_csv_is_remotiors_text(server, session_name, raster_stub, rasters):
    running, _ = server
    response = _run(server, raster_stub, _request(session_name, "rr/tiny.tif", "rr/tiny.csv"))
    assert [(r.value, r.pixel_count) for r in response.rows] == [(1, 4), (2, 3), (3, 1)]
    assert (running.data_root.root / "rr" / "tiny.csv").read_text() == (
        "RasterValue,PixelSum,Percentage %,Area [metre^2]\n"
        "1,4,50,400\n"
        "2,3,37.50,300\n"
        "3,1,12.50,100\n"
        "\n"
    )


def test_a_geographic_crs_has_no_area(server, session_name, raster_stub, rasters):
    running, _ = server
    request = _request(session_name, "rr/tiny-4326.tif", "rr/tiny-4326.csv")
    response = _run(server, raster_stub, request)
    assert response.area_unit == ""
    assert all(np.isnan(r.area) for r in response.rows)
    assert (running.data_root.root / "rr" / "tiny-4326.csv").read_text() == (
        "RasterValue,PixelSum,Percentage %,Area not available\n"
        "1,4,50,nan\n"
        "2,3,37.50,nan\n"
        "3,1,12.50,nan\n"
        "\n"
    )


def test_nodata_value_is_nodata_beside_the_bands(server, session_name, raster_stub, rasters):
    array, nodata = rasters["int16"]
    request = _request(session_name, "rr/int16.tif", "rr/int16-no7.csv", nodata_value=7)
    response = _run(server, raster_stub, request)
    values, counts = reference(array, nodata, 7)
    assert 7 in np.unique(array) and 7 not in values
    _assert_rows(response, values, counts, PIXEL_AREA)


def test_extent_counts_only_the_pixels_within(server, session_name, raster_stub, rasters):
    array, nodata = rasters["uint8"]
    # conftest's TRANSFORM: origin (500000, 4600000), 10 m pixels; rows 20..119, cols 30..79.
    extent = {"left": 500300.0, "top": 4599800.0, "right": 500800.0, "bottom": 4598800.0}
    request = _request(session_name, "rr/uint8.tif", "rr/uint8-extent.csv", extent=extent)
    response = _run(server, raster_stub, request)
    values, counts = reference(array[20:120, 30:80], nodata)
    _assert_rows(response, values, counts, PIXEL_AREA)


def test_an_extension_other_than_csv_gets_csv(server, session_name, raster_stub, rasters):
    running, _ = server
    response = _run(server, raster_stub, _request(session_name, "rr/tiny.tif", "rr/tiny.txt"))
    assert response.output_path == "rr/tiny.txt.csv"
    assert (running.data_root.root / "rr" / "tiny.txt.csv").is_file()
    assert not (running.data_root.root / "rr" / "tiny.txt").exists()


# --- tiling and cancellation, on the live server's session ---------------------------------


def _table_job(server, session_name, root: DataRoot, path: str, output: str, edge: int | None):
    running, _ = server
    session = running.registry.get(session_name)
    request = TableRequest(
        RASTER_REPORT, ReportParameters(None), (BandInput(path),), output, overwrite=True
    )
    job = prepare_table_job(request, root, session)
    if edge is not None:
        plan = job.plan
        job = dataclasses.replace(
            job, plan=TilePlan(plan.shape, edge, edge, plan.in_flight, plan.peak_bytes)
        )
    return session, job


@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32"])
def test_many_tiles_equal_one_tile(server, session_name, tmp_path, dtype):
    array, nodata = _rasters()[dtype]
    write_geotiff(tmp_path / "band.tif", array, nodata=nodata, block=64)
    root = DataRoot.at(tmp_path)
    results = {}
    for edge in (64, 4096):
        session, job = _table_job(server, session_name, root, "band.tif", f"{edge}.csv", edge)
        operation = Operation(session.name, "RasterReport", owner="anonymous")
        result = run_table_job(job, session, operation)
        assert operation.progress.tiles_total == job.plan.tile_count
        results[edge] = (result.table, (tmp_path / f"{edge}.csv").read_text())
    assert job.plan.tile_count == 1
    assert _table_job(server, session_name, root, "band.tif", "x.csv", 64)[1].plan.tile_count > 16
    tiled, whole = results[64][0], results[4096][0]
    np.testing.assert_array_equal(tiled.values, whole.values)
    np.testing.assert_array_equal(tiled.counts, whole.counts)
    assert results[64][1] == results[4096][1]
    values, counts = reference(array, nodata)
    np.testing.assert_array_equal(whole.values, values)
    np.testing.assert_array_equal(whole.counts, counts)


def test_the_planned_job_of_a_large_band_has_several_tiles(server, session_name, tmp_path):
    array = np.random.default_rng(3).integers(0, 50, (2000, 1800), dtype=np.uint8)
    write_geotiff(tmp_path / "large.tif", array, block=256)
    root = DataRoot.at(tmp_path)
    session, job = _table_job(server, session_name, root, "large.tif", "large.csv", None)
    assert job.plan.tile_count > 1
    result = run_table_job(job, session, Operation(session.name, "RasterReport", owner="a"))
    values, counts = reference(array)
    np.testing.assert_array_equal(result.table.values, values)
    np.testing.assert_array_equal(result.table.counts, counts)


def test_cancel_leaves_no_csv_and_no_partial_file(server, session_name, tmp_path):
    array = np.random.default_rng(9).integers(0, 100, (2048, 2048), dtype=np.uint8)
    write_geotiff(tmp_path / "in" / "big.tif", array, block=64)
    root = DataRoot.at(tmp_path)
    session, job = _table_job(server, session_name, root, "in/big.tif", "out/report.csv", 64)
    operation = Operation(session.name, "RasterReport", owner="anonymous")

    def cancel_after_the_first_tiles() -> None:
        while operation.progress.tiles_done < 2:
            threading.Event().wait(0.001)
        operation.cancel_event.set()

    canceller = threading.Thread(target=cancel_after_the_first_tiles, daemon=True)
    canceller.start()
    with pytest.raises(CancelledError):
        run_table_job(job, session, operation)
    canceller.join(10)
    assert operation.progress.tiles_done < job.plan.tile_count
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cancel_through_the_operations_service_leaves_no_csv(
    server, session_name, raster_stub, rasters
):
    running, channel = server
    big = running.data_root.root / "rr" / "big.tif"
    rng = np.random.default_rng(11)
    write_geotiff(big, rng.integers(0, 200_000, (4096, 4096), dtype=np.int32), block=512)
    operation = raster_stub.RasterReport(_request(session_name, "rr/big.tif", "rr/cancel/r.csv"))
    operations = lro_grpc.OperationsStub(channel)
    operations.CancelOperation(lro.CancelOperationRequest(name=operation.name))
    final = operations.WaitOperation(lro.WaitOperationRequest(name=operation.name, timeout=None))
    assert final.done and final.error.code == code_pb2.CANCELLED
    assert not (running.data_root.root / "rr" / "cancel").exists() or not any(
        (running.data_root.root / "rr" / "cancel").iterdir()
    )


# --- refusals ---------------------------------------------------------------------------


def test_bad_requests_are_invalid_argument(server, session_name, raster_stub, rasters):
    running, _ = server
    root = running.data_root.root
    complex_band = np.zeros((5, 5), np.complex64)
    write_geotiff(root / "rr" / "complex.tif", complex_band)
    two = [raster_pb2.RasterBand(path="rr/tiny.tif"), raster_pb2.RasterBand(path="rr/tiny.tif")]
    cases = {
        "two inputs": (_request(session_name, "", "bad/a.csv", inputs=two), "takes 1 input"),
        "no input": (_request(session_name, "", "bad/a.csv", inputs=[]), "got 0"),
        "no output": (_request(session_name, "rr/tiny.tif", ""), "output path is empty"),
        "complex band": (
            _request(session_name, "rr/complex.tif", "bad/a.csv"),
            "integer or float bands only",
        ),
        "band 2 of 1": (
            _request(
                session_name,
                "",
                "bad/a.csv",
                inputs=[raster_pb2.RasterBand(path="rr/tiny.tif", band=2)],
            ),
            "band 2 does not exist",
        ),
        "extent outside": (
            _request(
                session_name,
                "rr/tiny.tif",
                "bad/a.csv",
                extent={"left": 0.0, "top": 10.0, "right": 10.0, "bottom": 0.0},
            ),
            "extent",
        ),
    }
    for case, (request, fragment) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.RasterReport(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert fragment in caught.value.details(), (case, caught.value.details())
        assert str(root) not in caught.value.details()
    assert not (root / "bad").exists()


def test_an_existing_csv_without_overwrite_is_already_exists(
    server, session_name, raster_stub, rasters
):
    running, _ = server
    (running.data_root.root / "rr" / "kept.csv").write_text("kept")
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.RasterReport(
            _request(session_name, "rr/tiny.tif", "rr/kept.csv", overwrite=False)
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert (running.data_root.root / "rr" / "kept.csv").read_text() == "kept"


def test_a_missing_input_is_not_found_and_outside_is_denied(server, session_name, raster_stub):
    for path, code in (
        ("rr/missing.tif", grpc.StatusCode.NOT_FOUND),
        ("../outside.tif", grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.RasterReport(_request(session_name, path, "bad/a.csv"))
        assert caught.value.code() == code, path


def test_too_many_distinct_values_fail_and_write_nothing(server, session_name, raster_stub):
    running, channel = server
    noise = np.random.default_rng(1).random((700, 700), dtype=np.float32)
    write_geotiff(running.data_root.root / "rr" / "noise.tif", noise, block=128)
    operation = raster_stub.RasterReport(_request(session_name, "rr/noise.tif", "rr/noise.csv"))
    final = watch_operation(channel, operation)[-1]
    assert final.error.code == code_pb2.RESOURCE_EXHAUSTED
    assert "more than 262,144 rows" in final.error.message
    assert not (running.data_root.root / "rr" / "noise.csv").exists()


# --- the Python client and the command line ----------------------------------------------


def test_every_table_declaration_has_its_rpc_signature_and_flags():
    from rsgrpc.client.signatures import SIGNATURES
    from rsgrpc.tools import TABLE_TOOLS

    service = raster_pb2.DESCRIPTOR.services_by_name["RasterService"]
    for tool in TABLE_TOOLS:
        method = service.methods_by_name[tool.rpc]
        assert method.input_type is tool.request_type.DESCRIPTOR
        spec = SIGNATURES[tool.name]
        arguments = {name for name, _ in (*spec.remotior, *spec.extensions)}
        assert {flag.argument for flag in tool.cli_flags} <= arguments, tool.name
        assert tool.input_argument in arguments, tool.name
        assert callable(getattr(Session, tool.name)), tool.name


def test_the_client_has_remotiors_signature():
    parameters = list(inspect.signature(Session.raster_report).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == [
        ("raster_path", inspect.Parameter.empty),
        ("output_path", None),
        ("nodata_value", None),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("progress_message", True),
    ]


def test_the_client_returns_remotiors_output(server, rasters):
    running, channel = server
    root = running.data_root.root
    array, nodata = rasters["int16"]
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        # raster_path, output_path, nodata_value
        out = rs.raster_report("rr/int16.tif", "rr/client/report", 3)
        assert out.check, out.grpc
        assert out.path == "rr/client/report.csv" and out.extra is None
        values, counts = reference(array, nodata, 3)
        _assert_rows(out.grpc.response, values, counts, PIXEL_AREA)
        text = (root / "rr" / "client" / "report.csv").read_text()
        assert text.startswith("RasterValue,PixelSum,Percentage %,Area [metre^2]\n")

        clipped = rs.raster_report(
            "rr/tiny.tif",
            "rr/client/tiny.csv",
            extent_list=[500000.0, 4600000.0, 500020.0, 4599980.0],
        )
        assert clipped.check, clipped.grpc
        assert [(r.value, r.pixel_count) for r in clipped.grpc.response.rows] == [(1, 2), (2, 2)]

        refused = rs.raster_report("rr/tiny.tif")
        assert refused.check is False and "output_path is required" in refused.grpc.message
        bad = rs.raster_report("rr/tiny.tif", "rr/client/x.csv", nodata_value="none")
        assert bad.check is False and "nodata_value must be a number" in bad.grpc.message
        assert not (root / "rr" / "client" / "x.csv").exists()
    finally:
        rs.close()


def test_the_command_prints_the_table_and_writes_the_csv(server, rasters):
    running, _ = server
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "raster-report",
            "--target",
            f"127.0.0.1:{running.port}",
            "--processes",
            "1",
            "--input",
            "rr/tiny.tif",
            "--nodata-value",
            "3",
            "--output",
            "rr/cli",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "rr/cli.csv: 2 rows",
        "value\tpixel_count\tpercentage\tarea",
        "1\t4\t57.14285714\t400",
        "2\t3\t42.85714286\t300",
    ]
    assert (running.data_root.root / "rr" / "cli.csv").read_text() == (
        "RasterValue,PixelSum,Percentage %,Area [metre^2]\n1,4,57.14,400\n2,3,42.86,300\n\n"
    )
