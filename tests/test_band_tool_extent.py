"""Band tools' extent_list and multiple_resolution through a real gRPC channel (Sieve,
Dilate, Erode and NeighborPixels): each input is clipped (or resampled onto the first
input's grid) before the tool runs, as Remotior's virtual raster of the input, so the
output equals the tool's independent reference applied to the clipped array and not the
whole raster's output clipped afterwards; tiled equals untiled; an extent off an input is
refused."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import grpc
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from scipy import ndimage

from rsgrpc.client import Session
from rsgrpc.engine.band_tool import BandInput, OutputTarget, Placement
from rsgrpc.engine.halo_job import HaloRequest, prepare_halo_job, run_halo_job
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.sieve import SieveRequest, prepare_sieve, run_sieve
from rsgrpc.engine.tiles import TilePlan
from rsgrpc.tools.morphology import DILATION, MorphologyParameters, check_parameters
from rsgrpc.v1 import bandset_pb2, raster_pb2
from tests.compat import references as ref
from tests.conftest import CRS, watch_to_response, write_geotiff

X0, Y0 = 500000.0, 4600000.0
NODATA = 255
SHAPE = (120, 100)


def _classes(seed: int, shape: tuple[int, int], block: int) -> np.ndarray:
    """Squares of four classes with speckle of six, and a nodata patch."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(1, 5, (shape[0] // block + 1, shape[1] // block + 1), dtype=np.uint8)
    array = np.kron(coarse, np.ones((block, block), np.uint8))[: shape[0], : shape[1]]
    speckle = rng.random(shape) < 0.08
    array[speckle] = rng.integers(1, 7, int(speckle.sum()), dtype=np.uint8)
    array[shape[0] // 3 : shape[0] // 3 + 5, 10:40] = NODATA
    return np.ascontiguousarray(array)


@pytest.fixture(scope="module")
def rasters(server) -> dict[str, np.ndarray]:
    """a: 10 m over (X0, Y0); c: 20 m, 100 m north and 200 m east of it, reaching 100 m
    beyond its east edge and 300 m short of its south edge."""
    running, _ = server
    root = running.data_root.root
    a = _classes(41, SHAPE, 6)
    c = _classes(42, (50, 45), 4)
    write_geotiff(root / "bx" / "a.tif", a, nodata=NODATA, block=32)
    write_geotiff(
        root / "bx" / "c.tif",
        c,
        nodata=NODATA,
        block=32,
        transform=from_origin(X0 + 200, Y0 + 100, 20, 20),
    )
    return {"a": a, "c": c}


def _neighbor_sum(array: np.ndarray) -> np.ndarray:
    """The sum of each valid pixel's 3x3 window of valid pixels (outside the raster: none),
    as float32, nodata where the pixel is nodata."""
    valid = array != NODATA
    values = np.where(valid, array, np.nan).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sums = ndimage.generic_filter(values, np.nansum, size=3, mode="constant", cval=np.nan)
    return np.where(valid, sums, NODATA).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Tool:
    rpc: str
    response: type
    request: Callable[..., object]
    reference: Callable[[np.ndarray], np.ndarray]


def _request(message_type, **fields):
    return lambda session, inputs, output, grid: message_type(
        session=session,
        inputs=[raster_pb2.RasterBand(path=p) for p in inputs],
        output=raster_pb2.ToolOutput(path=output, overwrite=True),
        input_grid=grid,
        **fields,
    )


TOOLS = {
    "sieve": Tool(
        "Sieve",
        raster_pb2.SieveResponse,
        _request(raster_pb2.SieveRequest, size=30, connectivity=raster_pb2.CONNECTIVITY_4),
        lambda a: ref.sieve(a, 30, connected=False, nodata=NODATA),
    ),
    "dilation": Tool(
        "Dilate",
        raster_pb2.DilateResponse,
        _request(
            raster_pb2.DilateRequest,
            parameters=raster_pb2.MorphologyParameters(value_list=[5, 6], size=2),
        ),
        lambda a: ref.dilation(a, [5, 6], 2, circular=False, nodata=NODATA),
    ),
    "erosion": Tool(
        "Erode",
        raster_pb2.ErodeResponse,
        _request(
            raster_pb2.ErodeRequest,
            parameters=raster_pb2.MorphologyParameters(
                value_list=[1, 3], size=2, circular_structure=True
            ),
        ),
        lambda a: ref.erosion(a, [1, 3], 2, circular=True, nodata=NODATA),
    ),
    "neighbor_pixels": Tool(
        "NeighborPixels",
        raster_pb2.NeighborPixelsResponse,
        _request(
            raster_pb2.NeighborPixelsRequest,
            parameters=raster_pb2.NeighborPixelsParameters(
                statistic=raster_pb2.NEIGHBOR_STATISTIC_SUM,
                size=1,
                output_data_type=raster_pb2.DATA_TYPE_FLOAT32,
            ),
        ),
        _neighbor_sum,
    ),
}

# Extents and the pixel windows of a.tif they snap to, as Remotior rounds them: each edge
# to the nearest pixel line (the far edges measured from the near ones), within the raster.
EXTENTS = {
    # left 12.3 -> col 12, top 15.6 -> row 16; right 68.4 pixels on -> col 80,
    # bottom 83.8 pixels down -> row 100.
    "inside": ((X0 + 123, Y0 - 156, X0 + 804, Y0 - 998), (slice(16, 100), slice(12, 80))),
    # left and top beyond the raster: kept at its edges; right 55.4 -> col 55,
    # bottom 66.7 -> row 67.
    "over the top left": ((X0 - 50, Y0 + 77, X0 + 554, Y0 - 667), (slice(0, 67), slice(0, 55))),
    # right and bottom beyond the raster: kept at its edges.
    "over the bottom right": (
        (X0 + 123, Y0 - 156, X0 + 1333, Y0 - 1500),
        (slice(16, 120), slice(12, 100)),
    ),
}


def _grid(extent=None, *, first_input_resolution: bool = False) -> raster_pb2.InputGrid:
    grid = raster_pb2.InputGrid(first_input_resolution=first_input_resolution)
    if extent is not None:
        left, top, right, bottom = extent
        grid.extent.CopyFrom(bandset_pb2.Extent(left=left, top=top, right=right, bottom=bottom))
    return grid


def _read(root, path: str):
    with rasterio.open(root / path) as ds:
        return ds.read(1), ds.transform, ds.crs


def _run(server, stub, session_name, tool: Tool, inputs, output, grid):
    _, channel = server
    operation = getattr(stub, tool.rpc)(tool.request(session_name, inputs, output, grid))
    return watch_to_response(channel, operation, tool.response)[1]


@pytest.mark.parametrize("extent_name", list(EXTENTS))
@pytest.mark.parametrize("name", list(TOOLS))
def test_extent_list_runs_the_tool_on_the_clipped_raster(
    server, session_name, raster_stub, rasters, name, extent_name
):
    running, _ = server
    tool = TOOLS[name]
    extent, window = EXTENTS[extent_name]
    output = f"bx/extent/{name}-{extent_name.replace(' ', '-')}.tif"
    response = _run(server, raster_stub, session_name, tool, ["bx/a.tif"], output, _grid(extent))
    got, transform, crs = _read(running.data_root.root, output)
    clipped = np.ascontiguousarray(rasters["a"][window])
    np.testing.assert_array_equal(got, tool.reference(clipped))
    # Not the whole raster's output clipped afterwards: the tool saw the clip only.
    assert not np.array_equal(got, tool.reference(rasters["a"])[window])
    rows, cols = window
    assert transform == from_origin(X0 + 10 * cols.start, Y0 - 10 * rows.start, 10, 10)
    assert crs == CRS
    [out] = response.outputs
    assert out.output_path == output
    assert out.pixels_changed == np.count_nonzero(got != clipped)


@pytest.mark.parametrize("name", list(TOOLS))
def test_multiple_resolution_false_reads_each_input_onto_the_first_inputs_grid(
    server, session_name, raster_stub, rasters, name
):
    running, _ = server
    tool = TOOLS[name]
    output = f"bx/first-grid/{name}"
    _run(
        server,
        raster_stub,
        session_name,
        tool,
        ["bx/a.tif", "bx/c.tif"],
        output,
        _grid(first_input_resolution=True),
    )
    root = running.data_root.root
    got_a, transform_a, _ = _read(root, f"{output}/a.tif")
    np.testing.assert_array_equal(got_a, tool.reference(rasters["a"]))
    # c's 20 m pixels, each four 10 m pixels of a's grid: c's rows 5 to 49 fall on a's
    # rows 0 to 89, its columns 0 to 39 on a's columns 20 to 99; the rest of a's extent
    # is outside c (its nodata).
    placed = np.full(SHAPE, NODATA, np.uint8)
    placed[0:90, 20:100] = np.repeat(np.repeat(rasters["c"][5:50, 0:40], 2, axis=0), 2, axis=1)
    got_c, transform_c, _ = _read(root, f"{output}/c.tif")
    assert transform_c == transform_a == from_origin(X0, Y0, 10, 10)
    np.testing.assert_array_equal(got_c, tool.reference(placed))


def test_inputs_on_other_grids_are_clipped_to_the_first_inputs_extent(
    server, session_name, raster_stub, rasters
):
    # As Remotior: with no extent, the first input's extent on each input's own grid.
    running, _ = server
    tool = TOOLS["dilation"]
    output = "bx/own-grid"
    _run(server, raster_stub, session_name, tool, ["bx/a.tif", "bx/c.tif"], output, _grid())
    got, transform, _ = _read(running.data_root.root, f"{output}/c.tif")
    assert transform == from_origin(X0 + 200, Y0, 20, 20)
    # c's rows 5 to 49 and columns 0 to 39 lie within a's extent.
    clipped = np.ascontiguousarray(rasters["c"][5:50, 0:40])
    np.testing.assert_array_equal(got, tool.reference(clipped))


@pytest.mark.parametrize("name", list(TOOLS))
def test_an_extent_off_an_input_is_refused_and_writes_nothing(
    server, session_name, raster_stub, rasters, name
):
    running, _ = server
    tool = TOOLS[name]
    far = (X0 + 10_000, Y0, X0 + 10_100, Y0 - 100)
    with pytest.raises(grpc.RpcError) as raised:
        _run(
            server, raster_stub, session_name, tool, ["bx/a.tif"], f"bx/off/{name}.tif", _grid(far)
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not overlap input 'bx/a.tif'" in raised.value.details()
    assert str(running.data_root.root) not in raised.value.details()
    assert not (running.data_root.root / "bx" / "off").exists()


def test_a_list_of_output_paths_places_each_input_on_the_calls_first_input(server, rasters):
    # The client sends one request per output path; the second still reads c onto a's grid.
    running, channel = server
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        out = rs.band_dilation(
            ["bx/a.tif", "bx/c.tif"],
            [5, 6],
            2,
            ["bx/list/a.tif", "bx/list/c.tif"],
            True,
            None,
            multiple_resolution=False,
        )
        assert out.check, out.grpc
        got, transform, _ = _read(running.data_root.root, "bx/list/c.tif")
    finally:
        rs.close()
    assert transform == from_origin(X0, Y0, 10, 10)
    placed = np.full(SHAPE, NODATA, np.uint8)
    placed[0:90, 20:100] = np.repeat(np.repeat(rasters["c"][5:50, 0:40], 2, axis=0), 2, axis=1)
    np.testing.assert_array_equal(got, TOOLS["dilation"].reference(placed))


# --- tiled equals untiled, through the engine -------------------------------------------


def _with_tiles(job, edge: int):
    plans = tuple(TilePlan(p.shape, edge, edge, p.in_flight, p.peak_bytes) for p in job.plans)
    return dataclasses.replace(job, plans=plans)


@pytest.mark.parametrize("placement_name", ["extent", "first input resolution"])
@pytest.mark.parametrize("tool_name", ["sieve", "dilation"])
def test_many_tiles_equal_one_tile(server, session_name, rasters, tool_name, placement_name):
    running, _ = server
    engine_session = running.registry.get(session_name)
    root = DataRoot.at(running.data_root.root)
    extent, _ = EXTENTS["inside"]
    placement = (
        Placement(extent=extent)
        if placement_name == "extent"
        else Placement(extent=extent, multiple_resolution=False)
    )
    profile = OutputProfile("zstd", level=1, block_size=16)
    inputs = (BandInput("bx/c.tif"),) if placement_name != "extent" else (BandInput("bx/a.tif"),)
    if placement_name != "extent":
        # c read onto a's grid: the reference names a as the call's first input.
        placement = dataclasses.replace(placement, reference=BandInput("bx/a.tif"))
    outputs = {}
    for edge in (16, 128):
        target = OutputTarget(f"bx/tiled/{tool_name}-{placement_name}-{edge}.tif", overwrite=True)
        operation = Operation(engine_session.name, tool_name, owner="anonymous")
        if tool_name == "sieve":
            request = SieveRequest(inputs, 30, 8, target, placement)
            job = _with_tiles(prepare_sieve(request, root, engine_session, profile), edge)
            run_sieve(job, engine_session, operation)
        else:
            parameters = check_parameters(
                MorphologyParameters("dilation", "value_list", (5.0, 6.0), 2, True)
            )
            request = HaloRequest(DILATION, parameters, inputs, target, placement)
            job = _with_tiles(prepare_halo_job(request, root, engine_session, profile), edge)
            run_halo_job(job, engine_session, operation)
        if edge == 16:  # 84 x 68 pixels: 30 tiles (the sieve counts each twice)
            assert operation.progress.tiles_total >= 30
        outputs[edge] = _read(running.data_root.root, target.path)[0]
    np.testing.assert_array_equal(outputs[16], outputs[128])
    window = EXTENTS["inside"][1]
    if placement_name == "extent":
        placed = rasters["a"][window]
    else:
        whole = np.full(SHAPE, NODATA, np.uint8)
        whole[0:90, 20:100] = np.repeat(np.repeat(rasters["c"][5:50, 0:40], 2, axis=0), 2, axis=1)
        placed = whole[window]  # the extent on a's 10 m lines, not kept within c
    placed = np.ascontiguousarray(placed)
    if tool_name == "sieve":
        expected = ref.sieve(placed, 30, connected=True, nodata=NODATA)
    else:
        expected = ref.dilation(placed, [5, 6], 2, circular=True, nodata=NODATA)
    np.testing.assert_array_equal(outputs[16], expected)
