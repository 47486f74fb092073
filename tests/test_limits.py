"""Limits at the door and honest codes for bad parameters: rasters too large, outputs too
large, disks too full and budgets too small are RESOURCE_EXHAUSTED with the numbers;
encodings, nodata and values the output cannot take are INVALID_ARGUMENT; none of them
leaves a file behind."""

from __future__ import annotations

import shutil
import threading

import grpc
import numpy as np
import pytest
import rasterio
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rasterio import features

from rsgrpc.engine import limits, sieve
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import (
    TRANSFORM,
    make_config,
    serving,
    watch_operation,
    watch_to_response,
    write_geotiff,
)

EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_PIXELS = 10_000_000
MAX_OUTPUT_MIB = 32
MIB = 1 << 20


def _write_sparse(path, size: int) -> None:
    """A `size` x `size` GeoTIFF with no block written: a few KB on disk."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        tiled=True,
        blockxsize=65536,
        blockysize=65536,
        sparse_ok=True,
        compress="deflate",
        bigtiff="YES",
        nodata=0,
        crs="EPSG:32633",
        transform=TRANSFORM,
    ):
        pass


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A server with small limits, and the rasters its tests read."""
    config = make_config(
        tmp_path_factory.mktemp("limited"),
        max_raster_pixels=MAX_PIXELS,
        max_output_mib=MAX_OUTPUT_MIB,
    )
    with serving(config) as (running, channel):
        root = running.data_root.root
        rng = np.random.default_rng(12)
        small = rng.integers(1, 6, (64, 64), dtype=np.uint8)
        write_geotiff(root / "in" / "classes.tif", small, nodata=0)
        write_geotiff(root / "in" / "float.tif", small.astype(np.float32), nodata=-1)
        big = rng.integers(1, 10000, (3072, 3072), dtype=np.uint16)
        write_geotiff(root / "in" / "big.tif", big, nodata=0, block=1536)
        _write_sparse(root / "in" / "sparse.tif", 2_000_000)
        yield running, channel


def _session(channel, *, processes: int = 2, ram_mib: int = 1024) -> str:
    stub = session_pb2_grpc.SessionServiceStub(channel)
    created = stub.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=processes, available_ram_mib=ram_mib)
        )
    )
    return created.name


@pytest.fixture(scope="module")
def session_name(limited) -> str:
    return _session(limited[1])


def _files(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _refused(running, code, call):
    """Make `call`, assert it fails with `code` and changes no file; return the error."""
    root = running.data_root.root
    before = _files(root)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() is code, error.details()
    assert str(root) not in error.details()
    assert _files(root) == before
    return error


def _calc(session, expression="a + b", inputs=("in/classes.tif",) * 2, **fields):
    fields.setdefault("output_path", "out/calc.tif")
    fields.setdefault("output_data_type", raster_pb2.DATA_TYPE_UINT8)
    fields.setdefault("output_nodata", 0)
    return raster_pb2.BandCalcRequest(
        session=session,
        expression=expression,
        inputs=[raster_pb2.RasterInput(name=n, path=p) for n, p in zip("ab", inputs, strict=True)],
        **fields,
    )


def _bands(*paths, band=0):
    return [raster_pb2.RasterBand(path=p, band=band) for p in paths]


def _sieve(session, path="in/classes.tif", *, size=4, band=0, options=None):
    return raster_pb2.SieveRequest(
        session=session,
        inputs=_bands(path, band=band),
        size=size,
        output=raster_pb2.ToolOutput(path="out/sieve.tif", options=options),
    )


def _morphology(rpc, session, path="in/classes.tif", *, overwrite=False, **parameters):
    parameters.setdefault("size", 1)
    request = getattr(raster_pb2, f"{rpc}Request")
    return request(
        session=session,
        inputs=_bands(path),
        parameters=raster_pb2.MorphologyParameters(**parameters),
        output=raster_pb2.ToolOutput(path=f"out/{rpc.lower()}.tif", overwrite=overwrite),
    )


# --- rasters and outputs too large ----------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda s: ("BandCalc", _calc(s, inputs=("in/sparse.tif",) * 2)),
        lambda s: ("Sieve", _sieve(s, "in/sparse.tif")),
        lambda s: ("Dilate", _morphology("Dilate", s, "in/sparse.tif", value_list=[1])),
        lambda s: ("Erode", _morphology("Erode", s, "in/sparse.tif", value_list=[1])),
    ],
    ids=["band calc", "sieve", "dilate", "erode"],
)
def test_a_sparse_raster_of_trillions_of_pixels_is_refused_at_the_door(limited, session_name, make):
    running, channel = limited
    rpc, request = make(session_name)
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    temporary = running.registry.get(session_name).temporary_directory
    before = _files(temporary)
    error = _refused(running, EXHAUSTED, lambda: getattr(stub, rpc)(request))
    assert "raster 'in/sparse.tif' is 2000000 x 2000000 pixels" in error.details()
    assert f"limit is {MAX_PIXELS:,} pixels" in error.details()
    assert _files(temporary) == before


