"""Paths as scripts written for Remotior Sensus hold them: absolute paths under one of the
server's data roots, several roots, and a root given to the server through a link, through
a real gRPC channel. An absolute path outside every root is refused without naming a root."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio

from rsgrpc.cli import build_parser
from rsgrpc.download import forget_limiters
from rsgrpc.engine import limits
from rsgrpc.engine.errors import InvalidArgumentError, PermissionDeniedError
from rsgrpc.engine.paths import DataRoot
from rsgrpc.server.config import ServerConfig, from_arguments
from rsgrpc.v1 import (
    download_pb2,
    download_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from tests.conftest import (
    make_config,
    operation_response,
    serving,
    watch_operation,
    watch_to_response,
    write_geotiff,
)
from tests.download.fake_sentinelhub import PUBLIC_PATH, FakeSentinelHub

DENIED = grpc.StatusCode.PERMISSION_DENIED
INVALID = grpc.StatusCode.INVALID_ARGUMENT
SECRET = 42
NODATA = 255
DEAD_PARTIAL = ".x.tif.0123456789abcdef.01234567.partial.tif"  # unlocked: a dead instance's


class Layout:
    """The folders of the module's server: the primary root as the server is given it (a
    link) and as it resolves, a second root, and a folder beside them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.real = base / "disk" / "data"  # the primary root, resolved
        self.link = base / "data"  # the primary root, as the server is given it
        self.second = base / "second"
        self.outside = base / "outside"

    @property
    def server_paths(self) -> tuple[str, ...]:
        """Every server-side folder, none of which a refusal may name."""
        return tuple(str(p) for p in (self.base, self.real, self.link, self.second, self.outside))


@pytest.fixture(scope="module")
def hub():
    with FakeSentinelHub() as fake:
        yield fake


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Layout:
    layout = Layout(tmp_path_factory.mktemp("roots").resolve())
    layout.real.mkdir(parents=True)
    layout.link.symlink_to(layout.real, target_is_directory=True)
    values = np.full((64, 64), 7, np.uint16)
    write_geotiff(layout.real / "in" / "a.tif", values, nodata=0)
    write_geotiff(layout.second / "s2" / "B04.tif", values * 3, nodata=0)
    write_geotiff(layout.outside / "secret.tif", np.full((64, 64), SECRET, np.uint16))
    (layout.real / "escape").symlink_to(layout.outside, target_is_directory=True)
    return layout


@pytest.fixture(scope="module")
def classes(layout) -> np.ndarray:
    """Speckled classes in both roots, for the sieve."""
    rng = np.random.default_rng(5)
    array = np.kron(rng.integers(1, 5, (8, 8), dtype=np.uint8), np.ones((16, 16), np.uint8))
    array[rng.random(array.shape) < 0.05] = 6
    write_geotiff(layout.real / "lc" / "a.tif", array, nodata=NODATA)
    write_geotiff(layout.second / "lc" / "b.tif", array[::-1].copy(), nodata=NODATA)
    return array


@pytest.fixture(scope="module")
def server(layout, hub):
    """A server with two roots, the primary given through a link, and a download
    deployment of the fake hub (overrides conftest's `server`)."""
    deployments = layout.base / "deployments.toml"
    deployments.write_text(
        f'cache_dir = "cache"\n\n[deployments.public]\nbase_url = "{hub.base_url}"\n'
    )
    forget_limiters()
    config = make_config(
        layout.base,
        data_root=layout.link,
        other_data_roots=(layout.second,),
        deployments=str(deployments),
    )
    with serving(config) as pair:
        yield pair
    forget_limiters()


