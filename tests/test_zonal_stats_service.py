"""ZonalStats (Remotior's raster_zonal_stats) through a real gRPC channel, the Python
client and the command line: every statistic against a NumPy reference computed here per
zone (masks, np.sum/math.fsum, np.mean, np.std, np.median, np.percentile) for several
zone and value types with nodata in both, odd sizes and several tiles; zones on another
grid; Remotior's CSV text; tiled equals untiled; cancellation; and refusals."""

from __future__ import annotations

import dataclasses
import inspect
import math
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2
from rasterio.transform import from_origin

from rsgrpc.client import Session
from rsgrpc.engine.band_tool import BandInput, Placement
from rsgrpc.engine.errors import CancelledError
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.table_job import TableRequest, prepare_table_job, run_table_job
from rsgrpc.engine.tiles import TilePlan
from rsgrpc.tools.zonal_stats import RASTER_ZONAL_STATS, zonal_parameters
from rsgrpc.v1 import bandset_pb2, raster_pb2
from tests.conftest import operation_metadata, operation_response, watch_operation, write_geotiff

S = raster_pb2
ALL = [
    S.ZONAL_STATISTIC_COUNT,
    S.ZONAL_STATISTIC_SUM,
    S.ZONAL_STATISTIC_MEAN,
    S.ZONAL_STATISTIC_MIN,
    S.ZONAL_STATISTIC_MAX,
    S.ZONAL_STATISTIC_STANDARD_DEVIATION,
    S.ZONAL_STATISTIC_MEDIAN,
    S.ZONAL_STATISTIC_PERCENTILE,
]
ALL_COLUMNS = ["Count", "Sum", "Mean", "Min", "Max", "StandardDeviation", "Median"]
PERCENTS = [0.0, 1.0, 12.5, 25.0, 50.0, 90.0, 99.0, 100.0]


def reference(
    values: np.ndarray,
    value_nodata: float | None,
    zones: np.ndarray,
    zone_nodata: float | None,
    percents=PERCENTS,
) -> dict[float, dict[str, float]]:
    """Each zone's statistics, by masks and NumPy on the zone's valid values in float64."""
    valid = ~np.isnan(values.astype(np.float64)) & ~np.isnan(zones.astype(np.float64))
    if value_nodata is not None:
        valid &= values != value_nodata
    if zone_nodata is not None:
        valid &= zones != zone_nodata
    table = {}
    for zone in np.unique(zones[valid]):
        v = values[valid & (zones == zone)].astype(np.float64)
        stats = {
            "Count": float(v.size),
            "Sum": math.fsum(v.tolist()),
            "Mean": float(np.mean(v)),
            "Min": float(np.min(v)),
            "Max": float(np.max(v)),
            "StandardDeviation": float(np.std(v)),
            "Median": float(np.median(v)),
        }
        for p in percents:
            stats[f"Percentile_{int(p) if p.is_integer() else p}"] = float(np.percentile(v, p))
        table[float(zone)] = stats
    return table


def _assert_statistics(got: dict[float, dict[str, float]], want: dict[float, dict[str, float]]):
    assert list(got) == list(want)
    for zone, stats in want.items():
        for name, value in stats.items():
            if name == "Mean":
                np.testing.assert_allclose(got[zone][name], value, rtol=1e-12, err_msg=name)
                assert got[zone][name] == stats["Sum"] / stats["Count"], (zone, name)
            elif name == "StandardDeviation":
                np.testing.assert_allclose(
                    got[zone][name], value, rtol=1e-9, atol=1e-12, err_msg=name
                )
            else:
                assert got[zone][name] == value, (zone, name, got[zone][name], value)


