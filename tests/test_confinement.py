"""No file outside the data root is read or written, whatever the files inside it hold or
become: formats, sidecars, links swapped in while a job waits, and honest path errors."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2

from rsgrpc.engine.executors import LocalProcessExecutor
from rsgrpc.engine.gdal_env import GDAL_OPTIONS, gdal_options_in_force
from rsgrpc.engine.instance import INSTANCE_ID, PARTIAL_SUFFIX, partial_instance
from rsgrpc.engine.partial_output import PartialOutput
from rsgrpc.engine.paths import DataRoot
from rsgrpc.v1 import raster_pb2, session_pb2, session_pb2_grpc
from tests.conftest import watch_operation, watch_to_response, write_geotiff

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
SECRET = 42


@pytest.fixture(scope="module")
def root(server) -> Path:
    running, _ = server
    root = running.data_root.root
    write_geotiff(root / "in" / "a.tif", np.full((64, 64), 7, np.uint16), nodata=0)
    return root


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder beside the data root holding a raster whose values must never come back."""
    folder = tmp_path_factory.mktemp("outside")
    write_geotiff(folder / "secret.tif", np.full((64, 64), SECRET, np.uint16))
    return folder


def _band_calc(stub, session, *, inputs=None, output="out/x.tif", expression="a + 1", **fields):
    inputs = inputs or {"a": "in/a.tif"}
    return stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression=expression,
            inputs=[raster_pb2.RasterInput(name=n, path=p) for n, p in inputs.items()],
            output_path=output,
            **fields,
        )
    )


def _refused(code, fragment, root, fn, *args, **kwargs) -> str:
    """Call `fn`, which must fail with `code`, a message holding `fragment` and no
    server-side path; returns the message."""
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args, **kwargs)
    details = caught.value.details()
    assert caught.value.code() is code, details
    assert fragment in details
    assert str(root) not in details and str(root.parent) not in details
    return details


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# Format-level confinement.


def _options_and_drivers() -> tuple[dict[str, str | None], list[str]]:
    """Runs in a worker: the GDAL options in force there and the drivers it has."""
    with rasterio.Env() as env:
        return gdal_options_in_force(), sorted(env.drivers())


def test_gdal_options_hold_in_the_server_and_in_a_worker_process(server):
    executor = LocalProcessExecutor(1, threads_per_process=1)
    try:
        in_worker = executor.submit(_options_and_drivers).result()
    finally:
        executor.shutdown()
    for options, drivers in (in_worker, _options_and_drivers()):  # the server runs here
        assert options == GDAL_OPTIONS
        assert "GTiff" in drivers and "VRT" not in drivers


def _vrt(source: str) -> str:
    return (
        '<VRTDataset rasterXSize="64" rasterYSize="64">'
        '<VRTRasterBand dataType="UInt16" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{source}</SourceFilename>'
        "<SourceBand>1</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
    )


def _png(path: Path) -> None:
    with rasterio.open(path, "w", driver="PNG", width=8, height=8, count=1, dtype="uint8") as ds:
        ds.write(np.full((1, 8, 8), SECRET, np.uint8))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda path, outside: path.write_text(_vrt(str(outside / "secret.tif"))), id="vrt"
        ),
        pytest.param(
            lambda path, outside: path.write_text(_vrt("/vsicurl/http://127.0.0.1:9/x.tif")),
            id="vrt-vsicurl",
        ),
        pytest.param(lambda path, outside: _png(path), id="png"),
        pytest.param(lambda path, outside: path.write_text("just text\n"), id="text"),
    ],
)
def test_an_input_that_is_not_a_geotiff_is_invalid_argument_and_nothing_is_read(
    raster_stub, session_name, root, outside, make
):
    make(root / "in" / "fake.tif", outside)
    details = _refused(
        INVALID,
        "'in/fake.tif' is not a readable raster: only GeoTIFF files are read",
        root,
        _band_calc,
        raster_stub,
        session_name,
        inputs={"a": "in/fake.tif"},
    )
    assert "/vsi" not in details
    assert not (root / "out" / "x.tif").exists()


