"""Fused band-calc kernels kept on disk, and compiled off the request path.

A new expression runs as a block program (``block_program``), which compiles nothing. The
fused kernel of ``bandcalc`` runs it faster (two to three times, on the pixels alone), but takes
a fraction of a second to a few seconds to compile, holding the process's GIL. So when a process
has run an expression again, on at least ``COMPILE_AFTER_PIXELS`` pixels in all, and compiling
in the background is on (the engine's workers turn it on), one thread of low priority compiles
its fused kernel while the process is idle and saves it in numba's cache folder; from then on,
this process and every other that shares the folder (a server's workers, after restarts too)
load it in milliseconds instead of compiling it. Small jobs, which fusing would not speed up
measurably, never pay for a compile: the second of GIL it holds would stall them.

numba keys the cache of a function by its code and by the pickled values of its closure, which
for a kernel built at run time differ from process to process; here each kernel is stored under
a digest of its signature (canonical expression, nodata constants, dtypes) and of the kernels'
sources, in files of its own. At most ``MAX_STORED`` kernels are kept: past that, the least
recently saved are removed.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Final

from numba.core.caching import FunctionCache, IndexDataCacheFile

from .numba_cache import load_without_compiling

_LOGGER = logging.getLogger(__name__)

MAX_STORED: Final = 256
# How long a process trusts that a kernel is not on disk before looking again (another
# process may have compiled it meanwhile).
ABSENT_SECONDS: Final = 5.0
# The pixels an expression runs on, in one process, before its fused kernel is worth a compile:
# about a second of the program's time on one core (it runs near 5 ns a pixel, the fused
# kernel two to three times faster), or a 5800 x 5800 scene.
COMPILE_AFTER_PIXELS: Final = 1 << 25
# Expressions remembered as seen, and compiles waiting for the background thread.
_SEEN_LIMIT: Final = 1024
_PENDING_LIMIT: Final = 16
_SOURCES: Final = (
    "bandcalc.py",
    "block_program.py",
    "scalar_ops.py",
    "row_statistics.py",
    "expression.py",
)


def digest(key: Hashable) -> str:
    """What a stored kernel is filed under: its signature and the sources it is built from."""
    here = Path(__file__).parent
    stamps = [
        (name, (here / name).stat().st_size, (here / name).stat().st_mtime_ns) for name in _SOURCES
    ]
    return hashlib.sha256(repr((key, stamps)).encode()).hexdigest()[:40]


class _KernelCache(FunctionCache):
    """numba's disk cache for one fused kernel, in files named by its digest."""

    def __init__(self, py_func: Any, name: str) -> None:
        super().__init__(py_func)
        self.digest = name
        self.base = f"{self._impl.filename_base}-{name}"
        self._cache_file = IndexDataCacheFile(
            cache_path=self._cache_path,
            filename_base=self.base,
            source_stamp=self._impl.locator.get_source_stamp(),
        )

    def _index_key(self, sig: Any, codegen: Any) -> tuple:
        return (sig, codegen.magic_tuple(), self.digest)


def attach(dispatcher: Any, key: Hashable) -> None:
    """Give a (not yet compiled) kernel's dispatcher its place on disk: compiling it then
    loads it from there if it is stored, and stores it if not."""
    # numba's dispatchers read and write their disk cache through this attribute (what
    # `enable_caching` sets); here the cache is one that finds a run-time kernel again.
    dispatcher._cache = _KernelCache(dispatcher.py_func, digest(key))


def load(dispatcher: Any, signature: Any) -> bool:
    """Load a stored kernel into ``dispatcher`` (with `attach`ed storage) without compiling;
    whether it was stored. Its compiling is then disabled, as for a signature given ahead."""
    if not load_without_compiling(dispatcher, signature):
        return False
    dispatcher.disable_compile()
    return True