def _band_calc(stub, session: str, inputs: dict[str, str], output: str, expression="a + 1"):
    operation = stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression=expression,
            inputs=[raster_pb2.RasterInput(name=n, path=p) for n, p in inputs.items()],
            output_path=output,
        )
    )
    return operation


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _refused(layout: Layout, code, given: str, fn, *args, **kwargs) -> str:
    """Call `fn`, which must fail with `code` and a message that names no server folder
    once the client's own path, `given`, is taken out of it; returns the message."""
    with pytest.raises(grpc.RpcError) as caught:
        fn(*args, **kwargs)
    details = caught.value.details()
    assert caught.value.code() is code, details
    rest = details.replace(given, "")
    assert not any(path in rest for path in layout.server_paths), details
    return details


# Absolute paths inside a root.


@pytest.mark.parametrize("form", ["as given", "resolved"])
def test_band_calc_takes_absolute_paths_under_either_form_of_a_linked_root(
    server, session_name, raster_stub, layout, form
):
    _, channel = server
    root = layout.link if form == "as given" else layout.real
    output = f"{root}/out//calc-{form.replace(' ', '-')}.tif"  # '//' as scripts join paths
    operation = _band_calc(raster_stub, session_name, {"a": f"{root}/in/a.tif"}, output)
    _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert response.output_path == output  # absolute in, absolute out, as written
    written = layout.real / "out" / f"calc-{form.replace(' ', '-')}.tif"
    np.testing.assert_array_equal(_read(written), np.full((64, 64), 8))


def test_sieve_takes_absolute_inputs_and_outputs_file_and_folder(
    server, session_name, raster_stub, layout, classes
):
    _, channel = server
    operation = raster_stub.Sieve(
        raster_pb2.SieveRequest(
            session=session_name,
            inputs=[raster_pb2.RasterBand(path=f"{layout.link}/lc/a.tif")],
            size=4,
            output=raster_pb2.ToolOutput(path=f"{layout.link}/sieved/a.tif"),
        )
    )
    _, response = watch_to_response(channel, operation, raster_pb2.SieveResponse)
    [output] = response.outputs
    assert (output.input.path, output.output_path) == (
        f"{layout.link}/lc/a.tif",
        f"{layout.link}/sieved/a.tif",
    )
    sieved = _read(layout.real / "sieved" / "a.tif")
    assert output.pixels_changed == np.count_nonzero(sieved != classes) > 0

    # A folder as output, one file per input, across both roots.
    inputs = [f"{layout.link}/lc/a.tif", f"{layout.second}/lc/b.tif"]
    operation = raster_stub.Sieve(
        raster_pb2.SieveRequest(
            session=session_name,
            inputs=[raster_pb2.RasterBand(path=p) for p in inputs],
            size=4,
            output=raster_pb2.ToolOutput(path=f"{layout.second}/sieved/", prefix="s_"),
        )
    )
    _, response = watch_to_response(channel, operation, raster_pb2.SieveResponse)
    assert [o.output_path for o in response.outputs] == [
        f"{layout.second}/sieved/s_a.tif",
        f"{layout.second}/sieved/s_b.tif",
    ]
    np.testing.assert_array_equal(_read(layout.second / "sieved" / "s_a.tif"), sieved)
    assert (layout.second / "sieved" / "s_b.tif").is_file()


# Absolute paths outside every root.


def _outside_paths(layout: Layout) -> dict[str, tuple[str, str]]:
    """Absolute paths a client may send that reach no file in a root: the path and a part
    of the refusal's message."""
    outside = "is an absolute path outside the server's data roots"
    return {
        "system file": ("/etc/passwd", outside),
        "root of the file system": ("/", outside),
        "sibling folder": (f"{layout.outside}/secret.tif", outside),
        "a root's parent": (f"{layout.base}/x.tif", outside),
        "a name that starts like a root": (f"{layout.second}x/s2/B04.tif", outside),
        "'..' out of a root": (f"{layout.link}/../outside/secret.tif", "'..'"),
        "a link inside a root": (f"{layout.link}/escape/secret.tif", "is a symbolic link"),
        "the link as a root's folder": (f"{layout.real}/escape/secret.tif", "is a symbolic link"),
    }


