"""What the benchmarks share: the rsgrpc server as a subprocess, timed runs with
their CPU seconds and peak memory, runs isolated in a fresh interpreter, the
report of the machine and its load, the synthetic scene their inputs are made
from, and their common options and work folder.

    from harness import measure_tree, rsgrpc_server

    with rsgrpc_server(workdir, workdir / "server.log") as (address, server):
        session = Session(n_processes=2, available_ram=1024, target=address)
        run = measure_tree(server.pid, session.band_sieve, "in.tif", 10, "out.tif")
        print(run.seconds, run.cpu, run.peak.rss_mib, run.peak.pss_mib)

Times are wall seconds (``time.perf_counter``) and CPU seconds (user + system,
all threads; for a process tree, the sum over its live processes). Memory of a
process tree is sampled (see ``process_tree``); the memory of a run isolated
in a child process is the child's exact high-water mark of resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import rasterio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from process_tree import (  # noqa: E402
    TreeMemory,
    TreeMemorySampler,
    tree_cpu_seconds,
    tree_memory,
)

__all__ = [
    "MIB",
    "ChildRun",
    "OtherCpu",
    "Timed",
    "TreeRun",
    "TreeMemory",
    "benchmark_parser",
    "clean_workdir",
    "cpu_self",
    "free_port",
    "machine",
    "machine_load",
    "make_once",
    "make_workdir",
    "measure_tree",
    "mib",
    "orbit_edge_mask",
    "peak_rss_self",
    "pixel_hash",
    "rss_self",
    "rsgrpc_server",
    "run_in_child",
    "scene_grid",
    "settle",
    "smooth_field",
    "timed_call",
    "wait_serving",
]

MIB = 1 << 20
SCENE_EDGE = 10980  # pixels: a Sentinel-2 10 m tile, whatever size a benchmark makes


# ------------------------------------------------------- options and the work folder


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc`` (a benchmark's docstring), with
    the options every benchmark takes first: --workdir and --size."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where inputs and outputs go (default: a new temporary directory)",
    )
    parser.add_argument("--size", type=int, default=SCENE_EDGE, help="raster edge in pixels")
    return parser


def make_workdir(workdir: Path | None) -> tuple[Path, Path]:
    """The work folder, absolute (``workdir``, or a new temporary directory when it is
    None), and its ``outputs`` folder, made if missing."""
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="rsgrpc-bench-"))).expanduser()
    workdir = workdir.resolve()
    outputs = workdir / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    return workdir, outputs


def clean_workdir(workdir: Path, outputs: Path, *, keep: bool, temporary: bool) -> None:
    """Unless ``keep``: delete the GeoTIFFs in ``outputs``, and the whole ``workdir``
    when it is ``temporary`` (made by ``make_workdir`` for want of --workdir)."""
    if keep:
        return
    for path in outputs.glob("*.tif"):
        path.unlink()
    if temporary:
        shutil.rmtree(workdir, ignore_errors=True)


def make_once(paths: Sequence[Path], write: Callable[..., Any]) -> float:
    """Make the files ``paths`` unless they all exist: ``write(*partials)`` writes them
    under temporary names (``name.partial.ext``, in the same folders), then each is
    renamed to its own, so that an interrupted run leaves nothing that looks complete.
    Returns the seconds it took; 0.0 when the files were there to reuse."""
    for folder in {path.parent for path in paths}:
        folder.mkdir(parents=True, exist_ok=True)
    if all(path.exists() for path in paths):
        return 0.0
    started = time.perf_counter()
    partials = [path.with_suffix(".partial" + path.suffix) for path in paths]
    write(*partials)
    for partial, path in zip(partials, paths, strict=True):
        os.replace(partial, path)
    return time.perf_counter() - started


# ---------------------------------------------------------------------- the machine


def machine(**versions: str) -> str:
    """One line: CPUs, RAM, OS, and the versions of Python, numpy, rasterio and GDAL,
    followed by ``name version`` for each keyword given (e.g. ``opencv="4.10.0"``)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = psutil.virtual_memory().total / (1 << 30)
    text = (
        f"{os.cpu_count()} CPUs ({model}), {ram:.1f} GiB RAM, {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, numpy {np.__version__}, "
        f"rasterio {rasterio.__version__}, GDAL {rasterio.__gdal_version__}"
    )
    for name, version in versions.items():
        text += f", {name} {version}"
    return text


