"""Memory of each raster tool on a full scene, at two RAM budgets, through the Python client.

``rsgrpc serve`` runs as a subprocess (``harness.rsgrpc_server``). For every tool and
every budget in ``--budgets`` (``MIB`` or ``MIBxPROCESSES``; default 512 MiB with 1
process and 2048 MiB with 2: a worker's interpreter, numpy, numba, GDAL and kernels
take about 130 to 270 MiB of a budget before any pixel), a new session of that many
processes is made with the Python client (``rsgrpc.client.Session``), the tool runs
once on a small scene (a warm-up: kernels loaded, first-call costs paid), then once on
the ``--size`` inputs (default 10980 x 10980) while a thread samples, every
``--interval`` seconds (default 0.025):

- the session's worker processes (the server's descendants, less multiprocessing's
  resource tracker): the largest worker's RSS plus every other worker's USS, as the
  server's own accounting counts them (``LocalProcessExecutor.footprint_bytes``), and
  the sum of their RSS;
- the server process's own RSS (the job's coordinator), apart.

Printed per tool and budget: wall seconds of the call; the workers' footprint idle
just before the job and at its peak; the peak growth above idle of the footprint and
of summed RSS; the server's peak growth; growth / budget; and the aim "the session's
process tree stays under its budget", judged on what the engine plans against the
budget: the workers' peak footprint (idle memory included, as the engine counts the
footprint it measures) plus the server's peak growth. Every call is checked
(``check`` True), its failure printed. A tool without a client method is skipped with
a printed line. A budget the server refuses (RESOURCE_EXHAUSTED: not even one tile
fits) is printed as refused, with the smallest budget it names, and the tool runs again
at that budget (unless ``--no-minimum``; again, up to 3 times, if that is refused in
turn, as a sieve's later pass can be).

Inputs, made once into ``--workdir``'s data root and reused: a uint8 class raster
(classes 1 to 6 in patches, 8 % single-pixel speckle, nodata 0 on an orbit edge), a
second class raster (other patches), and two uint16 bands (red, nir: a smooth field
plus per-pixel noise, nodata 0), tiled 512, ZSTD; and the same scene at 1024 x 1024
for the warm-ups. Zonal stats take Count, Mean, StandardDeviation and Median of nir
by class; clustering (k-means and ISODATA) runs at most 5 iterations.

Run: ``python benchmarks/bench_tool_memory.py [--workdir DIR] [--size N]
[--budgets MIB[xPROCESSES] ...] [--tools NAME ...] [--keep]``.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MIB,
    OtherCpu,
    benchmark_parser,
    clean_workdir,
    machine,
    machine_load,
    make_once,
    make_workdir,
    orbit_edge_mask,
    pixel_hash,
    rsgrpc_server,
    scene_grid,
    settle,
    smooth_field,
)

from rsgrpc.client import Session  # noqa: E402

BLOCK = 512
WARM_EDGE = 1024
NDVI = '("nir" - "red") / ("nir" + "red")'


def budget_and_processes(text: str) -> tuple[int, int]:
    """``MIB`` (2 processes) or ``MIBxPROCESSES``."""
    mib, _, processes = text.partition("x")
    return int(mib), int(processes or 2)


# ---------------------------------------------------------------------------- inputs


def _profile(size: int, dtype: str) -> dict:
    from rasterio.transform import from_origin

    return {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": dtype,
        "crs": "EPSG:32633",
        "transform": from_origin(500000, 4600000, 10, 10),
        "nodata": 0,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "ZSTD",
        "predictor": 2,
        "BIGTIFF": "IF_SAFER",
    }


def _classes(row0: int, rows: int, size: int, patch: int, seed: int) -> np.ndarray:
    """Rows of a class raster: classes 1 to 6 in square patches of ``patch`` pixels,
    8 % single pixels of another class, nodata 0 beyond the orbit edge."""
    y, x, iy, ix = scene_grid(row0, rows, size)
    field_ = smooth_field(y, x)
    cells = pixel_hash(iy // patch, ix // patch, seed)
    # A patch takes its class from the smooth field, one in three shifted by the hash.
    shift = (cells % np.uint32(3) == 0) * ((cells >> np.uint32(8)) % np.uint32(5) + 1)
    classes = ((np.clip(field_, 0.0, 0.999) * 6).astype(np.uint32) + shift) % 6 + 1
    speckle = pixel_hash(iy, ix, seed + 1)
    noisy = speckle % np.uint32(100) < 8
    classes = np.where(noisy, (speckle >> np.uint32(8)) % np.uint32(6) + 1, classes)
    classes[orbit_edge_mask(y, x)] = 0
    return classes.astype(np.uint8)


def _band(row0: int, rows: int, size: int, seed: int, scale: float) -> np.ndarray:
    """Rows of a uint16 reflectance band: a smooth field plus noise, nodata 0 beyond
    the orbit edge."""
    y, x, iy, ix = scene_grid(row0, rows, size)
    noise = (pixel_hash(iy, ix, seed, rounds=1) % np.uint32(1000)).astype(np.float32)
    band = (smooth_field(y, x) * scale + noise + 1).astype(np.uint16)
    band[orbit_edge_mask(y, x)] = 0
    return band


def _write(path: Path, size: int, dtype: str, rows_of: Callable[[int, int], np.ndarray]) -> None:
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(path, "w", **_profile(size, dtype)) as ds:
        for row in range(0, size, BLOCK):
            rows = min(BLOCK, size - row)
            ds.write(rows_of(row, rows), 1, window=Window(0, row, size, rows))


INPUTS: dict[str, tuple[str, Callable[[int, int, int], np.ndarray]]] = {
    "classes": ("uint8", lambda r, n, s: _classes(r, n, s, patch=24, seed=11)),
    "classes2": ("uint8", lambda r, n, s: _classes(r, n, s, patch=40, seed=23)),
    "red": ("uint16", lambda r, n, s: _band(r, n, s, seed=1, scale=3000.0)),
    "nir": ("uint16", lambda r, n, s: _band(r, n, s, seed=2, scale=6000.0)),
}


def make_inputs(data_root: Path, size: int) -> dict[str, float]:
    """Every input at ``size`` and at the warm-up edge, each made once and reused."""
    made = {}
    for edge in sorted({size, min(size, WARM_EDGE)}):
        for name, (dtype, rows_of) in INPUTS.items():
            path = data_root / "in" / f"{name}_{edge}.tif"

            def write(p: Path, edge: int = edge, dtype: str = dtype, rows_of=rows_of) -> None:
                _write(p, edge, dtype, lambda r, n: rows_of(r, n, edge))

            made[f"{name} {edge} x {edge}"] = make_once([path], write)
    return made


# ------------------------------------------------------------------------- the tools


def tool_calls(edge: int) -> dict[str, tuple[str, Callable[[Session, str], Any]]]:
    """Per label: the client method it needs and a call ``(session, tag)`` running it on
    the ``edge`` inputs with Remotior's parameter names, writing under ``out/``."""
    classes, classes2 = f"in/classes_{edge}.tif", f"in/classes2_{edge}.tif"
    red, nir = f"in/red_{edge}.tif", f"in/nir_{edge}.tif"

    def out(tag: str, name: str, ext: str = "tif") -> str:
        return f"out/{tag}_{name}.{ext}"

    return {
        "band_calc NDVI": (
            "band_calc",
            lambda rs, t: rs.band_calc(
                expression_string=NDVI,
                output_path=out(t, "ndvi"),
                input_raster_list=[nir, red],
                input_name_list=["nir", "red"],
                output_datatype="Float32",
            ),
        ),
        "band_sieve 10": (
            "band_sieve",
            lambda rs, t: rs.band_sieve(
                input_bands=[classes],
                size=10,
                output_path=out(t, "sieve"),
                connected=True,
                overwrite=True,
            ),
        ),
        "band_dilation 3 by 2": (
            "band_dilation",
            lambda rs, t: rs.band_dilation(
                input_bands=[classes],
                value_list=[3],
                size=2,
                output_path=out(t, "dilation"),
                overwrite=True,
            ),
        ),
        "band_erosion 1 by 1": (
            "band_erosion",
            lambda rs, t: rs.band_erosion(
                input_bands=[classes],
                value_list=[1],
                size=1,
                output_path=out(t, "erosion"),
                overwrite=True,
            ),
        ),
        "band_neighbor_pixels Mean 2": (
            "band_neighbor_pixels",
            lambda rs, t: rs.band_neighbor_pixels(
                input_bands=[red],
                size=2,
                output_path=out(t, "mean"),
                overwrite=True,
                stat_name="Mean",
            ),
        ),
        "band_neighbor_pixels Median 1": (
            "band_neighbor_pixels",
            lambda rs, t: rs.band_neighbor_pixels(
                input_bands=[red],
                size=1,
                output_path=out(t, "median"),
                overwrite=True,
                stat_name="Median",
            ),
        ),
        "raster_reclassification": (
            "raster_reclassification",
            lambda rs, t: rs.raster_reclassification(
                raster_path=classes,
                output_path=out(t, "reclass"),
                overwrite=True,
                reclassification_table=[[1, 10], [2, 20], ["raster > 4", 40]],
            ),
        ),
        "band_mask buffer 2": (
            "band_mask",
            lambda rs, t: rs.band_mask(
                input_bands=[red],
                input_mask=classes,
                mask_values=[1],
                output_path=out(t, "mask"),
                overwrite=True,
                buffer=2,
            ),
        ),
        "raster_report": (
            "raster_report",
            lambda rs, t: rs.raster_report(
                raster_path=classes, output_path=out(t, "report", "csv")
            ),
        ),
        "raster_zonal_stats": (
            "raster_zonal_stats",
            lambda rs, t: rs.raster_zonal_stats(
                raster_path=nir,
                reference_path=classes,
                output_path=out(t, "zonal", "csv"),
                stat_names=["Count", "Mean", "StandardDeviation", "Median"],
            ),
        ),
        "band_combination": (
            "band_combination",
            lambda rs, t: rs.band_combination(
                input_bands=[classes, classes2], output_path=out(t, "combination"), overwrite=True
            ),
        ),
        "cross_classification": (
            "cross_classification",
            lambda rs, t: rs.cross_classification(
                classification_path=classes,
                reference_path=classes2,
                output_path=out(t, "cross"),
                overwrite=True,
                error_matrix=True,
            ),
        ),
        "raster_label": (
            "raster_label",
            lambda rs, t: rs.raster_label(
                raster_path=classes, output_path=out(t, "label"), overwrite=True
            ),
        ),
        "band_pca 2 components": (
            "band_pca",
            lambda rs, t: rs.band_pca(
                input_bands=[nir, red],
                output_path=out(t, "pca"),
                overwrite=True,
                number_components=2,
            ),
        ),
        "band_clustering 8, 5 iterations": (
            "band_clustering",
            lambda rs, t: rs.band_clustering(
                input_bands=[nir, red],
                output_raster_path=out(t, "clusters"),
                algorithm_name="minimum distance",
                class_number=8,
                seed_signatures="random pixel",
                max_iter=5,
                overwrite=True,
            ),
        ),
        "band_clustering isodata 8, 5 iterations": (
            "band_clustering",
            lambda rs, t: rs.band_clustering(
                input_bands=[nir, red],
                output_raster_path=out(t, "isodata"),
                algorithm_name="isodata",
                class_number=8,
                seed_signatures="random pixel",
                max_iter=5,
                min_class_size=1000,
                overwrite=True,
            ),
        ),
        "band_spectral_distance": (
            "band_spectral_distance",
            lambda rs, t: rs.band_spectral_distance(
                input_bandsets=[[nir, red], [red, nir]],
                output_path=out(t, "distance"),
                overwrite=True,
            ),
        ),
    }


