"""Latency benchmark: first calls after warm and restart, sessions, new expressions, small jobs.

``rsgrpc serve`` runs as a subprocess on a kernel cache filled by ``rsgrpc warm``
(run here into a new cache folder, and timed, unless ``--skip-warm`` reuses the
folder given with ``--kernel-cache-dir``). In one run it prints, each figure beside
its aim (issue 13) with met / NOT met:

1. the first call of each tool (BandCalc NDVI, Sieve, Dilate, Erode on a
   ``--tool-size`` raster) on a new server after the warm, then on a restarted
   server on the same cache, each against the warm call of the same tool in the
   same session, the fastest of the next two (in a session of two workers the
   second call can land on the worker that has not run the tool yet): within 1.5x;
2. CreateSession p50 and p99 over ``--session-calls`` calls (each session deleted
   off the clock): p50 under 50 ms;
3. a new band-calc expression's added latency over a seen one, on a 256 x 256
   job: ``"nir" * k + "red"`` with a new constant k each time against the same
   expression repeated: p50 under 100 ms;
4. a 256 x 256 NDVI job (BandCalc + WaitOperation until done) with 1, 8 and 32
   concurrent clients, each a thread with its own channel: p50 under 20 ms with one
   client (with more clients than cores the jobs queue, and p50 is about clients /
   rate, by Little's law), and at least 100 jobs per second at every count;
5. the ``--size`` NDVI end to end with an expression seen for the first time
   against the same expression once compiled: within 1.2x;
6. in this process, on the cache: the two ways a band-calc expression runs, the
   block program a new expression runs as and the fused kernel compiled for one
   seen again: what a new expression costs each (assembling its program against
   compiling its kernel), and each one's time on a 2000 x 2000 tile of two uint16
   inputs, for three expressions (no aim: the figures behind the design).

Every call has a deadline, so that a stuck server shows as failed calls.

Run: ``python benchmarks/bench_latency.py [--workdir DIR] [--skip-warm --kernel-cache-dir DIR]``.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    benchmark_parser,
    clean_workdir,
    machine,
    machine_load,
    make_once,
    make_workdir,
    rsgrpc_server,
    settle,
)

from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc  # noqa: E402

NDVI = '("nir" - "red") / ("nir" + "red")'
SMALL_EDGE = 256
BLOCK = 512
# Every call has a deadline: a server that cannot answer shows as failed calls.
CALL_TIMEOUT_S = 60.0
# A whole job (started and waited for) may take this long; the big scene's too.
JOB_TIMEOUT_S = 600.0
WARM_TIMEOUT_S = 1800.0
TOOLS = ("BandCalc NDVI", "Sieve", "Dilate", "Erode")
# The warm call of a tool is the fastest of the calls after its first: in a session of
# 2 workers the second call can land on the worker that has not run it yet.
WARM_CALLS = 2


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[round(q * (len(ordered) - 1))]


def p50(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


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
        "compress": "DEFLATE",
    }


def _write_random(path: Path, size: int, dtype: str, high: int, seed: int) -> None:
    """Random pixels in [1, high), written a strip of BLOCK rows at a time."""
    import rasterio
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    with rasterio.open(path, "w", **_profile(size, dtype)) as ds:
        for row in range(0, size, BLOCK):
            rows = min(BLOCK, size - row)
            strip = rng.integers(1, high, (rows, size), dtype=dtype)
            ds.write(strip, 1, window=Window(0, row, size, rows))


def _write_classes(path: Path, size: int) -> None:
    """Classes 1 to 6 in 16 x 16 patches, with single-pixel speckle: work for every tool."""
    import rasterio

    rng = np.random.default_rng(3)
    patches = rng.integers(1, 7, (size // 16 + 1, size // 16 + 1), dtype=np.uint8)
    classes = np.kron(patches, np.ones((16, 16), dtype=np.uint8))[:size, :size]
    speckle = rng.random((size, size)) < 0.1
    classes[speckle] = rng.integers(1, 7, int(speckle.sum()), dtype=np.uint8)
    with rasterio.open(path, "w", **_profile(size, "uint8")) as ds:
        ds.write(classes, 1)


def make_inputs(data_root: Path, tool_size: int, size: int) -> dict[str, float]:
    """The inputs, each made once into ``data_root`` and reused; seconds each took."""
    made = {}
    for edge, tag in ((SMALL_EDGE, "small"), (tool_size, "tool"), (size, "scene")):
        nir, red = data_root / f"{tag}_nir_{edge}.tif", data_root / f"{tag}_red_{edge}.tif"

        def write(n: Path, r: Path, edge: int = edge) -> None:
            _write_random(n, edge, "uint16", 10000, seed=1)
            _write_random(r, edge, "uint16", 10000, seed=2)

        made[f"{tag} nir and red {edge} x {edge}"] = make_once([nir, red], write)
    classes = data_root / f"tool_classes_{tool_size}.tif"
    made[f"classes {tool_size} x {tool_size}"] = make_once(
        [classes], lambda c: _write_classes(c, tool_size)
    )
    return made


# ------------------------------------------------------------------------ the client


class Client:
    """Stubs on one channel; every call with a deadline."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.sessions = session_pb2_grpc.SessionServiceStub(self.channel)
        self.raster = raster_pb2_grpc.RasterServiceStub(self.channel)
        self.operations = lro_grpc.OperationsStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def create_session(self, processes: int, ram_mib: int) -> str:
        session = self.sessions.CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=processes, available_ram_mib=ram_mib)
            ),
            timeout=CALL_TIMEOUT_S,
        )
        return session.name

    def delete_session(self, name: str) -> None:
        self.sessions.DeleteSession(
            session_pb2.DeleteSessionRequest(name=name), timeout=CALL_TIMEOUT_S
        )

    def run(self, start: Callable[..., lro.Operation], request, timeout: float) -> float:
        """Start an operation and wait until it is done; its seconds. Raises on failure."""
        deadline = time.monotonic() + timeout
        started = time.perf_counter()
        operation = start(request, timeout=CALL_TIMEOUT_S)
        while not operation.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{operation.name} not done after {timeout:.0f} s")
            wait = lro.WaitOperationRequest(name=operation.name)
            wait.timeout.FromMilliseconds(int(1000 * min(left, CALL_TIMEOUT_S)))
            operation = self.operations.WaitOperation(wait, timeout=min(left, CALL_TIMEOUT_S) + 5)
        seconds = time.perf_counter() - started
        if operation.HasField("error"):
            raise RuntimeError(f"{operation.name} failed: {operation.error.message}")
        return seconds

    def band_calc(
        self, session: str, expression: str, nir: str, red: str, output: str, timeout: float
    ) -> float:
        request = raster_pb2.BandCalcRequest(
            session=session,
            expression=expression,
            inputs=[
                raster_pb2.RasterInput(name="nir", path=nir),
                raster_pb2.RasterInput(name="red", path=red),
            ],
            output_path=output,
            overwrite=True,
            output_data_type=raster_pb2.DATA_TYPE_FLOAT32,
        )
        return self.run(self.raster.BandCalc, request, timeout)

    def tool(self, session: str, tool: str, classes: str, output: str) -> float:
        band = [raster_pb2.RasterBand(path=classes, band=1)]
        out = raster_pb2.ToolOutput(path=output, overwrite=True)
        if tool == "Sieve":
            request = raster_pb2.SieveRequest(
                session=session,
                inputs=band,
                size=10,
                connectivity=raster_pb2.CONNECTIVITY_8,
                output=out,
            )
            return self.run(self.raster.Sieve, request, JOB_TIMEOUT_S)
        filter_ = raster_pb2.MORPHOLOGY_FILTER_VALUE_LIST
        if tool == "Dilate":
            parameters = raster_pb2.MorphologyParameters(filter=filter_, value_list=[3], size=2)
            request = raster_pb2.DilateRequest(
                session=session, inputs=band, parameters=parameters, output=out
            )
            return self.run(self.raster.Dilate, request, JOB_TIMEOUT_S)
        parameters = raster_pb2.MorphologyParameters(filter=filter_, value_list=[1], size=1)
        request = raster_pb2.ErodeRequest(
            session=session, inputs=band, parameters=parameters, output=out
        )
        return self.run(self.raster.Erode, request, JOB_TIMEOUT_S)


