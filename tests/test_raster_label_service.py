"""RasterLabel (Remotior's raster_label) through a real gRPC channel, the Python client and
the command line: labels equal to scipy.ndimage.label of the valid non-zero pixels (the
same partition and the same numbering, in raster order of each patch's first pixel),
pixel counts, nodata, several dtypes, odd sizes, many tiles equal to one, cancellation,
and bad parameters refused at the door."""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2
from rsgrpc_kernels.label import label_tile, number_tiles, numbered_tile
from rsgrpc_kernels.sieve import TilePlacement
from scipy import ndimage

from rsgrpc.client import Session
from rsgrpc.engine.band_tool import BandInput, OutputTarget
from rsgrpc.engine.halo_job import HaloRequest
from rsgrpc.engine.label_job import prepare_label_job, run_label_job
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.tiles import TilePlan
from rsgrpc.tools.raster_label import RASTER_LABEL, LabelParameters
from rsgrpc.v1 import raster_pb2, session_pb2, session_pb2_grpc
from tests.conftest import operation_metadata, operation_updates, watch_to_response, write_geotiff

STRUCTURES = {
    4: ndimage.generate_binary_structure(2, 1),
    8: ndimage.generate_binary_structure(2, 2),
}


def reference(
    array: np.ndarray, nodata: float | None, connectivity: int, pixel_count: bool = False
) -> tuple[np.ndarray, int]:
    """scipy's labels of the valid non-zero pixels (0 elsewhere), or each patch's size."""
    foreground = array != 0
    if array.dtype.kind == "f":
        foreground &= ~np.isnan(array)
    if nodata is not None and not math.isnan(nodata):
        foreground &= array != array.dtype.type(nodata)
    labels, count = ndimage.label(foreground, structure=STRUCTURES[connectivity])
    if pixel_count:
        sizes = np.bincount(labels.ravel())
        return np.where(labels > 0, sizes[labels], 0).astype(np.uint32), count
    return labels.astype(np.uint32), count


