"""Virtual outputs (`.vrt` and the GeoTIFF beside it) and VRT inputs, through a live server.

A virtual output must read, with GDAL's own VRT driver, as the GeoTIFF output of the
same request does. A VRT input is read by rsgrpc from its sources, each a GeoTIFF under
the data root opened at the moment of use: its pixels must be the ones GDAL gives for
it, and any VRT that is not plain (or names anything but such GeoTIFFs) is refused
with nothing read or written.

The server runs in this process, where GDAL has no VRT driver (`rsgrpc.engine.gdal_env`);
what GDAL makes of a VRT is read in a child process with GDAL's defaults.
"""

from __future__ import annotations

import json
import os
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

from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.gdal_env import GDAL_OPTIONS
from rsgrpc.engine.instance import PARTIAL_SUFFIX
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.virtual_raster import (
    MAX_ELEMENTS,
    MAX_VRT_BYTES,
    parse_vrt,
    virtual_path,
    virtual_raster_xml,
)
from rsgrpc.v1 import raster_pb2, session_pb2, session_pb2_grpc
from tests.conftest import CRS, TRANSFORM, watch_operation, watch_to_response, write_geotiff

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
SECRET = 42
HEIGHT, WIDTH = 48, 64

_GDAL_READER = """
import json, sys
import numpy as np
import rasterio

arrays, meta = {}, {}
for i, path in enumerate(sys.argv[2:]):
    with rasterio.open(path) as ds:
        arrays[str(i)] = ds.read(1)
        meta[str(i)] = [ds.driver, ds.dtypes[0], ds.nodata, str(ds.crs), list(ds.transform)[:6]]
np.savez(sys.argv[1], **arrays)
print(json.dumps(meta))
"""


def gdal_reads(tmp_path: Path, *paths: Path) -> list[tuple[np.ndarray, list]]:
    """Each file as GDAL reads it with its default drivers (VRT included): the band's
    pixels and [driver, dtype, nodata, crs, transform]."""
    env = {k: v for k, v in os.environ.items() if k not in GDAL_OPTIONS}
    arrays = tmp_path / "gdal.npz"
    done = subprocess.run(
        [sys.executable, "-c", _GDAL_READER, str(arrays), *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    meta = json.loads(done.stdout)
    with np.load(arrays) as loaded:
        return [(loaded[str(i)], meta[str(i)]) for i in range(len(paths))]


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        assert ds.driver == "GTiff"
        return ds.read(1)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.fixture(scope="module")
def root(server) -> Path:
    running, _ = server
    root = running.data_root.root
    rng = np.random.default_rng(7)
    write_geotiff(
        root / "in" / "nir.tif", rng.integers(1, 4000, (HEIGHT, WIDTH), np.uint16), nodata=0
    )
    write_geotiff(
        root / "in" / "red.tif", rng.integers(1, 4000, (HEIGHT, WIDTH), np.uint16), nodata=0
    )
    classes = rng.integers(1, 4, (HEIGHT, WIDTH)).astype(np.uint8)
    classes[:3, :3] = 0
    write_geotiff(root / "lc" / "classes.tif", classes, nodata=0)
    return root


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outside")
    write_geotiff(folder / "secret.tif", np.full((HEIGHT, WIDTH), SECRET, np.uint16))
    return folder


def _band_calc(stub, session, output, *, expression=None, inputs=None, **fields):
    inputs = inputs or {"nir": "in/nir.tif", "red": "in/red.tif"}
    fields.setdefault("output_data_type", raster_pb2.DATA_TYPE_FLOAT32)
    return stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression=expression or '("nir" - "red") / ("nir" + "red")',
            inputs=[raster_pb2.RasterInput(name=n, path=p) for n, p in inputs.items()],
            output_path=output,
            **fields,
        )
    )


# Virtual outputs.