def machine_load(interval: float = 1.0) -> str:
    """The 1-, 5- and 15-minute load averages and how busy the CPUs were over
    ``interval`` seconds, with a warning when they were not idle."""
    loads = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    busy = psutil.cpu_percent(interval=interval)
    text = (
        f"load average {loads[0]:.2f} {loads[1]:.2f} {loads[2]:.2f}, "
        f"CPU busy {busy:.0f}% over {interval:g} s"
    )
    if busy > 10:
        text += "  WARNING: the machine is not idle; wall times are inflated"
    return text


class OtherCpu:
    """CPU seconds that processes other than this one and its children used since
    it was made: the machine's busy time (all CPUs, from /proc/stat) minus this
    process's CPU and that of its children that have ended and been waited for
    (started servers included once stopped, with their workers if they waited
    for them). Read it at the end of a run, with no child left running."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._busy = self._machine_busy()
        self._own = self._own_cpu()

    @staticmethod
    def _machine_busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    @staticmethod
    def _own_cpu() -> float:
        own = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            own += usage.ru_utime + usage.ru_stime
        return own

    def report(self) -> str:
        """Other processes' CPU seconds so far, and their average share of one CPU."""
        wall = time.monotonic() - self.started
        others = max(0.0, (self._machine_busy() - self._busy) - (self._own_cpu() - self._own))
        return (
            f"other processes used {others:.0f} CPU s during the {wall:.0f} s run "
            f"(on average {100 * others / wall:.0f}% of one CPU of {os.cpu_count()})"
        )


def settle() -> None:
    """Write back dirty pages, so that one run's writeback does not slow the next."""
    if hasattr(os, "sync"):
        os.sync()


def clear_output(path: Path) -> None:
    """Remove a run's previous output just before the run starts its clock, so that
    every run writes a new file, as rsgrpc always does: it writes beside the old
    output and renames over it when done, so that a failed run never loses the old
    one, where a baseline that opened its old output for writing would truncate it
    instead.
    """
    path.unlink(missing_ok=True)


def mib(n: float) -> str:
    """``n`` bytes in MiB, right-aligned in 8 characters plus the unit."""
    return f"{n / MIB:8.1f} MiB"


# ---------------------------------------------------------------- the synthetic scene


