"""BandSpectralDistance (Remotior's band_spectral_distance) through a real gRPC channel, the
Python client and the command line: pixels against NumPy (np.linalg.norm of the
difference; the angle in degrees of the clipped cosine), nodata in either set, several
dtypes, odd sizes, the threshold output, tiled equals untiled, cancellation, and
parameters refused at the door."""

from __future__ import annotations

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
from rasterio.transform import from_origin
from rsgrpc_kernels.bandcalc import evaluate
from rsgrpc_kernels.expression import parse_expression

from rsgrpc.client import Session
from rsgrpc.engine.band_calc import plan_band_calc, run_band_calc
from rsgrpc.engine.band_tool import BandInput
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.spectral_distance import prepare_spectral_distance
from rsgrpc.engine.tiles import TilePlan
from rsgrpc.tools.spectral_distance import DistanceParameters, expression, input_names
from rsgrpc.v1 import raster_pb2
from tests.conftest import (
    TRANSFORM,
    operation_metadata,
    operation_updates,
    watch_to_response,
    write_geotiff,
)
from tests.test_band_mask_service import missing

SHAPE = (37, 53)
OUT_NODATA = -32768.0
EUCLIDEAN = raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_EUCLIDEAN
ANGLE = raster_pb2.SPECTRAL_DISTANCE_ALGORITHM_SPECTRAL_ANGLE
# Per band of each set: (dtype, nodata).
FIRST = (("uint8", 0), ("int16", -1), ("float32", math.nan))
SECOND = (("uint16", None), ("int32", -9), ("float64", -1e30))


def reference(
    first: list[np.ndarray],
    second: list[np.ndarray],
    nodata: list[float | None],
    *,
    angle: bool,
    threshold: float | None = None,
    value_as_nodata: float | None = None,
) -> np.ndarray:
    """Remotior's distance in float64, then Float32 with -32768 where any band is nodata
    or the distance is undefined."""
    a = np.stack(first).astype(np.float64)
    b = np.stack(second).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if angle:
            cosine = (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0))
            distance = np.degrees(np.arccos(np.clip(cosine, -1, 1)))
        else:
            distance = np.linalg.norm(a - b, axis=0)
        if threshold is not None:
            distance = np.where(
                distance > threshold, 1.0, np.where(distance <= threshold, 0.0, np.nan)
            )
    masked = ~np.isfinite(distance)
    for band, value in zip([*first, *second], nodata, strict=True):
        masked |= missing(band, value)
        if value_as_nodata is not None:
            masked |= band == value_as_nodata
    return np.where(masked, OUT_NODATA, distance).astype(np.float32)


def assert_pixels(got: np.ndarray, expected: np.ndarray) -> None:
    nodata = expected == OUT_NODATA
    np.testing.assert_array_equal(got == OUT_NODATA, nodata)
    np.testing.assert_allclose(got[~nodata], expected[~nodata], rtol=2e-6, atol=1e-6)


def _bands(rng: np.random.Generator, shape, kinds) -> list[np.ndarray]:
    bands = []
    for dtype, nodata in kinds:
        band = rng.integers(0, 120, shape).astype(dtype)
        if nodata is not None:
            band[rng.random(shape) < 0.05] = nodata
        bands.append(band)
    return bands