CASES = [
    "system file",
    "root of the file system",
    "sibling folder",
    "a root's parent",
    "a name that starts like a root",
    "'..' out of a root",
    "a link inside a root",
    "the link as a root's folder",
]


@pytest.mark.parametrize("case", CASES)
def test_an_absolute_input_outside_the_roots_is_permission_denied(
    server, session_name, raster_stub, layout, case
):
    path, fragment = _outside_paths(layout)[case]
    details = _refused(
        layout,
        DENIED,
        path,
        _band_calc,
        raster_stub,
        session_name,
        {"a": path},
        f"{layout.link}/out/never.tif",
    )
    assert fragment in details
    sieve = raster_pb2.SieveRequest(
        session=session_name,
        inputs=[raster_pb2.RasterBand(path=path)],
        size=4,
        output=raster_pb2.ToolOutput(path="out/never-sieved.tif"),
    )
    assert fragment in _refused(layout, DENIED, path, raster_stub.Sieve, sieve)
    assert not (layout.real / "out" / "never.tif").exists()
    assert not (layout.real / "out" / "never-sieved.tif").exists()


@pytest.mark.parametrize("case", CASES)
def test_an_absolute_output_outside_the_roots_is_permission_denied(
    server, session_name, raster_stub, layout, case
):
    path, fragment = _outside_paths(layout)[case]
    before = sorted(layout.outside.rglob("*"))
    details = _refused(
        layout, DENIED, path, _band_calc, raster_stub, session_name, {"a": "in/a.tif"}, path
    )
    assert fragment in details
    sieve = raster_pb2.SieveRequest(
        session=session_name,
        inputs=[raster_pb2.RasterBand(path="in/a.tif")],
        size=4,
        output=raster_pb2.ToolOutput(path=path),
    )
    # A folder as output ("/", "/etc/passwd"): its file is the input's name in it.
    shown = "/a.tif" if path == "/" else path
    assert fragment in _refused(layout, DENIED, shown, raster_stub.Sieve, sieve)
    assert sorted(layout.outside.rglob("*")) == before


def test_a_root_itself_names_no_file(server, session_name, raster_stub, layout):
    for root in (f"{layout.link}", f"{layout.real}/", f"{layout.second}"):
        details = _refused(
            layout, INVALID, root, _band_calc, raster_stub, session_name, {"a": "in/a.tif"}, root
        )
        assert "names the data root" in details


# Several roots.


def test_an_input_in_the_second_root_and_its_output_in_the_first(
    server, session_name, raster_stub, layout
):
    _, channel = server
    for output in (f"{layout.link}/out/from-second.tif", "out/from-second-relative.tif"):
        operation = _band_calc(
            raster_stub, session_name, {"a": f"{layout.second}/s2/B04.tif"}, output
        )
        _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
        assert response.output_path == output
        written = layout.real / "out" / Path(output).name
        np.testing.assert_array_equal(_read(written), np.full((64, 64), 22))
        assert not (layout.second / "out").exists()


def test_an_input_in_the_first_root_and_its_output_in_the_second(
    server, session_name, raster_stub, layout
):
    _, channel = server
    output = f"{layout.second}/out/from-first.tif"
    for given in ("in/a.tif", f"{layout.real}/in/a.tif"):
        operation = raster_stub.BandCalc(
            raster_pb2.BandCalcRequest(
                session=session_name,
                expression="a * 2",
                inputs=[raster_pb2.RasterInput(name="a", path=given)],
                output_path=output,
                overwrite=True,
            )
        )
        _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
        assert response.output_path == output
        np.testing.assert_array_equal(
            _read(layout.second / "out" / "from-first.tif"), np.full((64, 64), 14)
        )
    assert not (layout.real / "out" / "from-first.tif").exists()


