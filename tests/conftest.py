"""Shared fixtures: a real server on a real port, a channel to it, and GeoTIFF makers."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from rsgrpc.server.app import RunningServer, run_server
from rsgrpc.server.config import ServerConfig
from rsgrpc.v1 import raster_pb2_grpc, session_pb2, session_pb2_grpc

CRS = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 4600000.0, 10.0, 10.0)


def write_geotiff(
    path: Path,
    array: np.ndarray,
    *,
    nodata: float | None = None,
    block: int = 256,
    transform=TRANSFORM,
    crs: str = CRS,
) -> Path:
    """A tiled, DEFLATE-compressed single-band GeoTIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tiled = array.shape[0] >= block and array.shape[1] >= block
    profile = dict(
        driver="GTiff",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="deflate",
    )
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array, 1)
    return path


def make_config(tmp_path: Path, **overrides) -> ServerConfig:
    base = ServerConfig(
        address="127.0.0.1:0",
        data_root=tmp_path / "data",
        temp_root=tmp_path / "tmp",
        max_processes=4,
        max_ram_mib=8192,
        session_sweep_interval_s=0.2,
        grace_period_s=5.0,
    )
    return dataclasses.replace(base, **overrides)


@contextlib.contextmanager
def serving(config: ServerConfig) -> Iterator[tuple[RunningServer, grpc.Channel]]:
    with run_server(config) as running:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        try:
            yield running, channel
        finally:
            channel.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[RunningServer, grpc.Channel]]:
    with serving(make_config(tmp_path_factory.mktemp("server"))) as pair:
        yield pair


@pytest.fixture(scope="module")
def session_name(server) -> str:
    """One session of two processes, shared by a module's tests."""
    _, channel = server
    stub = session_pb2_grpc.SessionServiceStub(channel)
    created = stub.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(process_count=2, available_ram_mib=1024)
        )
    )
    return created.name


@pytest.fixture
def raster_stub(server) -> raster_pb2_grpc.RasterServiceStub:
    return raster_pb2_grpc.RasterServiceStub(server[1])