def scene_grid(
    row0: int, rows: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows [row0, row0 + rows) of a size x size scene: ``y`` (rows x 1) and ``x``
    (1 x size), float32, in pixels of the SCENE_EDGE x SCENE_EDGE scene (so that the
    scene is the same whatever the size), and ``iy``, ``ix``, the integer row and
    column of each pixel, both rows x size."""
    scale = float(SCENE_EDGE) / size
    y = np.arange(row0, row0 + rows, dtype=np.float32)[:, None] * scale
    x = np.arange(size, dtype=np.float32)[None, :] * scale
    iy, ix = np.broadcast_arrays(np.arange(row0, row0 + rows)[:, None], np.arange(size)[None, :])
    return y, x, iy, ix


def smooth_field(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A smooth field around 0.5 (within about 0.02 and 0.98) of the scene
    coordinates from ``scene_grid``: broad waves and a finer ripple."""
    return (
        0.5
        + 0.25 * np.sin(x / 350.0) * np.cos(y / 420.0)
        + 0.15 * np.sin((x + y) / 1300.0)
        + 0.08 * np.sin(x / 37.0 + y / 53.0)
    )


def orbit_edge_mask(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """True beyond an orbit edge (the swath's wavy right border, about the last
    fifth of the scene): the pixels a satellite did not see."""
    edge = 0.8 * SCENE_EDGE + 0.1 * SCENE_EDGE * np.sin(y / 1500.0)
    return x > edge


# A round of the hash: multiply, then xor with the high bits shifted down.
_HASH_ROUNDS = ((0x2C1B3C6D, 12), (0x297A2D39, 15))


def pixel_hash(rows: np.ndarray, cols: np.ndarray, seed: int, *, rounds: int = 2) -> np.ndarray:
    """A deterministic uint32 hash of (row, col, seed), elementwise: per-pixel noise
    without a random generator. ``rounds`` (1 or 2) of multiply and xor-shift after
    the mix; the band calc benchmark's noise takes 1, as its inputs always have."""
    with np.errstate(over="ignore"):
        h = (rows.astype(np.uint32) * np.uint32(0x9E3779B1)) ^ (
            cols.astype(np.uint32) * np.uint32(0x85EBCA77)
        )
        h ^= np.uint32(seed)
        h ^= h >> np.uint32(15)
        for multiplier, shift in _HASH_ROUNDS[:rounds]:
            h *= np.uint32(multiplier)
            h ^= h >> np.uint32(shift)
    return h


# ---------------------------------------------------------------------------- timing


def cpu_self() -> float:
    """User plus system CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_self() -> int:
    """This process's resident memory now, in bytes."""
    return psutil.Process().memory_info().rss


def peak_rss_self() -> int:
    """This process's high-water mark of resident memory so far, in bytes.

    On Linux, VmHWM of /proc/self/status: the high-water mark of this process's
    own address space. Not ``ru_maxrss``, which a process started by fork and
    exec inherits from its parent (the parent's peak at the fork), so that a
    small child would report its parent's peak.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux


@dataclass
class Timed:
    """A call's return value, wall seconds and CPU seconds of this process."""

    value: Any
    seconds: float
    cpu: float


def timed_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Timed:
    """Call ``fn(*args, **kwargs)`` once and time it (wall and this process's CPU)."""
    cpu = cpu_self()
    started = time.perf_counter()
    value = fn(*args, **kwargs)
    seconds = time.perf_counter() - started
    return Timed(value, seconds, cpu_self() - cpu)


# --------------------------------------------------------- runs in a fresh interpreter


@dataclass
class ChildRun:
    """What a function run in a child process returned, and the child's peak RSS
    (bytes): its imports, its inputs and the run, everything the process held."""

    value: Any
    peak_rss: int


def _child_main(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[Any, int]:
    value = fn(*args, **kwargs)
    if isinstance(value, dict) and "peak_rss" in value:
        return value, value["peak_rss"]
    return value, peak_rss_self()


def run_in_child(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> ChildRun:
    """Run ``fn(*args, **kwargs)`` in a new interpreter (multiprocessing's spawn) and
    return its value and the child's peak RSS.

    Each run starts from nothing, so its peak memory is its own and no earlier
    run's allocations or thread pools weigh on it. ``fn`` and its arguments
    must pickle (a module-level function; the benchmark script must guard its
    main with ``if __name__ == "__main__"``). ``fn`` times what it means to
    time itself (``timed_call``), after its set-up. When ``fn`` returns a dict
    with a ``peak_rss`` key (taken with ``peak_rss_self()`` right after the
    timed part, before any checking), that value is the peak reported;
    otherwise the peak at the child's end is.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        value, peak = pool.submit(_child_main, fn, args, kwargs).result()
    return ChildRun(value, peak)


# --------------------------------------------------------------- the server, measured


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set in the block, for this process and the processes
    it starts (the server takes its flags' defaults from RSGRPC_* variables)."""
    old = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def child_env() -> dict[str, str]:
    """This environment for a benchmarked process, less GDAL_NUM_THREADS (the server sets
    GDAL's threads itself), its output unbuffered."""
    env = {k: v for k, v in os.environ.items() if k != "GDAL_NUM_THREADS"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def logged_process(command: list[str], log_path: Path) -> Iterator[subprocess.Popen]:
    """`command` as a subprocess in `child_env()`, its output to `log_path`; stopped with
    SIGTERM (SIGKILL after 60 s) on exit."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env())
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def rsgrpc_server(
    data_root: Path, log_path: Path, *, log_level: str = "WARNING", flags: Sequence[str] = ()
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``rsgrpc serve`` as a subprocess on a free port (`logged_process`), ``data_root``
    as its data root and ``data_root/tmp`` as its temporary root, and any other `flags`;
    yields ``(address, process)`` once it reports SERVING."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    (data_root / "tmp").mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "rsgrpc.cli", "serve",
        "--address", address,
        "--data-root", str(data_root),
        "--temp-root", str(data_root / "tmp"),
        "--log-level", log_level,
        *flags,
    ]  # fmt: skip
    with logged_process(command, log_path) as process:
        wait_serving(address, process, log_path)
        yield address, process


def wait_serving(
    address: str, process: subprocess.Popen, log_path: Path, timeout: float = 60.0
) -> None:
    """Poll the gRPC health service at ``address`` until it answers SERVING; raise
    with the server's log if the process exits or ``timeout`` seconds pass."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log_path.read_text()}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"the server did not start:\n{log_path.read_text()}")


@dataclass
class TreeRun:
    """A call measured on a process tree (typically the server's): its return value,
    wall seconds, the tree's CPU seconds during the call, the tree's peak memory
    during the call and its memory just before. Of several timed calls, the fastest,
    and the seconds of all of them."""

    value: Any
    seconds: float
    cpu: float
    peak: TreeMemory
    idle: TreeMemory
    all_seconds: tuple[float, ...] = ()


def measure_tree(
    pid: int,
    fn: Callable[..., Any],
    *args: Any,
    interval: float = 0.05,
    repeats: int = 1,
    between: Callable[[], Any] | None = None,
    prepare: Callable[[], Any] | None = None,
    **kwargs: Any,
) -> TreeRun:
    """Call ``fn(*args, **kwargs)`` in this process ``repeats`` times timed, keeping the
    fastest (each followed by `settle`, then by ``between()`` if given: a baseline to
    time in the same minutes), then once more while sampling the memory (RSS and PSS)
    of ``pid`` and its descendants every ``interval`` seconds. ``prepare()``, if given,
    runs before each call, off the clock.

    The two are apart because sampling is not free for the processes sampled: reading a
    process's PSS walks its page tables under its memory-map lock, which stalls its page
    faults (a 2.4 s sieve took 3.2 s while sampled). Seconds, CPU seconds and the value
    come from the fastest timed call, the peak from the sampled one; ``fn`` must give the
    same result when called again (outputs written with overwrite). CPU seconds are those
    of the tree's live processes, read before and after: a process of the tree that ends
    during the call takes its CPU time with it.
    """
    idle = tree_memory(pid)
    runs = []
    for _ in range(repeats):
        if prepare is not None:
            prepare()
        cpu_before = tree_cpu_seconds(pid)
        started = time.perf_counter()
        value = fn(*args, **kwargs)
        seconds = time.perf_counter() - started
        runs.append((seconds, tree_cpu_seconds(pid) - cpu_before, value))
        settle()
        if between is not None:
            between()
    seconds, cpu, value = min(runs, key=lambda run: run[0])
    if prepare is not None:
        prepare()
    with TreeMemorySampler(pid, interval=interval) as sampler:
        fn(*args, **kwargs)
    return TreeRun(value, seconds, cpu, sampler.peak, idle, tuple(r[0] for r in runs))