def test_sidecars_linked_from_outside_are_neither_read_nor_written(
    server, raster_stub, session_name, root, outside
):
    """A GeoTIFF with no georeferencing and a value 5, beside an .aux.xml, a .tfw and a .prj
    that are links to files outside the root: their nodata, transform and CRS must not
    reach the output, and they stay as they were."""
    _, channel = server
    pixels = np.array([[5, 6], [7, 8]], np.uint16).repeat(32, 0).repeat(32, 1)
    (root / "side").mkdir()
    with rasterio.open(
        root / "side" / "plain.tif",
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=1,
        dtype="uint16",
    ) as ds:
        ds.write(pixels, 1)
    sidecars = {
        "plain.tif.aux.xml": '<PAMDataset><SRS>EPSG:4326</SRS><PAMRasterBand band="1">'
        "<NoDataValue>5</NoDataValue></PAMRasterBand></PAMDataset>",
        "plain.tfw": "2\n0\n0\n-2\n1000\n2000\n",
        "plain.prj": 'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257]],'
        'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]]',
    }
    for name, text in sidecars.items():
        (outside / name).write_text(text)
        (root / "side" / name).symlink_to(outside / name)
    before = {name: (outside / name).read_text() for name in sidecars}
    operation = _band_calc(
        raster_stub,
        session_name,
        inputs={"a": "side/plain.tif"},
        output="side-out/plain.tif",
        expression="a * 1",
        output_data_type=raster_pb2.DATA_TYPE_UINT16,
        output_nodata=0,
    )
    watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    with rasterio.open(root / "side-out" / "plain.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), pixels)  # 5 was no nodata
        assert ds.crs is None
        assert ds.transform.c == 0 and ds.transform.f == 0
    assert os.listdir(root / "side-out") == ["plain.tif"]
    assert {name: (outside / name).read_text() for name in sidecars} == before
    assert sorted(os.listdir(root / "side")) == [
        "plain.prj",
        "plain.tfw",
        "plain.tif",
        "plain.tif.aux.xml",
    ]


def test_a_cloud_optimized_output_leaves_nothing_beside_it(server, raster_stub, session_name, root):
    """Overviews are made in the session's temporary directory, and no .aux.xml is written."""
    _, channel = server
    write_geotiff(
        root / "big" / "b.tif", np.arange(1200 * 1100, dtype=np.uint16).reshape(1200, 1100)
    )
    operation = _band_calc(
        raster_stub,
        session_name,
        inputs={"a": "big/b.tif"},
        output="cog/b.tif",
        output_options=raster_pb2.OutputOptions(cloud_optimized=True),
    )
    watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert os.listdir(root / "cog") == ["b.tif"]
    with rasterio.open(root / "cog" / "b.tif") as ds:
        assert ds.overviews(1)


# Links: never followed.


def test_a_link_inside_the_root_is_refused_like_any_link(raster_stub, session_name, root):
    (root / "in" / "alias.tif").symlink_to(root / "in" / "a.tif")
    _refused(
        DENIED,
        "'in/alias.tif' is a symbolic link",
        root,
        _band_calc,
        raster_stub,
        session_name,
        inputs={"a": "in/alias.tif"},
    )


def _blocking_job(stub, session, root) -> lro.Operation:
    """A band calc over a sparse 20000 x 20000 raster: it runs far longer than a test
    takes to swap a folder, and is cancelled once the swap is done."""
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
    return _band_calc(
        stub,
        session,
        inputs={"a": "block/sparse.tif"},
        output="block/out.tif",
        overwrite=True,
        output_data_type=raster_pb2.DATA_TYPE_UINT8,
        output_nodata=0,
    )


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


@pytest.mark.parametrize("swapped", ["output", "input"])
def test_a_folder_swapped_for_a_link_while_the_job_waits_redirects_nothing(
    server, raster_stub, queue_session, root, outside, tmp_path, swapped
):
    _, channel = server
    work = root / f"queued-{swapped}"
    write_geotiff(work / "in" / "a.tif", np.full((64, 64), 7, np.uint16))
    (work / "out").mkdir()
    target = tmp_path / "elsewhere"
    write_geotiff(target / "a.tif", np.full((64, 64), SECRET, np.uint16))
    blocker = _blocking_job(raster_stub, queue_session, root)
    queued = _band_calc(
        raster_stub,
        queue_session,
        inputs={"a": f"queued-{swapped}/in/a.tif"},
        output=f"queued-{swapped}/out/x.tif",
    )
    moved = work / swapped.replace("output", "out").replace("input", "in")
    moved.rename(work / "moved")
    moved.symlink_to(target, target_is_directory=True)
    before = _files(target)
    lro_grpc.OperationsStub(channel).CancelOperation(lro.CancelOperationRequest(name=blocker.name))
    # Cancelled while running: the queued job had not started when the folder was swapped.
    assert watch_operation(channel, blocker)[-1].error.code == code_pb2.CANCELLED
    done = watch_operation(channel, queued)[-1]
    assert done.error.code == code_pb2.PERMISSION_DENIED, done.error.message
    assert "symbolic link" in done.error.message and str(root) not in done.error.message
    assert _files(target) == before
    assert not (work / "moved" / "x.tif").exists()


# Honest path errors.


@pytest.mark.parametrize(
    ("output", "code", "fragment"),
    [
        ("out/" + "n" * 252 + ".tif", INVALID, "names are at most 255"),
        ("/".join(["d" * 200] * 21) + ".tif", INVALID, "paths are at most 4096"),
        ("in/a.tif/x.tif", INVALID, "'in/a.tif' is a file, not a directory"),
        ("in", INVALID, "is a directory"),
        ("in/", INVALID, "is a directory"),
        ("", INVALID, "is empty"),
        (".", INVALID, "names the data root"),
        ("../x.tif", DENIED, "'..'"),
        # Absolute paths are taken only under a data root (tests/test_data_roots.py).
        ("/etc/x.tif", DENIED, "is an absolute path outside the server's data roots"),
        ("/etc/passwd", DENIED, "is an absolute path outside the server's data roots"),
        ("//etc/passwd", DENIED, "outside the server's data roots"),
        ("\\\\server\\share\\x.tif", DENIED, "not a path under the server's data roots"),
    ],
)
def test_bad_output_paths_get_a_clear_code_and_no_server_path(
    raster_stub, session_name, root, output, code, fragment
):
    before = _files(root)
    _refused(code, fragment, root, _band_calc, raster_stub, session_name, output=output)
    assert _files(root) == before


def test_an_output_name_of_255_bytes_is_written_and_its_partial_name_fits(
    server, raster_stub, session_name, root
):
    name = "n" * 251 + ".tif"
    operation = _band_calc(raster_stub, session_name, output=f"long/{name}")
    watch_to_response(server[1], operation, raster_pb2.BandCalcResponse)
    assert os.listdir(root / "long") == [name]


def test_inputs_that_are_not_regular_files_are_invalid_argument_without_waiting(
    raster_stub, session_name, root, tmp_path
):
    special = root / "special"
    special.mkdir(exist_ok=True)
    os.mkfifo(special / "fifo.tif")  # opening it to read would wait for a writer
    unix = socket.socket(socket.AF_UNIX)
    try:
        unix.bind(str(special / "socket.tif"))
        (special / "folder.tif").mkdir()
        for name, fragment in [
            ("fifo.tif", "not a regular file"),
            ("socket.tif", "not a regular file"),
            ("folder.tif", "is a directory"),
        ]:
            _refused(
                INVALID,
                fragment,
                root,
                _band_calc,
                raster_stub,
                session_name,
                inputs={"a": f"special/{name}"},
            )
    finally:
        unix.close()
    assert not list(root.rglob(f"*{PARTIAL_SUFFIX}"))


def test_an_input_that_is_a_device_is_invalid_argument(raster_stub, session_name, root):
    device = root / "special" / "null.tif"
    device.parent.mkdir(exist_ok=True)
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
    except PermissionError:
        pytest.skip("making a device file needs CAP_MKNOD")
    _refused(
        INVALID,
        "'special/null.tif' is not a regular file",
        root,
        _band_calc,
        raster_stub,
        session_name,
        inputs={"a": "special/null.tif"},
    )


def test_a_sieve_output_named_past_255_bytes_by_its_prefix_is_invalid_argument(
    raster_stub, session_name, root
):
    stem = "s" * 240
    write_geotiff(root / "classes" / f"{stem}.tif", np.ones((16, 16), np.uint8))
    before = _files(root)
    _refused(
        INVALID,
        "names are at most 255",
        root,
        raster_stub.Sieve,
        raster_pb2.SieveRequest(
            session=session_name,
            inputs=[raster_pb2.RasterBand(path=f"classes/{stem}.tif")],
            size=2,
            output=raster_pb2.ToolOutput(path="sieved", prefix="p" * 20),
        ),
    )
    assert _files(root) == before


def test_an_input_under_a_file_is_invalid_argument(raster_stub, session_name, root):
    _refused(
        INVALID,
        "'in/a.tif' is a file, not a directory",
        root,
        _band_calc,
        raster_stub,
        session_name,
        inputs={"a": "in/a.tif/b.tif"},
    )


# The log kept at close.


def _sessions(server) -> session_pb2_grpc.SessionServiceStub:
    return session_pb2_grpc.SessionServiceStub(server[1])


def _new_session(server) -> session_pb2.Session:
    return _sessions(server).CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=1, available_ram_mib=256)
        )
    )