def test_an_output_over_the_size_limit_is_refused_naming_its_size(limited, session_name):
    running, channel = limited
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    big = ("in/big.tif",) * 2
    error = _refused(
        running,
        EXHAUSTED,
        lambda: stub.BandCalc(
            _calc(session_name, inputs=big, output_data_type=raster_pb2.DATA_TYPE_FLOAT64)
        ),
    )
    assert "output 'out/calc.tif' would hold 72 MiB of float64 pixels" in error.details()
    assert f"limit is {MAX_OUTPUT_MIB} MiB" in error.details()
    # The same grid as one byte per pixel fits.
    _, response = watch_to_response(
        channel, stub.BandCalc(_calc(session_name, inputs=big)), raster_pb2.BandCalcResponse
    )
    assert response.output_path == "out/calc.tif"
    (running.data_root.root / "out" / "calc.tif").unlink()


def test_a_disk_without_room_for_the_output_and_the_reserve_is_refused_with_the_numbers(
    tmp_path,
):
    free_mib = shutil.disk_usage(tmp_path).free // MIB
    config = make_config(tmp_path, min_free_disk_mib=free_mib + 1024)
    with serving(config) as (running, channel):
        root = running.data_root.root
        write_geotiff(root / "in" / "classes.tif", np.ones((64, 64), np.uint8), nodata=0)
        session = _session(channel, processes=1)
        stub = raster_pb2_grpc.RasterServiceStub(channel)
        for make, output in (
            (lambda: stub.BandCalc(_calc(session)), "out/calc.tif"),
            (lambda: stub.Sieve(_sieve(session)), "out/sieve.tif"),
            (lambda: stub.Erode(_morphology("Erode", session, value_list=[1])), "out/erode.tif"),
        ):
            details = _refused(running, EXHAUSTED, make).details()
            assert f"not enough free disk: the job needs up to 1 MiB for output {output!r}" in (
                details
            )
            assert f"the server keeps {free_mib + 1024} MiB free; the disk has " in details


def test_the_sieve_needs_room_for_the_tiles_it_keeps_between_passes(
    limited, session_name, monkeypatch
):
    running, channel = limited
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    # The data root and the temporary directory share a file system here. 3072² uint16
    # is 18 MiB: room for the output and the reserve (256 MiB), not for the sieve's
    # kept tiles beside them.
    monkeypatch.setattr(limits, "free_disk_bytes", lambda directory: (256 + 27) * MIB)
    error = _refused(running, EXHAUSTED, lambda: stub.Sieve(_sieve(session_name, "in/big.tif")))
    assert (
        "18 MiB for output 'out/sieve.tif' and 18 MiB for the session's temporary files"
        in error.details()
    )
    assert "the disk has 283 MiB free" in error.details()
    dilate = _morphology("Dilate", session_name, "in/big.tif", value_list=[3])
    watch_to_response(channel, stub.Dilate(dilate), raster_pb2.DilateResponse)
    (running.data_root.root / "out" / "dilate.tif").unlink()


def test_free_disk_is_checked_again_when_a_queued_job_starts(limited, session_name, monkeypatch):
    running, channel = limited
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    # The session's first job waits in its pass 1 until released, so the next one
    # queues behind it, accepted while the disk had room.
    started, release = threading.Event(), threading.Event()
    keep = sieve._keep

    def held(path, settled):
        started.set()
        release.wait(timeout=60)
        keep(path, settled)

    monkeypatch.setattr(sieve, "_keep", held)
    first = stub.Sieve(_sieve(session_name))
    queued = stub.BandCalc(_calc(session_name))
    assert started.wait(timeout=60)
    monkeypatch.setattr(limits, "free_disk_bytes", lambda directory: 0)
    release.set()
    assert not watch_operation(channel, first)[-1].HasField("error")
    final = watch_operation(channel, queued)[-1]
    assert final.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "not enough free disk" in final.error.message
    assert "the disk has 0 MiB free" in final.error.message
    assert not (running.data_root.root / "out" / "calc.tif").exists()
    (running.data_root.root / "out" / "sieve.tif").unlink()


# --- the minimum RAM ------------------------------------------------------------------


