"""BandCombination (Remotior's band_combination) through a real gRPC channel, the Python
client and the command line: codes and tables against a NumPy reference (np.unique of the
stacked pixels) for several types, nodata and odd sizes, Remotior's CSV text, tiled equals
untiled, the raster or the table alone, cancellation in either pass, and requests refused
at the door."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.rpc import code_pb2
from rasterio.transform import from_origin

from rsgrpc.client import Session
from rsgrpc.engine.band_tool import BandInput
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.table_job import TableRequest, prepare_table_job, run_table_job
from rsgrpc.tools.combination import BAND_COMBINATION, CombinationParameters
from rsgrpc.v1 import raster_pb2
from tests.conftest import (
    CRS,
    TRANSFORM,
    operation_metadata,
    operation_response,
    watch_operation,
    write_geotiff,
)
from tests.table_job_checks import assert_cancel_leaves_nothing, retiled

PIXEL_AREA = 10.0 * 10.0  # conftest's TRANSFORM: 10 m pixels
NODATA = 2**31 - 1


def reference(
    arrays: list[np.ndarray], nodatas: list[float | None], nodata_value: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct combinations of the pixels valid in every band, their counts, and the
    raster of codes (the combination's row plus one; NODATA where any band is nodata)."""
    valid = np.ones(arrays[0].shape, bool)
    for array, nodata in zip(arrays, nodatas, strict=True):
        for value in (nodata, nodata_value):
            if value is not None:
                valid &= array != value
    stacked = np.stack([a[valid].astype(np.int64) for a in arrays], axis=1)
    combinations, inverse, counts = np.unique(
        stacked, axis=0, return_inverse=True, return_counts=True
    )
    codes = np.full(arrays[0].shape, NODATA, np.int32)
    codes[valid] = inverse.ravel() + 1
    return combinations, counts, codes


def _request(
    session: str, paths: list[str], output: str, **kw
) -> raster_pb2.BandCombinationRequest:
    parameters = raster_pb2.BandCombinationParameters(
        no_raster_output=kw.pop("no_raster_output", False),
        no_output_table=kw.pop("no_output_table", False),
        column_names=kw.pop("column_names", []),
        separator=kw.pop("separator", ""),
    )
    if kw.get("nodata_value") is not None:
        parameters.nodata_value = kw.pop("nodata_value")
    inputs = kw.pop("inputs", [raster_pb2.RasterBand(path=p) for p in paths])
    return raster_pb2.BandCombinationRequest(
        session=session,
        inputs=inputs,
        parameters=parameters,
        output=raster_pb2.RasterTableOutput(path=output, overwrite=kw.pop("overwrite", True)),
    )


def _run(server, stub, request, *, tiles: int = 1) -> raster_pb2.BandCombinationResponse:
    _, channel = server
    final = watch_operation(channel, stub.BandCombination(request))[-1]
    assert not final.HasField("error"), final.error
    assert operation_metadata(final).tiles_done >= tiles
    return operation_response(final, raster_pb2.BandCombinationResponse)


def _read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


def _assert_rows(response, combinations, counts) -> None:
    got = np.array([list(r.values) for r in response.rows], np.int64)
    np.testing.assert_array_equal(got.reshape(combinations.shape), combinations)
    np.testing.assert_array_equal([r.pixel_count for r in response.rows], counts)
    assert [r.raster_value for r in response.rows] == list(range(1, len(counts) + 1))
    np.testing.assert_array_equal([r.area for r in response.rows], counts * PIXEL_AREA)


def _rasters() -> dict[str, tuple[np.ndarray, float | None]]:
    """Odd-sized classified bands of several integer types on one grid, over several
    512-pixel tiles, with nodata."""
    rng = np.random.default_rng(77)
    shape = (1031, 777)
    u8 = rng.integers(0, 6, shape, dtype=np.uint8)
    u8[rng.random(shape) < 0.1] = 255
    i16 = rng.integers(-3, 4, shape, dtype=np.int16)
    i16[100:140, :] = -9999
    u32 = rng.choice(np.array([0, 7, 100_000, 2**32 - 2], np.uint32), shape)
    i8 = rng.integers(-128, -120, shape, dtype=np.int8)
    return {"u8": (u8, 255), "i16": (i16, -9999), "u32": (u32, None), "i8": (i8, -128)}


