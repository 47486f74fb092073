"""BandMask (Remotior's band_mask) through a real gRPC channel, the Python client and the
command line: pixels against a NumPy/SciPy reference (np.isin, then a binary dilation by a
disk for the buffer), several dtypes with and without nodata, odd sizes, a mask on another
grid, tiled equals untiled with the buffer across tile edges, cancellation, and
parameters refused at the door."""

from __future__ import annotations

import math
import subprocess
import sys
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2
from rasterio.transform import from_origin
from rsgrpc_kernels import band_mask
from scipy import ndimage

from rsgrpc.client import Session
from rsgrpc.engine.paths import DataRoot
from rsgrpc.tools.mask import BAND_MASK, MaskParameters
from rsgrpc.tools.spec import AuxiliaryBand
from rsgrpc.v1 import bandset_pb2, raster_pb2, session_pb2, session_pb2_grpc
from tests.conftest import (
    CRS,
    TRANSFORM,
    operation_metadata,
    operation_updates,
    watch_to_response,
    write_geotiff,
)
from tests.halo_job_checks import outputs_by_tile_edge

NODATA = 255
MASK_NODATA = 99


def disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def missing(array: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:
        return np.zeros(array.shape, bool)
    if math.isnan(nodata):
        return np.isnan(array)
    return array == nodata


def reference(
    band: np.ndarray,
    band_nodata: float | None,
    mask: np.ndarray,
    mask_nodata: float | None,
    values: list[float],
    buffer: int,
    out_nodata: float,
) -> np.ndarray:
    """Nodata where the band or the mask is nodata, or where a listed mask pixel lies
    within the disk of `buffer` pixels; the band's pixel elsewhere."""
    mask_missing = missing(mask, mask_nodata)
    hits = np.isin(mask, values) & ~mask_missing
    if buffer:
        hits = ndimage.binary_dilation(hits, structure=disk(buffer))
    masked = hits | mask_missing | missing(band, band_nodata)
    out = band.copy()
    out[masked] = out_nodata
    return out


def _read(root: Path, path: str):
    with rasterio.open(root / path) as ds:
        return ds.read(1), ds.profile


def _request(
    session: str,
    path: str = "bm/a.tif",
    output: str = "bad/out.tif",
    mask: str | None = "bm/mask.tif",
    **parameters,
) -> raster_pb2.BandMaskRequest:
    parameters.setdefault("mask_values", [1, 3])
    if mask is not None and "mask_vector_path" not in parameters:
        parameters["mask_raster"] = raster_pb2.RasterBand(path=mask)
    return raster_pb2.BandMaskRequest(
        session=session,
        inputs=[raster_pb2.RasterBand(path=path)],
        parameters=raster_pb2.BandMaskParameters(**parameters),
        output=raster_pb2.ToolOutput(path=output, overwrite=True),
    )


def _run(channel, raster_stub, request):
    return watch_to_response(channel, raster_stub.BandMask(request), raster_pb2.BandMaskResponse)


@pytest.fixture(scope="module")
def values(server):
    """A uint8 band (nodata 255) and a mask of classes 0 to 5 (nodata 99) on one odd-sized
    grid, each with scattered nodata."""
    running, _ = server
    rng = np.random.default_rng(11)
    band = rng.integers(0, 250, (93, 71), dtype=np.uint8)
    band[rng.random(band.shape) < 0.05] = NODATA
    mask = rng.choice(np.array([0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5], np.uint8), band.shape)
    mask[rng.random(band.shape) < 0.03] = MASK_NODATA
    root = running.data_root.root
    write_geotiff(root / "bm" / "a.tif", band, nodata=NODATA)
    write_geotiff(root / "bm" / "mask.tif", mask, nodata=MASK_NODATA)
    return band, mask


@pytest.mark.parametrize("buffer", [0, 1, 3])
def test_the_mask_and_its_buffer_equal_the_reference(
    server, session_name, raster_stub, values, buffer
):
    running, channel = server
    band, mask = values
    output = f"bm/out/buffer-{buffer}.tif"
    updates, response = _run(
        channel, raster_stub, _request(session_name, output=output, buffer_pixels=buffer)
    )
    got, profile = _read(running.data_root.root, output)
    assert (profile["dtype"], profile["nodata"], profile["crs"]) == ("uint8", NODATA, CRS)
    expected = reference(band, NODATA, mask, MASK_NODATA, [1, 3], buffer, NODATA)
    np.testing.assert_array_equal(got, expected)
    [out] = response.outputs
    assert (out.input.path, out.output_path) == ("bm/a.tif", output)
    assert out.pixels_changed == np.count_nonzero(got != band)
    assert operation_metadata(updates[-1]).tiles_done >= 1


def test_a_buffer_grows_the_mask_by_a_disk(server, session_name, raster_stub):
    running, channel = server
    band = np.full((21, 23), 7, np.int16)
    mask = np.zeros(band.shape, np.uint8)
    mask[10, 11] = 1
    write_geotiff(running.data_root.root / "bm" / "one.tif", band, nodata=-1)
    write_geotiff(running.data_root.root / "bm" / "one-mask.tif", mask)
    request = _request(
        session_name, "bm/one.tif", "bm/out/one.tif", "bm/one-mask.tif", buffer_pixels=3
    )
    request.parameters.mask_values[:] = [1]
    _run(channel, raster_stub, request)
    got, _ = _read(running.data_root.root, "bm/out/one.tif")
    expected = np.full(band.shape, 7, np.int16)
    expected[7:14, 8:15][disk(3)] = -1
    np.testing.assert_array_equal(got, expected)


DTYPE_CASES = {
    # band dtype, band nodata, mask dtype, mask nodata, values, buffer, nodata_value
    "int16 band, uint16 mask": ("int16", -9999, "uint16", 0, [2, 40000], 2, None),
    "float32 band with NaN nodata, int32 mask": (
        "float32",
        math.nan,
        "int32",
        -1,
        [-5, 3],
        1,
        None,
    ),
    "float64 band, float32 mask with NaN nodata": (
        "float64",
        -1.5,
        "float32",
        math.nan,
        [0.5],
        2,
        None,
    ),
    "int8 band, int8 mask without nodata": ("int8", -128, "int8", None, [-3, 0], 0, None),
    "uint32 band without nodata, nodata_value given": ("uint32", None, "uint8", 9, [1], 1, 4e9),
    "uint16 band, its nodata replaced by nodata_value": ("uint16", 0, "uint8", None, [2], 0, 65535),
}


def _sample(dtype: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return rng.normal(0, 100, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape, dtype=np.int64).astype(dtype)


def _mask_sample(dtype, nodata, values, rng, shape):
    pool = np.array([*values, 4, 6, 6, 6, 6, 6], dtype=dtype)
    mask = rng.choice(pool, shape)
    if nodata is not None:
        mask[rng.random(shape) < 0.04] = nodata
    return mask


@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_each_dtype_keeps_its_type_and_values(server, session_name, raster_stub, case):
    running, channel = server
    dtype, nodata, mask_dtype, mask_nodata, mask_values, buffer, nodata_value = DTYPE_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    shape = (57, 83)
    band = _sample(dtype, rng, shape)
    if nodata is not None:
        band[rng.random(shape) < 0.05] = nodata
    mask = _mask_sample(mask_dtype, mask_nodata, mask_values, rng, shape)
    name = case.replace(" ", "-").replace(",", "")
    root = running.data_root.root
    write_geotiff(root / "bm" / "types" / f"{name}.tif", band, nodata=nodata)
    write_geotiff(root / "bm" / "types" / f"{name}-mask.tif", mask, nodata=mask_nodata)
    extra = {} if nodata_value is None else {"nodata_value": nodata_value}
    request = _request(
        session_name,
        f"bm/types/{name}.tif",
        f"bm/types/out/{name}.tif",
        f"bm/types/{name}-mask.tif",
        buffer_pixels=buffer,
        mask_values=mask_values,
        **extra,
    )
    _run(channel, raster_stub, request)
    got, profile = _read(root, f"bm/types/out/{name}.tif")
    out_nodata = nodata if nodata_value is None else nodata_value
    assert profile["dtype"] == dtype
    if math.isnan(out_nodata):
        assert math.isnan(profile["nodata"])
    else:
        assert profile["nodata"] == out_nodata
    expected = reference(band, nodata, mask, mask_nodata, mask_values, buffer, out_nodata)
    np.testing.assert_array_equal(got, expected)


def test_a_mask_on_another_grid_is_read_onto_each_bands_grid(server, session_name, raster_stub):
    # A mask of 20 m pixels, shifted by one band pixel and covering part of the band:
    # each band pixel reads the mask pixel under its centre; outside the mask, nodata.
    running, channel = server
    rng = np.random.default_rng(3)
    band = rng.integers(1, 200, (60, 50), dtype=np.uint8)
    mask = rng.choice(np.array([0, 0, 0, 1, 2], np.uint8), (20, 18))
    mask[0, 0] = 7  # the mask's nodata
    left, top = TRANSFORM.c + 10.0, TRANSFORM.f - 30.0
    root = running.data_root.root
    write_geotiff(root / "bm" / "grid" / "band.tif", band, nodata=0)
    write_geotiff(
        root / "bm" / "grid" / "mask.tif", mask, nodata=7, transform=from_origin(left, top, 20, 20)
    )
    request = _request(
        session_name, "bm/grid/band.tif", "bm/grid/out.tif", "bm/grid/mask.tif", buffer_pixels=1
    )
    request.parameters.mask_values[:] = [1]
    _run(channel, raster_stub, request)
    got, profile = _read(root, "bm/grid/out.tif")
    assert profile["transform"] == TRANSFORM and got.shape == band.shape
    # The mask on the band's grid, by the band pixels' centres.
    rows = np.floor(((top - TRANSFORM.f) + (np.arange(60) + 0.5) * 10) / 20).astype(int)
    cols = np.floor(((TRANSFORM.c - left) + (np.arange(50) + 0.5) * 10) / 20).astype(int)
    inside = (
        (rows[:, None] >= 0) & (rows[:, None] < 20) & (cols[None, :] >= 0) & (cols[None, :] < 18)
    )
    on_grid = np.full(band.shape, 7, np.uint8)
    on_grid[inside] = mask[np.clip(rows, 0, 19)[:, None], np.clip(cols, 0, 17)[None, :]][inside]
    np.testing.assert_array_equal(got, reference(band, 0, on_grid, 7, [1], 1, 0))
    assert (got[:3] == 0).all()  # above the mask: nodata


def test_an_extent_clips_the_band_and_the_mask_alike(server, session_name, raster_stub, values):
    # Rows 10..49 and columns 5..44 of the band; the buffer sees the mask on that grid only.
    running, channel = server
    band, mask = values
    request = _request(session_name, output="bm/out/extent.tif", buffer_pixels=2)
    request.input_grid.extent.CopyFrom(
        bandset_pb2.Extent(
            left=TRANSFORM.c + 50,
            top=TRANSFORM.f - 100,
            right=TRANSFORM.c + 450,
            bottom=TRANSFORM.f - 500,
        )
    )
    _run(channel, raster_stub, request)
    got, profile = _read(running.data_root.root, "bm/out/extent.tif")
    assert profile["transform"].c == TRANSFORM.c + 50 and got.shape == (40, 40)
    clip = (slice(10, 50), slice(5, 45))
    expected = reference(band[clip], NODATA, mask[clip], MASK_NODATA, [1, 3], 2, NODATA)
    np.testing.assert_array_equal(got, expected)


# --- tiled equals untiled, through the engine -------------------------------------------


@pytest.mark.parametrize("buffer", [0, 5])
def test_many_tiles_equal_one_tile(server, session_name, tmp_path, buffer):
    # The live server's own session, its job planned and then cut into other tiles.
    running, _ = server
    engine_session = running.registry.get(session_name)
    root = DataRoot.at(tmp_path)
    rng = np.random.default_rng(17)
    band = rng.normal(100, 20, (300, 260)).astype(np.float32)
    band[100:140, 30:200] = np.nan
    mask = rng.choice(np.array([0] * 60 + [1, 2], np.int16), band.shape)
    mask[:, 63:66] = np.where(rng.random((300, 3)) < 0.2, 2, 0)  # across a tile seam
    mask[200:210, :] = -1
    write_geotiff(tmp_path / "band.tif", band, nodata=np.nan, block=64)
    write_geotiff(tmp_path / "mask.tif", mask, nodata=-1, block=64)
    parameters = MaskParameters(AuxiliaryBand("mask.tif", 1, "input_mask"), (2.0,), buffer, None)
    outputs = {
        edge: pixels
        for edge, (pixels, _) in outputs_by_tile_edge(
            BAND_MASK, parameters, "band.tif", root, engine_session, tmp_path
        ).items()
    }
    np.testing.assert_array_equal(outputs[64], outputs[512])
    np.testing.assert_array_equal(
        outputs[64], reference(band, np.nan, mask, -1, [2], buffer, np.nan)
    )


def test_mask_values_compare_in_the_masks_type():
    band = np.arange(6, dtype=np.int16).reshape(2, 3)
    mask = np.array([[0.1, 0.2, 1.0], [3.0, np.inf, 0.1]], np.float32)
    got = band_mask.mask_band(band, mask, mask_values=[0.1, np.inf, 1e300], out_nodata=-1)
    np.testing.assert_array_equal(got, [[-1, 1, 2], [3, -1, -1]])
    integers = np.array([[1, 2, 255]], np.uint8)
    got = band_mask.mask_band(
        np.ones((1, 3), np.uint8), integers, mask_values=[1.5, 255, -1, 256], out_nodata=0
    )
    np.testing.assert_array_equal(got, [[1, 1, 0]])


def test_the_declaration_has_its_rpc_signature_and_warm_cases():
    from rsgrpc_kernels.warm import WARM_CASES

    from rsgrpc.client.signatures import SIGNATURES
    from rsgrpc.tools import RASTER_TOOLS

    assert BAND_MASK in RASTER_TOOLS
    service = raster_pb2.DESCRIPTOR.services_by_name["RasterService"]
    assert service.methods_by_name["BandMask"].input_type is raster_pb2.BandMaskRequest.DESCRIPTOR
    spec = SIGNATURES["band_mask"]
    arguments = {name for name, _ in (*spec.remotior, *spec.extensions)}
    assert {flag.argument for flag in BAND_MASK.cli_flags} <= arguments
    assert set(BAND_MASK.warm) <= set(WARM_CASES)


# --- cancel and refusals ------------------------------------------------------------------


def _temporary_files(channel, session_name: str) -> set[Path]:
    session = session_pb2_grpc.SessionServiceStub(channel).GetSession(
        session_pb2.GetSessionRequest(name=session_name)
    )
    return set(Path(session.temporary_directory).iterdir())


def test_cancel_leaves_no_output_and_no_temporary_files(server, session_name, raster_stub):
    running, channel = server
    root = running.data_root.root
    big = root / "bm" / "big.tif"
    rng = np.random.default_rng(5)
    write_geotiff(big, rng.integers(1, 200, (3072, 3072), np.uint8), nodata=0)
    write_geotiff(root / "bm" / "big-mask.tif", rng.integers(0, 50, (3072, 3072), np.uint8))
    before = _temporary_files(channel, session_name)
    request = _request(
        session_name, "bm/big.tif", "bm/cancelled/out.tif", "bm/big-mask.tif", buffer_pixels=300
    )
    operation = raster_stub.BandMask(request)
    updates = operation_updates(channel, operation)
    started = next(u for u in updates if operation_metadata(u).tiles_done >= 1)
    updates.cancel()
    operations = lro_grpc.OperationsStub(channel)
    operations.CancelOperation(lro.CancelOperationRequest(name=started.name))
    final = operations.WaitOperation(lro.WaitOperationRequest(name=started.name, timeout=None))
    assert final.done and final.error.code == code_pb2.CANCELLED
    assert not any((root / "bm" / "cancelled").glob("*"))
    assert _temporary_files(channel, session_name) == before


BAD_PARAMETERS = {
    "no mask": ({"mask": None}, "input_mask is required"),
    "a vector mask": (
        {"mask": None, "mask_vector_path": "bm/fields.gpkg"},
        "vector masks are not served yet",
    ),
    "no mask values": ({"mask_values": []}, "mask_values is empty"),
    "a NaN mask value": ({"mask_values": [1, math.nan]}, "mask_values holds NaN"),
    "a mask value the mask cannot hold": ({"mask_values": [1.5]}, "mask_values holds 1.5"),
    "a negative buffer": ({"buffer_pixels": -1}, "buffer must be from 0 to 512 pixels"),
    "a buffer too large": ({"buffer_pixels": 513}, "buffer must be from 0 to 512 pixels"),
    "a nodata the band cannot hold": ({"nodata_value": 300}, "nodata_value 300 is not a value"),
    "an infinite nodata": ({"nodata_value": math.inf}, "nodata_value must be finite"),
    "a missing mask band": ({"mask_band": 2}, "band 2"),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_bad_parameters_are_invalid_argument(server, session_name, raster_stub, values, case):
    running, _ = server
    parameters, fragment = BAD_PARAMETERS[case]
    parameters = dict(parameters)
    mask_band = parameters.pop("mask_band", None)
    request = _request(session_name, **parameters)
    if mask_band:
        request.parameters.mask_raster.band = mask_band
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandMask(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert fragment in caught.value.details()
    assert str(running.data_root.root) not in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


def test_a_band_without_nodata_needs_a_nodata_value(server, session_name, raster_stub, values):
    running, _ = server
    write_geotiff(running.data_root.root / "bm" / "bare.tif", values[0])
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandMask(_request(session_name, "bm/bare.tif"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "has no nodata value; give nodata_value" in caught.value.details()


def test_a_mask_in_another_crs_is_refused(server, session_name, raster_stub, values):
    running, _ = server
    write_geotiff(
        running.data_root.root / "bm" / "utm34.tif", values[1], nodata=MASK_NODATA, crs="EPSG:32634"
    )
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandMask(_request(session_name, mask="bm/utm34.tif"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not in the CRS of the input bands" in caught.value.details()


def test_a_mask_outside_the_data_root_or_missing_is_refused(
    server, session_name, raster_stub, values
):
    running, _ = server
    for path, code in (
        ("../outside.tif", grpc.StatusCode.PERMISSION_DENIED),
        ("bm/missing.tif", grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.BandMask(_request(session_name, mask=path))
        assert caught.value.code() == code, path
        assert str(running.data_root.root) not in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


# --- the Python client and the command line -----------------------------------------------


def test_the_client_takes_remotiors_positional_order(server, values):
    running, channel = server
    band, mask = values
    root = running.data_root.root
    second = np.where(band == NODATA, 7, band).astype(np.uint8)
    write_geotiff(root / "bm" / "b.tif", second, nodata=7)
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        # input_bands, input_mask, mask_values, output_path, overwrite, buffer
        out = rs.band_mask(["bm/a.tif", "bm/b.tif"], "bm/mask.tif", [3], "bm/client", True, 2)
        assert out.check, out.grpc
        assert out.paths == ["bm/client/a.tif", "bm/client/b.tif"]
        np.testing.assert_array_equal(
            _read(root, out.paths[0])[0], reference(band, NODATA, mask, MASK_NODATA, [3], 2, NODATA)
        )
        got, profile = _read(root, out.paths[1])
        assert profile["nodata"] == 7  # each input's own nodata
        np.testing.assert_array_equal(got, reference(second, 7, mask, MASK_NODATA, [3], 2, 7))

        given = rs.band_mask(
            "bm/a.tif", "bm/mask.tif", [1], "bm/client/given.tif", nodata_value=0, prefix=""
        )
        assert given.check, given.grpc
        got, profile = _read(root, "bm/client/given.tif")
        assert profile["nodata"] == 0
        np.testing.assert_array_equal(got, reference(band, NODATA, mask, MASK_NODATA, [1], 0, 0))

        vector = rs.band_mask("bm/a.tif", "bm/fields.gpkg", [1], "bm/client/v.tif")
        assert vector.check is False and "vector masks are not served yet" in vector.grpc.message
        missing_values = rs.band_mask("bm/a.tif", "bm/mask.tif", None, "bm/client/m.tif")
        assert missing_values.check is False
        assert "mask_values is required" in missing_values.grpc.message
        assert not (root / "bm" / "client" / "v.tif").exists()
        assert not (root / "bm" / "client" / "m.tif").exists()
    finally:
        rs.close()


def test_the_command_writes_its_output(server, values):
    running, _ = server
    band, mask = values
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "mask",
            "--target",
            f"127.0.0.1:{running.port}",
            "--processes",
            "1",
            "--input",
            "bm/a.tif",
            "--mask",
            "bm/mask.tif",
            "--mask-value",
            "1",
            "--mask-value",
            "4",
            "--buffer",
            "1",
            "--output",
            "bm/cli.tif",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "bm/cli.tif:" in result.stdout and "pixels changed" in result.stdout
    got, _ = _read(running.data_root.root, "bm/cli.tif")
    np.testing.assert_array_equal(
        got, reference(band, NODATA, mask, MASK_NODATA, [1, 4], 1, NODATA)
    )