@pytest.fixture(scope="module")
def bands(server) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two sets of three bands of mixed types, each with some nodata, and a pixel whose
    second spectrum is zeros (no angle) and one whose spectra are equal."""
    running, _ = server
    root = running.data_root.root / "sd"
    rng = np.random.default_rng(31)
    first, second = _bands(rng, SHAPE, FIRST), _bands(rng, SHAPE, SECOND)
    for a, b in zip(first, second, strict=True):
        a[3, 4], b[3, 4] = 5, 0
        a[5, 6], b[5, 6] = 17, 17
    for i, (band, (_, nodata)) in enumerate(zip(first, FIRST, strict=True)):
        write_geotiff(root / f"a{i + 1}.tif", band, nodata=nodata)
    for i, (band, (_, nodata)) in enumerate(zip(second, SECOND, strict=True)):
        write_geotiff(root / f"b{i + 1}.tif", band, nodata=nodata)
    return first, second


NODATA = [nodata for _, nodata in (*FIRST, *SECOND)]


def _request(session: str, output: str, *, count: int = 3, **parameters):
    return raster_pb2.BandSpectralDistanceRequest(
        session=session,
        first_inputs=[raster_pb2.RasterBand(path=f"sd/a{i + 1}.tif") for i in range(count)],
        second_inputs=[raster_pb2.RasterBand(path=f"sd/b{i + 1}.tif") for i in range(count)],
        parameters=raster_pb2.BandSpectralDistanceParameters(**parameters),
        output_path=output,
        overwrite=True,
    )


def _read(root: Path, path: str) -> tuple[np.ndarray, dict]:
    with rasterio.open(root / path) as ds:
        return ds.read(1), ds.profile


@pytest.mark.parametrize(
    ("algorithm", "threshold"),
    [(EUCLIDEAN, None), (ANGLE, None), (EUCLIDEAN, 60.0), (ANGLE, 20.0)],
)
def test_the_distance_equals_numpy(server, session_name, raster_stub, bands, algorithm, threshold):
    running, channel = server
    parameters = {"algorithm": algorithm}
    if threshold is not None:
        parameters["threshold"] = threshold
    output = f"sd/out/{algorithm}-{threshold}.tif"
    operation = raster_stub.BandSpectralDistance(_request(session_name, output, **parameters))
    _, response = watch_to_response(channel, operation, raster_pb2.BandSpectralDistanceResponse)
    got, profile = _read(running.data_root.root, output)
    assert profile["dtype"] == "float32" and profile["nodata"] == OUT_NODATA
    assert got.shape == SHAPE and profile["transform"] == TRANSFORM
    expected = reference(*bands, NODATA, angle=algorithm == ANGLE, threshold=threshold)
    assert_pixels(got, expected)
    assert response.output_path == output
    assert response.statistics.valid_pixel_count == int((expected != OUT_NODATA).sum())
    if algorithm == ANGLE:
        assert got[3, 4] == OUT_NODATA  # a spectrum of zeros has no angle
        assert got[5, 6] == 0  # equal spectra: 0 degrees, never NaN from rounding
    if threshold is not None:
        assert set(np.unique(got)) == {0.0, 1.0, OUT_NODATA}


def test_nodata_value_masks_every_band_of_both_sets(server, session_name, raster_stub, bands):
    running, channel = server
    request = _request(session_name, "sd/out/value.tif", nodata_value=7)
    operation = raster_stub.BandSpectralDistance(request)
    watch_to_response(channel, operation, raster_pb2.BandSpectralDistanceResponse)
    got, _ = _read(running.data_root.root, "sd/out/value.tif")
    expected = reference(*bands, NODATA, angle=False, value_as_nodata=7)
    assert (expected == OUT_NODATA).sum() > (reference(*bands, NODATA, angle=False) == -32768).sum()
    assert_pixels(got, expected)


@pytest.mark.parametrize("angle", [False, True])
def test_many_tiles_equal_one_tile(server, session_name, tmp_path, angle):
    # The live server's own session, its job planned and then cut into other tiles.
    running, _ = server
    engine_session = running.registry.get(session_name)
    root = DataRoot.at(tmp_path)
    rng = np.random.default_rng(8)
    shape = (203, 141)
    first = _bands(rng, shape, (("float32", math.nan), ("int16", -1)))
    second = _bands(rng, shape, (("uint8", 255), ("float32", None)))
    for name, band, nodata in zip(
        ("a1", "a2", "b1", "b2"), [*first, *second], (math.nan, -1, 255, None), strict=True
    ):
        write_geotiff(tmp_path / f"{name}.tif", band, nodata=nodata, block=32)
    parameters = DistanceParameters(angle, 2, None, None)
    profile = OutputProfile("zstd", level=1, block_size=32)
    outputs = {}
    for edge in (32, 512):
        job = prepare_spectral_distance(
            parameters,
            (BandInput("a1.tif"), BandInput("a2.tif")),
            (BandInput("b1.tif"), BandInput("b2.tif")),
            f"out-{edge}.tif",
            overwrite=True,
            profile=profile,
            virtual_output=False,
            data_root=root,
            default_profile=profile,
        )
        planned = plan_band_calc(job, engine_session)
        plan = TilePlan(planned.shape, edge, edge, planned.in_flight, planned.peak_bytes)
        operation = Operation(engine_session.name, "BandSpectralDistance", owner="anonymous")
        run_band_calc(job, plan, engine_session, operation)
        assert operation.progress.tiles_total == plan.tile_count
        outputs[edge] = _read(tmp_path, f"out-{edge}.tif")[0]
    assert TilePlan(shape, 32, 32, 1, 0).tile_count > 1
    np.testing.assert_array_equal(outputs[32], outputs[512])
    assert_pixels(outputs[32], reference(first, second, [math.nan, -1, 255, None], angle=angle))


@pytest.mark.parametrize("method", ["program", "fused"])
@pytest.mark.parametrize(("angle", "threshold"), [(False, None), (True, None), (True, 30.0)])
def test_the_expression_is_exact_both_ways_band_calc_evaluates(method, angle, threshold):
    rng = np.random.default_rng(4)
    first = [rng.integers(0, 60_000, (9, 11)).astype(np.float64) for _ in range(4)]
    second = [rng.integers(0, 60_000, (9, 11)).astype(np.float64) for _ in range(4)]
    for band in second:
        band[0, 0] = 0  # no angle
    for a, b in zip(first, second, strict=True):
        b[1, 1] = a[1, 1] * 3  # the same direction: 0 degrees
    p = DistanceParameters(angle, 4, None, threshold)
    names = [name for group in input_names(4) for name in group]
    parsed = parse_expression(expression(p), names)
    tiles = dict(zip(names, [*first, *second], strict=True))
    out, _, _ = evaluate(parsed, [tiles[n] for n in parsed.input_names], [None] * 8, method=method)
    expected = reference(first, second, [None] * 8, angle=angle, threshold=threshold)
    assert_pixels(out, expected)
    assert (out[0, 0] == OUT_NODATA) == angle
    if angle and threshold is None:
        assert out[1, 1] == 0


# --- cancel and refusals ------------------------------------------------------------------


def test_cancel_leaves_no_output(server, session_name, raster_stub):
    running, channel = server
    root = running.data_root.root
    session = session_name
    rng = np.random.default_rng(2)
    write_geotiff(root / "sd" / "big.tif", rng.random((2048, 2048), np.float32), block=128)
    big = [raster_pb2.RasterBand(path="sd/big.tif")] * 32
    request = raster_pb2.BandSpectralDistanceRequest(
        session=session,
        first_inputs=big,
        second_inputs=big,
        parameters=raster_pb2.BandSpectralDistanceParameters(algorithm=ANGLE, threshold=1),
        output_path="sd/cancelled/out.tif",
    )
    operation = raster_stub.BandSpectralDistance(request)
    operations = lro_grpc.OperationsStub(channel)
    for update in operation_updates(channel, operation):
        metadata = operation_metadata(update)
        if metadata.tiles_done >= 1:  # planned by then: the first update may come before
            assert metadata.tiles_total > 1
            operations.CancelOperation(lro.CancelOperationRequest(name=operation.name))
            break
    final = operations.WaitOperation(lro.WaitOperationRequest(name=operation.name))
    assert final.done and final.error.code == code_pb2.CANCELLED
    assert not any((root / "sd" / "cancelled").glob("*"))


def _other_grid(root: Path) -> None:
    band = np.ones(SHAPE, np.uint8)
    write_geotiff(
        root / "sd" / "moved.tif", band, transform=from_origin(500010.0, 4600000.0, 10, 10)
    )
    write_geotiff(root / "sd" / "small.tif", band[:-1])


BAD_REQUESTS = {
    "sets of different sizes": (
        lambda r: r.second_inputs.pop(),
        "the band sets have 3 and 2 bands",
    ),
    "an empty set": (lambda r: r.first_inputs.__delitem__(slice(None)), "both band sets need"),
    "a band on another origin": (
        lambda r: r.second_inputs[1].CopyFrom(raster_pb2.RasterBand(path="sd/moved.tif")),
        "is not on the grid",
    ),
    "a band of another size": (
        lambda r: r.first_inputs[2].CopyFrom(raster_pb2.RasterBand(path="sd/small.tif")),
        "is not on the grid",
    ),
    "an unknown algorithm": (lambda r: setattr(r.parameters, "algorithm", 9), "unknown algorithm"),
    "an infinite threshold": (
        lambda r: setattr(r.parameters, "threshold", math.inf),
        "threshold must be finite",
    ),
    "a NaN nodata value": (
        lambda r: setattr(r.parameters, "nodata_value", math.nan),
        "nodata_value must be finite",
    ),
    "too many bands": (
        lambda r: (
            r.first_inputs.extend([r.first_inputs[0]] * 30),
            r.second_inputs.extend([r.second_inputs[0]] * 30),
        ),
        "more than 32",
    ),
    "a missing band": (lambda r: setattr(r.first_inputs[0], "band", 2), "band 2"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_invalid_argument(server, session_name, raster_stub, bands, case):
    running, _ = server
    _other_grid(running.data_root.root)
    change, fragment = BAD_REQUESTS[case]
    request = _request(session_name, "sd/bad/out.tif")
    change(request)
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandSpectralDistance(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert fragment in caught.value.details()
    assert str(running.data_root.root) not in caught.value.details()
    assert not (running.data_root.root / "sd" / "bad").exists()


# --- the Python client and the command line -----------------------------------------------


def test_the_client_takes_remotiors_signature(server, bands):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        catalog = rs.bandset_catalog
        catalog.create_bandset([f"sd/a{i}.tif" for i in (1, 2, 3)], bandset_number=1)
        catalog.create_bandset([f"sd/b{i}.tif" for i in (1, 2, 3)], bandset_number=2)
        # input_bandsets, output_path, algorithm_name, nodata_value, threshold
        out = rs.band_spectral_distance([1, 2], "sd/client/sam", "SAM", None, 15)
        assert out.check, out.grpc
        assert out.paths == ["sd/client/sam.tif"]
        assert_pixels(
            _read(root, out.paths[0])[0], reference(*bands, NODATA, angle=True, threshold=15)
        )
        by_objects = rs.band_spectral_distance(
            input_bandsets=[catalog.get_bandset(1), [f"sd/b{i}.tif" for i in (1, 2, 3)]],
            output_path="sd/client/md.tif",
            algorithm_name="minimum distance",
        )
        assert by_objects.check, by_objects.grpc
        assert_pixels(_read(root, "sd/client/md.tif")[0], reference(*bands, NODATA, angle=False))

        virtual = rs.band_spectral_distance([1, 2], "sd/client/v.tif", virtual_output=True)
        assert virtual.check, virtual.grpc
        assert virtual.paths == ["sd/client/v.vrt"]
        assert 'relativeToVRT="1">v_01.tif<' in (root / "sd" / "client" / "v.vrt").read_text()
        assert_pixels(_read(root, "sd/client/v_01.tif")[0], reference(*bands, NODATA, angle=False))

        unknown = rs.band_spectral_distance([1, 2], "sd/client/x.tif", algorithm_name="cosine")
        assert unknown.check is False and "unknown algorithm_name 'cosine'" in unknown.grpc.message
        one = rs.band_spectral_distance([1], "sd/client/x.tif")
        assert one.check is False and "must list two band sets" in one.grpc.message
        catalog.create_bandset(["sd/b1.tif", "sd/b2.tif"], bandset_number=3)
        sizes = rs.band_spectral_distance([1, 3], "sd/client/x.tif")
        assert sizes.check is False and sizes.grpc.code == "INVALID_ARGUMENT"
        assert "3 and 2 bands" in sizes.grpc.message
        assert not (root / "sd" / "client" / "x.tif").exists()
    finally:
        rs.close()


def test_the_command_writes_its_output(server, bands):
    running, _ = server
    command = [sys.executable, "-m", "rsgrpc.cli", "spectral-distance"]
    command += ["--target", f"127.0.0.1:{running.port}", "--processes", "1"]
    for i in (1, 2, 3):
        command += ["--first", f"sd/a{i}.tif:1", "--second", f"sd/b{i}.tif"]
    command += ["--algorithm", "sam", "--output", "sd/cli.tif"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "sd/cli.tif:" in result.stdout and "valid pixels" in result.stdout
    got, _ = _read(running.data_root.root, "sd/cli.tif")
    assert_pixels(got, reference(*bands, NODATA, angle=True))


def test_the_client_has_remotiors_signature_and_the_rpc_its_messages():
    parameters = list(inspect.signature(Session.band_spectral_distance).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD] == [
        ("input_bandsets", inspect.Parameter.empty),
        ("output_path", None),
        ("algorithm_name", None),
        ("nodata_value", None),
        ("threshold", None),
        ("n_processes", None),
        ("available_ram", None),
        ("virtual_output", False),
        ("overwrite", False),
        ("bandset_catalog", None),
        ("progress_message", True),
    ]
    service = raster_pb2.DESCRIPTOR.services_by_name["RasterService"]
    method = service.methods_by_name["BandSpectralDistance"]
    assert method.input_type is raster_pb2.BandSpectralDistanceRequest.DESCRIPTOR