@pytest.fixture(scope="module")
def rasters(server):
    running, _ = server
    root = running.data_root.root
    made = _rasters()
    for name, (array, nodata) in made.items():
        write_geotiff(root / "bc" / f"{name}.tif", array, nodata=nodata, block=64)
    write_geotiff(root / "bc" / "a.tif", np.array([[1, 1, 2], [2, 9, 1]], np.uint8), nodata=9)
    write_geotiff(root / "bc" / "b.tif", np.array([[5, 6, 5], [5, 5, 6]], np.int16))
    return made


def test_codes_and_table_are_the_numpy_reference(server, session_name, raster_stub, rasters):
    running, _ = server
    root = running.data_root.root
    names = ["u8", "i16", "u32", "i8"]
    request = _request(session_name, [f"bc/{n}.tif" for n in names], "bc/out/all.tif")
    response = _run(server, raster_stub, request, tiles=2)
    combinations, counts, codes = reference(
        [rasters[n][0] for n in names], [rasters[n][1] for n in names]
    )
    assert len(counts) > 100
    _assert_rows(response, combinations, counts)
    assert response.raster_path == "bc/out/all.tif"
    assert response.output_path == "bc/out/all.csv"
    assert list(response.column_names) == names
    assert response.area_unit == "metre"
    assert response.data_type == raster_pb2.DATA_TYPE_INT32 and response.nodata == NODATA
    written, profile = _read(root / "bc" / "out" / "all.tif")
    np.testing.assert_array_equal(written, codes)
    assert profile["dtype"] == "int32" and profile["nodata"] == NODATA
    assert profile["crs"] == rasterio.crs.CRS.from_string(CRS)
    assert profile["transform"] == TRANSFORM
    lines = (root / "bc" / "out" / "all.csv").read_text().split("\n")
    assert lines[0] == "RasterValue\tu8\ti16\tu32\ti8\tPixelSum\tArea [metre^2]"
    assert lines[-2:] == ["", ""] and len(lines) == len(counts) + 3
    table = np.array([[float(x) for x in line.split("\t")] for line in lines[1:-2]])
    np.testing.assert_array_equal(table[:, 0], np.arange(1, len(counts) + 1))
    np.testing.assert_array_equal(table[:, 1:5], combinations)
    np.testing.assert_array_equal(table[:, 5], counts)
    np.testing.assert_array_equal(table[:, 6], counts * PIXEL_AREA)


def test_nodata_value_is_nodata_in_every_band(server, session_name, raster_stub, rasters):
    running, _ = server
    names = ["u8", "i16"]
    request = _request(
        session_name, [f"bc/{n}.tif" for n in names], "bc/out/no2.tif", nodata_value=2
    )
    response = _run(server, raster_stub, request)
    arrays = [rasters[n][0] for n in names]
    combinations, counts, codes = reference(arrays, [rasters[n][1] for n in names], 2)
    assert 2 not in combinations and (arrays[0] == 2).any() and (arrays[1] == 2).any()
    _assert_rows(response, combinations, counts)
    np.testing.assert_array_equal(_read(running.data_root.root / "bc/out/no2.tif")[0], codes)


