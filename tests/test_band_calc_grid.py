"""Band calc's grid options through the gRPC door (Remotior's extent_intersection,
extent_list, extent_raster, align_raster and xy_resolution_list): the output grid as
Remotior places it, each input read onto it by nearest neighbour, pixel for pixel against
an independent reference and GDAL's own warper."""

from __future__ import annotations

import dataclasses
import logging
import math
from fractions import Fraction

import grpc
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from rsgrpc.engine.band_calc import (
    BandCalcRequest,
    NamedInput,
    plan_band_calc,
    prepare_band_calc,
    run_band_calc,
)
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.grid import read_on_grid
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile, describe
from rsgrpc.engine.session import ServerLimits, SessionRegistry, SessionSettings
from rsgrpc.engine.tiles import Tile, TilePlan
from rsgrpc.v1 import bandset_pb2, raster_pb2
from tests.conftest import CRS, watch_to_response, write_geotiff

X0, Y0 = 500000.0, 4600000.0
NODATA = -32768.0


def _uint16(seed: int, shape: tuple[int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.integers(1, 5000, size=shape).astype(np.uint16)
    array[rng.random(shape) < 0.05] = 0  # nodata here and there
    return array


def _write_rasters(root) -> dict[str, tuple[np.ndarray, rasterio.Affine, float | None]]:
    """The test's rasters by name: array, transform and nodata."""
    rasters = {
        "a10": (_uint16(1, (30, 40)), from_origin(X0, Y0, 10, 10), 0),
        "b10": (_uint16(2, (30, 40)), from_origin(X0 + 100, Y0 - 100, 10, 10), 0),
        "c20": (_uint16(3, (15, 20)), from_origin(X0, Y0, 20, 20), 0),
        "f10": (
            np.random.default_rng(4).normal(5, 2, (30, 40)).astype(np.float32),
            from_origin(X0 + 100, Y0 - 100, 10, 10),
            None,
        ),
        "far": (_uint16(5, (10, 10)), from_origin(X0 + 10000, Y0, 10, 10), 0),
        "extent": (np.ones((10, 20), np.uint8), from_origin(X0 + 50, Y0 - 50, 10, 10), None),
        "align20": (np.ones((5, 5), np.uint8), from_origin(X0 + 5, Y0 + 5, 20, 20), None),
    }
    for name, (array, transform, nodata) in rasters.items():
        write_geotiff(root / "grid" / f"{name}.tif", array, nodata=nodata, transform=transform)
    write_geotiff(
        root / "grid" / "utm32.tif",
        np.ones((30, 40), np.uint8),
        transform=from_origin(X0, Y0, 10, 10),
        crs="EPSG:32632",
    )
    (root / "grid" / "text.tif").write_bytes(b"not a raster at all")
    return rasters


@pytest.fixture(scope="module")
def rasters(server):
    root = server[0].data_root.root
    return root, _write_rasters(root)


def nearest(
    array: np.ndarray,
    transform: rasterio.Affine,
    grid: rasterio.Affine,
    shape: tuple[int, int],
    fill: float,
) -> np.ndarray:
    """`array` read onto `grid` by an independent rule: each output pixel's centre, in
    exact fractions, and the input pixel that holds it (on an edge, the one after it)."""
    half = Fraction(1, 2)
    src_left, src_top = Fraction(transform.c), Fraction(transform.f)
    src_x, src_y = Fraction(transform.a), Fraction(-transform.e)
    left, top, size_x, size_y = (Fraction(v) for v in (grid.c, grid.f, grid.a, -grid.e))
    rows = [math.floor((src_top - (top - (r + half) * size_y)) / src_y) for r in range(shape[0])]
    cols = [math.floor((left + (c + half) * size_x - src_left) / src_x) for c in range(shape[1])]
    out = np.full(shape, fill, array.dtype)
    cols_array = np.array(cols)
    inside = (cols_array >= 0) & (cols_array < array.shape[1])
    for r, row in enumerate(rows):
        if 0 <= row < array.shape[0]:
            out[r, inside] = array[row, cols_array[inside]]
    return out


def gdal_nearest(
    array: np.ndarray,
    transform: rasterio.Affine,
    grid: rasterio.Affine,
    shape: tuple[int, int],
    fill: float,
) -> np.ndarray:
    """The same through GDAL's warper, nearest neighbour."""
    out = np.full(shape, fill, array.dtype)
    reproject(
        array,
        out,
        src_transform=transform,
        src_crs=CRS,
        dst_transform=grid,
        dst_crs=CRS,
        resampling=Resampling.nearest,
        src_nodata=fill,
        dst_nodata=fill,
    )
    return out


def _on_grid(rasters, name: str, grid: rasterio.Affine, shape) -> np.ndarray:
    array, transform, nodata = rasters[name]
    fill = 0 if nodata is None else nodata
    expected = nearest(array, transform, grid, shape, fill)
    np.testing.assert_array_equal(expected, gdal_nearest(array, transform, grid, shape, fill))
    return expected


def _request(session, expression, inputs, output, **fields) -> raster_pb2.BandCalcRequest:
    return raster_pb2.BandCalcRequest(
        session=session,
        expression=expression,
        inputs=[raster_pb2.RasterInput(name=n, path=f"grid/{p}.tif") for n, p in inputs.items()],
        output_path=output,
        overwrite=True,
        **fields,
    )


def _run(server, raster_stub, request):
    operation = raster_stub.BandCalc(request)
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    with rasterio.open(server[0].data_root.root / request.output_path) as ds:
        return ds.read(1), ds.transform, ds.crs


def _sum(*arrays: np.ndarray) -> np.ndarray:
    """`"a" + "b"` as band calc computes it: float32, nodata where an input is 0."""
    values = sum(a.astype(np.float32) for a in arrays)
    masked = np.logical_or.reduce([a == 0 for a in arrays])
    return np.where(masked, NODATA, values).astype(np.float32)


def test_inputs_of_different_extents_give_their_intersection(
    server, raster_stub, session_name, rasters
):
    _, r = rasters
    got, transform, crs = _run(
        server,
        raster_stub,
        _request(session_name, '"a" + "b"', {"a": "a10", "b": "b10"}, "grid/out/inter.tif"),
    )
    assert transform == from_origin(X0 + 100, Y0 - 100, 10, 10)
    assert got.shape == (20, 30) and crs == CRS
    a, b = r["a10"][0][10:, 10:], r["b10"][0][:20, :30]
    np.testing.assert_array_equal(got, _sum(a, b))


def test_extent_union_reads_nodata_outside_each_input(server, raster_stub, session_name, rasters):
    _, r = rasters
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(
            session_name,
            'max("a", "b")',
            {"a": "a10", "b": "b10"},
            "grid/out/union.tif",
            extent_union=True,
            nodata_mask=raster_pb2.BAND_CALC_NODATA_MASK_ALL,
        ),
    )
    grid = from_origin(X0, Y0, 10, 10)
    assert transform == grid and got.shape == (40, 50)
    a = _on_grid(r, "a10", grid, (40, 50))
    b = _on_grid(r, "b10", grid, (40, 50))
    assert (a[35:, :] == 0).all() and (b[:10, :] == 0).all()  # outside: the nodata
    stack = np.ma.masked_equal(np.stack([a, b]).astype(np.float32), 0)
    expected = stack.max(axis=0).filled(NODATA).astype(np.float32)
    np.testing.assert_array_equal(got, expected)


def test_union_of_inputs_without_nodata_reads_zero_outside_them(
    server, raster_stub, session_name, rasters
):
    _, r = rasters
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(
            session_name,
            '"f" * 2 + "e"',
            {"f": "f10", "e": "extent"},
            "grid/out/union_zero.tif",
            extent_union=True,
        ),
    )
    # On the pixel lines of "f", the first input of the finest pixel size
    grid = from_origin(X0 + 50, Y0 - 50, 10, 10)
    assert transform == grid and got.shape == (35, 45)
    f = _on_grid(r, "f10", grid, (35, 45))
    e = _on_grid(r, "extent", grid, (35, 45))
    assert (f[:5, :] == 0).all() and (e[10:, :] == 0).all()
    np.testing.assert_array_equal(got, f * np.float32(2) + e.astype(np.float32))