def _response_statistics(response) -> dict[float, dict[str, float]]:
    """The response's rows as {zone: {column: value}}."""
    percent_columns = list(response.columns)[1:]
    percent_columns = [c for c in percent_columns if c.startswith("Percentile_")]
    table = {}
    for row in response.rows:
        stats = {
            "Count": float(row.pixel_count),
            "Sum": row.sum,
            "Mean": row.mean,
            "Min": row.minimum,
            "Max": row.maximum,
            "StandardDeviation": row.standard_deviation,
            "Median": row.median,
        }
        stats.update(zip(percent_columns, row.percentiles, strict=True))
        table[row.zone] = stats
    return table


def _csv_statistics(text: str) -> tuple[list[str], dict[float, dict[str, float]]]:
    lines = text.split("\n")
    assert lines[-2:] == ["", ""], "a header, a line per zone, then an empty line"
    header = lines[0].split(",")
    table = {}
    for line in lines[1:-2]:
        cells = line.split(",")
        assert "." not in cells[0], "zones are written as integers"
        table[float(int(cells[0]))] = {
            c: float(x) for c, x in zip(header[1:], cells[1:], strict=True)
        }
    return header, table


def _request(session, values, zones, output, *, statistics=ALL, percents=PERCENTS, **kw):
    grid = raster_pb2.InputGrid()
    if kw.get("extent") is not None:
        grid.extent.CopyFrom(bandset_pb2.Extent(**kw["extent"]))
    return raster_pb2.ZonalStatsRequest(
        session=session,
        inputs=kw.get("inputs", [raster_pb2.RasterBand(path=values)]),
        reference=kw.get("reference", raster_pb2.ZonalStatsReference(path=zones)),
        parameters=raster_pb2.ZonalStatsParameters(statistics=statistics, percentiles=percents),
        output=raster_pb2.TableOutput(path=output, overwrite=kw.get("overwrite", True)),
        input_grid=grid,
    )


def _run(server, stub, request, *, tiles: int = 1):
    _, channel = server
    final = watch_operation(channel, stub.ZonalStats(request))[-1]
    assert final.WhichOneof("result") == "response", final.error
    assert operation_metadata(final).tiles_done >= tiles
    return operation_response(final, raster_pb2.ZonalStatsResponse)


def _rasters() -> dict[str, tuple[np.ndarray, float | None]]:
    """Odd-sized zone and value bands (1031 x 777, several 64-pixel blocks), with nodata
    in zones and values, NaN in floats, and a zone found only under nodata values."""
    rng = np.random.default_rng(77)
    shape = (1031, 777)
    z8 = rng.integers(1, 13, shape, dtype=np.uint8)
    z8[rng.random(shape) < 0.1] = 255
    z8[500:510, 300:310] = 13  # only under nodata values (below)
    z16 = (rng.integers(-40, 40, shape) * 7).astype(np.int16)
    z16[:, 700:] = -1
    u16 = rng.integers(0, 3000, shape, dtype=np.uint16)
    u16[rng.random(shape) < 0.05] = 65535
    u16[500:510, 300:310] = 65535
    # 900 values over the whole range: 80 zones of them stay within the row limit.
    pool = rng.integers(-(2**31) + 1, 2**31 - 1, 900, dtype=np.int64).astype(np.int32)
    i32 = rng.choice(pool, shape)
    i32[rng.random(shape) < 0.05] = -(2**31)
    i32[500:510, 300:310] = -(2**31)
    f32 = (rng.normal(0, 40, shape).round() / 8).astype(np.float32)
    f32[rng.random(shape) < 0.05] = np.nan
    f32[rng.random(shape) < 0.05] = -9999
    f32[500:510, 300:310] = np.nan
    f32[0, :5] = -0.0
    return {
        "zones-uint8": (z8, 255),
        "zones-int16": (z16, -1),
        "values-uint16": (u16, 65535),
        "values-int32": (i32, -(2**31)),
        "values-float32": (f32, -9999),
    }


