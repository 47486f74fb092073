"""NeighborPixels (Remotior's band_neighbor_pixels) through a real gRPC channel, the Python
client and the command line: every statistic against a per-window NumPy reference,
tiled equals untiled, cancellation, and parameters refused at the door."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2
from rsgrpc_kernels import focal

from rsgrpc.client import Session
from rsgrpc.engine.paths import DataRoot
from rsgrpc.tools.neighbor_pixels import NEIGHBOR_DTYPES, NEIGHBOR_PIXELS, NeighborParameters
from rsgrpc.v1 import raster_pb2, session_pb2, session_pb2_grpc
from tests.compat.references import structure
from tests.conftest import (
    CRS,
    operation_metadata,
    operation_updates,
    watch_to_response,
    write_geotiff,
)
from tests.halo_job_checks import outputs_by_tile_edge

NODATA = 255
STATISTICS = {
    "Count": raster_pb2.NEIGHBOR_STATISTIC_COUNT,
    "Max": raster_pb2.NEIGHBOR_STATISTIC_MAX,
    "Mean": raster_pb2.NEIGHBOR_STATISTIC_MEAN,
    "Median": raster_pb2.NEIGHBOR_STATISTIC_MEDIAN,
    "Min": raster_pb2.NEIGHBOR_STATISTIC_MIN,
    "Percentile": raster_pb2.NEIGHBOR_STATISTIC_PERCENTILE,
    "StandardDeviation": raster_pb2.NEIGHBOR_STATISTIC_STANDARD_DEVIATION,
    "Sum": raster_pb2.NEIGHBOR_STATISTIC_SUM,
}
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


def reference(
    array: np.ndarray,
    nodata: float,
    statistic: str,
    structure: np.ndarray,
    percentile: float | None = None,
) -> np.ndarray:
    """Each valid pixel's statistic over the valid pixels of its window, in float64
    (NaN where the pixel is nodata), computed from the stack of the window's shifts."""
    height, width = array.shape
    rows, cols = structure.shape
    cy, cx = rows // 2, cols // 2
    valid = array != nodata
    padded = np.full((height + 2 * cy, width + 2 * cx), np.nan)
    padded[cy : cy + height, cx : cx + width] = np.where(valid, array, np.nan)
    stack = np.stack([padded[e : e + height, d : d + width] for e, d in np.argwhere(structure)])
    n = np.count_nonzero(~np.isnan(stack), axis=0)
    ordered = np.sort(stack, axis=0)  # NaN last
    # All-NaN windows (nodata pixels, masked afterwards) warn.
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if statistic == "Count":
            result = n.astype(np.float64)
        elif statistic == "Sum":
            result = np.nansum(stack, axis=0)
        elif statistic == "Mean":
            result = np.nansum(stack, axis=0) / n
        elif statistic == "StandardDeviation":
            result = np.nanstd(stack, axis=0)
        elif statistic == "Max":
            result = np.nanmax(stack, axis=0)
        elif statistic == "Min":
            result = np.nanmin(stack, axis=0)
        else:
            if statistic == "Median":
                rank = n // 2
            else:
                rank = np.minimum((n * percentile / 100).astype(np.int64), n - 1)
            rank = np.clip(rank, 0, stack.shape[0] - 1)
            result = np.take_along_axis(ordered, rank[None], axis=0)[0]
    return np.where(valid, result, np.nan)


def assert_matches(got: np.ndarray, expected: np.ndarray, nodata: float, statistic: str) -> None:
    filled = np.where(np.isnan(expected), nodata, expected)
    if statistic == "StandardDeviation":  # sums of squares rounded differently
        np.testing.assert_allclose(got, filled, rtol=1e-12, atol=1e-12)
    else:
        np.testing.assert_array_equal(got, filled)


def _bands(*paths: str) -> list[raster_pb2.RasterBand]:
    return [raster_pb2.RasterBand(path=p) for p in paths]


def _read(root: Path, path: str):
    with rasterio.open(root / path) as ds:
        return ds.read(1), ds.profile


@pytest.fixture(scope="module")
def values(server):
    """Small values with nodata pixels, and an area of nodata crossing tile seams."""
    running, _ = server
    rng = np.random.default_rng(31)
    array = rng.integers(0, 30, (90, 70), dtype=np.uint8)
    array[rng.random(array.shape) < 0.1] = NODATA
    array[40:52, 10:60] = NODATA
    root = running.data_root.root
    write_geotiff(root / "np" / "a.tif", array, nodata=NODATA)
    write_geotiff(root / "np" / "b.tif", array[::-1].copy(), nodata=NODATA)
    return array


