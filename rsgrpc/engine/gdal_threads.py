"""GDAL set up once per thread, and in the server, on a few threads set up as it starts.

A thread's first GeoTIFF open costs about 16 ms here: GDAL gives every thread its own PROJ
context, which opens PROJ's database and fills its caches again, and a process's first
projected CRS loads PROJ's projection machinery (about 10 ms more). The server's request
and job threads are many and made as calls come, so each new one would pay it on a
client's clock. Instead, once `start_gdal_threads` has run (the server calls it as it
starts), `on_gdal_thread` runs the server's GDAL calls (describing inputs, creating
outputs) on `GDAL_THREADS` threads that have paid it already. Elsewhere (workers, which
set up their one thread with `touch_gdal`, and code run outside a server) it calls in
place.

The threads are few: each holds its own PROJ context (about 1.7 MB), and the calls they
take are short. Long GDAL work (a cloud-optimized copy) stays on the caller's thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Final, ParamSpec, TypeVar

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from rsgrpc.engine.errors import UnavailableError

GDAL_THREADS: Final = 4
# A describe or a create of a local file takes milliseconds; a call still queued after this
# long means every thread is stuck on a file system that does not answer.
_QUEUED_TIMEOUT_S: Final = 60.0
_START_TIMEOUT_S: Final = 30.0
_LOGGER = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_local = threading.local()


def _forget_threads_in_child() -> None:
    # A forked child has none of the parent's threads: its calls run in place.
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_threads_in_child)


def keep_gdal_env() -> None:
    """Give the calling thread a GDAL environment that stays: without one, rasterio makes
    and discards one for every file it opens, which costs more than opening a small file.
    The server's request and job threads and the workers are long-lived."""
    if not rasterio.env.hasenv():
        rasterio.Env().__enter__()


def touch_gdal() -> None:
    """Write and read back a small compressed GeoTIFF with a projected CRS, in memory, so
    that the calling thread's first real file does not set GDAL up (see the module)."""
    keep_gdal_env()
    with MemoryFile() as memory:
        with memory.open(
            driver="GTiff",
            width=16,
            height=16,
            count=1,
            dtype="uint16",
            crs="EPSG:32633",  # WGS 84 / UTM zone 33N
            transform=rasterio.Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
            tiled=True,
            blockxsize=16,
            blockysize=16,
            compress="deflate",
        ) as ds:
            ds.write(np.zeros((1, 16, 16), np.uint16))
        with memory.open() as ds:
            ds.crs.to_wkt()
            ds.read(1)


def _set_up_gdal_thread() -> None:
    _local.is_gdal_thread = True
    try:
        touch_gdal()
    except Exception:  # the thread still works; its first file sets GDAL up instead
        _LOGGER.exception("setting GDAL up on a GDAL thread failed")


def start_gdal_threads() -> None:
    """Make the GDAL threads and set each up now; later GDAL calls of `on_gdal_thread` run
    on them. Idempotent."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            return
        pool = ThreadPoolExecutor(
            GDAL_THREADS, thread_name_prefix="gdal", initializer=_set_up_gdal_thread
        )
        # One task per thread, each held until all have started: every thread is made.
        started = threading.Barrier(GDAL_THREADS)
        waits = [pool.submit(started.wait, _START_TIMEOUT_S) for _ in range(GDAL_THREADS)]
        for wait in waits:
            try:
                wait.result(_START_TIMEOUT_S + 5)
            except (threading.BrokenBarrierError, FutureTimeout):
                _LOGGER.warning("the GDAL threads did not all start in time")
                break
        _pool = pool


def on_gdal_thread(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``function(*args, **kwargs)`` on a GDAL thread once they are started, else here."""
    pool = _pool
    if pool is None or getattr(_local, "is_gdal_thread", False):
        return function(*args, **kwargs)
    future = pool.submit(function, *args, **kwargs)
    try:
        return future.result(_QUEUED_TIMEOUT_S)
    except FutureTimeout:
        if future.cancel():
            raise UnavailableError(
                "the server's raster file threads are all busy: a call waited "
                f"{_QUEUED_TIMEOUT_S:.0f} s for one; try again later"
            ) from None
    # Started: it uses the caller's descriptors, so it is waited for, as a call in place is.
    return future.result()