def _classes(shape: tuple[int, int], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = (rng.random(shape) < 0.45) * rng.integers(1, 5, shape)
    # A snake across the whole raster, one pixel wide: one patch through every tile.
    array[2::6, 1:-1] = 3
    array[2:-2, 1] = 3
    array[2:-2, -2] = 3
    array[3::6, :] = 0
    return array.astype(dtype)


def _request(session: str, path: str, output: str, **parameters) -> raster_pb2.RasterLabelRequest:
    return raster_pb2.RasterLabelRequest(
        session=session,
        inputs=[raster_pb2.RasterBand(path=path)],
        parameters=raster_pb2.RasterLabelParameters(**parameters),
        output=raster_pb2.ToolOutput(path=output, overwrite=True),
    )


def _read(root: Path, path: str):
    with rasterio.open(root / path) as ds:
        return ds.read(1), ds.profile


def _run(channel, raster_stub, request):
    return watch_to_response(
        channel, raster_stub.RasterLabel(request), raster_pb2.RasterLabelResponse
    )


def assert_same_partition(got: np.ndarray, expected: np.ndarray) -> None:
    """The two label images group the same pixels (each label maps to exactly one)."""
    assert ((got == 0) == (expected == 0)).all()
    pairs = np.unique(np.stack([got[got > 0], expected[expected > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


CASES = {
    "uint8 with nodata, 4-connected": ("uint8", 255, 4),
    "int16 with negative nodata, 8-connected": ("int16", -9, 8),
    "uint16 without nodata, 4-connected": ("uint16", None, 4),
    "int32 with nodata, 8-connected": ("int32", 7, 8),
    "float32 with nan nodata, 4-connected": ("float32", math.nan, 4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_labels_equal_scipys_labels(server, session_name, raster_stub, case):
    running, channel = server
    dtype, nodata, connectivity = CASES[case]
    array = _classes((67, 53), dtype, seed=len(case))
    rng = np.random.default_rng(3)
    if nodata is not None:
        array[rng.random(array.shape) < 0.08] = nodata
    if dtype == "float32":
        array[rng.random(array.shape) < 0.05] = 0.25  # a fraction is foreground
    name = case.replace(" ", "-").replace(",", "")
    write_geotiff(running.data_root.root / "lb" / f"{name}.tif", array, nodata=nodata)
    request = _request(
        session_name, f"lb/{name}.tif", f"lb/out/{name}.tif", connectivity=connectivity
    )
    _, response = _run(channel, raster_stub, request)
    got, profile = _read(running.data_root.root, f"lb/out/{name}.tif")
    expected, count = reference(array, nodata, connectivity)
    assert (profile["dtype"], profile["nodata"]) == ("uint32", 0)
    assert_same_partition(got, expected)
    np.testing.assert_array_equal(got, expected)
    (output,) = response.outputs
    assert output.region_count == count > 50
    assert output.pixels_changed == np.count_nonzero(got.astype(np.float64) != array)


def test_pixel_count_writes_remotiors_values(server, session_name, raster_stub):
    running, channel = server
    array = _classes((45, 61), "uint8", seed=8)
    write_geotiff(running.data_root.root / "lb" / "count.tif", array, nodata=None)
    request = _request(session_name, "lb/count.tif", "lb/out/count.tif", pixel_count=True)
    _, response = _run(channel, raster_stub, request)
    got, _ = _read(running.data_root.root, "lb/out/count.tif")
    expected, count = reference(array, None, 4, pixel_count=True)
    np.testing.assert_array_equal(got, expected)
    assert response.outputs[0].region_count == count


def test_regions_of_different_values_are_one_patch_and_zero_is_background(
    server, session_name, raster_stub
):
    running, channel = server
    array = np.array(
        [
            [1, 2, 0, 5],
            [0, 3, 0, 5],
            [4, 0, 6, 0],
        ],
        np.uint8,
    )
    write_geotiff(running.data_root.root / "lb" / "tiny.tif", array, nodata=5)
    for connectivity, expected in (
        (4, [[1, 1, 0, 0], [0, 1, 0, 0], [2, 0, 3, 0]]),
        (8, [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]]),
    ):
        output = f"lb/out/tiny-{connectivity}.tif"
        request = _request(session_name, "lb/tiny.tif", output, connectivity=connectivity)
        _run(channel, raster_stub, request)
        got, _ = _read(running.data_root.root, output)
        np.testing.assert_array_equal(got, np.array(expected, np.uint32))


# --- tiled equals untiled ------------------------------------------------------------------


def test_the_kernel_in_any_tiling_equals_scipy():
    rng = np.random.default_rng(0)
    for trial in range(30):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        connectivity = (4, 8)[trial % 2]
        array = (rng.random((h, w)) < 0.55) * rng.integers(1, 4, (h, w))
        th, tw = (int(v) for v in rng.integers(1, 13, 2))
        tiles = [
            label_tile(
                array[r : r + th, c : c + tw],
                TilePlacement(r, c, h, w),
                connectivity=connectivity,
            )
            for r in range(0, h, th)
            for c in range(0, w, tw)
        ]
        numbering, count = number_tiles([t.summary for t in tiles], connectivity=connectivity)
        got = np.zeros((h, w), np.uint32)
        for tile, tile_numbering in zip(tiles, numbering, strict=True):
            p, s = tile.summary.placement, tile.summary
            window = (slice(p.row_off, p.row_off + s.height), slice(p.col_off, p.col_off + s.width))
            got[window] = numbered_tile(tile.labels, tile_numbering.values)
        expected, expected_count = reference(array, None, connectivity)
        np.testing.assert_array_equal(got, expected, err_msg=f"{h}x{w} in {th}x{tw} tiles")
        assert count == expected_count


@pytest.mark.parametrize("connectivity", [4, 8])
def test_many_tiles_equal_one_tile_and_scipy(server, session_name, tmp_path, connectivity):
    running, _ = server
    engine_session = running.registry.get(session_name)
    root = DataRoot.at(tmp_path)
    array = _classes((203, 187), "int16", seed=connectivity)
    array[90:110, :] = -1  # nodata across a seam
    write_geotiff(tmp_path / "in.tif", array, nodata=-1, block=64)
    profile = OutputProfile("zstd", level=1, block_size=64)
    outputs = {}
    for edge in (64, 128, 512):
        request = HaloRequest(
            RASTER_LABEL,
            LabelParameters(connectivity, pixel_count=False),
            (BandInput("in.tif"),),
            OutputTarget(f"out-{edge}.tif", overwrite=True),
        )
        job = prepare_label_job(request, root, engine_session, profile)
        plans = tuple(TilePlan(p.shape, edge, edge, p.in_flight, p.peak_bytes) for p in job.plans)
        job = dataclasses.replace(job, plans=plans)
        operation = Operation(engine_session.name, "RasterLabel", owner="anonymous")
        (result,) = run_label_job(job, engine_session, operation)
        assert operation.progress.tiles_total == 2 * plans[0].tile_count
        outputs[edge] = _read(tmp_path, f"out-{edge}.tif")[0], result.region_count
    assert plans[0].tile_count == 1
    expected, count = reference(array, -1, connectivity)
    for edge, (got, regions) in outputs.items():
        np.testing.assert_array_equal(got, expected, err_msg=f"tiles of {edge}")
        assert regions == count


# --- cancellation and bad requests -----------------------------------------------------------


def _temporary_files(channel, session_name: str) -> set[Path]:
    session = session_pb2_grpc.SessionServiceStub(channel).GetSession(
        session_pb2.GetSessionRequest(name=session_name)
    )
    return set(Path(session.temporary_directory).iterdir())


def test_cancel_leaves_no_output_and_no_temporary_files(server, session_name, raster_stub):
    running, channel = server
    big = running.data_root.root / "lb" / "big.tif"
    write_geotiff(big, _classes((3072, 3072), "uint8", seed=5))
    before = _temporary_files(channel, session_name)
    request = _request(session_name, "lb/big.tif", "lb/cancelled/out.tif", connectivity=8)
    operation = raster_stub.RasterLabel(request)
    updates = operation_updates(channel, operation)
    started = next(u for u in updates if operation_metadata(u).tiles_done >= 1)
    updates.cancel()
    operations = lro_grpc.OperationsStub(channel)
    operations.CancelOperation(lro.CancelOperationRequest(name=started.name))
    final = operations.WaitOperation(lro.WaitOperationRequest(name=started.name, timeout=None))
    assert final.done and final.error.code == code_pb2.CANCELLED
    assert not any((running.data_root.root / "lb" / "cancelled").glob("*"))
    assert _temporary_files(channel, session_name) == before


BAD_REQUESTS = {
    "connectivity 6": ({"connectivity": 6}, "lb/tiny.tif", "connectivity must be 4 or 8"),
    "negative connectivity": ({"connectivity": -4}, "lb/tiny.tif", "connectivity must be 4 or 8"),
    "missing input": ({}, "lb/missing.tif", ""),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_refused_before_anything_runs(server, session_name, raster_stub, case):
    running, _ = server
    write_geotiff(running.data_root.root / "lb" / "tiny.tif", np.ones((5, 7), np.uint8))
    parameters, path, fragment = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.RasterLabel(_request(session_name, path, "lb/bad/out.tif", **parameters))
    expected = grpc.StatusCode.NOT_FOUND if "missing" in case else grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.code() == expected
    assert fragment in caught.value.details()
    assert str(running.data_root.root) not in caught.value.details()
    assert not (running.data_root.root / "lb" / "bad").exists()


def test_the_declaration_has_its_rpc_signature_and_warm_cases():
    from rsgrpc_kernels.warm import WARM_CASES

    from rsgrpc.client.signatures import SESSION_ATTRIBUTES, SIGNATURES
    from rsgrpc.tools import RASTER_TOOLS

    assert RASTER_LABEL in RASTER_TOOLS
    service = raster_pb2.DESCRIPTOR.services_by_name["RasterService"]
    method = service.methods_by_name["RasterLabel"]
    assert method.input_type is raster_pb2.RasterLabelRequest.DESCRIPTOR
    spec = SIGNATURES["raster_label"]
    arguments = {name for name, _ in (*spec.remotior, *spec.extensions)}
    assert {flag.argument for flag in RASTER_LABEL.cli_flags} <= arguments
    assert "raster_label" not in SESSION_ATTRIBUTES
    assert set(RASTER_LABEL.warm) <= set(WARM_CASES)


# --- the Python client and the command line --------------------------------------------------


def test_the_client_takes_remotiors_signature(server):
    running, channel = server
    root = running.data_root.root
    array = _classes((37, 29), "uint8", seed=21)
    write_geotiff(root / "lb" / "client.tif", array, nodata=None)
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        parameters = inspect.signature(rs.raster_label).parameters.values()
        positional = [(p.name, p.default) for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        # Remotior's raster_label, written out here.
        assert positional == [
            ("raster_path", inspect.Parameter.empty),
            ("output_path", None),
            ("overwrite", False),
            ("extent_list", None),
            ("n_processes", None),
            ("available_ram", None),
            ("virtual_output", None),
            ("progress_message", True),
        ]
        # Remotior's values by default: each patch's pixel count.
        out = rs.raster_label("lb/client.tif", "lb/client/counts")
        assert out.check, out.grpc
        assert out.paths == ["lb/client/counts.tif"]
        got, _ = _read(root, out.path)
        np.testing.assert_array_equal(got, reference(array, None, 4, pixel_count=True)[0])

        labels = rs.raster_label(
            "lb/client.tif", "lb/client/labels.tif", connectivity=8, pixel_count=False
        )
        assert labels.check, labels.grpc
        got, _ = _read(root, labels.path)
        np.testing.assert_array_equal(got, reference(array, None, 8)[0])

        refused = rs.raster_label("lb/client.tif", "lb/client/bad.tif", connectivity=6)
        assert refused.check is False
        assert not (root / "lb" / "client" / "bad.tif").exists()
    finally:
        rs.close()


def test_the_command_writes_its_output(server):
    running, _ = server
    array = _classes((41, 33), "uint8", seed=34)
    write_geotiff(running.data_root.root / "lb" / "cli.tif", array, nodata=None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "label",
            "--target",
            f"127.0.0.1:{running.port}",
            "--processes",
            "1",
            "--input",
            "lb/cli.tif",
            "--connectivity",
            "8",
            "--output",
            "lb/cli-out.tif",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "lb/cli-out.tif:" in result.stdout and "pixels changed" in result.stdout
    got, _ = _read(running.data_root.root, "lb/cli-out.tif")
    np.testing.assert_array_equal(got, reference(array, None, 8)[0])