# ------------------------------------------------------------------------ the parts


def first_calls(address: str, tool_size: int) -> dict[str, list[float]]:
    """Per tool, the seconds of its first ``WARM_CALLS + 1`` calls in a new session of 2
    processes, one after the other."""
    client = Client(address)
    nir, red = f"tool_nir_{tool_size}.tif", f"tool_red_{tool_size}.tif"
    classes = f"tool_classes_{tool_size}.tif"
    times = {}
    try:
        session = client.create_session(2, 1024)
        try:
            for tool in TOOLS:
                runs = []
                for index in range(1 + WARM_CALLS):
                    out = f"out/first_{tool.split()[0].lower()}_{index}.tif"
                    if tool.startswith("BandCalc"):
                        runs.append(client.band_calc(session, NDVI, nir, red, out, JOB_TIMEOUT_S))
                    else:
                        runs.append(client.tool(session, tool, classes, out))
                times[tool] = runs
        finally:
            client.delete_session(session)
    finally:
        client.close()
    return times


def create_sessions(address: str, calls: int, pause: float) -> tuple[list[float], int]:
    """CreateSession of the default size (2 processes, 1024 MiB) ``calls`` times, each
    deleted off the clock, ``pause`` s apart; seconds of each, failures."""
    client = Client(address)
    seconds, failed = [], 0
    try:
        for _ in range(calls):
            started = time.perf_counter()
            try:
                name = client.create_session(2, 1024)
            except grpc.RpcError:
                failed += 1
                continue
            seconds.append(time.perf_counter() - started)
            client.delete_session(name)
            time.sleep(pause)
    finally:
        client.close()
    return seconds, failed