# ------------------------------------------------------------------------ the memory


def session_workers(server_pid: int) -> list[psutil.Process]:
    """The server's descendants that run tiles: all but multiprocessing's helpers."""
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.Error:
        return []
    workers = []
    for child in children:
        try:
            if "resource_tracker" in " ".join(child.cmdline()):
                continue
        except psutil.Error:
            continue
        workers.append(child)
    return workers


@dataclass
class Look:
    """One look at the session: the workers' footprint (largest RSS plus the others'
    USS), their summed RSS, the server's RSS, and how many workers were read."""

    footprint: int = 0
    rss: int = 0
    server: int = 0
    workers: int = 0


def look(server_pid: int, workers: list[psutil.Process]) -> Look:
    held = []
    for worker in workers:
        try:
            info = worker.memory_full_info()
        except psutil.Error:
            continue
        held.append((info.rss, getattr(info, "uss", info.rss)))
    held.sort()
    footprint = held[-1][0] + sum(uss for _, uss in held[:-1]) if held else 0
    try:
        server = psutil.Process(server_pid).memory_info().rss
    except psutil.Error:
        server = 0
    return Look(footprint, sum(rss for rss, _ in held), server, len(held))


@dataclass
class Sampler:
    """Peaks of `look` every `interval` seconds in a thread; the workers are listed
    again every second, so that a replaced worker is counted."""

    server_pid: int
    interval: float
    peak: Look = field(default_factory=Look)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        workers, listed = session_workers(self.server_pid), time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            if started - listed > 1.0:
                workers, listed = session_workers(self.server_pid), started
            now = look(self.server_pid, workers)
            self.samples += 1
            self.peak = Look(
                max(self.peak.footprint, now.footprint),
                max(self.peak.rss, now.rss),
                max(self.peak.server, now.server),
                max(self.peak.workers, now.workers),
            )
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name="session-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def idle_look(server_pid: int, seconds: float = 0.5, interval: float = 0.05) -> Look:
    """The session at rest: the least of each figure over ``seconds``."""
    workers = session_workers(server_pid)
    looks = []
    end = time.monotonic() + seconds
    while True:
        looks.append(look(server_pid, workers))
        if time.monotonic() >= end:
            break
        time.sleep(interval)
    return Look(
        min(x.footprint for x in looks),
        min(x.rss for x in looks),
        min(x.server for x in looks),
        max(x.workers for x in looks),
    )