def test_free_disk_is_measured_on_the_root_the_output_is_in(
    server, session_name, raster_stub, layout, monkeypatch
):
    _, channel = server
    measured: list[Path] = []

    def free(directory: Path) -> int:
        measured.append(directory)
        return 0 if directory.is_relative_to(layout.second.resolve()) else 1 << 50

    monkeypatch.setattr(limits, "free_disk_bytes", free)
    output = f"{layout.second}/full/x.tif"
    details = _refused(
        layout,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        output,
        _band_calc,
        raster_stub,
        session_name,
        {"a": "in/a.tif"},
        output,
    )
    assert "not enough free disk" in details
    assert measured == [layout.second.resolve()]  # the deepest folder of it that exists
    measured.clear()
    operation = _band_calc(raster_stub, session_name, {"a": "in/a.tif"}, "out/room.tif")
    watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert measured and all(d.is_relative_to(layout.real.resolve()) for d in measured)


# Downloads.


def _item(request_id: str, output: str) -> download_pb2.DownloadItem:
    return download_pb2.DownloadItem(
        uri=PUBLIC_PATH.lstrip("/"),  # answered without a token
        body_json=json.dumps({"id": request_id, "format": "tiff"}),
        output_path=output,
    )


def test_a_download_saves_to_absolute_paths_in_either_root(server, session_name, layout, hub):
    _, channel = server
    stub = download_pb2_grpc.DownloadServiceStub(channel)
    outputs = [f"{layout.second}/dl/one.tif", f"{layout.link}/dl/two.tif", "dl/three.tif"]
    items = [_item(f"roots-{i}", output) for i, output in enumerate(outputs)]
    operation = stub.Download(
        download_pb2.DownloadRequest(session=session_name, deployment="public", items=items)
    )
    response = operation_response(
        watch_operation(channel, operation)[-1], download_pb2.DownloadResponse
    )
    assert [r.output_path for r in response.results] == outputs
    saved = [layout.second / "dl" / "one.tif", layout.real / "dl" / "two.tif"]
    saved.append(layout.real / "dl" / "three.tif")
    for i, path in enumerate(saved):
        assert path.read_bytes() == hub.sent[f"roots-{i}"]


def test_a_download_naming_one_file_twice_in_two_forms_is_refused(server, session_name, layout):
    _, channel = server
    stub = download_pb2_grpc.DownloadServiceStub(channel)
    items = [_item("twice-a", "dl/twice.tif"), _item("twice-b", f"{layout.real}/dl/twice.tif")]
    request = download_pb2.DownloadRequest(session=session_name, deployment="public", items=items)
    details = _refused(layout, INVALID, f"{layout.real}/dl/twice.tif", stub.Download, request)
    assert "is also the output of items[0]" in details
    assert not (layout.real / "dl" / "twice.tif").exists()


# Leftovers of dead instances, in every root.


def test_a_starting_server_removes_dead_partials_in_every_root(tmp_path, caplog):
    first, second, nested = tmp_path / "first", tmp_path / "second", tmp_path / "first" / "deep"
    for folder in (first / "sub", second / "sub", nested):
        folder.mkdir(parents=True)
        (folder / DEAD_PARTIAL).write_bytes(b"partial")
    config = make_config(tmp_path, data_root=first, other_data_roots=(second, nested))
    caplog.set_level(logging.INFO, logger="rsgrpc.engine.leftovers")
    with serving(config):
        deadline = time.monotonic() + 60
        while "leftovers of dead server instances" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
    assert "3 partial outputs and 0 temporary folders removed" in caplog.text
    for folder in (first / "sub", second / "sub", nested):
        assert not (folder / DEAD_PARTIAL).exists()
    assert f"removed partial output sub/{DEAD_PARTIAL} (data root 2)," in caplog.text
    assert f"removed partial output deep/{DEAD_PARTIAL}," in caplog.text  # walked once
    removals = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert not any(str(tmp_path) in line for line in removals)


# Configuration.