def new_expressions(address: str, count: int, nonce: int) -> tuple[list[float], list[float]]:
    """On a session of 1 process, 256 x 256 jobs alternating a seen expression and a new
    one (a new constant each time); seconds of the seen and of the new ones."""
    client = Client(address)
    nir, red = f"small_nir_{SMALL_EDGE}.tif", f"small_red_{SMALL_EDGE}.tif"
    seen_expression = '"nir" * 0.5 + "red"'
    seen, new = [], []
    try:
        session = client.create_session(1, 512)
        try:
            for _ in range(2):  # the seen expression compiled, files cached
                client.band_calc(session, seen_expression, nir, red, "out/expr.tif", JOB_TIMEOUT_S)
            for index in range(count):
                seen.append(
                    client.band_calc(
                        session, seen_expression, nir, red, "out/expr.tif", JOB_TIMEOUT_S
                    )
                )
                # A constant never used before, by this run or an earlier one.
                k = f"{1 + index}.{nonce:010d}"
                expression = f'"nir" * {k} + "red"'
                new.append(
                    client.band_calc(session, expression, nir, red, "out/expr.tif", JOB_TIMEOUT_S)
                )
        finally:
            client.delete_session(session)
    finally:
        client.close()
    return seen, new


class SmallJobs:
    """``clients`` threads, each on its own channel, running 256 x 256 NDVI jobs until
    ``total`` are done, the clients spread over the given sessions."""

    def __init__(self, address: str, sessions: list[str], clients: int, total: int) -> None:
        self.address = address
        self.sessions = sessions
        self.clients = clients
        self.total = total
        self.seconds: list[float] = []
        self.failed = 0
        self.errors: list[str] = []
        self.wall = 0.0
        self._lock = threading.Lock()
        self._next = 0

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.total:
                return None
            self._next += 1
            return self._next - 1

    def _client(self, index: int, ready: threading.Barrier) -> None:
        client = Client(self.address)
        session = self.sessions[index % len(self.sessions)]
        nir, red = f"small_nir_{SMALL_EDGE}.tif", f"small_red_{SMALL_EDGE}.tif"
        try:
            grpc.channel_ready_future(client.channel).result(timeout=CALL_TIMEOUT_S)
            ready.wait(CALL_TIMEOUT_S)
            while (job := self._take()) is not None:
                out = f"out/small_{index}_{job % 4}.tif"
                try:
                    s = client.band_calc(session, NDVI, nir, red, out, CALL_TIMEOUT_S)
                except (grpc.RpcError, RuntimeError) as error:
                    with self._lock:
                        self.failed += 1
                        if len(self.errors) < 3:
                            self.errors.append(str(error).splitlines()[0][:200])
                    continue
                with self._lock:
                    self.seconds.append(s)
        finally:
            client.close()

    def run(self) -> SmallJobs:
        ready = threading.Barrier(self.clients + 1)
        threads = [
            threading.Thread(target=self._client, args=(i, ready)) for i in range(self.clients)
        ]
        for thread in threads:
            thread.start()
        ready.wait(CALL_TIMEOUT_S)
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        self.wall = time.perf_counter() - started
        return self