def test_the_csv_is_remotiors_text(server, session_name, raster_stub, rasters):
    running, _ = server
    root = running.data_root.root
    request = _request(
        session_name,
        ["bc/a.tif", "bc/b.tif"],
        "bc/out/small.tif",
        column_names=["landcover"],
        separator=";",
    )
    response = _run(server, raster_stub, request)
    assert [(list(r.values), r.pixel_count) for r in response.rows] == [
        ([1, 5], 1),
        ([1, 6], 2),
        ([2, 5], 2),
    ]
    assert (root / "bc" / "out" / "small.csv").read_text() == (
        "RasterValue;landcover;b;PixelSum;Area [metre^2]\n1;1;5;1;100\n2;1;6;2;200\n3;2;5;2;200\n\n"
    )
    written, _ = _read(root / "bc" / "out" / "small.tif")
    np.testing.assert_array_equal(written, [[1, 2, 3], [3, NODATA, 2]])


@pytest.mark.parametrize(
    ("flag", "written"),
    [("no_raster_output", "table.csv"), ("no_output_table", "table.tif")],
)
def test_either_file_can_be_left_out(server, session_name, raster_stub, rasters, flag, written):
    running, _ = server
    folder = running.data_root.root / "bc" / flag
    request = _request(
        session_name, ["bc/a.tif", "bc/b.tif"], f"bc/{flag}/table.tif", **{flag: True}
    )
    response = _run(server, raster_stub, request)
    paths = {"table.tif": response.raster_path, "table.csv": response.output_path}
    assert {name: bool(path) for name, path in paths.items()} == {
        name: name == written for name in paths
    }
    assert paths[written] == f"bc/{flag}/{written}"
    assert len(response.rows) == 3
    assert sorted(p.name for p in folder.iterdir()) == [written]


# --- tiling and cancellation, on the live server's session ---------------------------------


def _job(server, session_name, root: DataRoot, paths, output: str, edge: int | None, **kw):
    running, _ = server
    session = running.registry.get(session_name)
    parameters = CombinationParameters(None, True, True, (), "\t")
    request = TableRequest(
        BAND_COMBINATION,
        parameters,
        tuple(BandInput(p) for p in paths),
        output,
        overwrite=True,
        profile=OutputProfile("zstd", level=1, block_size=64),
    )
    job = prepare_table_job(request, root, session)
    if edge is not None:
        job = retiled(job, edge)
    return session, job


def test_many_tiles_equal_one_tile(server, session_name, tmp_path):
    made = _rasters()
    names = ["u8", "i16", "u32"]
    for name in names:
        array, nodata = made[name]
        write_geotiff(tmp_path / f"{name}.tif", array, nodata=nodata, block=64)
    root = DataRoot.at(tmp_path)
    paths = [f"{n}.tif" for n in names]
    results = {}
    for edge in (64, 4096):
        session, job = _job(server, session_name, root, paths, f"out{edge}/c.tif", edge)
        operation = Operation(session.name, "BandCombination", owner="anonymous")
        result = run_table_job(job, session, operation)
        assert operation.progress.tiles_total == 2 * job.plan.tile_count
        assert operation.progress.tiles_done == 2 * job.plan.tile_count
        results[edge] = (
            result.table,
            _read(tmp_path / f"out{edge}" / "c.tif")[0],
            (tmp_path / f"out{edge}" / "c.csv").read_text(),
        )
    assert job.plan.tile_count == 1
    tiled_job = _job(server, session_name, root, paths, "x.tif", 64)[1]
    assert tiled_job.plan.tile_count > 16
    (tiled, tiled_codes, tiled_csv), (whole, whole_codes, whole_csv) = results[64], results[4096]
    np.testing.assert_array_equal(tiled.combinations, whole.combinations)
    np.testing.assert_array_equal(tiled.counts, whole.counts)
    np.testing.assert_array_equal(tiled_codes, whole_codes)
    assert tiled_csv == whole_csv
    combinations, counts, codes = reference(
        [made[n][0] for n in names], [made[n][1] for n in names]
    )
    np.testing.assert_array_equal(whole.combinations, combinations)
    np.testing.assert_array_equal(whole.counts, counts)
    np.testing.assert_array_equal(whole_codes, codes)