# --------------------------------------------------------------------------- the runs


@dataclass
class Result:
    tool: str
    budget: int
    processes: int
    seconds: float = float("nan")
    idle: Look = field(default_factory=Look)
    peak: Look = field(default_factory=Look)
    samples: int = 0
    error: str = ""

    @property
    def growth(self) -> int:
        return self.peak.footprint - self.idle.footprint

    @property
    def server_growth(self) -> int:
        return max(0, self.peak.server - self.idle.server)

    @property
    def total(self) -> int:
        """What the engine plans against the budget: the workers' footprint, idle memory
        included, plus the coordinator's growth."""
        return self.peak.footprint + self.server_growth

    @property
    def met(self) -> bool:
        return not self.error and self.total <= self.budget * MIB

    @property
    def minimum(self) -> int | None:
        """The smallest budget the server named when it refused this one, if it did."""
        found = re.search(
            r"RESOURCE_EXHAUSTED.*(?:the minimum is|need about) (\d+) MiB", self.error
        )
        return int(found.group(1)) if found else None


def _failure(outcome: Any) -> str:
    if getattr(outcome, "check", False):
        return ""
    grpc = getattr(outcome, "grpc", None)
    code = getattr(grpc, "code", "")
    message = getattr(grpc, "message", "") or getattr(outcome, "extra", "")
    return f"check False: {code} {message}".strip()