def _request(session: str, path: str = "np/a.tif", output: str = "bad/out.tif", **parameters):
    parameters.setdefault("statistic", raster_pb2.NEIGHBOR_STATISTIC_MEAN)
    parameters.setdefault("size", 1)
    return raster_pb2.NeighborPixelsRequest(
        session=session,
        inputs=_bands(path),
        parameters=raster_pb2.NeighborPixelsParameters(**parameters),
        output=raster_pb2.ToolOutput(path=output, overwrite=True),
    )


@pytest.mark.parametrize("statistic", list(STATISTICS))
def test_each_statistic_equals_the_per_window_reference(
    server, session_name, raster_stub, values, statistic
):
    running, channel = server
    percentile = 30.0 if statistic == "Percentile" else None
    output = f"np/out/{statistic}.tif"
    extra = {"percentile": percentile} if percentile is not None else {}
    operation = raster_stub.NeighborPixels(
        _request(
            session_name,
            output=output,
            statistic=STATISTICS[statistic],
            size=2,
            circular_structure=True,
            output_data_type=raster_pb2.DATA_TYPE_FLOAT64,
            **extra,
        )
    )
    updates, response = watch_to_response(channel, operation, raster_pb2.NeighborPixelsResponse)
    got, profile = _read(running.data_root.root, output)
    assert (profile["dtype"], profile["nodata"], profile["crs"]) == ("float64", NODATA, CRS)
    expected = reference(values, NODATA, statistic, structure(2, True), percentile)
    assert_matches(got, expected, NODATA, statistic)
    [out] = response.outputs
    assert (out.input.path, out.output_path) == ("np/a.tif", output)
    assert out.pixels_changed == np.count_nonzero(got != values)
    last = operation_metadata(updates[-1])
    assert last.tiles_done == last.tiles_total >= 1


def test_the_inputs_type_by_default_rounding_halves_away_from_zero(
    server, session_name, raster_stub, values
):
    running, channel = server
    operation = raster_stub.NeighborPixels(
        _request(
            session_name,
            output="np/out/mean-uint8.tif",
            statistic=raster_pb2.NEIGHBOR_STATISTIC_MEAN,
            size=1,
        )
    )
    watch_to_response(channel, operation, raster_pb2.NeighborPixelsResponse)
    got, profile = _read(running.data_root.root, "np/out/mean-uint8.tif")
    assert (profile["dtype"], profile["nodata"]) == ("uint8", NODATA)
    mean = reference(values, NODATA, "Mean", structure(1, False))
    expected = np.where(np.isnan(mean), NODATA, np.floor(np.nan_to_num(mean) + 0.5))
    np.testing.assert_array_equal(got, expected.astype(np.uint8))


def test_a_structure_given_or_read_from_a_file(server, session_name, raster_stub, values):
    running, channel = server
    root = running.data_root.root
    (root / "np" / "cross.txt").write_text("[0, 1, 0]\n[1, 1, 1]\n[0, 1, 0]\n")
    expected = reference(values, NODATA, "Max", CROSS)
    for name, window in (
        ("given", _with_structure(3, 3, CROSS.astype(int).ravel().tolist())),
        ("file", {"structure_path": "np/cross.txt"}),
    ):
        output = f"np/out/cross-{name}.tif"
        operation = raster_stub.NeighborPixels(
            _request(
                session_name,
                output=output,
                statistic=raster_pb2.NEIGHBOR_STATISTIC_MAX,
                size=0,
                **window,
            )
        )
        watch_to_response(channel, operation, raster_pb2.NeighborPixelsResponse)
        got, _ = _read(root, output)
        assert_matches(got, expected, NODATA, "Max")


def test_one_output_per_input_in_a_directory(server, session_name, raster_stub, values):
    running, channel = server
    request = _request(session_name, statistic=raster_pb2.NEIGHBOR_STATISTIC_SUM, size=1)
    del request.inputs[:]
    request.inputs.extend(_bands("np/a.tif", "np/b.tif"))
    request.output.CopyFrom(raster_pb2.ToolOutput(path="np/dir", prefix="sum_"))
    _, response = watch_to_response(
        channel, raster_stub.NeighborPixels(request), raster_pb2.NeighborPixelsResponse
    )
    assert [o.output_path for o in response.outputs] == ["np/dir/sum_a.tif", "np/dir/sum_b.tif"]
    window = structure(1, False)
    for source, out in zip((values, values[::-1]), response.outputs, strict=True):
        got, _ = _read(running.data_root.root, out.output_path)
        # Sums over 255 do not fit uint8: nodata, never wrapped.
        sums = reference(np.ascontiguousarray(source), NODATA, "Sum", window)
        expected = np.where(np.isnan(sums) | (sums > 255), NODATA, np.nan_to_num(sums))
        np.testing.assert_array_equal(got, expected.astype(np.uint8))


# --- tiled equals untiled, through the engine -------------------------------------------