def big_ndvi(address: str, size: int, nonce: int, repeats: int) -> dict[str, object]:
    """On a session of 2 processes and 2048 MiB: NDVI once (inputs read into the page
    cache, workers warm), then an expression never seen before, then the same
    expression again ``repeats`` times (compiled by then)."""
    client = Client(address)
    nir, red = f"scene_nir_{size}.tif", f"scene_red_{size}.tif"
    # NDVI times a constant of this run only: the same work, an expression never seen.
    expression = f"({NDVI}) * 1.{nonce:010d}"
    try:
        session = client.create_session(2, 2048)
        try:
            first = client.band_calc(session, NDVI, nir, red, "out/big.tif", JOB_TIMEOUT_S)
            settle()
            new = client.band_calc(session, expression, nir, red, "out/big.tif", JOB_TIMEOUT_S)
            settle()
            seen = []
            for _ in range(repeats):
                seen.append(
                    client.band_calc(session, expression, nir, red, "out/big.tif", JOB_TIMEOUT_S)
                )
                settle()
        finally:
            client.delete_session(session)
    finally:
        client.close()
    return {"ndvi": first, "new": new, "seen": seen, "expression": expression}


# ---------------------------------------------------------------------------- report


PATH_EXPRESSIONS = (
    '("nir" - "red") / ("nir" + "red")',
    'where("nir" > 5000, sqrt("nir" * "red"), "nir" - "red") * 2.5 + 1',
    'median("nir", "red", 3000) + std("nir", "red")',
)


def expression_paths(nonce: int, edge: int = 2000, runs: int = 5) -> list[tuple]:
    """Per expression: seconds to assemble its program and to compile its fused kernel
    (a new constant, so that nothing is cached), and the best of ``runs`` evaluations of a
    tile each way."""
    from rsgrpc_kernels import bandcalc
    from rsgrpc_kernels.block_program import assemble
    from rsgrpc_kernels.expression import parse_expression

    rng = np.random.default_rng(3)
    nir = rng.integers(0, 10_000, (edge, edge), dtype=np.uint16)
    red = rng.integers(0, 10_000, (edge, edge), dtype=np.uint16)
    rows = []
    for index, text in enumerate(PATH_EXPRESSIONS):
        expression = parse_expression(f"({text}) * 1.{nonce:010d}{index}", ["nir", "red"])
        start = time.perf_counter()
        assemble(expression, {})
        assembled = time.perf_counter() - start
        start = time.perf_counter()
        bandcalc.compile_kernel(expression, [nir.dtype, red.dtype], "float32")
        compiled = time.perf_counter() - start
        timings = {}
        for method in ("program", "fused"):
            best = math.inf
            for _ in range(runs):
                start = time.perf_counter()
                bandcalc.evaluate(expression, [nir, red], [0, None], method=method)
                best = min(best, time.perf_counter() - start)
            timings[method] = best
        rows.append((text, assembled, compiled, timings["program"], timings["fused"]))
    return rows