def run_tool(
    address: str,
    server_pid: int,
    label: str,
    budget: int,
    processes: int,
    call: Callable[[Session, str], Any],
    warm: Callable[[Session, str], Any] | None,
    interval: float,
) -> Result:
    """A new session of `processes` processes and ``budget`` MiB: the warm-up call, then
    the measured one; the session is deleted after."""
    result = Result(label, budget, processes)
    # available_ram under 1000 is in GiB, as in Remotior.
    ram = budget / 1024 if budget < 1000 else budget
    rs = Session(n_processes=processes, available_ram=ram, target=address)
    try:
        got = rs.session.available_ram_mib
        if got != budget or rs.session.process_count != processes:
            result.error = f"session got {rs.session.process_count} processes, {got} MiB"
            return result
        tag = "".join(c if c.isalnum() else "_" for c in f"{label}_{budget}x{processes}")
        if warm is not None:
            failure = _failure(warm(rs, f"warm_{tag}"))
            # A budget too small for a tile of the crop is judged on the scene's call.
            if failure and "RESOURCE_EXHAUSTED" not in failure:
                result.error = f"warm-up: {failure}"
                return result
        settle()
        result.idle = idle_look(server_pid)
        with Sampler(server_pid, interval) as sampler:
            started = time.perf_counter()
            outcome = call(rs, tag)
            result.seconds = time.perf_counter() - started
        result.peak, result.samples = sampler.peak, sampler.samples
        result.error = _failure(outcome)
    finally:
        rs.close()
    return result