@pytest.mark.parametrize("cancel_in", ["table pass", "raster pass"])
def test_cancel_leaves_neither_raster_nor_csv(server, session_name, tmp_path, cancel_in):
    rng = np.random.default_rng(9)
    for name in ("x", "y"):
        write_geotiff(
            tmp_path / "in" / f"{name}.tif",
            rng.integers(0, 20, (1536, 1536), dtype=np.uint8),
            block=64,
        )
    root = DataRoot.at(tmp_path)
    session, job = _job(server, session_name, root, ["in/x.tif", "in/y.tif"], "out/c.tif", 64)
    assert_cancel_leaves_nothing(job, session, "BandCombination", cancel_in, tmp_path / "out")


# --- refusals ---------------------------------------------------------------------------


def test_bad_requests_are_invalid_argument(server, session_name, raster_stub, rasters):
    running, _ = server
    root = running.data_root.root
    write_geotiff(root / "bc" / "float.tif", np.zeros((3, 3), np.float32))
    coarse = from_origin(500000.0, 4600000.0, 20.0, 20.0)
    write_geotiff(root / "bc" / "coarse.tif", np.zeros((2, 2), np.uint8), transform=coarse)
    pair = ["bc/a.tif", "bc/b.tif"]
    cases = {
        "no input": (_request(session_name, [], "bad/c.tif"), "got 0"),
        "17 inputs": (_request(session_name, ["bc/a.tif"] * 17, "bad/c.tif"), "got 17"),
        "float band": (
            _request(session_name, ["bc/a.tif", "bc/float.tif"], "bad/c.tif"),
            "integer bands only",
        ),
        "another grid": (
            _request(session_name, ["bc/a.tif", "bc/coarse.tif"], "bad/c.tif"),
            "not on one grid",
        ),
        "not a raster name": (_request(session_name, pair, "bad/c.txt"), "must name a .tif"),
        "a digit separator": (_request(session_name, pair, "bad/c.tif", separator="1"), "number"),
        "a name with the separator": (
            _request(session_name, pair, "bad/c.tif", column_names=["a,b"], separator=","),
            "holds the separator",
        ),
        "an empty name": (_request(session_name, pair, "bad/c.tif", column_names=[""]), "1 to"),
        "no output": (_request(session_name, pair, ""), "output path is empty"),
    }
    for case, (request, fragment) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.BandCombination(request)
            pytest.fail(f"{case} was not refused")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert fragment in caught.value.details(), (case, caught.value.details())
        assert str(root) not in caught.value.details()
    assert not (root / "bad").exists()


