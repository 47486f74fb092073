"""Data roots by name: `--data-root name=folder`, and Dask workers that mount a root at a
folder of their own (RSGRPC_WORKER_DATA_ROOTS); a session on the cluster starts only once
every worker sees every root (its marker, read where the worker mounts the root), and
is FAILED_PRECONDITION, naming the root and the worker and no folder, otherwise."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio

from rsgrpc.cli import build_parser
from rsgrpc.engine.paths import WORKER_ROOTS_ENV, DataRoot, named_root, worker_mounts
from rsgrpc.engine.root_probe import MARKER, mark_roots, unseen_roots
from rsgrpc.server.config import from_arguments
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import make_config, serving, watch_operation, write_geotiff

# --- names -----------------------------------------------------------------------------


def test_a_root_is_named_by_name_equals_folder_or_by_its_place(tmp_path):
    assert named_root("imagery=/srv/imagery") == ("imagery", Path("/srv/imagery"))
    assert named_root("/srv/a=b") == ("", Path("/srv/a=b"))  # not a name before '='
    assert named_root("1x=/srv") == ("", Path("1x=/srv"))
    parser = build_parser()
    flags = ["serve", "--data-root", str(tmp_path / "a"), "--data-root", f"img={tmp_path / 'b'}"]
    config = from_arguments(parser.parse_args(flags))
    assert config.data_roots == (tmp_path / "a", tmp_path / "b")
    assert DataRoot.at(*config.data_roots, names=config.data_root_names).names == ("data", "img")
    default = from_arguments(parser.parse_args(["serve", "--data-root", str(tmp_path / "a")]))
    assert DataRoot.at(*default.data_roots, names=default.data_root_names).names == ("data",)
    roots = DataRoot.at(tmp_path / "a", tmp_path / "b", tmp_path / "a", names=("x", "y", "z"))
    assert roots.named == {"x": (tmp_path / "a").resolve(), "y": (tmp_path / "b").resolve()}
    assert roots.path(str(tmp_path / "b" / "f.tif")).root_name == "y"
    assert roots.path("f.tif").beside("g.tif").root_name == "x"
    assert DataRoot.at(tmp_path / "a", tmp_path / "b").names == ("data", "data2")
    for names in (("x", "x"), ("bad name", "y")):
        with pytest.raises(ValueError):
            DataRoot.at(tmp_path / "a", tmp_path / "b", names=names)


def test_a_process_with_mounts_of_its_own_opens_each_named_root_there(tmp_path, monkeypatch):
    server_folder, own_folder = tmp_path / "server", tmp_path / "own"
    for folder, value in ((server_folder, 1), (own_folder, 2)):
        write_geotiff(folder / "in.tif", np.full((4, 4), value, np.uint8))
    path = DataRoot.at(server_folder, names=("imagery",)).path("in.tif")
    monkeypatch.setenv(WORKER_ROOTS_ENV, f"other=/nowhere{os.pathsep}imagery={own_folder}")
    worker_mounts.cache_clear()
    try:
        assert path.local_root == own_folder
        fd = path.open_file()
        try:
            assert os.fstat(fd).st_ino == (own_folder / "in.tif").stat().st_ino
        finally:
            os.close(fd)
        monkeypatch.setenv(WORKER_ROOTS_ENV, "no-equals-sign")
        worker_mounts.cache_clear()
        with pytest.raises(ValueError, match=WORKER_ROOTS_ENV):
            worker_mounts()
    finally:
        monkeypatch.delenv(WORKER_ROOTS_ENV)
        worker_mounts.cache_clear()
    assert path.local_root == server_folder.resolve()


# --- markers -----------------------------------------------------------------------------


def test_each_root_has_one_marker_that_every_server_reads(tmp_path, monkeypatch):
    roots = DataRoot.at(tmp_path / "a", tmp_path / "b")
    first = mark_roots(roots)
    assert set(first.tokens) == {"data", "data2"} and len(set(first.tokens.values())) == 2
    assert mark_roots(roots).tokens == first.tokens  # kept, not made anew
    assert unseen_roots(first) == []
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / MARKER).write_text("another storage\n")
    monkeypatch.setenv(WORKER_ROOTS_ENV, f"data2={copy}")
    worker_mounts.cache_clear()
    try:
        assert unseen_roots(first) == ["data2"]
        (copy / MARKER).unlink()
        assert unseen_roots(first) == ["data2"]
        shutil.copy(tmp_path / "b" / MARKER, copy / MARKER)
        assert unseen_roots(first) == []
    finally:
        monkeypatch.delenv(WORKER_ROOTS_ENV)
        worker_mounts.cache_clear()


# --- through the door, on a Dask cluster of worker processes ----------------------------


@contextlib.contextmanager
def _cluster(env: dict[str, str]) -> Iterator[str]:
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        env=env,
    ) as cluster:
        yield cluster.scheduler_address


def _create_session(channel: grpc.Channel) -> str:
    request = session_pb2.CreateSessionRequest(
        session=session_pb2.Session(process_count=1, available_ram_mib=1024)
    )
    return session_pb2_grpc.SessionServiceStub(channel).CreateSession(request, timeout=60).name


def _scaled(channel: grpc.Channel, session: str, output: str) -> None:
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    request = raster_pb2.BandCalcRequest(
        session=session,
        expression="a * 10",
        inputs=[raster_pb2.RasterInput(name="a", path="in.tif")],
        output_path=output,
    )
    final = watch_operation(channel, stub.BandCalc(request))[-1]
    assert not final.HasField("error"), final.error


@pytest.mark.timeout(300)
def test_dask_workers_read_inputs_where_they_mount_the_root(tmp_path):
    server_root, worker_root = tmp_path / "data", tmp_path / "worker-mount"
    write_geotiff(server_root / "in.tif", np.full((64, 64), 1, np.uint8))
    # The worker's mount of the same storage, told apart here by its pixels.
    write_geotiff(worker_root / "in.tif", np.full((64, 64), 7, np.uint8))
    env = {WORKER_ROOTS_ENV: f"data={worker_root}"}
    with _cluster(env) as address:
        config = make_config(tmp_path, dask_scheduler=address)
        with serving(config) as (running, channel):
            shutil.copy(server_root / MARKER, worker_root / MARKER)
            session = _create_session(channel)
            _scaled(channel, session, "out.tif")
            with rasterio.open(running.data_root.root / "out.tif") as ds:
                assert (ds.read(1) == 70).all()


@pytest.mark.timeout(300)
def test_a_session_is_refused_while_a_worker_does_not_see_a_root(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with _cluster({WORKER_ROOTS_ENV: f"data={elsewhere}"}) as address:
        config = make_config(tmp_path, dask_scheduler=address)
        with serving(config) as (_, channel):
            with pytest.raises(grpc.RpcError) as caught:
                _create_session(channel)
            assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
            details = caught.value.details()
            assert "does not see data root 'data'" in details
            assert "RSGRPC_WORKER_DATA_ROOTS" in details and str(tmp_path) not in details
            # Once the worker's folder is the same storage, sessions start.
            shutil.copy(tmp_path / "data" / MARKER, elsewhere / MARKER)
            sessions = session_pb2_grpc.SessionServiceStub(channel)
            name = _create_session(channel)
            sessions.DeleteSession(session_pb2.DeleteSessionRequest(name=name), timeout=60)