def _minimum(running, call) -> int:
    """The minimum budget named by a call refused for its RAM budget."""
    error = _refused(running, EXHAUSTED, call)
    assert "the minimum is" in error.details()
    info = error_details_pb2.ErrorInfo()
    assert rpc_status.from_call(error).details[0].Unpack(info)
    minimum = int(info.metadata["minimum_ram_mib"])
    assert f"the minimum is {minimum} MiB" in error.details()
    return minimum


def test_the_minimum_ram_named_depends_on_the_request_alone_and_is_enough(limited):
    running, channel = limited
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    name = _session(channel, ram_mib=64)
    big = _calc(name, inputs=("in/big.tif",) * 2, output_path="out/big.tif")
    small = [
        _calc(name, output_path="out/small.tif", overwrite=True),
        _calc(
            name,
            "where(a > b, a, b) * 2",
            output_path="out/small.tif",
            overwrite=True,
            output_data_type=raster_pb2.DATA_TYPE_INT32,
        ),
        _morphology(
            "Dilate", name, size=2, value_list=[3], circular_structure=True, overwrite=True
        ),
    ]
    calls = [lambda r=r: getattr(stub, type(r).__name__.removesuffix("Request"))(r) for r in small]

    def set_budget(ram_mib: int) -> None:
        sessions.UpdateSession(
            session_pb2.UpdateSessionRequest(
                session=session_pb2.Session(name=name, available_ram_mib=ram_mib),
                update_mask=field_mask_pb2.FieldMask(paths=["available_ram_mib"]),
            )
        )

    first = _minimum(running, lambda: stub.BandCalc(big))
    budget = max(_minimum(running, call) for call in calls)
    assert budget < first  # one tile of the small raster costs less than one of 1536²
    set_budget(budget)
    for call in calls * 2:  # the workers load their kernels and keep their memory
        assert not watch_operation(channel, call())[-1].HasField("error")
    assert _minimum(running, lambda: stub.BandCalc(big)) == first
    set_budget(first)
    _, response = watch_to_response(channel, stub.BandCalc(big), raster_pb2.BandCalcResponse)
    assert response.output_path == "out/big.tif"
    sessions.DeleteSession(session_pb2.DeleteSessionRequest(name=name))
    for path in ("big.tif", "small.tif", "dilate.tif"):
        (running.data_root.root / "out" / path).unlink()


def test_a_halo_wider_than_the_raster_costs_no_more_memory_than_the_raster(limited):
    running, channel = limited
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    name = _session(channel, ram_mib=64)
    try:
        narrow = _minimum(running, lambda: stub.Dilate(_morphology("Dilate", name, value_list=[3])))
        widest = _minimum(
            running,
            lambda: stub.Dilate(
                _morphology(
                    "Dilate", name, size=512, filter=raster_pb2.MORPHOLOGY_FILTER_GREY_CLOSING
                )
            ),
        )
    finally:
        session_pb2_grpc.SessionServiceStub(channel).DeleteSession(
            session_pb2.DeleteSessionRequest(name=name)
        )
    # A closing of radius 512 reads 1024 pixels each side of a tile, all outside this
    # 64 x 64 raster: each worker holds the raster, as for a radius of 1.
    assert widest == narrow


# --- parameters the output cannot take ------------------------------------------------

_DEFLATE = raster_pb2.COMPRESSION_DEFLATE
_ZSTD = raster_pb2.COMPRESSION_ZSTD
_NONE = raster_pb2.COMPRESSION_NONE
_LZW = raster_pb2.COMPRESSION_LZW


def _options(**fields):
    return raster_pb2.OutputOptions(**fields)