def test_an_existing_raster_without_overwrite_is_already_exists(
    server, session_name, raster_stub, rasters
):
    running, _ = server
    kept = running.data_root.root / "bc" / "kept.tif"
    kept.write_bytes(b"kept")
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandCombination(
            _request(session_name, ["bc/a.tif", "bc/b.tif"], "bc/kept.tif", overwrite=False)
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert kept.read_bytes() == b"kept"
    assert not (running.data_root.root / "bc" / "kept.csv").exists()


def test_too_many_combinations_fail_and_write_nothing(server, session_name, raster_stub):
    running, channel = server
    root = running.data_root.root
    rng = np.random.default_rng(1)
    for name in ("n1", "n2"):
        noise = rng.integers(0, 2**16, (600, 600), dtype=np.uint16)
        write_geotiff(root / "bc" / f"{name}.tif", noise, block=128)
    request = _request(session_name, ["bc/n1.tif", "bc/n2.tif"], "bc/noise/c.tif")
    final = watch_operation(channel, raster_stub.BandCombination(request))[-1]
    assert final.error.code == code_pb2.RESOURCE_EXHAUSTED
    assert "more than 65,536 rows" in final.error.message
    assert not (root / "bc" / "noise").exists() or not any((root / "bc" / "noise").iterdir())


# --- the Python client and the command line ----------------------------------------------


def test_the_client_has_remotiors_signature():
    parameters = list(inspect.signature(Session.band_combination).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == [
        ("input_bands", inspect.Parameter.empty),
        ("output_path", None),
        ("nodata_value", None),
        ("no_raster_output", False),
        ("overwrite", False),
        ("n_processes", None),
        ("available_ram", None),
        ("bandset_catalog", None),
        ("extent_list", None),
        ("column_name_list", None),
        ("output_table", True),
        ("separator", None),
        ("progress_message", True),
    ]


def test_the_client_returns_remotiors_output(server, rasters):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        # input_bands, output_path, nodata_value
        out = rs.band_combination(["bc/u8.tif", "bc/i16.tif"], "bc/client/comb", 3)
        assert out.check, out.grpc
        assert out.paths == ["bc/client/comb.tif", "bc/client/comb.csv"]
        arrays = [rasters["u8"][0], rasters["i16"][0]]
        combinations, counts, codes = reference(arrays, [255, -9999], 3)
        _assert_rows(out.grpc.response, combinations, counts)
        np.testing.assert_array_equal(_read(root / "bc" / "client" / "comb.tif")[0], codes)
        extra = out.extra
        np.testing.assert_array_equal(extra["combinations"].f0, combinations[:, 0])
        np.testing.assert_array_equal(extra["combinations"].f1, combinations[:, 1])
        np.testing.assert_array_equal(extra["combinations"].new_val, np.arange(1, len(counts) + 1))
        np.testing.assert_array_equal(extra["sums"]["sum"], counts)
        text = (root / "bc" / "client" / "comb.csv").read_text()
        assert text.startswith("RasterValue\tu8\ti16\tPixelSum\tArea [metre^2]\n")

        existing = rs.band_combination(["bc/u8.tif", "bc/i16.tif"], "bc/client/comb.tif")
        assert existing.check is False and existing.grpc.code == "ALREADY_EXISTS"

        named = rs.band_combination(
            ["bc/a.tif", "bc/b.tif"],
            "bc/client/named.tif",
            column_name_list=["first", "second"],
            output_table=False,
            separator=",",
        )
        assert named.check, named.grpc
        assert named.paths == ["bc/client/named.tif"]
        assert list(named.grpc.response.column_names) == ["first", "second"]
        assert not (root / "bc" / "client" / "named.csv").exists()

        table_only = rs.band_combination(
            ["bc/a.tif", "bc/b.tif"], "bc/client/t.tif", no_raster_output=True
        )
        assert table_only.check, table_only.grpc
        assert table_only.paths == ["bc/client/t.tif", "bc/client/t.csv"]
        assert not (root / "bc" / "client" / "t.tif").exists()

        refused = rs.band_combination(["bc/a.tif", "bc/b.tif"])
        assert refused.check is False and "output_path is required" in refused.grpc.message
        bad = rs.band_combination(["bc/a.tif"], "bc/client/x.tif", column_name_list="name")
        assert bad.check is False and "column_name_list must be a list" in bad.grpc.message
        assert not (root / "bc" / "client" / "x.tif").exists()
    finally:
        rs.close()


def test_the_command_prints_the_table_and_writes_both(server, rasters):
    running, _ = server
    root = running.data_root.root
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "band-combination",
            "--target",
            f"127.0.0.1:{running.port}",
            "--processes",
            "1",
            "--input",
            "bc/a.tif",
            "--input",
            "bc/b.tif",
            "--column-name",
            "class",
            "--output",
            "bc/cli/c.tif",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "bc/cli/c.tif: raster",
        "bc/cli/c.csv: 3 rows",
        "raster_value\tvalues\tpixel_count\tarea",
        "1\t1,5\t1\t100",
        "2\t1,6\t2\t200",
        "3\t2,5\t2\t200",
    ]
    assert (
        (root / "bc" / "cli" / "c.csv")
        .read_text()
        .startswith("RasterValue\tclass\tb\tPixelSum\tArea [metre^2]\n1\t1\t5\t1\t100\n")
    )
    np.testing.assert_array_equal(
        _read(root / "bc" / "cli" / "c.tif")[0], [[1, 2, 3], [3, NODATA, 2]]
    )