def test_extent_list_snaps_to_the_inputs_pixel_lines(server, raster_stub, session_name, rasters):
    _, r = rasters
    extent = bandset_pb2.Extent(left=X0 + 104, top=Y0 - 203, right=X0 + 296, bottom=Y0 - 297)
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(session_name, '"a" * 1', {"a": "a10"}, "grid/out/extent.tif", extent=extent),
    )
    assert transform == from_origin(X0 + 100, Y0 - 200, 10, 10)
    a = r["a10"][0]
    np.testing.assert_array_equal(got, _sum(a[20:30, 10:30]))


def test_extent_list_is_kept_inside_the_reference_input(server, raster_stub, session_name, rasters):
    _, r = rasters
    extent = bandset_pb2.Extent(left=X0 - 45, top=Y0 + 52, right=X0 + 148, bottom=Y0 - 1000)
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(session_name, '"a" * 1', {"a": "a10"}, "grid/out/clamped.tif", extent=extent),
    )
    # left X0 - 40 (-4.5 rounds to even) kept at X0, top Y0 + 50 at Y0; right X0 + 150
    # from the kept left; the bottom kept at the input's
    assert transform == from_origin(X0, Y0, 10, 10)
    np.testing.assert_array_equal(got, _sum(r["a10"][0][:, :15]))