def prune(dispatcher: Any) -> None:
    """Keep at most ``MAX_STORED`` kernels beside this one's files, removing the oldest."""
    cache = dispatcher._cache
    folder = Path(cache.cache_path)
    prefix = cache.base[: -len(cache.digest)]
    indexes = sorted(folder.glob(f"{prefix}*.nbi"), key=_modified)
    for index in indexes[: max(0, len(indexes) - MAX_STORED)]:
        stem = index.name[: -len(".nbi")]
        for path in (index, folder / f"{stem}.lock", *folder.glob(f"{stem}.*.nbc")):
            path.unlink(missing_ok=True)


def _modified(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class Absent:
    """Kernels recently found not stored, so that a process does not look on every tile."""

    def __init__(self) -> None:
        self._since: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def recent(self, key: Hashable) -> bool:
        with self._lock:
            since = self._since.get(key)
            return since is not None and time.monotonic() - since < ABSENT_SECONDS

    def note(self, key: Hashable) -> None:
        with self._lock:
            self._since[key] = time.monotonic()
            self._since.move_to_end(key)
            while len(self._since) > _SEEN_LIMIT:
                self._since.popitem(last=False)


# How often the background compiler looks whether its process is idle.
_IDLE_POLL_SECONDS: Final = 0.05


class BackgroundCompiler:
    """Compiles the fused kernel of an expression seen again, once it has run on
    ``after_pixels`` pixels, one at a time, in a thread of the lowest priority, while the
    process is idle (a compile holds the GIL for most of a second, which a running job would
    feel); off until `start` is called."""

    def __init__(self) -> None:
        self._idle: Callable[[], bool] = lambda: True
        self._after_pixels = COMPILE_AFTER_PIXELS
        # Per expression: (times run, pixels run on).
        self._seen: OrderedDict[Hashable, tuple[int, int]] = OrderedDict()
        self._pending: OrderedDict[Hashable, Callable[[], Any]] = OrderedDict()
        self._done: set[Hashable] = set()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def start(
        self, idle: Callable[[], bool] | None = None, after_pixels: int = COMPILE_AFTER_PIXELS
    ) -> None:
        """Compile from now on, whenever ``idle()`` says the process is (default: always),
        the kernels of expressions run twice or more on ``after_pixels`` pixels in all."""
        with self._wake:
            if idle is not None:
                self._idle = idle
            self._after_pixels = after_pixels
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="fused-compiler", daemon=True
                )
                self._thread.start()

    def seen(self, key: Hashable, pixels: int, compile_kernel: Callable[[], Any]) -> None:
        """An expression ran as a program on ``pixels`` pixels; ``compile_kernel`` compiles
        (and stores) it."""
        with self._wake:
            if self._thread is None or key in self._done or key in self._pending:
                return
            count, total = self._seen.pop(key, (0, 0))
            count, total = count + 1, total + pixels
            self._seen[key] = (count, total)
            while len(self._seen) > _SEEN_LIMIT:
                self._seen.popitem(last=False)
            if count >= 2 and total >= self._after_pixels and len(self._pending) < _PENDING_LIMIT:
                self._pending[key] = compile_kernel
                self._wake.notify()

    def _run(self) -> None:
        try:  # Linux sets a thread's priority by its id
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
            while not self._idle():
                time.sleep(_IDLE_POLL_SECONDS)
            with self._wake:
                key, compile_kernel = self._pending.popitem(last=False)
                self._done.add(key)
            try:
                compile_kernel()
            except Exception:  # a kernel that fails to build leaves the program in place
                _LOGGER.exception("compiling a fused band calc kernel failed")


def exclusively(dispatcher: Any) -> Any:
    """A lock file beside the kernel's files, taken without waiting: None if another
    process compiles the same kernel now (it will store it)."""
    cache = dispatcher._cache
    folder = Path(cache.cache_path)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / f"{cache.base}.lock", "w")  # noqa: SIM115 - held by the caller
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle
