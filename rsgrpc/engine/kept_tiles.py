"""Tiles kept on disk between the passes of a multi-pass job (the sieve, raster label),
and their last pass: read back, finished and encoded in threads, handed over in order.

A kept tile is a file in the session's temporary directory holding NumPy arrays one after
another, each a fixed header (dtype, shape) and its bytes: no pickles, no zip, no checksum,
so writing and reading them back cost little more than the copy. Not .npy records: NumPy
reads their header with `ast.literal_eval`, which CPython 3.11 cannot run in two threads
at once (python/cpython#106905), and tiles are read back in threads.
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
import struct
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from rsgrpc.engine.band_tool import TileCounter, session_fixed_bytes
from rsgrpc.engine.errors import CancelledError, ResourceExhaustedError, RsgrpcError
from rsgrpc.engine.operations import Operation, Stage
from rsgrpc.engine.raster_io import RasterWriter
from rsgrpc.engine.session import Session
from rsgrpc.engine.tiff_tiles import EncodedTile
from rsgrpc.engine.tiles import Tile

T = TypeVar("T")
R = TypeVar("R")


# An array's header: its dtype as NumPy spells it (e.g. "<u2"), its number of dimensions
# and up to four extents.
_HEADER = struct.Struct("<8sB4q")


def kept_path(folder: Path, tile: Tile) -> Path:
    """Where a tile waits between passes."""
    return folder / f"{tile.row}-{tile.col}.kept"


def _write_array(file, array: np.ndarray) -> None:
    array = np.require(array, requirements="C")
    shape = array.shape + (0,) * (4 - array.ndim)
    file.write(_HEADER.pack(array.dtype.str.encode("ascii"), array.ndim, *shape))
    file.write(array.reshape(-1).view(np.uint8))


def _read_array(file) -> np.ndarray:
    dtype, ndim, *shape = _HEADER.unpack(file.read(_HEADER.size))
    array = np.empty(shape[:ndim], np.dtype(dtype.rstrip(b"\0").decode("ascii")))
    if file.readinto(array.reshape(-1).view(np.uint8)) != array.nbytes:
        raise RsgrpcError("a tile kept between passes is truncated")
    return array


def keep_arrays(path: Path, arrays: Iterable[np.ndarray], what: str) -> None:
    """Save a tile's arrays until a later pass.

    Raises ResourceExhaustedError when the session's temporary directory is full (`what`
    says what the job keeps there), and RsgrpcError for any other failure, without naming
    the server's own paths.
    """
    try:
        with open(path, "wb") as file:
            for array in arrays:
                _write_array(file, array)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhaustedError(
                f"the session's temporary directory is full: {what}"
            ) from None
        raise RsgrpcError(f"could not keep a tile between passes: {error.strerror}") from None


def read_kept(path: Path, count: int) -> list[np.ndarray]:
    """The `count` arrays kept at `path`, which is removed."""
    with open(path, "rb") as file:
        arrays = [_read_array(file) for _ in range(count)]
    path.unlink()
    return arrays


def in_threads(fn: Callable[..., R], items: list, common: tuple) -> list[R]:
    """Runs in a worker: `fn(item, *common)` for each item, one thread each (kernels that
    release the GIL use every core a worker is given)."""
    if len(items) == 1:
        return [fn(items[0], *common)]
    with ThreadPoolExecutor(len(items)) as threads:
        return list(threads.map(lambda item: fn(item, *common), items))


def write_kept_tiles(
    writer: RasterWriter,
    folder: Path,
    finish: Callable[[Path, Tile, T], tuple[EncodedTile, R]],
    items: Iterable[tuple[Tile, T]],
    *,
    workers: int,
    operation: Operation,
    counter: TileCounter,
) -> list[R]:
    """The last pass: `finish(kept path, tile, extra)` for each (tile, extra), giving the
    tile encoded and its statistics, computed ahead in threads (one per worker process,
    idle in this pass, up to one per core) while the previous tile is written; each tile
    written in order, the writer committed. Returns the statistics in order; stops with
    CancelledError when the operation is cancelled."""
    ahead = max(1, min(workers, os.cpu_count() or 1))
    stats = []
    with ThreadPoolExecutor(ahead) as finisher:
        finished = (
            finisher.submit(finish, kept_path(folder, tile), tile, extra) for tile, extra in items
        )
        upcoming = collections.deque(itertools.islice(finished, ahead))
        while upcoming:
            if operation.cancel_event.is_set():
                for future in upcoming:
                    future.cancel()
                raise CancelledError("the operation was cancelled")
            encoded, tile_stats = upcoming.popleft().result()
            upcoming.extend(itertools.islice(finished, 1))
            writer.write(encoded)
            stats.append(tile_stats)
            counter.add(written=encoded.data.nbytes)
    operation.update(stage=Stage.FINALIZING)
    writer.commit()
    return stats


def check_summaries_fit(session: Session, held: int, overhead: int, what: str) -> None:
    """Tile summaries of `held` bytes, held once by the job and `overhead` times by the
    worker that merges them, fit the session's budget beside its workers' footprint;
    raise ResourceExhaustedError with the minimum otherwise."""
    need = session_fixed_bytes(session) + held * (1 + overhead)
    budget = session.settings.available_ram_mib << 20
    if need > budget:
        raise ResourceExhaustedError(
            f"{what} need about {-(-need >> 20)} MiB with the workers, "
            f"over available_ram_mib {session.settings.available_ram_mib}",
            metadata={"minimum_ram_mib": str(-(-need >> 20))},
        )