@pytest.mark.parametrize("statistic", ["Median", "StandardDeviation", "Percentile", "Max"])
def test_many_tiles_equal_one_tile(server, session_name, tmp_path, statistic):
    # The live server's own session, its job planned and then cut into other tiles.
    running, _ = server
    engine_session = running.registry.get(session_name)
    root = DataRoot.at(tmp_path)
    rng = np.random.default_rng(7)
    surface = rng.normal(100, 20, (300, 260)).astype(np.float32)
    surface[100:140, 30:200] = np.nan
    write_geotiff(tmp_path / "surface.tif", surface, nodata=np.nan, block=64)
    parameters = NeighborParameters(
        statistic=statistic,
        size=3,
        circular=statistic != "Max",
        structure=None if statistic != "Percentile" else tuple(map(tuple, CROSS.astype(int))),
        percentile=75.0 if statistic == "Percentile" else None,
        output_dtype=None,
    )
    outputs = {
        edge: pixels
        for edge, (pixels, _) in outputs_by_tile_edge(
            NEIGHBOR_PIXELS, parameters, "surface.tif", root, engine_session, tmp_path
        ).items()
    }
    np.testing.assert_array_equal(outputs[64], outputs[512])
    structure = (
        np.array(parameters.structure, bool)
        if parameters.structure
        else focal.focal_structure(3, circular=parameters.circular)
    )
    whole = focal.focal_statistic(
        surface, statistic=statistic, structure=structure, percentile=parameters.percentile
    )
    np.testing.assert_array_equal(outputs[64], whole)


def test_the_declared_dtypes_are_the_kernels():
    assert NEIGHBOR_DTYPES == focal.FOCAL_DTYPES


def test_every_declaration_has_its_rpc_signature_flags_and_warm_cases():
    from rsgrpc_kernels.warm import WARM_CASES

    from rsgrpc.client.signatures import SIGNATURES
    from rsgrpc.tools import RASTER_TOOLS

    service = raster_pb2.DESCRIPTOR.services_by_name["RasterService"]
    for tool in RASTER_TOOLS:
        method = service.methods_by_name[tool.rpc]
        assert method.input_type is tool.request_type.DESCRIPTOR
        spec = SIGNATURES[tool.name]
        arguments = {name for name, _ in (*spec.remotior, *spec.extensions)}
        assert {flag.argument for flag in tool.cli_flags} <= arguments, tool.name
        assert tool.warm and set(tool.warm) <= set(WARM_CASES), tool.name


# --- cancel and refusals ------------------------------------------------------------------


def _temporary_files(channel, session_name: str) -> set[Path]:
    session = session_pb2_grpc.SessionServiceStub(channel).GetSession(
        session_pb2.GetSessionRequest(name=session_name)
    )
    return set(Path(session.temporary_directory).iterdir())


def test_cancel_leaves_no_output_and_no_temporary_files(server, session_name, raster_stub):
    running, channel = server
    big = running.data_root.root / "np" / "big.tif"
    if not big.exists():
        write_geotiff(big, np.random.default_rng(5).integers(0, 200, (3072, 3072), np.uint8))
    before = _temporary_files(channel, session_name)
    median = raster_pb2.NEIGHBOR_STATISTIC_MEDIAN
    request = _request(session_name, "np/big.tif", "np/cancelled/out.tif", statistic=median)
    request.parameters.size = 40  # slow on every tile
    operation = raster_stub.NeighborPixels(request)
    updates = operation_updates(channel, operation)
    started = next(u for u in updates if operation_metadata(u).tiles_done >= 1)
    updates.cancel()
    operations = lro_grpc.OperationsStub(channel)
    operations.CancelOperation(lro.CancelOperationRequest(name=started.name))
    final = operations.WaitOperation(lro.WaitOperationRequest(name=started.name, timeout=None))
    assert final.done and final.error.code == code_pb2.CANCELLED
    assert not any((running.data_root.root / "np" / "cancelled").glob("*"))
    assert _temporary_files(channel, session_name) == before


def _with_structure(rows: int, columns: int, values: list[int]):
    return {"structure": raster_pb2.Structure(rows=rows, columns=columns, values=values)}