def print_first_calls(label: str, times: dict[str, list[float]]) -> bool:
    print(f"first call of each tool {label}")
    print("  tool               first s   warm s   ratio   aim <= 1.5x   (next calls s)")
    met_all = True
    for tool, (first, *after) in times.items():
        warm = min(after)
        ratio = first / warm
        met_all &= ratio <= 1.5
        print(
            f"  {tool:<16} {first:9.3f} {warm:8.3f} {ratio:6.2f}x   {verdict(ratio <= 1.5):<11}"
            f"   ({', '.join(f'{s:.3f}' for s in after)})"
        )
    return met_all


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--tool-size", type=int, default=2000, help="first calls' raster edge")
    parser.add_argument(
        "--kernel-cache-dir",
        type=Path,
        default=None,
        help="kernel cache folder (default: a new one in the workdir); must not exist "
        "unless --skip-warm",
    )
    parser.add_argument(
        "--skip-warm",
        action="store_true",
        help="reuse the cache of --kernel-cache-dir, filled by an earlier `rsgrpc warm`",
    )
    parser.add_argument("--session-calls", type=int, default=30)
    parser.add_argument("--session-pause", type=float, default=0.2, help="s between them")
    parser.add_argument("--expressions", type=int, default=10, help="new expressions")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--jobs", type=int, default=200, help="small jobs per client count")
    parser.add_argument(
        "--job-sessions", type=int, default=2, help="sessions of 1 process the clients share"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of the seen big NDVI")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args()
    if args.skip_warm and (args.kernel_cache_dir is None or not args.kernel_cache_dir.is_dir()):
        parser.error("--skip-warm needs --kernel-cache-dir, an existing warmed folder")

    temporary = args.workdir is None
    workdir, outputs = make_workdir(args.workdir)
    data_root = workdir / "data"
    (data_root / "out").mkdir(parents=True, exist_ok=True)
    nonce = uuid.uuid4().int % 10**10
    cache = (args.kernel_cache_dir or workdir / f"kernel-cache-{nonce}").expanduser().resolve()
    if not args.skip_warm and cache.exists():
        parser.error(f"{cache} exists: give a new --kernel-cache-dir, or --skip-warm")

    # Every serve flag defaults to its environment variable. Processes: the stock's
    # spare pool (2) + the small-job sessions + the session being created or run.
    max_processes = 2 + max(args.job_sessions, 2) + 2
    max_ram_mib = 8192
    os.environ["RSGRPC_KERNEL_CACHE_DIR"] = str(cache)
    os.environ["RSGRPC_MAX_PROCESSES"] = str(max_processes)
    os.environ["RSGRPC_MAX_RAM_MIB"] = str(max_ram_mib)
    os.environ["RSGRPC_DEFAULT_PROCESS_COUNT"] = "2"
    os.environ["RSGRPC_MAX_OPERATIONS"] = str(max(64, 2 * max(args.clients)))
    os.environ["RSGRPC_GRACE_PERIOD_S"] = "5"

    print(machine(grpcio=grpc.__version__))
    print(machine_load())
    made = make_inputs(data_root, args.tool_size, args.size)
    for what, seconds in made.items():
        print(f"input {what}: " + (f"made in {seconds:.1f} s" if seconds else "reused"))
    print(
        f"server: --max-processes {max_processes}, --max-ram-mib {max_ram_mib}, "
        f"--default-process-count 2, --max-operations {os.environ['RSGRPC_MAX_OPERATIONS']}"
    )

    if args.skip_warm:
        print("kernel cache: reused, warmed earlier (--skip-warm); no `rsgrpc warm` in this run")
    else:
        started = time.perf_counter()
        warm = subprocess.run(
            [sys.executable, "-m", "rsgrpc.cli", "warm", "--kernel-cache-dir", str(cache)],
            check=True,
            timeout=WARM_TIMEOUT_S,
            stdout=subprocess.PIPE,
            text=True,
        )
        for line in warm.stdout.splitlines():
            print(f"  {line}")
        print(
            f"kernel cache: `rsgrpc warm` into a new folder took {time.perf_counter() - started:.1f} s"
        )

    results: dict[str, bool] = {}
    with rsgrpc_server(data_root, workdir / "server-1.log") as (address, _):
        after_warm = first_calls(address, args.tool_size)
    warm_label = "after --skip-warm's cache" if args.skip_warm else "after a fresh warm"
    with rsgrpc_server(data_root, workdir / "server-2.log") as (address, _):
        restarted = first_calls(address, args.tool_size)
        session_seconds, session_failed = create_sessions(
            address, args.session_calls, args.session_pause
        )
        seen, new = new_expressions(address, args.expressions, nonce)
        client = Client(address)
        job_sessions = [client.create_session(1, 512) for _ in range(args.job_sessions)]
        try:
            SmallJobs(address, job_sessions, len(job_sessions), 4 * len(job_sessions)).run()
            small = {
                c: SmallJobs(address, job_sessions, c, max(args.jobs, 4 * c)).run()
                for c in args.clients
            }
        finally:
            for name in job_sessions:
                client.delete_session(name)
            client.close()
        big = big_ndvi(address, args.size, nonce, args.repeats)
    # The cache warmed above, for this process's kernels (numba reads it as it is imported).
    os.environ["NUMBA_CACHE_DIR"] = str(cache)
    paths = expression_paths(nonce)

    print()
    size = f"{args.tool_size} x {args.tool_size}"
    results["first calls, warm"] = print_first_calls(
        f"+ server start, {warm_label} ({size}; session of 2 processes)", after_warm
    )
    results["first calls, restart"] = print_first_calls(
        "after a server restart on the same cache", restarted
    )

    s50, s99 = p50(session_seconds), percentile(session_seconds, 0.99)
    results["CreateSession"] = s50 < 0.05 and not session_failed
    print(
        f"CreateSession (2 processes, 1024 MiB; {len(session_seconds)} calls, "
        f"{session_failed} failed, {args.session_pause:g} s apart, each deleted off the clock): "
        f"p50 {1e3 * s50:.1f} ms, p99 {1e3 * s99:.1f} ms; aim p50 < 50 ms: "
        f"{verdict(results['CreateSession'])}"
    )

    added = p50(new) - p50(seen)
    results["new expression"] = added < 0.1
    print(
        f'new expression ({len(new)} x \'"nir" * k + "red"\', a new k each time, '
        f"{SMALL_EDGE} x {SMALL_EDGE}, session of 1 process): p50 {1e3 * p50(new):.1f} ms "
        f"(max {1e3 * max(new):.1f}) against the seen one's {1e3 * p50(seen):.1f} ms: "
        f"added {1e3 * added:.1f} ms; aim < 100 ms: {verdict(results['new expression'])}"
    )

    print(
        f"{SMALL_EDGE} x {SMALL_EDGE} NDVI job (BandCalc + WaitOperation), clients on their "
        f"own channels over {args.job_sessions} sessions of 1 process and 512 MiB:"
    )
    # The p50 aim is a job's latency, with one client; with more clients than cores the
    # jobs queue, and by Little's law p50 is about clients / rate, whatever the service:
    # there, the aim is the rate.
    print(
        "  clients  jobs  failed    p50 ms    p99 ms    jobs/s   clients/rate ms"
        "   aims: p50 < 20 ms with 1 client; >= 100 jobs/s"
    )
    results["small jobs"] = True
    for clients, run in small.items():
        j50, j99 = p50(run.seconds), percentile(run.seconds, 0.99)
        rate = len(run.seconds) / run.wall
        latency_met = clients > 1 or j50 < 0.02
        met = latency_met and rate >= 100 and not run.failed
        results["small jobs"] &= met
        latency = f"p50 {verdict(j50 < 0.02)}, " if clients == 1 else ""
        print(
            f"  {clients:7d} {len(run.seconds):5d} {run.failed:7d} {1e3 * j50:9.1f} "
            f"{1e3 * j99:9.1f} {rate:9.1f} {1e3 * clients / rate:17.1f}   "
            f"{latency}rate {verdict(rate >= 100)}"
        )
        for error in run.errors:
            print(f"    failure: {error}")

    best_seen = min(big["seen"])
    ratio = big["new"] / best_seen
    results["big new expression"] = ratio <= 1.2
    print(
        f"{args.size} x {args.size} NDVI end to end (session of 2 processes, 2048 MiB): "
        f"NDVI first {big['ndvi']:.2f} s; new expression {big['expression']} {big['new']:.2f} s; "
        f"the same once compiled {best_seen:.2f} s (best of "
        + ", ".join(f"{s:.2f}" for s in big["seen"])
        + f"): {ratio:.2f}x; aim <= 1.2x: {verdict(ratio <= 1.2)}"
    )
    print(
        "band calc's two ways, on a 2000 x 2000 tile of two uint16 inputs (this process, "
        f"{os.cpu_count()} threads): a new expression's cost, then a tile's time"
    )
    print(
        "  expression                                          assemble ms  compile ms"
        "   program ms   fused ms   program/fused"
    )
    for text, assembled, compiled, program, fused in paths:
        print(
            f"  {text:50s} {1e3 * assembled:11.2f} {1e3 * compiled:11.0f} "
            f"{1e3 * program:12.1f} {1e3 * fused:10.1f} {program / fused:11.2f}x"
        )
    print(machine_load())
    print("aims: " + "; ".join(f"{name} {verdict(ok)}" for name, ok in results.items()))
    if not args.kernel_cache_dir and not args.keep:
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
    clean_workdir(workdir, outputs, keep=args.keep, temporary=temporary)
    if not args.keep:
        for path in (data_root / "out").glob("*.tif"):
            path.unlink()


if __name__ == "__main__":
    main()