def test_extent_raster_gives_its_bounds(server, raster_stub, session_name, rasters):
    _, r = rasters
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(
            session_name,
            '"a" + "b"',
            {"a": "a10", "b": "b10"},
            "grid/out/extent_raster.tif",
            extent_raster_path="grid/extent.tif",
        ),
    )
    grid = from_origin(X0 + 50, Y0 - 50, 10, 10)
    assert transform == grid and got.shape == (10, 20)
    a = _on_grid(r, "a10", grid, (10, 20))
    b = _on_grid(r, "b10", grid, (10, 20))
    np.testing.assert_array_equal(a, r["a10"][0][5:15, 5:25])
    np.testing.assert_array_equal(got, _sum(a, b))


def test_align_raster_gives_its_origin_and_pixel_size(server, raster_stub, session_name, rasters):
    _, r = rasters
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(
            session_name,
            '"a" * 1',
            {"a": "a10"},
            "grid/out/aligned.tif",
            align_raster_path="grid/align20.tif",
            pixel_size_x=7.0,  # not used with an align raster, as in Remotior
        ),
    )
    # The input's extent on the align raster's pixel lines: 5 m off, 20 m pixels, whose
    # centres fall 5 m inside a 10 m pixel.
    grid = from_origin(X0 + 5, Y0 + 5, 20, 20)
    assert transform == grid and got.shape == (15, 20)
    a = _on_grid(r, "a10", grid, (15, 20))
    np.testing.assert_array_equal(a, r["a10"][0][::2, 1::2])
    np.testing.assert_array_equal(got, _sum(a))


def test_align_raster_with_an_extent(server, raster_stub, session_name, rasters):
    _, r = rasters
    extent = bandset_pb2.Extent(left=X0 + 101, top=Y0 - 52, right=X0 + 262, bottom=Y0 - 139)
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(
            session_name,
            '"a" + "b"',
            {"a": "a10", "b": "b10"},
            "grid/out/aligned_extent.tif",
            align_raster_path="grid/align20.tif",
            extent=extent,
        ),
    )
    # left X0 + 5 + 5 * 20, top Y0 + 5 - 3 * 20, right + 8 * 20, bottom - 4 * 20
    grid = from_origin(X0 + 105, Y0 - 55, 20, 20)
    assert transform == grid and got.shape == (4, 8)
    a = _on_grid(r, "a10", grid, (4, 8))
    b = _on_grid(r, "b10", grid, (4, 8))
    np.testing.assert_array_equal(got, _sum(a, b))