def measured(
    address: str, server_pid: int, label: str, budget: int, processes: int, *args: Any
) -> Result:
    """`run_tool`, a failure of the client or the session a row rather than the end."""
    try:
        return run_tool(address, server_pid, label, budget, processes, *args)
    except Exception as error:
        return Result(label, budget, processes, error=f"{type(error).__name__}: {error}")


# ---------------------------------------------------------------------------- report


HEADER = (
    f"{'tool':<32} {'budget':>6} {'proc':>4} {'wall s':>7} {'idle fp':>8} {'peak fp':>8} "
    f"{'fp grow':>8} {'rss grow':>8} {'srv grow':>8} {'grow/b':>7} {'total/b':>7}  aim"
)


def row(r: Result) -> str:
    if r.minimum is not None:
        return f"{r.tool:<32} {r.budget:6d} {r.processes:4d}  refused: {r.error.split(': ', 1)[-1]}"
    if r.error and not r.samples:
        return f"{r.tool:<32} {r.budget:6d} {r.processes:4d}  FAILED: {r.error}"

    def m(n: int) -> str:
        return f"{n / MIB:8.0f}"

    rss_growth = r.peak.rss - r.idle.rss
    text = (
        f"{r.tool:<32} {r.budget:6d} {r.processes:4d} {r.seconds:7.1f} {m(r.idle.footprint)} "
        f"{m(r.peak.footprint)} {m(r.growth)} {m(rss_growth)} {m(r.server_growth)} "
        f"{r.growth / (r.budget * MIB):7.2f} {r.total / (r.budget * MIB):7.2f}  "
        f"{'failed' if r.error else 'met' if r.met else 'NOT met'}"
    )
    if r.peak.workers != r.processes:
        text += f"  ({r.peak.workers} worker processes seen)"
    if r.error:
        text += f"  FAILED: {r.error}"
    return text


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--budgets",
        type=budget_and_processes,
        nargs="+",
        default=[(512, 1), (2048, 2)],
        help="available_ram in MiB, and the session's processes: MIB or MIBxPROCESSES",
    )
    parser.add_argument("--tools", nargs="+", default=None, help="labels or method names")
    parser.add_argument("--interval", type=float, default=0.025, help="sampling period, s")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the small first call")
    parser.add_argument(
        "--no-minimum",
        action="store_true",
        help="do not run again at the smallest budget the server names when it refuses one",
    )
    parser.add_argument("--keep", action="store_true", help="keep the inputs and outputs")
    args = parser.parse_args()

    temporary = args.workdir is None
    workdir, outputs = make_workdir(args.workdir)
    data_root = workdir / "data"
    (data_root / "out").mkdir(parents=True, exist_ok=True)
    others = OtherCpu()
    # A server per budget, its spare pool (started with it, of the default process count)
    # of the sessions' size: the pool each session takes, so that the workers sampled are
    # the session's; one more pool of room lets a pool start while another stops.
    most = max(processes for _, processes in args.budgets)
    max_processes = 2 * most + 2
    os.environ["RSGRPC_MAX_PROCESSES"] = str(max_processes)
    os.environ["RSGRPC_MAX_RAM_MIB"] = str(max(4096, 2 * max(b for b, _ in args.budgets)))

    print(machine())
    print(machine_load())
    for what, seconds in make_inputs(data_root, args.size).items():
        print(f"input {what}: " + (f"made in {seconds:.1f} s" if seconds else "reused"))
    print(
        f"server: --max-processes {max_processes}, "
        f"--max-ram-mib {os.environ['RSGRPC_MAX_RAM_MIB']}; "
        "a server per budget, of as many default processes as its sessions; a new "
        "session per tool and budget, deleted after; "
        f"memory sampled every {1e3 * args.interval:.0f} ms"
    )

    calls = tool_calls(args.size)
    warms = tool_calls(min(args.size, WARM_EDGE))
    chosen = []
    for label, (method, call) in calls.items():
        if args.tools and label not in args.tools and method not in args.tools:
            continue
        if not callable(getattr(Session, method, None)):
            print(f"skipped {label}: the client has no method {method}")
            continue
        warm = None if args.no_warm_up else warms[label][1]
        chosen.append((label, call, warm))

    results: list[Result] = []
    # Budgets outermost: every tool at the first budget before any at the next.
    for budget, processes in args.budgets:
        os.environ["RSGRPC_DEFAULT_PROCESS_COUNT"] = str(processes)
        log = workdir / f"server-{budget}x{processes}.log"
        with rsgrpc_server(data_root, log) as (address, server):
            for label, call, warm in chosen:
                result = measured(
                    address, server.pid, label, budget, processes, call, warm, args.interval
                )
                results.append(result)
                print(row(result), flush=True)
                # The tightest budget the server accepts: the memory model at its edge. A
                # job refused after it started (a later pass) names a larger one: again.
                for _ in range(3):
                    if result.minimum is None or args.no_minimum:
                        break
                    result = measured(
                        address,
                        server.pid,
                        label,
                        result.minimum,
                        processes,
                        call,
                        warm,
                        args.interval,
                    )
                    results.append(result)
                    print(row(result), flush=True)

    print()
    print(
        f"{args.size} x {args.size} inputs; MiB; proc: the session's processes. "
        "fp: the workers' footprint, the largest worker's RSS plus the others' USS (the "
        "server's own accounting); idle fp just before the job, peak fp during it; "
        "fp grow and rss grow: peak above idle of the footprint and of the workers' summed "
        "RSS; srv grow: the server process's RSS peak above idle; grow/b: fp grow / budget; "
        "total/b: (peak fp + srv grow) / budget. Aim: the session's process tree stays "
        "under its budget (total/b <= 1)."
    )
    print(HEADER)
    for result in results:
        print(row(result))
    print(machine_load())
    print(others.report())
    ran = [r for r in results if not r.error]
    refused = sum(r.minimum is not None for r in results)
    failed = len(results) - len(ran) - refused
    print(
        f"aim met for {sum(r.met for r in ran)} of {len(ran)} runs done; "
        f"{refused} budgets refused by the server (RESOURCE_EXHAUSTED), {failed} runs failed"
    )
    clean_workdir(workdir, outputs, keep=args.keep, temporary=temporary)
    if not args.keep:
        for path in (data_root / "out").glob("*"):
            if path.is_file():
                path.unlink()


if __name__ == "__main__":
    main()