BAD_PARAMETERS = {
    "unknown statistic": ({"statistic": 99}, "unknown statistic 99"),
    "no statistic": (
        {"statistic": raster_pb2.NEIGHBOR_STATISTIC_UNSPECIFIED},
        "statistic is required",
    ),
    "percentile above 100": (
        {"statistic": raster_pb2.NEIGHBOR_STATISTIC_PERCENTILE, "percentile": 100.5},
        "percentile must be from 0 to 100",
    ),
    "percentile below 0": (
        {"statistic": raster_pb2.NEIGHBOR_STATISTIC_PERCENTILE, "percentile": -1},
        "percentile must be from 0 to 100",
    ),
    "percentile missing": (
        {"statistic": raster_pb2.NEIGHBOR_STATISTIC_PERCENTILE},
        "needs a percentile",
    ),
    "size 0": ({"size": 0}, "size must be from 1 to 256"),
    "size negative": ({"size": -2}, "size must be from 1 to 256"),
    "size too large": ({"size": 257}, "size must be from 1 to 256"),
    "structure of 2": (_with_structure(3, 3, [0, 2, 0, 1, 1, 1, 0, 1, 0]), "only 0 and 1"),
    "structure of even rows": (_with_structure(2, 3, [1] * 6), "must be odd"),
    "structure of even columns": (_with_structure(3, 2, [1] * 6), "must be odd"),
    "structure of zeros": (_with_structure(1, 1, [0]), "at least one 1"),
    "structure short of values": (_with_structure(3, 3, [1] * 8), "holds 8 values"),
    "unknown output type": ({"output_data_type": 42}, "unknown output_data_type 42"),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_bad_parameters_are_invalid_argument(server, session_name, raster_stub, values, case):
    running, _ = server
    parameters, fragment = BAD_PARAMETERS[case]
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.NeighborPixels(_request(session_name, **parameters))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


STRUCTURE_FILES = {
    "not 0 or 1": ("1 1 1\n1 2 1\n1 1 1\n", "only 0 and 1"),
    "even-sized": ("1,1\n1,1\n", "must be odd"),
    "rows of two lengths": ("1,1,1\n1\n1,1,1\n", "all rows must be as long"),
    "code": ("__import__('os').remove('x')\n", "is not a number"),
    "empty": ("\n\n", "is empty"),
}


@pytest.mark.parametrize("case", list(STRUCTURE_FILES))
def test_bad_structure_files_are_invalid_argument(server, session_name, raster_stub, values, case):
    running, _ = server
    text, fragment = STRUCTURE_FILES[case]
    path = running.data_root.root / "np" / "structures" / f"{case}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.NeighborPixels(
            _request(session_name, structure_path=f"np/structures/{case}.txt")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
    assert str(running.data_root.root) not in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


def test_a_structure_file_outside_the_data_root_is_refused(
    server, session_name, raster_stub, values
):
    running, _ = server
    outside = running.data_root.root.parent / "outside.txt"
    outside.write_text("1 1 1\n1 1 1\n1 1 1\n")
    for path, code in (
        ("../outside.txt", grpc.StatusCode.PERMISSION_DENIED),
        (str(outside), grpc.StatusCode.PERMISSION_DENIED),
        ("np/missing.txt", grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.NeighborPixels(_request(session_name, structure_path=path))
        assert caught.value.code() == code, path
        assert str(running.data_root.root) not in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


# --- the Python client and the command line -----------------------------------------------


def test_the_client_takes_remotiors_positional_order(server, values):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        # input_bands, size, output_path, overwrite, stat_name, structure,
        # circular_structure, stat_percentile, output_data_type
        out = rs.band_neighbor_pixels(
            ["np/a.tif"], 2, "np/client", True, "percentile", None, False, "60", "Float32"
        )
        assert out.check, out.grpc
        assert out.paths == ["np/client/a.tif"]
        got, profile = _read(root, out.path)
        assert profile["dtype"] == "float32"
        expected = reference(values, NODATA, "Percentile", structure(2, False), 60)
        assert_matches(got, expected, NODATA, "Percentile")

        matrix = rs.band_neighbor_pixels(
            "np/a.tif", 1, "np/client/matrix.tif", stat_name="Min", structure=CROSS.astype(int)
        )
        assert matrix.check, matrix.grpc
        assert_matches(
            _read(root, matrix.path)[0], reference(values, NODATA, "Min", CROSS), NODATA, "Min"
        )

        refused = rs.band_neighbor_pixels("np/a.tif", 1, "np/client/x.tif", stat_name="Mode")
        assert refused.check is False and "unsupported stat_name 'Mode'" in refused.grpc.message
        assert not (root / "np" / "client" / "x.tif").exists()
    finally:
        rs.close()


def test_the_command_writes_its_output_with_a_progress_bar(server, values):
    running, _ = server
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "neighbor-pixels",
            "--target",
            f"127.0.0.1:{running.port}",
            "--processes",
            "1",
            "--input",
            "np/a.tif",
            "--stat",
            "StandardDeviation",
            "--size",
            "1",
            "--square",
            "--dtype",
            "Float64",
            "--output",
            "np/cli.tif",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "np/cli.tif:" in result.stdout and "pixels changed" in result.stdout
    assert "[####" in result.stderr
    got, _ = _read(running.data_root.root, "np/cli.tif")
    expected = reference(values, NODATA, "StandardDeviation", structure(1, False))
    assert_matches(got, expected, NODATA, "StandardDeviation")