@pytest.fixture(scope="module")
def rasters(server):
    running, _ = server
    root = running.data_root.root
    made = _rasters()
    for name, (array, nodata) in made.items():
        write_geotiff(root / "zs" / f"{name}.tif", array, nodata=nodata, block=64)
    tiny_zones = np.array([[1, 1, 2, 0], [2, 2, 3, 3], [1, 0, 3, 3]], np.uint8)
    tiny_values = np.array([[1, 2, 4, 9], [0.5, 7, 3, -1], [5, 6, 2, 99]], np.float32)
    write_geotiff(root / "zs" / "tiny-zones.tif", tiny_zones, nodata=0)
    write_geotiff(root / "zs" / "tiny-values.tif", tiny_values, nodata=99)
    return made


@pytest.mark.parametrize(
    "zones, values",
    [
        ("zones-uint8", "values-uint16"),
        ("zones-int16", "values-int32"),
        ("zones-uint8", "values-float32"),
        ("zones-int16", "values-float32"),
    ],
)
def test_every_statistic_is_the_numpy_reference(
    server, session_name, raster_stub, rasters, zones, values
):
    running, _ = server
    output = f"zs/{zones}-{values}"
    request = _request(session_name, f"zs/{values}.tif", f"zs/{zones}.tif", output)
    response = _run(server, raster_stub, request, tiles=2)
    want = reference(*rasters[values], *rasters[zones])
    assert 13.0 not in want
    _assert_statistics(_response_statistics(response), want)
    columns = ["DN", *ALL_COLUMNS, *(f"Percentile_{p:g}" for p in PERCENTS)]
    assert list(response.columns) == columns
    assert list(response.percentiles) == PERCENTS
    assert response.output_path == f"{output}.csv"
    assert response.reference.path == f"zs/{zones}.tif"
    header, written = _csv_statistics((running.data_root.root / f"{output}.csv").read_text())
    assert header == columns
    assert written == _response_statistics(response)


def test_statistics_are_columns_in_the_order_asked(server, session_name, raster_stub, rasters):
    running, _ = server
    statistics = [S.ZONAL_STATISTIC_PERCENTILE, S.ZONAL_STATISTIC_MAX, S.ZONAL_STATISTIC_COUNT]
    statistics += [S.ZONAL_STATISTIC_MAX]
    request = _request(
        session_name,
        "zs/values-uint16.tif",
        "zs/zones-uint8.tif",
        "zs/ordered.csv",
        statistics=statistics,
        percents=[75, 5, 75.0],
    )
    response = _run(server, raster_stub, request)
    assert list(response.columns) == ["DN", "Percentile_75", "Percentile_5", "Max", "Count"]
    want = reference(*rasters["values-uint16"], *rasters["zones-uint8"], percents=[75.0, 5.0])
    text = (running.data_root.root / "zs" / "ordered.csv").read_text()
    header, written = _csv_statistics(text)
    assert header == list(response.columns)
    for zone, stats in want.items():
        assert written[zone] == {c: stats[c] for c in header[1:]}
    # Statistics not asked for are 0 in the rows.
    assert all(row.sum == 0 and row.median == 0 for row in response.rows)


def test_the_csv_is_remotiors_text(server, session_name, raster_stub, rasters):
    running, _ = server
    request = _request(
        session_name,
        "zs/tiny-values.tif",
        "zs/tiny-zones.tif",
        "zs/tiny.txt",
        statistics=[S.ZONAL_STATISTIC_COUNT, S.ZONAL_STATISTIC_SUM, S.ZONAL_STATISTIC_MEDIAN],
        percents=[],
    )
    response = _run(server, raster_stub, request)
    assert response.output_path == "zs/tiny.txt.csv"
    # Zone 1: 1, 2, 5; zone 2: 4, 0.5, 7; zone 3: 3, -1, 2 (99 is the values' nodata).
    assert (running.data_root.root / "zs" / "tiny.txt.csv").read_text() == (
        "DN,Count,Sum,Median\n1,3.0,8.0,2.0\n2,3.0,11.5,4.0\n3,3.0,4.0,2.0\n\n"
    )