def test_a_vrt_output_path_and_virtual_output_read_as_the_geotiff_output(
    server, raster_stub, session_name, root, tmp_path
):
    _, channel = server
    results = {}
    for output, fields in (
        ("vo/ndvi.tif", {}),
        ("vo/ndvi.vrt", {}),
        ("vo/flagged.tif", {"virtual_output": True}),
    ):
        operation = _band_calc(raster_stub, session_name, output, **fields)
        _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
        results[output] = response
    assert results["vo/ndvi.vrt"].output_path == "vo/ndvi.vrt"
    assert results["vo/flagged.tif"].output_path == "vo/flagged.vrt"
    assert _files(root / "vo") == [
        "flagged.vrt",
        "flagged_01.tif",
        "ndvi.tif",
        "ndvi.vrt",
        "ndvi_01.tif",
    ]
    expected = _read(root / "vo" / "ndvi.tif")
    with rasterio.open(root / "vo" / "ndvi.tif") as ds:
        profile = ds.profile
    read = gdal_reads(tmp_path, root / "vo" / "ndvi.vrt", root / "vo" / "flagged.vrt")
    for pixels, (driver, dtype, nodata, crs, transform) in read:
        assert driver == "VRT"
        np.testing.assert_array_equal(pixels, expected)
        assert (dtype, nodata) == ("float32", profile["nodata"])
        assert rasterio.crs.CRS.from_string(crs) == rasterio.crs.CRS.from_string(CRS)
        assert transform == list(TRANSFORM)[:6]
    # The GeoTIFF beside the VRT is the output's pixels, named relative to the VRT.
    np.testing.assert_array_equal(_read(root / "vo" / "ndvi_01.tif"), expected)
    assert 'relativeToVRT="1">ndvi_01.tif<' in (root / "vo" / "ndvi.vrt").read_text()
    # Statistics are those of the output, whichever file holds it.
    assert results["vo/ndvi.vrt"].statistics == results["vo/ndvi.tif"].statistics


def test_a_scripts_virtual_lines_read_each_other_and_are_all_virtual(
    server, raster_stub, session_name, root, tmp_path
):
    _, channel = server
    operation = _band_calc(
        raster_stub,
        session_name,
        "script",
        expression='"nir" + 1 @ one\n"one" * 2 @ two',
        virtual_output=True,
    )
    _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert [o.output_path for o in response.outputs] == ["script/one.vrt", "script/two.vrt"]
    assert _files(root / "script") == ["one.vrt", "one_01.tif", "two.vrt", "two_01.tif"]
    nir = _read(root / "in" / "nir.tif").astype(np.float32)
    [(one, _), (two, _)] = gdal_reads(tmp_path, root / "script/one.vrt", root / "script/two.vrt")
    np.testing.assert_array_equal(one, nir + 1)
    np.testing.assert_array_equal(two, (nir + 1) * 2)


@pytest.mark.parametrize(
    ("method", "request_type", "parameters"),
    [
        ("Sieve", raster_pb2.SieveRequest, {"size": 3, "connectivity": raster_pb2.CONNECTIVITY_4}),
        (
            "Dilate",
            raster_pb2.DilateRequest,
            {"parameters": raster_pb2.MorphologyParameters(value_list=[2], size=1)},
        ),
        (
            "Erode",
            raster_pb2.ErodeRequest,
            {"parameters": raster_pb2.MorphologyParameters(value_list=[2], size=1)},
        ),
    ],
)
def test_the_tools_virtual_outputs_read_as_their_geotiff_outputs(
    server, raster_stub, session_name, root, tmp_path, method, request_type, parameters
):
    _, channel = server
    response_type = getattr(raster_pb2, f"{method}Response")
    paths = {}
    for folder, virtual in ((f"{method}-tif", False), (f"{method}-vrt", True)):
        operation = getattr(raster_stub, method)(
            request_type(
                session=session_name,
                inputs=[raster_pb2.RasterBand(path="lc/classes.tif", band=1)],
                output=raster_pb2.ToolOutput(path=folder, prefix="t_", virtual_output=virtual),
                **parameters,
            )
        )
        _, response = watch_to_response(channel, operation, response_type)
        [output] = response.outputs
        paths[virtual] = output.output_path
    assert paths == {False: f"{method}-tif/t_classes.tif", True: f"{method}-vrt/t_classes.vrt"}
    assert _files(root / f"{method}-vrt") == ["t_classes.vrt", "t_classes_01.tif"]
    [(pixels, meta)] = gdal_reads(tmp_path, root / paths[True])
    assert meta[:3] == ["VRT", "uint8", 0.0]
    np.testing.assert_array_equal(pixels, _read(root / paths[False]))