def test_a_log_kept_at_an_existing_file_is_already_exists_unless_overwritten(server, root):
    stub = _sessions(server)
    created = _new_session(server)
    (root / "logs").mkdir(exist_ok=True)
    (root / "logs" / "kept.log").write_text("mine\n")
    _refused(
        grpc.StatusCode.ALREADY_EXISTS,
        "'logs/kept.log' exists",
        root,
        stub.DeleteSession,
        session_pb2.DeleteSessionRequest(name=created.name, log_path="logs/kept.log"),
    )
    # Nothing changed: the session is open, its files and the existing log are kept.
    assert stub.GetSession(session_pb2.GetSessionRequest(name=created.name)).name == created.name
    assert Path(created.temporary_directory).is_dir()
    assert (root / "logs" / "kept.log").read_text() == "mine\n"
    assert os.listdir(root / "logs") == ["kept.log"]
    stub.DeleteSession(
        session_pb2.DeleteSessionRequest(
            name=created.name, log_path="logs/kept.log", overwrite_log=True
        )
    )
    assert "session closed" in (root / "logs" / "kept.log").read_text()
    assert not Path(created.temporary_directory).exists()


@pytest.mark.parametrize(
    ("log_path", "code", "fragment"),
    [
        ("linked/session.log", DENIED, "symbolic link"),
        ("in/a.tif/session.log", INVALID, "is a file, not a directory"),
        ("in", INVALID, "is a directory"),
        ("../session.log", DENIED, "'..'"),
    ],
)
def test_a_log_path_that_cannot_be_written_fails_and_leaves_the_session_open(
    server, root, tmp_path, log_path, code, fragment
):
    if not (root / "linked").exists():
        (root / "linked").symlink_to(tmp_path, target_is_directory=True)
    stub = _sessions(server)
    created = _new_session(server)
    _refused(
        code,
        fragment,
        root,
        stub.DeleteSession,
        session_pb2.DeleteSessionRequest(name=created.name, log_path=log_path),
    )
    assert stub.GetSession(session_pb2.GetSessionRequest(name=created.name)).name == created.name
    assert Path(created.temporary_directory).is_dir()
    assert list(tmp_path.iterdir()) == []
    stub.DeleteSession(session_pb2.DeleteSessionRequest(name=created.name))
    assert not Path(created.temporary_directory).exists()


# The partial file of an output.


def test_a_partial_output_is_locked_from_creation_until_it_is_published(tmp_path):
    target = DataRoot.at(tmp_path).path("deep/out.tif", field="output")
    with PartialOutput(target, overwrite=False) as partial:
        [name] = os.listdir(tmp_path / "deep")
        assert partial_instance(name) == INSTANCE_ID
        with open(tmp_path / "deep" / name, "rb") as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(partial.fd, b"done")
        assert partial.publish() == 4
    assert os.listdir(tmp_path / "deep") == ["out.tif"]
    assert (tmp_path / "deep" / "out.tif").read_bytes() == b"done"


def test_a_partial_output_left_unpublished_is_removed(tmp_path):
    target = DataRoot.at(tmp_path).path("out.tif", field="output")
    with pytest.raises(RuntimeError), PartialOutput(target, overwrite=False):
        raise RuntimeError("the job failed")
    assert os.listdir(tmp_path) == []