BAD_PARAMETERS = {
    "floating-point predictor for an integer output": (
        lambda s: ("BandCalc", _calc(s, output_options=_options(compression=_ZSTD, predictor=3))),
        "predictor 3 (floating point) is for float32 and float64 outputs; output "
        "'out/calc.tif' is uint8",
    ),
    "floating-point predictor with the default codec": (
        lambda s: ("BandCalc", _calc(s, output_options=_options(predictor=3))),
        "predictor 3 (floating point) is for float32 and float64 outputs",
    ),
    "floating-point predictor for a sieve": (
        lambda s: ("Sieve", _sieve(s, options=_options(compression=_LZW, predictor=3))),
        "output 'out/sieve.tif' is uint8",
    ),
    "predictor without compression": (
        lambda s: ("BandCalc", _calc(s, output_options=_options(compression=_NONE, predictor=2))),
        "predictor 2 (horizontal) works only with compression",
    ),
    "predictor out of range": (
        lambda s: ("BandCalc", _calc(s, output_options=_options(compression=_ZSTD, predictor=4))),
        "predictor must be 0",
    ),
    "zstd level 23": (
        lambda s: ("BandCalc", _calc(s, output_options=_options(compression=_ZSTD, level=23))),
        "level 23 is not valid for zstd",
    ),
    "deflate level 10": (
        lambda s: ("BandCalc", _calc(s, output_options=_options(compression=_DEFLATE, level=10))),
        "level 10 is not valid for deflate",
    ),
    "a level for lzw": (
        lambda s: ("BandCalc", _calc(s, output_options=_options(compression=_LZW, level=5))),
        "level 5 is not valid for lzw",
    ),
    "a level out of range for the default codec": (
        lambda s: ("BandCalc", _calc(s, output_options=_options(level=99))),
        "level 99 is not valid for zstd: use 1 to 22",
    ),
    "nodata beyond float32": (
        lambda s: (
            "BandCalc",
            _calc(s, output_data_type=raster_pb2.DATA_TYPE_FLOAT32, output_nodata=1e300),
        ),
        "output nodata 1e+300 does not fit the output data type float32",
    ),
    "infinite nodata for an integer output": (
        lambda s: (
            "BandCalc",
            _calc(s, output_data_type=raster_pb2.DATA_TYPE_INT16, output_nodata=float("inf")),
        ),
        "output nodata inf does not fit the output data type int16",
    ),
    "NaN nodata for an integer output": (
        lambda s: ("BandCalc", _calc(s, output_nodata=float("nan"))),
        "output nodata nan does not fit the output data type uint8",
    ),
    "a dilated value beyond uint8": (
        lambda s: ("Dilate", _morphology("Dilate", s, value_list=[3, 300])),
        "value_list holds 300, not a value of input 'in/classes.tif' band 1, which is uint8",
    ),
    "a fractional value for an integer band": (
        lambda s: ("Erode", _morphology("Erode", s, value_list=[1.5])),
        "value_list holds 1.5",
    ),
    "a negative value for an unsigned band": (
        lambda s: ("Erode", _morphology("Erode", s, value_list=[-1])),
        "value_list holds -1",
    ),
    "a value beyond float32": (
        lambda s: ("Dilate", _morphology("Dilate", s, "in/float.tif", value_list=[1e300])),
        "which is float32",
    ),
    "band -1": (
        lambda s: ("Sieve", _sieve(s, band=-1)),
        "band -1 does not exist",
    ),
    "a band past the last": (
        lambda s: ("Sieve", _sieve(s, band=2**31 - 1)),
        "band 2147483647 does not exist",
    ),
    "a huge dilation": (
        lambda s: ("Dilate", _morphology("Dilate", s, size=2**31 - 1, value_list=[1])),
        "size must be from 1 to 512 pixels",
    ),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_parameters_the_output_cannot_take_are_invalid_argument(limited, session_name, case):
    running, channel = limited
    make, fragment = BAD_PARAMETERS[case]
    rpc, request = make(session_name)
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    error = _refused(running, INVALID, lambda: getattr(stub, rpc)(request))
    assert fragment in error.details()


@pytest.mark.parametrize(
    ("nodata", "dtype"),
    [
        (float("nan"), raster_pb2.DATA_TYPE_FLOAT32),
        (float("-inf"), raster_pb2.DATA_TYPE_FLOAT32),
        (1e300, raster_pb2.DATA_TYPE_FLOAT64),
    ],
    ids=["nan float32", "-inf float32", "1e300 float64"],
)
def test_nodata_a_float_output_can_hold_is_written(limited, session_name, nodata, dtype):
    running, channel = limited
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    request = _calc(session_name, "a / b", output_data_type=dtype, output_nodata=nodata)
    watch_to_response(channel, stub.BandCalc(request), raster_pb2.BandCalcResponse)
    path = running.data_root.root / "out" / "calc.tif"
    with rasterio.open(path) as ds:
        written = ds.nodata
    path.unlink()
    assert written == nodata or (np.isnan(written) and np.isnan(nodata))


def test_a_sieve_threshold_larger_than_the_raster_gives_what_gdal_gives(limited, session_name):
    running, channel = limited
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    size = 2**31 - 1
    watch_to_response(
        channel, stub.Sieve(_sieve(session_name, size=size)), raster_pb2.SieveResponse
    )
    root = running.data_root.root
    with rasterio.open(root / "in" / "classes.tif") as ds:
        source = ds.read(1)
    with rasterio.open(root / "out" / "sieve.tif") as ds:
        sieved = ds.read(1)
    (root / "out" / "sieve.tif").unlink()
    # rasterio takes thresholds below the pixel count only; every region of this raster
    # is smaller than that already.
    expected = features.sieve(source, source.size - 1, mask=source != 0, connectivity=4)
    np.testing.assert_array_equal(sieved, expected)