def test_one_virtual_output_file_is_a_vrt_path(server, raster_stub, session_name, root):
    _, channel = server
    operation = raster_stub.Sieve(
        raster_pb2.SieveRequest(
            session=session_name,
            inputs=[raster_pb2.RasterBand(path="lc/classes.tif", band=1)],
            size=2,
            output=raster_pb2.ToolOutput(path="one/sieved.tif", virtual_output=True),
        )
    )
    _, response = watch_to_response(channel, operation, raster_pb2.SieveResponse)
    assert response.outputs[0].output_path == "one/sieved.vrt"
    assert _files(root / "one") == ["sieved.vrt", "sieved_01.tif"]


def test_an_existing_vrt_or_part_is_kept_without_overwrite_and_replaced_with_it(
    server, raster_stub, session_name, root
):
    _, channel = server
    folder = root / "exist"
    folder.mkdir()
    (folder / "a_01.tif").write_bytes(b"kept")
    (folder / "b.vrt").write_bytes(b"kept")
    for output in ("exist/a.vrt", "exist/b.vrt"):
        with pytest.raises(grpc.RpcError) as caught:
            _band_calc(raster_stub, session_name, output)
        assert caught.value.code() is grpc.StatusCode.ALREADY_EXISTS, caught.value.details()
        assert str(root) not in caught.value.details()
    assert _files(folder) == ["a_01.tif", "b.vrt"]
    assert (folder / "a_01.tif").read_bytes() == (folder / "b.vrt").read_bytes() == b"kept"
    for output in ("exist/a.vrt", "exist/b.vrt"):
        operation = _band_calc(raster_stub, session_name, output, overwrite=True)
        watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert _files(folder) == ["a.vrt", "a_01.tif", "b.vrt", "b_01.tif"]
    assert (folder / "b.vrt").read_bytes().startswith(b"<VRTDataset")


def _sparse(root: Path) -> str:
    """A sparse 20000 x 20000 raster: a band calc over it runs far longer than a test takes
    to change a file, and is cancelled once it is changed."""
    path = root / "block" / "sparse.tif"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=20000,
            height=20000,
            count=1,
            dtype="uint8",
            tiled=True,
            blockxsize=512,
            blockysize=512,
            sparse_ok=True,
            nodata=0,
        ):
            pass
    return "block/sparse.tif"


@pytest.fixture
def queue_session(server):
    """A session of one process whose queue the test controls."""
    sessions = session_pb2_grpc.SessionServiceStub(server[1])
    created = sessions.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=1, available_ram_mib=1024)
        )
    )
    yield created.name
    sessions.DeleteSession(session_pb2.DeleteSessionRequest(name=created.name))


def _cancel(channel, operation) -> lro.Operation:
    lro_grpc.OperationsStub(channel).CancelOperation(
        lro.CancelOperationRequest(name=operation.name)
    )
    return watch_operation(channel, operation)[-1]


def _blocker(stub, session, root, output="block/out.tif", **fields):
    return _band_calc(
        stub,
        session,
        output,
        expression='"a"',
        inputs={"a": _sparse(root)},
        overwrite=True,
        **fields,
    )


def test_a_cancelled_virtual_output_leaves_nothing(server, raster_stub, queue_session, root):
    _, channel = server
    blocker = _blocker(raster_stub, queue_session, root, "cancelled/out.vrt")
    assert _cancel(channel, blocker).error.code == code_pb2.CANCELLED
    assert _files(root / "cancelled") == []


