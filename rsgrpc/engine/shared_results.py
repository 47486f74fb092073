"""Large arrays a worker returns come back through shared memory, not the result pipe.

Through the pool's pipe, a 4 MiB tile is pickled into a copy, written into the
pipe, read out of it in pieces, joined and unpickled into another copy: on the
band calc benchmark (480 MB of float32 results) that cost the job's process
about 0.7 CPU-s, most of it in the kernel. Here a worker copies each result
array of at least `MIN_SHARED_BYTES` into a buffer of its own, an anonymous
memory file (`memfd_create`), and sends only where it lies. The job's process
maps that file (through `/proc/<worker>/fd/<n>`) and gets an ndarray over the
very pages the worker wrote; when that array is freed, the buffer goes back to
the worker, which reuses it for a later tile.

A buffer's first byte says whether it is lent out. The worker sets it before
sending; the job's process clears it with a `pwrite` as the array is freed, a
system call after its last read of the pixels, so the worker cannot see the
buffer free before those reads are done. A
worker keeps at most `MAX_BUFFERS` buffers; past that, or for a smaller array,
the array goes through the pipe as before. A worker lends the smallest free
buffer that fits and closes its other free ones, and closes them all when it
gives its memory back between jobs (`worker_heap`).

A pool checks once, when it starts, that its process can open its workers'
memory files (`/proc` may be missing or closed to it, and `memfd_create` is
Linux's); if not, its workers never lend buffers. Pools of other kinds (Dask) never do either.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from multiprocessing.reduction import ForkingPickler
from typing import Any

import numpy as np

# Smaller arrays are cheap enough through the pipe.
MIN_SHARED_BYTES = 1 << 20
# Buffers a worker lends at once: a job's results in flight, with room to spare.
MAX_BUFFERS = 16
_HEADER = mmap.PAGESIZE  # the lent flag, and page alignment for the pixels
_GRAIN = 1 << 20  # buffers grow in whole MiB, so that one fits tiles of a plan
_FREE, _LENT = b"\x00", b"\x01"
# Kinds of dtype whose arrays are their bytes: bool, integers, floats, complex.
_PLAIN_KINDS = "biufc"


class _Buffer:
    """One memory file of a worker, mapped in the worker."""

    def __init__(self, capacity: int) -> None:
        self.fd = os.memfd_create("rsgrpc-result", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, _HEADER + capacity)
        self.capacity = capacity
        self.map = mmap.mmap(self.fd, _HEADER + capacity)

    @property
    def free(self) -> bool:
        return self.map[0:1] == _FREE

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class _Lender:
    """The worker's side: its buffers, and the reducer that lends them."""

    def __init__(self, enabled: Any) -> None:
        self._enabled = enabled  # set by the pool once it has checked it can map them
        self._buffers: list[_Buffer] = []
        # The reducer runs in the worker's main thread, close_free in its heap thread.
        self._lock = threading.Lock()

    def reduce(self, array: np.ndarray) -> tuple:
        if (
            array.nbytes < MIN_SHARED_BYTES
            or array.dtype.kind not in _PLAIN_KINDS
            or not self._enabled.value
        ):
            return array.__reduce__()
        with self._lock:
            buffer = self._free_buffer(array.nbytes)
            if buffer is None:
                return array.__reduce__()
            target = np.ndarray(array.shape, array.dtype, buffer=buffer.map, offset=_HEADER)
            target[...] = array
            del target  # a map cannot be closed while an array holds it
            buffer.map[0:1] = _LENT
        return _receive, (os.getpid(), buffer.fd, buffer.capacity, array.shape, array.dtype.str)

    def _free_buffer(self, nbytes: int) -> _Buffer | None:
        """The smallest free buffer that fits, or a new one; the other free buffers are
        closed, so that a worker holds only the buffers lent out and the one it fills
        (results vary in size once encoded: buffers kept for sizes that no longer come
        would pile up)."""
        free = [b for b in self._buffers if b.free]
        fitting = [b for b in free if b.capacity >= nbytes]
        chosen = min(fitting, key=lambda b: b.capacity) if fitting else None
        for buffer in free:
            if buffer is not chosen:
                self._drop(buffer)
        if chosen is not None:
            return chosen
        if len(self._buffers) >= MAX_BUFFERS:
            return None
        buffer = _Buffer(-(-nbytes // _GRAIN) * _GRAIN)
        self._buffers.append(buffer)
        return buffer

    def _drop(self, buffer: _Buffer) -> None:
        self._buffers.remove(buffer)
        buffer.close()

    def close_free(self) -> None:
        """Close the buffers not lent out, so that their memory goes back. One the
        job's process still holds is closed at the next give-back after it returns."""
        with self._lock:
            for buffer in [b for b in self._buffers if b.free]:
                self._drop(buffer)

    def probe(self) -> tuple[int, int] | None:
        """A buffer for the pool to check it can map: (pid, fd); None if this system
        has no memory files."""
        with self._lock:
            if not self._buffers:
                try:
                    self._buffers.append(_Buffer(_GRAIN))
                except (AttributeError, OSError):
                    return None
            return os.getpid(), self._buffers[0].fd


_lender: _Lender | None = None


def lend_buffers(enabled: Any) -> _Lender:
    """Runs once in a pool worker: from now on its result arrays go through buffers
    while `enabled.value` is true. Returns the worker's lender."""
    global _lender
    _lender = _Lender(enabled)
    ForkingPickler.register(np.ndarray, _lender.reduce)
    return _lender


def probe_buffer() -> tuple[int, int] | None:
    """Runs in a pool worker: where the pool can find one of its buffers, if any."""
    if _lender is None:
        raise RuntimeError("lend_buffers() has not run in this worker")
    return _lender.probe()


def can_map(probe: tuple[int, int] | None) -> bool:
    """Whether this process can map a worker's buffer, from its `probe_buffer`."""
    if probe is None:
        return False
    try:
        _give_back(_map(*probe, _GRAIN)[0])
    except OSError:
        return False
    return True


def _map(pid: int, fd: int, capacity: int) -> tuple[int, mmap.mmap]:
    own = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    try:
        pages = mmap.mmap(own, _HEADER + capacity, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
    except BaseException:
        os.close(own)
        raise
    return own, pages


def _give_back(own: int) -> None:
    # A system call, after the last read of the pixels: the worker cannot see the
    # flag clear before those reads are done, whatever the CPU's memory order.
    try:
        os.pwrite(own, _FREE, 0)
    finally:
        os.close(own)


def _receive(pid: int, fd: int, capacity: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Runs in the job's process as a result is unpickled: the array, in place in the
    worker's buffer, given back when the array (and every view of it) is freed; the
    pages are unmapped with it."""
    own, pages = _map(pid, fd, capacity)
    array = np.ndarray(shape, np.dtype(dtype), buffer=pages, offset=_HEADER)
    weakref.finalize(array, _give_back, own)
    return array