def test_float_zones_keep_their_values(server, session_name, raster_stub, rasters):
    running, _ = server
    zones = np.array([[1.5, 1.5, 2.0, np.nan], [-0.0, 0.0, 2.0, 2.0], [1.5, 7.25, 7.25, 0.0]])
    write_geotiff(running.data_root.root / "zs" / "float-zones.tif", zones.astype(np.float32))
    request = _request(
        session_name,
        "zs/tiny-values.tif",
        "zs/float-zones.tif",
        "zs/float-zones.csv",
        statistics=[S.ZONAL_STATISTIC_COUNT, S.ZONAL_STATISTIC_MIN],
        percents=[],
    )
    response = _run(server, raster_stub, request)
    assert [(r.zone, r.pixel_count, r.minimum) for r in response.rows] == [
        (0.0, 2, 0.5),
        (1.5, 3, 1.0),
        (2.0, 3, -1.0),
        (7.25, 2, 2.0),
    ]
    assert (running.data_root.root / "zs" / "float-zones.csv").read_text() == (
        "DN,Count,Min\n0.0,2.0,0.5\n1.5,3.0,1.0\n2.0,3.0,-1.0\n7.25,2.0,2.0\n\n"
    )


def test_zones_on_another_grid_are_read_onto_the_values_grid(
    server, session_name, raster_stub, rasters
):
    running, _ = server
    root = running.data_root.root
    values, value_nodata = rasters["values-int32"]
    rng = np.random.default_rng(5)
    coarse = rng.integers(1, 6, (300, 200), dtype=np.int16)
    # 20 m pixels from (500015, 4599985): within the values' extent, not on its lines.
    write_geotiff(
        root / "zs" / "coarse-zones.tif",
        coarse,
        nodata=-1,
        transform=from_origin(500015.0, 4599985.0, 20.0, 20.0),
    )
    request = _request(session_name, "zs/values-int32.tif", "zs/coarse-zones.tif", "zs/coarse")
    response = _run(server, raster_stub, request, tiles=2)
    # Each value pixel's zone: the coarse pixel under its centre, nodata outside.
    rows, cols = np.indices(values.shape)
    zone_row = np.floor((4599985.0 - (4600000.0 - (rows + 0.5) * 10.0)) / 20.0).astype(int)
    zone_col = np.floor((500000.0 + (cols + 0.5) * 10.0 - 500015.0) / 20.0).astype(int)
    inside = (zone_row >= 0) & (zone_row < 300) & (zone_col >= 0) & (zone_col < 200)
    placed = np.full(values.shape, -1, np.int16)
    placed[inside] = coarse[zone_row[inside], zone_col[inside]]
    _assert_statistics(_response_statistics(response), reference(values, value_nodata, placed, -1))


def test_extent_uses_only_the_pixels_within(server, session_name, raster_stub, rasters):
    # conftest's TRANSFORM: origin (500000, 4600000), 10 m pixels; rows 20..119, cols 30..79.
    extent = {"left": 500300.0, "top": 4599800.0, "right": 500800.0, "bottom": 4598800.0}
    request = _request(
        session_name,
        "zs/values-float32.tif",
        "zs/zones-uint8.tif",
        "zs/extent.csv",
        extent=extent,
    )
    response = _run(server, raster_stub, request)
    values, value_nodata = rasters["values-float32"]
    zones, zone_nodata = rasters["zones-uint8"]
    window = (slice(20, 120), slice(30, 80))
    want = reference(values[window], value_nodata, zones[window], zone_nodata)
    _assert_statistics(_response_statistics(response), want)


# --- tiling and cancellation, on the live server's session ---------------------------------