def test_mixed_resolutions_take_the_finest_by_default(server, raster_stub, session_name, rasters):
    _, r = rasters
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(session_name, '"b8" + "b11"', {"b11": "c20", "b8": "a10"}, "grid/out/mixed.tif"),
    )
    grid = from_origin(X0, Y0, 10, 10)
    assert transform == grid and got.shape == (30, 40)
    c = _on_grid(r, "c20", grid, (30, 40))
    np.testing.assert_array_equal(c, np.kron(r["c20"][0], np.ones((2, 2), np.uint16)))
    np.testing.assert_array_equal(got, _sum(r["a10"][0], c))


def test_xy_resolution_list_gives_the_pixel_size(server, raster_stub, session_name, rasters):
    _, r = rasters
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(
            session_name,
            '"b8" + "b11"',
            {"b8": "a10", "b11": "c20"},
            "grid/out/mixed20.tif",
            pixel_size_x=20.0,
            pixel_size_y=20.0,
        ),
    )
    grid = from_origin(X0, Y0, 20, 20)
    assert transform == grid and got.shape == (15, 20)
    a = _on_grid(r, "a10", grid, (15, 20))
    # A 20 m pixel's centre is on the corner of four 10 m pixels: the one after it.
    np.testing.assert_array_equal(a, r["a10"][0][1::2, 1::2])
    np.testing.assert_array_equal(got, _sum(a, r["c20"][0]))


def test_unaligned_pixel_size_samples_as_gdal(server, raster_stub, session_name, rasters):
    _, r = rasters
    got, transform, _ = _run(
        server,
        raster_stub,
        _request(
            session_name,
            '"a" * 1',
            {"a": "a10"},
            "grid/out/fifteen.tif",
            pixel_size_x=15.0,
            pixel_size_y=7.0,
        ),
    )
    # 400 m / 15 = 26.7 and 300 m / 7 = 42.9 pixels: rounded, as Remotior
    grid = from_origin(X0, Y0, 15, 7)
    assert transform == grid and got.shape == (43, 27)
    np.testing.assert_array_equal(got, _sum(_on_grid(r, "a10", grid, (43, 27))))


def test_a_scripts_lines_share_the_grid(server, raster_stub, session_name, rasters):
    root, r = rasters
    request = _request(
        session_name,
        '"a" + "b" @ s1\n"s1" * 2 @ s2',
        {"a": "a10", "b": "b10"},
        "grid/out/script",
    )
    operation = raster_stub.BandCalc(request)
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    expected = _sum(r["a10"][0][10:, 10:], r["b10"][0][:20, :30])
    with rasterio.open(root / "grid" / "out" / "script" / "s1.tif") as ds:
        assert ds.transform == from_origin(X0 + 100, Y0 - 100, 10, 10)
        np.testing.assert_array_equal(ds.read(1), expected)
    with rasterio.open(root / "grid" / "out" / "script" / "s2.tif") as ds:
        assert ds.transform == from_origin(X0 + 100, Y0 - 100, 10, 10)
        np.testing.assert_array_equal(
            ds.read(1), np.where(expected == NODATA, NODATA, expected * 2).astype(np.float32)
        )