def test_a_failed_script_leaves_no_vrt_and_no_part(server, raster_stub, queue_session, root):
    """Line 1 is written; line 2 reads a GeoTIFF truncated after it was checked, so the
    script fails and takes line 1's VRT and GeoTIFF away with it."""
    _, channel = server
    write_geotiff(root / "fail" / "in" / "b.tif", np.ones((HEIGHT, WIDTH), np.float32))
    blocker = _blocker(raster_stub, queue_session, root)
    operation = _band_calc(
        raster_stub,
        queue_session,
        "fail/out",
        expression='"nir" + 1 @ one\n"b" * 2 @ two',
        inputs={"nir": "in/nir.tif", "b": "fail/in/b.tif"},
        virtual_output=True,
    )
    data = (root / "fail" / "in" / "b.tif").read_bytes()
    (root / "fail" / "in" / "b.tif").write_bytes(data[: len(data) // 2])
    _cancel(channel, blocker)
    done = watch_operation(channel, operation)[-1]
    assert done.error.code == code_pb2.DATA_LOSS, done
    assert str(root) not in done.error.message
    assert _files(root / "fail" / "out") == []


# VRT inputs.


def _write_sources(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Two GeoTIFFs: the left and right halves of a mosaic, each with nodata 0 and a hole."""
    rng = np.random.default_rng(11)
    left = rng.integers(1, 1000, (HEIGHT, WIDTH // 2)).astype(np.int16)
    right = rng.integers(1, 1000, (HEIGHT, WIDTH // 2)).astype(np.int16)
    left[5:9, 5:9] = 0
    right[10:20, :4] = 0
    write_geotiff(root / "vin" / "left.tif", left, nodata=0)
    shifted = TRANSFORM * rasterio.Affine.translation(WIDTH // 2, 0)
    write_geotiff(root / "vin" / "parts" / "right.tif", right, nodata=0, transform=shifted)
    return left, right


def _source(kind: str, name: str, relative: bool, band: int, src, dst, extra: str = "") -> str:
    return (
        f'<{kind}><SourceFilename relativeToVRT="{int(relative)}">{name}</SourceFilename>'
        f"<SourceBand>{band}</SourceBand>"
        f'<SrcRect xOff="{src[0]}" yOff="{src[1]}" xSize="{src[2]}" ySize="{src[3]}"/>'
        f'<DstRect xOff="{dst[0]}" yOff="{dst[1]}" xSize="{dst[2]}" ySize="{dst[3]}"/>'
        f"{extra}</{kind}>"
    )


def _dataset(sources: str, *, dtype="Int16", nodata: str | None = "-1", attributes="") -> str:
    geotransform = ", ".join(
        repr(v)
        for v in (TRANSFORM.c, TRANSFORM.a, TRANSFORM.b, TRANSFORM.f, TRANSFORM.d, TRANSFORM.e)
    )
    nodata_element = f"<NoDataValue>{nodata}</NoDataValue>" if nodata is not None else ""
    return (
        f'<VRTDataset rasterXSize="{WIDTH}" rasterYSize="{HEIGHT}"{attributes}>\n'
        f"  <SRS>{CRS}</SRS>\n  <GeoTransform>{geotransform}</GeoTransform>\n"
        f'  <VRTRasterBand dataType="{dtype}" band="1">{nodata_element}'
        f"<ColorInterp>Gray</ColorInterp>{sources}</VRTRasterBand>\n</VRTDataset>\n"
    )


def _mosaic(root: Path) -> str:
    """A mosaic as gdalbuildvrt writes one: the left half named relative to the VRT, the
    right half by its absolute path under the root, ComplexSources with NODATA."""
    half = WIDTH // 2
    return _dataset(
        _source(
            "ComplexSource",
            "left.tif",
            True,
            1,
            (0, 0, half, HEIGHT),
            (0, 0, half, HEIGHT),
            "<NODATA>0</NODATA>",
        )
        + _source(
            "ComplexSource",
            str(root / "vin" / "parts" / "right.tif"),
            False,
            1,
            (0, 0, half, HEIGHT),
            (half, 0, half, HEIGHT),
            "<NODATA>0</NODATA>",
        )
        # Drawn over the left half, its holes transparent: several sources per band.
        + _source(
            "ComplexSource",
            "parts/right.tif",
            True,
            1,
            (0, 10, 8, 20),
            (2, 0, 8, 20),
            "<NODATA>0</NODATA>",
        )
    )


def test_a_vrt_input_gives_the_pixels_gdal_gives(server, raster_stub, session_name, root, tmp_path):
    _, channel = server
    _write_sources(root)
    (root / "vin" / "mosaic.vrt").write_text(_mosaic(root))
    [(gdal_pixels, meta)] = gdal_reads(tmp_path, root / "vin" / "mosaic.vrt")
    assert meta[:3] == ["VRT", "int16", -1.0]
    operation = _band_calc(
        raster_stub,
        session_name,
        "vin-out/copy.tif",
        expression='"m" * 1',
        inputs={"m": "vin/mosaic.vrt"},
        output_data_type=raster_pb2.DATA_TYPE_INT16,
        output_nodata=-1,
    )
    watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    np.testing.assert_array_equal(_read(root / "vin-out" / "copy.tif"), gdal_pixels)
    # A VRT given by its absolute path under the root reads the same.
    operation = _band_calc(
        raster_stub,
        session_name,
        "vin-out/absolute.tif",
        expression='"m" * 1',
        inputs={"m": str(root / "vin" / "mosaic.vrt")},
        output_data_type=raster_pb2.DATA_TYPE_INT16,
        output_nodata=-1,
    )
    watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    np.testing.assert_array_equal(_read(root / "vin-out" / "absolute.tif"), gdal_pixels)


def test_a_vrt_made_by_gdal_and_a_virtual_output_are_inputs_of_the_tools(
    server, raster_stub, session_name, root, tmp_path
):
    _, channel = server
    classes = _read(root / "lc" / "classes.tif")
    # A plain SimpleSource VRT of one GeoTIFF, as rsgrpc writes one.
    text = virtual_raster_xml(
        part="classes.tif",
        width=WIDTH,
        height=HEIGHT,
        dtype="uint8",
        nodata=0,
        crs=CRS,
        transform=tuple(TRANSFORM)[:6],
        block_shape=(HEIGHT, WIDTH),
    )
    (root / "lc" / "classes.vrt").write_bytes(text)
    for path, name in (("lc/classes.vrt", "a"), ("lc/classes.tif", "b")):
        operation = raster_stub.Sieve(
            raster_pb2.SieveRequest(
                session=session_name,
                inputs=[raster_pb2.RasterBand(path=path, band=1)],
                size=3,
                output=raster_pb2.ToolOutput(path=f"tools-in/{name}.tif"),
            )
        )
        watch_to_response(channel, operation, raster_pb2.SieveResponse)
    np.testing.assert_array_equal(
        _read(root / "tools-in" / "a.tif"), _read(root / "tools-in" / "b.tif")
    )
    [(pixels, _)] = gdal_reads(tmp_path, root / "lc" / "classes.vrt")
    np.testing.assert_array_equal(pixels, classes)


def _symlinked(root: Path, outside: Path) -> str:
    link = root / "hv" / "link.tif"
    if not link.is_symlink():
        link.symlink_to(outside / "secret.tif")
    return _plain("link.tif")


def _plain(name: str, relative: bool = True, dtype: str = "UInt16") -> str:
    whole = (0, 0, WIDTH, HEIGHT)
    return _dataset(
        _source("SimpleSource", name, relative, 1, whole, whole), dtype=dtype, nodata=None
    )


def _png(root: Path) -> str:
    with rasterio.open(
        root / "hv" / "src.png",
        "w",
        driver="PNG",
        width=WIDTH,
        height=HEIGHT,
        count=1,
        dtype="uint8",
    ) as ds:
        ds.write(np.full((1, HEIGHT, WIDTH), SECRET, np.uint8))
    return _plain("src.png", dtype="Byte")


def _envi(root: Path) -> str:
    """An ENVI raster (raw pixels and the .hdr GDAL finds beside them)."""
    np.full((HEIGHT, WIDTH), SECRET, "<u2").tofile(root / "hv" / "src.img")
    (root / "hv" / "src.hdr").write_text(
        f"ENVI\nsamples = {WIDTH}\nlines = {HEIGHT}\nbands = 1\nheader offset = 0\n"
        "file type = ENVI Standard\ndata type = 12\ninterleave = bsq\nbyte order = 0\n"
    )
    return _plain("src.img")


_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE VRTDataset [\n<!ENTITY a "aaaaaaaaaa">\n'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">\n' for i in range(9))
    + "]>\n"
)

HOSTILE = {
    "dotdot": lambda root, outside: _plain("../../outside/secret.tif"),
    "absolute-outside": lambda root, outside: _plain(str(outside / "secret.tif"), relative=False),
    "symlinked-source": _symlinked,
    "vsicurl": lambda root, outside: _plain("/vsicurl/http://127.0.0.1:9/x.tif", relative=False),
    "vsizip": lambda root, outside: _plain("/vsizip/hv/a.zip/a.tif", relative=False),
    "url": lambda root, outside: _plain("http://127.0.0.1:9/x.tif", relative=False),
    "gdal-connection": lambda root, outside: _plain("GTIFF_DIR:1:secret.tif"),
    "nested-vrt": lambda root, outside: _plain("inner.vrt"),
    "itself": lambda root, outside: _plain("hostile.vrt"),
    "derived-band": lambda root, outside: _plain("ok.tif").replace(
        'band="1">',
        'band="1" subClass="VRTDerivedRasterBand"><PixelFunctionType>sum</PixelFunctionType>',
    ),
    "pixel-function-python": lambda root, outside: _plain("ok.tif").replace(
        "<ColorInterp>Gray</ColorInterp>",
        "<PixelFunctionLanguage>Python</PixelFunctionLanguage>"
        "<PixelFunctionCode>import os</PixelFunctionCode>",
    ),
    "warped": lambda root, outside: _plain("ok.tif").replace(
        "<VRTDataset ", '<VRTDataset subClass="VRTWarpedDataset" '
    ),
    "kernel-filtered": lambda root, outside: _plain("ok.tif").replace(
        "SimpleSource>", "KernelFilteredSource>"
    ),
    "scaled": lambda root, outside: _dataset(
        _source(
            "ComplexSource",
            "ok.tif",
            True,
            1,
            (0, 0, WIDTH, HEIGHT),
            (0, 0, WIDTH, HEIGHT),
            "<ScaleRatio>2</ScaleRatio>",
        ),
        dtype="UInt16",
        nodata=None,
    ),
    "png-source": lambda root, outside: _png(root),
    "envi-source": lambda root, outside: _envi(root),
    "billion-laughs": lambda root, outside: (
        _LAUGHS + _plain("ok.tif").replace("<ColorInterp>Gray", "<ColorInterp>&j;")
    ),
    "external-entity": lambda root, outside: (
        f'<!DOCTYPE VRTDataset [<!ENTITY e SYSTEM "file://{outside}/secret.tif">]>'
        + _plain("ok.tif").replace("<ColorInterp>Gray", "<ColorInterp>&e;")
    ),
    "two-mib": lambda root, outside: _plain("ok.tif") + " " * (2 << 20),
    "many-elements": lambda root, outside: _plain("ok.tif").replace(
        "<ColorInterp>", "<Metadata>" + "<MDI/>" * 100_000 + "</Metadata><ColorInterp>"
    ),
    "src-rect-out-of-range": lambda root, outside: _dataset(
        _source("SimpleSource", "ok.tif", True, 1, (WIDTH - 8, 0, 16, 16), (0, 0, 16, 16)),
        dtype="UInt16",
        nodata=None,
    ),
    "huge-src-rect": lambda root, outside: _dataset(
        _source("SimpleSource", "ok.tif", True, 1, (2**31, 0, 16, 16), (0, 0, 16, 16)),
        dtype="UInt16",
        nodata=None,
    ),
    "dst-rect-out-of-range": lambda root, outside: _dataset(
        _source("SimpleSource", "ok.tif", True, 1, (0, 0, 16, 16), (WIDTH - 8, 0, 16, 16)),
        dtype="UInt16",
        nodata=None,
    ),
    "resampled": lambda root, outside: _dataset(
        _source("SimpleSource", "ok.tif", True, 1, (0, 0, 16, 16), (0, 0, 32, 32)),
        dtype="UInt16",
        nodata=None,
    ),
    "missing-band": lambda root, outside: _dataset(
        _source("SimpleSource", "ok.tif", True, 2, (0, 0, 16, 16), (0, 0, 16, 16)),
        dtype="UInt16",
        nodata=None,
    ),
    "narrowing-type": lambda root, outside: _plain("ok.tif", dtype="Byte"),
    "not-xml": lambda root, outside: "<VRTDataset><oops></VRTDataset>",
}


REASONS = {
    "dotdot": "'..'",
    "absolute-outside": "outside the server's data roots",
    "symlinked-source": "symbolic link",
    "vsicurl": "a URL, a /vsi path",
    "vsizip": "a URL, a /vsi path",
    "url": "a URL, a /vsi path",
    "gdal-connection": "connection string",
    "nested-vrt": "VRTs of VRTs",
    "itself": "VRTs of VRTs",
    "derived-band": "derived bands",
    "pixel-function-python": "<PixelFunctionLanguage>",
    "warped": "'subClass'",
    "kernel-filtered": "<KernelFilteredSource>",
    "scaled": "is scaled",
    "png-source": "is not a GeoTIFF band",
    "envi-source": "is not a GeoTIFF band",
    "billion-laughs": "DOCTYPE",
    "external-entity": "DOCTYPE",
    "two-mib": "over 1024 KiB",
    "many-elements": "more than 50000 elements",
    "src-rect-out-of-range": "<SrcRect> is not inside",
    "huge-src-rect": "<SrcRect> is not inside",
    "dst-rect-out-of-range": "<DstRect> is not inside",
    "resampled": "resampled",
    "missing-band": "is not a GeoTIFF band",
    "narrowing-type": "without rounding or clamping",
    "not-xml": "not well-formed",
}


def test_every_hostile_case_has_its_reason():
    assert sorted(REASONS) == sorted(HOSTILE)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_vrt_input_is_refused_and_nothing_is_read_or_written(
    server, raster_stub, session_name, root, outside, case
):
    folder = root / "hv"
    write_geotiff(folder / "ok.tif", np.full((HEIGHT, WIDTH), 3, np.uint16))
    (folder / "inner.vrt").write_text(_plain("ok.tif"))
    (folder / "hostile.vrt").write_text(HOSTILE[case](root, outside))
    before = {p: p.stat().st_mtime_ns for p in (outside / "secret.tif",)}
    with pytest.raises(grpc.RpcError) as caught:
        _band_calc(
            raster_stub,
            session_name,
            f"hv-out/{case}.tif",
            expression='"v" + 1',
            inputs={"v": "hv/hostile.vrt"},
        )
    details = caught.value.details()
    assert caught.value.code() in (INVALID, DENIED), details
    assert "hv/hostile.vrt" in details and REASONS[case] in details
    assert str(root) not in details and str(outside) not in details
    assert str(root.parent) not in details
    assert not (root / "hv-out").exists()
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_vrt_input_is_refused_by_the_tools_too(raster_stub, session_name, root, outside):
    (root / "hv2").mkdir(exist_ok=True)
    (root / "hv2" / "x.vrt").write_text(_plain(str(outside / "secret.tif"), relative=False))
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.Sieve(
            raster_pb2.SieveRequest(
                session=session_name,
                inputs=[raster_pb2.RasterBand(path="hv2/x.vrt", band=1)],
                size=2,
                output=raster_pb2.ToolOutput(path="hv2-out", virtual_output=True),
            )
        )
    assert caught.value.code() is INVALID
    assert str(outside) not in caught.value.details()
    assert not (root / "hv2-out").exists()


@pytest.mark.parametrize("swap", ["source-to-link", "source-to-png", "vrt-rewritten"])
def test_a_vrt_input_changed_after_its_check_is_refused_when_it_is_read(
    server, raster_stub, queue_session, root, outside, swap
):
    """The job is checked while another holds the session's one worker; its VRT or a
    source is then changed, and the read that follows refuses what it finds."""
    _, channel = server
    folder = root / f"swap-{swap}"
    write_geotiff(folder / "ok.tif", np.full((HEIGHT, WIDTH), 3, np.uint16))
    (folder / "v.vrt").write_text(_plain("ok.tif"))
    blocker = _blocker(raster_stub, queue_session, root)
    queued = _band_calc(
        raster_stub,
        queue_session,
        f"swap-out/{swap}.tif",
        expression='"v" + 1',
        inputs={"v": f"swap-{swap}/v.vrt"},
    )
    if swap == "source-to-link":
        (folder / "ok.tif").unlink()
        (folder / "ok.tif").symlink_to(outside / "secret.tif")
    elif swap == "source-to-png":
        (folder / "ok.tif").unlink()
        with rasterio.open(
            folder / "ok.tif",
            "w",
            driver="PNG",
            width=WIDTH,
            height=HEIGHT,
            count=1,
            dtype="uint8",
        ) as ds:
            ds.write(np.full((1, HEIGHT, WIDTH), SECRET, np.uint8))
    else:
        (folder / "v.vrt").write_text(_plain(str(outside / "secret.tif"), relative=False))
    assert _cancel(channel, blocker).error.code == code_pb2.CANCELLED
    done = watch_operation(channel, queued)[-1]
    assert done.error.code in (code_pb2.INVALID_ARGUMENT, code_pb2.PERMISSION_DENIED), done
    assert str(root) not in done.error.message and str(outside) not in done.error.message
    assert not (root / "swap-out" / f"{swap}.tif").exists()
    assert not [p for p in _files(root / "swap-out") if p.endswith(PARTIAL_SUFFIX)]


def test_the_python_client_sends_virtual_output_and_returns_the_vrts(server, root, tmp_path):
    from rsgrpc.client import Session

    _, channel = server
    with Session(1, 1024, channel=channel) as rs:
        dilated = rs.band_dilation(
            input_bands=["lc/classes.tif"],
            value_list=[2],
            size=1,
            output_path="client-out",
            prefix="dil_",
            virtual_output=True,
        )
        eroded = rs.band_erosion(
            input_bands=["lc/classes.tif"],
            value_list=[2],
            size=1,
            output_path=["client-out/ero.tif"],
            virtual_output=True,
        )
        calc = rs.band_calc('"a" * 2', "client-out/calc.vrt", ["in/nir.tif"], ["a"])
        plain = rs.band_dilation(
            input_bands=["lc/classes.tif"], value_list=[2], size=1, output_path="client-tif"
        )
    assert dilated.check and eroded.check and calc.check and plain.check
    assert dilated.paths == ["client-out/dil_classes.vrt"]
    assert eroded.paths == ["client-out/ero.vrt"]
    assert calc.paths == ["client-out/calc.vrt"]
    assert _files(root / "client-out") == [
        "calc.vrt",
        "calc_01.tif",
        "dil_classes.vrt",
        "dil_classes_01.tif",
        "ero.vrt",
        "ero_01.tif",
    ]
    [(pixels, meta)] = gdal_reads(tmp_path, root / "client-out" / "dil_classes.vrt")
    assert meta[0] == "VRT"
    np.testing.assert_array_equal(pixels, _read(root / "client-tif" / "classes.tif"))


def test_gdal_in_the_server_process_cannot_open_a_vrt(server, root):
    """GDAL has no VRT driver where the server runs (its workers are checked in
    tests/test_confinement.py): a VRT reaches GDAL nowhere, whatever names it."""
    write_geotiff(root / "gdal" / "ok.tif", np.full((HEIGHT, WIDTH), 3, np.uint16))
    (root / "gdal" / "v.vrt").write_text(_plain("ok.tif"))
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(root / "gdal" / "v.vrt")
    with pytest.raises(rasterio.errors.RasterioIOError):
        rasterio.open(root / "gdal" / "v.vrt", driver="VRT")


# The parser and names, without a server.


def _vrt_path(tmp_path: Path):
    (tmp_path / "data").mkdir(exist_ok=True)
    return DataRoot.at(tmp_path / "data").path("v/x.vrt", field="input")


def test_the_parser_reads_what_it_writes(tmp_path):
    text = virtual_raster_xml(
        part="x_01.tif",
        width=7,
        height=5,
        dtype="float32",
        nodata=-32768.0,
        crs=CRS,
        transform=tuple(TRANSFORM)[:6],
        block_shape=(16, 16),
    )
    raster = parse_vrt(text, _vrt_path(tmp_path))
    assert (raster.width, raster.height, raster.transform) == (7, 5, tuple(TRANSFORM)[:6])
    [band] = raster.bands
    assert (band.dtype, band.nodata) == ("float32", -32768.0)
    [source] = band.sources
    assert source.path.path == "v/x_01.tif" and source.band == 1


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"<VRTDataset", "not well-formed"),
        (b"<?pi x?><VRTDataset/>", "processing instruction"),
        (b'<!DOCTYPE x [<!ENTITY e "x">]><VRTDataset/>', "DOCTYPE"),
        (b"<X/>", "not <VRTDataset>"),
        (b'<VRTDataset rasterXSize="1" rasterYSize="1"/>', "no band"),
        (b" " * (MAX_VRT_BYTES + 1), "over"),
        (b"<VRTDataset>" + b"<a/>" * (MAX_ELEMENTS + 1) + b"</VRTDataset>", "elements"),
        (b"<a>" * 20 + b"</a>" * 20, "nest"),
    ],
)
def test_the_parser_refuses(tmp_path, data, fragment):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_vrt(data, _vrt_path(tmp_path))
    assert fragment in caught.value.message
    assert str(tmp_path) not in caught.value.message


@pytest.mark.parametrize(
    ("given", "expected"),
    [("a/b.tif", "a/b.vrt"), ("a/b.TIFF", "a/b.vrt"), ("a/b.vrt", "a/b.vrt"), ("a/b", "a/b.vrt")],
)
def test_virtual_output_names(given, expected):
    assert virtual_path(given) == expected