def _table_job(server, session_name, root, values, zones, output, edge, statistics):
    running, _ = server
    session = running.registry.get(session_name)
    parameters = zonal_parameters(statistics, PERCENTS if "Percentile" in statistics else ())
    request = TableRequest(
        RASTER_ZONAL_STATS,
        parameters,
        (BandInput(values), BandInput(zones)),
        output,
        overwrite=True,
        placement=Placement(),
    )
    job = prepare_table_job(request, root, session)
    if edge is not None:
        plan = job.plan
        job = dataclasses.replace(
            job, plan=TilePlan(plan.shape, edge, edge, plan.in_flight, plan.peak_bytes)
        )
    return session, job


@pytest.mark.parametrize("values", ["values-uint16", "values-float32"])
def test_many_tiles_equal_one_tile(server, session_name, tmp_path, values):
    made = _rasters()
    write_geotiff(tmp_path / "values.tif", *made[values][:1], nodata=made[values][1], block=64)
    zones, zone_nodata = made["zones-uint8"]
    write_geotiff(tmp_path / "zones.tif", zones, nodata=zone_nodata, block=64)
    root = DataRoot.at(tmp_path)
    names = ("Count", "Sum", "Mean", "Min", "Max", "Median", "Percentile")
    results = {}
    for edge in (64, 4096):
        session, job = _table_job(
            server, session_name, root, "values.tif", "zones.tif", f"{edge}.csv", edge, names
        )
        operation = Operation(session.name, "ZonalStats", owner="anonymous")
        result = run_table_job(job, session, operation)
        assert operation.progress.tiles_total == job.plan.tile_count
        results[edge] = (result.table, (tmp_path / f"{edge}.csv").read_text(), job.plan)
    assert results[64][2].tile_count > 16 and results[4096][2].tile_count == 1
    assert results[64][1] == results[4096][1]
    tiled, whole = results[64][0], results[4096][0]
    np.testing.assert_array_equal(tiled.zones, whole.zones)
    for column in whole.columns:
        np.testing.assert_array_equal(tiled.values[column], whole.values[column], column)
    # The standard deviation merges tiles by Chan's algorithm: equal within rounding.
    stds = {}
    for edge in (64, 4096):
        session, job = _table_job(
            server, session_name, root, "values.tif", "zones.tif", "s.csv", edge,
            ("StandardDeviation",),
        )  # fmt: skip
        stds[edge] = run_table_job(job, session, Operation(session.name, "Z", owner="a")).table
    np.testing.assert_allclose(
        stds[64].values["StandardDeviation"], stds[4096].values["StandardDeviation"], rtol=1e-12
    )
    want = reference(*made[values], zones, zone_nodata)
    np.testing.assert_allclose(
        stds[64].values["StandardDeviation"],
        [s["StandardDeviation"] for s in want.values()],
        rtol=1e-9,
    )


def test_cancel_leaves_no_csv_and_no_partial_file(server, session_name, tmp_path):
    rng = np.random.default_rng(9)
    write_geotiff(tmp_path / "in" / "v.tif", rng.integers(0, 100, (2048, 2048), np.uint8), block=64)
    write_geotiff(tmp_path / "in" / "z.tif", rng.integers(0, 9, (2048, 2048), np.uint8), block=64)
    root = DataRoot.at(tmp_path)
    session, job = _table_job(
        server, session_name, root, "in/v.tif", "in/z.tif", "out/stats.csv", 64, ("Sum",)
    )
    operation = Operation(session.name, "ZonalStats", owner="anonymous")

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


# --- refusals ---------------------------------------------------------------------------


