"""The server's GDAL calls run on a few threads set up as it starts; elsewhere, in place."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from rsgrpc.engine import gdal_threads
from tests.conftest import make_config, serving, write_geotiff


@pytest.fixture
def fresh_threads(monkeypatch):
    monkeypatch.setattr(gdal_threads, "_pool", None)
    yield
    pool = gdal_threads._pool
    if pool is not None:
        pool.shutdown(wait=True)


def _thread_name() -> str:
    return threading.current_thread().name


def test_calls_run_in_place_until_the_threads_start_then_on_them(fresh_threads):
    assert gdal_threads.on_gdal_thread(_thread_name) == threading.current_thread().name
    gdal_threads.start_gdal_threads()
    names = {gdal_threads.on_gdal_thread(_thread_name) for _ in range(20)}
    assert names and all(name.startswith("gdal") for name in names)
    # Every thread was made and set up at start, not on a call's clock.
    assert len(gdal_threads._pool._threads) == gdal_threads.GDAL_THREADS
    # A call made from a GDAL thread runs there, never waiting on a thread of its own pool.
    nested = gdal_threads.on_gdal_thread(gdal_threads.on_gdal_thread, _thread_name)
    assert nested.startswith("gdal")


def test_a_forked_child_calls_in_place(fresh_threads):
    gdal_threads.start_gdal_threads()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no GDAL thread exists here
        try:
            name = gdal_threads.on_gdal_thread(_thread_name)
            os.write(write, name.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        assert answer.read() == "MainThread"
    os.waitpid(pid, 0)


def test_a_serving_server_describes_inputs_on_its_gdal_threads(tmp_path, monkeypatch):
    from rsgrpc.engine import raster_io

    monkeypatch.setattr(gdal_threads, "_pool", None)
    seen: list[str] = []
    read_description = raster_io._read_description

    def recorded(*args):
        seen.append(threading.current_thread().name)
        return read_description(*args)

    monkeypatch.setattr(raster_io, "_read_description", recorded)
    config = make_config(tmp_path)
    with serving(config) as (running, _channel):
        write_geotiff(running.data_root.root / "in.tif", np.ones((8, 8), np.uint16))
        raster_io.describe(running.data_root.path("in.tif", field="input"), 1)
    assert len(seen) == 1 and seen[0].startswith("gdal")
    gdal_threads._pool.shutdown(wait=True)