def test_several_roots_from_the_environment_and_from_repeated_flags(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    parser = build_parser()
    monkeypatch.setenv("RSGRPC_DATA_ROOT", f"{first}{os.pathsep}{second}{os.pathsep}")
    config = from_arguments(parser.parse_args(["serve"]))
    assert config.data_roots == (first, second)
    assert (config.data_root, config.other_data_roots) == (first, (second,))
    flags = ["serve", "--data-root", str(second), "--data-root", str(first)]
    assert from_arguments(parser.parse_args(flags)).data_roots == (second, first)
    monkeypatch.delenv("RSGRPC_DATA_ROOT")
    assert from_arguments(parser.parse_args(["serve"])).data_roots == (ServerConfig.data_root,)


def test_two_roots_from_the_environment_serve_a_job_across_them(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    write_geotiff(second / "in.tif", np.full((32, 32), 5, np.uint16), nodata=0)
    monkeypatch.setenv("RSGRPC_DATA_ROOT", f"{first}{os.pathsep}{second}")
    parsed = from_arguments(build_parser().parse_args(["serve"]))
    config = make_config(
        tmp_path, data_root=parsed.data_root, other_data_roots=parsed.other_data_roots
    )
    with serving(config) as (running, channel):
        assert running.data_root.roots == (first.resolve(), second.resolve())
        session = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=1, available_ram_mib=1024)
            )
        )
        stub = raster_pb2_grpc.RasterServiceStub(channel)
        operation = _band_calc(stub, session.name, {"a": f"{second}/in.tif"}, "out.tif")
        watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    np.testing.assert_array_equal(_read(first / "out.tif"), np.full((32, 32), 6))


def test_rsgrpc_serve_takes_its_roots_from_the_environment_and_sweeps_each(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    (second / "sub").mkdir(parents=True)
    (second / "sub" / DEAD_PARTIAL).write_bytes(b"partial")
    env = {**os.environ, "RSGRPC_DATA_ROOT": f"{first}{os.pathsep}{second}"}
    command = [sys.executable, "-m", "rsgrpc.cli", "serve", "--address", "127.0.0.1:0"]
    command += ["--temp-root", str(tmp_path / "tmp"), "--max-processes", "1"]
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "leftovers of dead server instances" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    text = log.read_text()
    assert f"removed partial output sub/{DEAD_PARTIAL} (data root 2)," in text
    assert "1 partial outputs and 0 temporary folders removed" in text
    assert not (second / "sub" / DEAD_PARTIAL).exists() and first.is_dir()


# The rules, without a server.


def test_the_longest_matching_root_takes_an_absolute_path(tmp_path):
    tmp_path = tmp_path.resolve()
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    roots = DataRoot.at(outer, inner, outer)  # a root given twice counts once
    assert roots.roots == (outer, inner)
    deep = roots.path(f"{inner}/x/y.tif")
    assert (deep.root, deep.parts, deep.path) == (inner, ("x", "y.tif"), f"{inner}/x/y.tif")
    shallow = roots.path(f"//{str(outer).lstrip('/')}/./x.tif")
    assert (shallow.root, shallow.parts, shallow.path) == (outer, ("x.tif",), f"{outer}/x.tif")
    relative = roots.path("inner/x/y.tif")  # relative: always the primary
    assert (relative.root, relative.parts) == (outer, ("inner", "x", "y.tif"))
    assert relative.identity == deep.identity
    with pytest.raises(PermissionDeniedError, match="outside the server's data roots"):
        roots.path(f"{outer}-sibling/x.tif")
    with pytest.raises(InvalidArgumentError, match="names the data root"):
        roots.path(f"{inner}/")


def test_a_relative_root_is_written_by_clients_as_it_reads_from_the_servers_folder(
    tmp_path, monkeypatch
):
    tmp_path = tmp_path.resolve()
    monkeypatch.chdir(tmp_path)
    roots = DataRoot.at("data")
    assert roots.path(f"{tmp_path}/data/x.tif").parts == ("x.tif",)
    with pytest.raises(PermissionDeniedError):
        roots.path("/data/x.tif")