def test_bad_requests_are_invalid_argument(server, session_name, raster_stub, rasters):
    running, _ = server
    root = running.data_root.root
    (root / "zs" / "zones.gpkg").write_bytes(b"not read")
    write_geotiff(root / "zs" / "zones-4326.tif", np.ones((5, 5), np.uint8), crs="EPSG:4326")
    v, z = "zs/tiny-values.tif", "zs/tiny-zones.tif"
    two = [raster_pb2.RasterBand(path=v), raster_pb2.RasterBand(path=v)]
    cases = {
        "no statistic": (_request(session_name, v, z, "bad/a", statistics=[]), "no statistic"),
        "unspecified": (
            _request(session_name, v, z, "bad/a", statistics=[0], percents=[]),
            "unknown statistic 0",
        ),
        "percentile 101": (_request(session_name, v, z, "bad/a", percents=[50, 101]), "from 0"),
        "percentile nan": (_request(session_name, v, z, "bad/a", percents=[math.nan]), "from 0"),
        "no percentiles": (_request(session_name, v, z, "bad/a", percents=[]), "Percentile needs"),
        "percentiles alone": (
            _request(session_name, v, z, "bad/a", statistics=[S.ZONAL_STATISTIC_SUM]),
            "without the Percentile statistic",
        ),
        "17 percentiles": (
            _request(session_name, v, z, "bad/a", percents=list(range(17))),
            "at most 16 percentiles",
        ),
        "vector reference": (
            _request(session_name, v, "zs/zones.gpkg", "bad/a"),
            "vector references are not supported yet",
        ),
        "missing shapefile": (
            _request(session_name, v, "zs/zones.shp", "bad/a"),
            "vector references are not supported yet",
        ),
        "no reference": (_request(session_name, v, "", "bad/a"), "reference path is empty"),
        "two value bands": (_request(session_name, v, z, "bad/a", inputs=two), "got 2"),
        "no value band": (_request(session_name, v, z, "bad/a", inputs=[]), "got 0"),
        "zones in another crs": (
            _request(session_name, v, "zs/zones-4326.tif", "bad/a"),
            "is not in the CRS of the first input",
        ),
        "no output": (_request(session_name, v, z, ""), "output path is empty"),
    }
    for case, (request, fragment) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.ZonalStats(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert fragment in caught.value.details(), (case, caught.value.details())
        assert str(root) not in caught.value.details()
    assert not (root / "bad").exists()


def test_too_many_values_for_a_median_fail_and_write_nothing(server, session_name, raster_stub):
    running, channel = server
    root = running.data_root.root
    rng = np.random.default_rng(1)
    write_geotiff(root / "zs" / "noise.tif", rng.random((700, 700), np.float32), block=128)
    write_geotiff(root / "zs" / "one-zone.tif", np.ones((700, 700), np.uint8), block=128)
    request = _request(
        session_name,
        "zs/noise.tif",
        "zs/one-zone.tif",
        "zs/noise.csv",
        statistics=[S.ZONAL_STATISTIC_MEDIAN],
        percents=[],
    )
    final = watch_operation(channel, raster_stub.ZonalStats(request))[-1]
    assert final.error.code == code_pb2.RESOURCE_EXHAUSTED
    assert "more than 131,072 rows" in final.error.message
    assert not (root / "zs" / "noise.csv").exists()
    # Without order statistics the same bands make one row.
    del request.parameters.statistics[:]
    request.parameters.statistics.append(S.ZONAL_STATISTIC_MEAN)
    response = _run(server, raster_stub, request)
    assert len(response.rows) == 1 and response.rows[0].pixel_count == 700 * 700


# --- the Python client and the command line ----------------------------------------------


def test_the_client_has_remotiors_signature():
    parameters = list(inspect.signature(Session.raster_zonal_stats).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == [
        ("raster_path", inspect.Parameter.empty),
        ("reference_path", inspect.Parameter.empty),
        ("vector_field", None),
        ("output_path", None),
        ("stat_names", None),
        ("stat_percentile", None),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("progress_message", True),
    ]


def test_the_client_returns_remotiors_output(server, rasters):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        # raster_path, reference_path, vector_field, output_path, stat_names, stat_percentile
        out = rs.raster_zonal_stats(
            "zs/values-uint16.tif",
            "zs/zones-uint8.tif",
            None,
            "zs/client/stats",
            ["mean", "PERCENTILE", "Sum"],
            [10, "90"],
        )
        assert out.check, out.grpc
        assert out.path == "zs/client/stats.csv"
        response = out.grpc.response
        assert list(response.columns) == ["DN", "Mean", "Percentile_10", "Percentile_90", "Sum"]
        want = reference(*rasters["values-uint16"], *rasters["zones-uint8"], percents=[10.0, 90.0])
        header, written = _csv_statistics((root / "zs" / "client" / "stats.csv").read_text())
        for zone, stats in want.items():
            assert written[zone]["Sum"] == stats["Sum"]
            assert written[zone]["Percentile_90"] == stats["Percentile_90"]
            np.testing.assert_allclose(written[zone]["Mean"], stats["Mean"], rtol=1e-12)

        one = rs.raster_zonal_stats(
            "zs/tiny-values.tif", "zs/tiny-zones.tif", output_path="zs/client/t", stat_names="Max"
        )
        assert one.check, one.grpc
        assert [(r.zone, r.maximum) for r in one.grpc.response.rows] == [(1, 5), (2, 7), (3, 3)]
        table = one.extra["table"]
        assert isinstance(table, np.recarray)
        assert table.dtype == np.dtype([("DN", "int64"), ("Max", "float64")])
        assert table.DN.tolist() == [1, 2, 3] and table.Max.tolist() == [5.0, 7.0, 3.0]
        records = out.extra["table"]
        assert records.dtype.names == ("DN", "Mean", "Percentile_10", "Percentile_90", "Sum")
        assert records.DN.tolist() == sorted(int(z) for z in want)
        assert records.Sum.tolist() == [stats["Sum"] for stats in want.values()]
        assert records.Percentile_10.tolist() == [s["Percentile_10"] for s in want.values()]

        for kwargs, fragment in (
            ({"stat_names": None}, "stat_names is required"),
            ({"stat_names": ["Mode"]}, "unknown statistic 'Mode'"),
            ({"stat_names": "Percentile"}, "stat_percentile is required"),
            ({"stat_names": "Percentile", "stat_percentile": "x"}, "must be numbers"),
            ({"stat_names": "Sum", "output_path": None}, "output_path is required"),
        ):
            kwargs.setdefault("output_path", "zs/client/x")
            refused = rs.raster_zonal_stats("zs/tiny-values.tif", "zs/tiny-zones.tif", **kwargs)
            assert refused.check is False and fragment in refused.grpc.message, kwargs
        vector = rs.raster_zonal_stats(
            "zs/tiny-values.tif", "zs/zones.gpkg", "class", "zs/client/x", "Sum"
        )
        assert vector.check is False and vector.grpc.code == "INVALID_ARGUMENT"
        assert "vector references are not supported yet" in vector.grpc.message
        assert not (root / "zs" / "client" / "x.csv").exists()
    finally:
        rs.close()


def test_the_command_prints_the_table_and_writes_the_csv(server, rasters):
    running, _ = server
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "zonal-stats",
            "--target",
            f"127.0.0.1:{running.port}",
            "--processes",
            "1",
            "--input",
            "zs/tiny-values.tif",
            "--reference",
            "zs/tiny-zones.tif",
            "--stat",
            "Mean",
            "--stat",
            "Percentile",
            "--percentile",
            "50",
            "--percentile",
            "100",
            "--output",
            "zs/cli",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "zs/cli.csv: 3 rows"
    assert lines[1].split("\t") == [
        "zone",
        "pixel_count",
        "sum",
        "mean",
        "minimum",
        "maximum",
        "standard_deviation",
        "median",
        "percentiles",
    ]
    assert lines[2].split("\t") == ["1", "3", "0", "2.666666667", "0", "0", "0", "0", "2,5"]
    assert (running.data_root.root / "zs" / "cli.csv").read_text() == (
        "DN,Mean,Percentile_50,Percentile_100\n"
        f"1,{8 / 3!r},2.0,5.0\n"
        "2,3.8333333333333335,4.0,7.0\n"
        "3,1.3333333333333333,2.0,3.0\n"
        "\n"
    )