@pytest.mark.parametrize(
    ("inputs", "fields", "code", "words"),
    [
        (
            {"a": "a10"},
            {"extent": bandset_pb2.Extent(left=X0 + 100, top=Y0 - 200, right=X0, bottom=Y0)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "empty or inverted",
        ),
        (
            {"a": "a10"},
            {
                "extent": bandset_pb2.Extent(
                    left=X0 + 5000, top=Y0 + 5000, right=X0 + 6000, bottom=Y0 + 4000
                )
            },
            grpc.StatusCode.INVALID_ARGUMENT,
            "does not overlap",
        ),
        ({"a": "a10"}, {"pixel_size_x": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "pixel size x"),
        (
            {"a": "a10"},
            {"pixel_size_y": -10.0},
            grpc.StatusCode.INVALID_ARGUMENT,
            "pixel size y",
        ),
        (
            {"a": "a10", "b": "far"},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "do not intersect",
        ),
        (
            {"a": "a10", "b": "utm32"},
            {},
            grpc.StatusCode.INVALID_ARGUMENT,
            "different CRSs",
        ),
        (
            {"a": "a10"},
            {"align_raster_path": "grid/utm32.tif"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "different CRSs",
        ),
        (
            {"a": "a10"},
            {"extent_raster_path": "grid/text.tif"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "only GeoTIFF",
        ),
        (
            {"a": "a10"},
            {"extent_raster_path": "grid/none.tif"},
            grpc.StatusCode.NOT_FOUND,
            "extent_raster_path",
        ),
        (
            {"a": "a10"},
            {"align_raster_path": "../outside.tif"},
            grpc.StatusCode.PERMISSION_DENIED,
            "align_raster_path",
        ),
    ],
    ids=[
        "inverted extent",
        "extent off the inputs",
        "zero pixel size",
        "negative pixel size",
        "no intersection",
        "inputs in two CRSs",
        "align raster in another CRS",
        "extent raster not a GeoTIFF",
        "extent raster missing",
        "align raster outside the root",
    ],
)
def test_bad_grid_options_are_refused_and_write_nothing(
    raster_stub, session_name, rasters, inputs, fields, code, words
):
    root, _ = rasters
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandCalc(
            _request(
                session_name, " + ".join(f'"{n}"' for n in inputs), inputs, "grid/no.tif", **fields
            )
        )
    assert caught.value.code() is code, caught.value.details()
    assert words in caught.value.details()
    assert str(root) not in caught.value.details()
    assert not (root / "grid" / "no.tif").exists()


# Tiled equals untiled: the engine's job with small tiles against the whole raster at once.


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = DataRoot.at(tmp_path_factory.mktemp("data"))
    rasters = _write_rasters(root.root)
    registry = SessionRegistry(
        ServerLimits(process_count=2, ram_mib=4096, max_sessions=1, max_idle_timeout_s=3600),
        temp_root=tmp_path_factory.mktemp("temp"),
    )
    session = registry.create(
        SessionSettings(process_count=2, available_ram_mib=2048, log_level=logging.WARNING),
        owner="anonymous",
    )
    yield root, rasters, session
    registry.close_all()


PROFILE = OutputProfile("zstd", level=1, block_size=16)


@pytest.mark.parametrize(
    "options",
    [
        {"extent_union": True},
        {"pixel_size": (15.0, 7.0)},
        {"align_raster_path": "grid/align20.tif", "extent_union": True},
    ],
    ids=["union", "unaligned pixels", "aligned union"],
)
def test_tiled_equals_untiled(engine, options):
    root, _, session = engine
    outputs = {}
    for edge in (16, 48, None):
        output = f"tiled/{len(options)}-{sorted(options)[0]}-{edge}.tif"
        request = BandCalcRequest(
            'max("a", "b", "c")',
            (
                NamedInput("a", "grid/a10.tif"),
                NamedInput("b", "grid/b10.tif"),
                NamedInput("c", "grid/c20.tif"),
            ),
            output,
            overwrite=True,
            nodata_mask="all",
            **options,
        )
        job = prepare_band_calc(request, root, PROFILE)
        plan = plan_band_calc(job, session)
        if edge is not None:
            plan = TilePlan(plan.shape, edge, edge, plan.in_flight, plan.peak_bytes)
            assert edge > 16 or plan.tile_count > 1
        run_band_calc(job, plan, session, Operation(session.name, "BandCalc", owner=session.owner))
        with rasterio.open(root.root / output) as ds:
            outputs[edge] = ds.read(1)
    np.testing.assert_array_equal(outputs[16], outputs[None])
    np.testing.assert_array_equal(outputs[48], outputs[None])


def test_any_tile_reads_the_reference(engine):
    root, rasters, _ = engine
    request = BandCalcRequest(
        '"a" + "c"',
        (NamedInput("a", "grid/a10.tif"), NamedInput("c", "grid/c20.tif")),
        "unused.tif",
        pixel_size=(15.0, 7.0),
        extent_union=True,
    )
    job = prepare_band_calc(request, root, PROFILE)
    grid = job.output_grid
    affine = rasterio.Affine(*grid.transform)
    for index, name in enumerate(("a10", "c20")):
        info = describe(root.path(f"grid/{name}.tif"), 1)
        whole = _on_grid(rasters, name, affine, grid.shape)
        for tile in (
            Tile(0, 0, 5, 7),
            Tile(3, 11, 17, 9),
            Tile(40, 20, 3, 7),
            Tile(0, 0, *grid.shape),
        ):
            got = read_on_grid(info.path, 1, tile, job.sampling[index])
            np.testing.assert_array_equal(got, whole[tile.slices()])


def test_inputs_on_one_grid_are_read_as_they_are(engine):
    root, _, _ = engine
    request = BandCalcRequest(
        '"a" * 2', (NamedInput("a", "grid/a10.tif"),), "unused.tif", extent_union=True
    )
    job = prepare_band_calc(request, root, PROFILE)
    assert job.sampling == (None,)
    assert job.output_grid.transform == tuple(from_origin(X0, Y0, 10, 10))[:6]


def test_the_python_client_sends_the_grid_options():
    from rsgrpc.client import Session
    from tests.test_client_signatures import _RecordingChannel

    channel = _RecordingChannel()
    rs = Session(channel=channel)
    rs.band_calc('"a"', "o/x", [["a.tif", "a"]])
    rs.band_calc(
        '"a"',
        "o/x",
        [["a.tif", "a"]],
        align_raster="al.tif",
        extent_raster="ex.tif",
        extent_list=[1, 9, 5, 2],
        extent_intersection=False,
        xy_resolution_list=[20, None],
    )
    default, given = channel.requests["BandCalc"]
    assert not default.extent_union
    assert not default.HasField("extent")
    assert (default.extent_raster_path, default.align_raster_path) == ("", "")
    assert not default.HasField("pixel_size_x") and not default.HasField("pixel_size_y")
    assert given.extent_union
    assert given.extent == bandset_pb2.Extent(left=1, top=9, right=5, bottom=2)
    assert (given.extent_raster_path, given.align_raster_path) == ("ex.tif", "al.tif")
    assert given.pixel_size_x == 20.0 and not given.HasField("pixel_size_y")
    refused = rs.band_calc('"a"', "o/x", [["a.tif", "a"]], extent_list=[1, 2, 3])
    assert not refused.check and "extent_list" in refused.extra["message"]
    assert len(channel.requests["BandCalc"]) == 2


def test_engine_grid_options_are_checked_at_the_door(engine):
    root, _, _ = engine
    with pytest.raises(InvalidArgumentError, match="pixel size x"):
        prepare_band_calc(
            dataclasses.replace(
                BandCalcRequest('"a"', (NamedInput("a", "grid/a10.tif"),), "unused.tif"),
                pixel_size=(float("nan"), None),
            ),
            root,
            PROFILE,
        )


def test_the_output_grid_counts_against_the_limits(raster_stub, session_name, rasters):
    root, _ = rasters
    request = _request(
        session_name,
        '"a" + "b"',
        {"a": "a10", "b": "far"},
        "grid/huge.tif",
        extent_union=True,
        pixel_size_x=0.01,
        pixel_size_y=0.01,
    )
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandCalc(request)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
    assert str(root) not in caught.value.details()
    assert not (root / "grid" / "huge.tif").exists()


def test_a_vrt_input_is_read_onto_the_grid(server, raster_stub, session_name, rasters):
    _, r = rasters
    operation = raster_stub.BandCalc(
        _request(session_name, '"b" * 1', {"b": "b10"}, "grid/out/b.vrt", virtual_output=True)
    )
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    request = raster_pb2.BandCalcRequest(
        session=session_name,
        expression='"c" + "b"',
        inputs=[
            raster_pb2.RasterInput(name="c", path="grid/c20.tif"),
            raster_pb2.RasterInput(name="b", path="grid/out/b.vrt"),
        ],
        output_path="grid/out/from_vrt.tif",
        overwrite=True,
    )
    got, transform, _ = _run(server, raster_stub, request)
    # The 10 m VRT is the finest: its pixel lines, over the intersection.
    grid = from_origin(X0 + 100, Y0 - 100, 10, 10)
    assert transform == grid and got.shape == (20, 30)
    c = _on_grid(r, "c20", grid, (20, 30))
    b = r["b10"][0][:20, :30]
    values = c.astype(np.float32) + b.astype(np.float32)
    expected = np.where((c == 0) | (b == 0), NODATA, values).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
