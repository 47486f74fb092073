"""Load benchmark: health and a small job, with and without thousands of waiting clients.

``rsgrpc serve`` runs as a subprocess. One session holds an operation that stays
running without using the CPU: a download from a local HTTP server that answers
only when the run ends. Each phase runs two clients at once, each on its own
channel: one loops CreateSession + a small NDVI BandCalc (waited for with
WaitOperation) + DeleteSession, the other checks health every few milliseconds
until the first is done.

(a) unloaded: those two clients alone;
(b) loaded: the same while another process holds ``--watchers`` WatchOperation
    streams and ``--waiters`` WaitOperation calls on the held operation.

It prints p50 and p99 of health and of the small job in each phase, and the
server process's thread count and resident memory idle and under load. The aims
(issue 12): health p99 under 50 ms under load; the small job's p50 under load
within 1.5x of its unloaded p50.

Run: ``python benchmarks/bench_load.py [--watchers 2000] [--waiters 500] [--jobs 30]``.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psutil
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import benchmark_parser, machine, make_workdir, rsgrpc_server  # noqa: E402

from rsgrpc.v1 import (  # noqa: E402
    download_pb2,
    download_pb2_grpc,
    operation_pb2,
    operation_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

SMALL_EDGE = 256
NDVI = '("nir" - "red") / ("nir" + "red")'
HEALTH_INTERVAL_S = 0.005
# Every call has a deadline: a server that cannot answer shows as failed calls.
CALL_TIMEOUT_S = 60.0
# The held download's answer comes at the end of the run, or after this long.
HOLD_S = 1800.0


class _HeldHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request once `release` is set."""

    release: threading.Event

    def do_GET(self) -> None:
        self.release.wait(HOLD_S)
        body = b'{"held": true}'
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server went away first

    def log_message(self, *args: object) -> None:
        return None


def _held_http_server(release: threading.Event) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_HeldHandler,), {"release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _write_inputs(data_root: Path) -> None:
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    for name in ("nir", "red"):
        with rasterio.open(
            data_root / f"{name}.tif",
            "w",
            driver="GTiff",
            width=SMALL_EDGE,
            height=SMALL_EDGE,
            count=1,
            dtype="uint16",
            crs="EPSG:32633",
            transform=from_origin(500000, 4600000, 10, 10),
        ) as ds:
            ds.write(rng.integers(1, 10000, (SMALL_EDGE, SMALL_EDGE), dtype=np.uint16), 1)


def hold_waiting_calls(address: str, operation: str, watchers: int, waiters: int, pipe) -> None:
    """In a child process: open the streams and calls, report how many are waiting, hold
    them until told to stop, then report how many ended early (before being cancelled)."""

    async def main() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            watch = operation_pb2_grpc.OperationWatchServiceStub(channel)
            operations = lro_grpc.OperationsStub(channel)
            streams = [
                watch.WatchOperation(operation_pb2.WatchOperationRequest(name=operation))
                for _ in range(watchers)
            ]
            first = await asyncio.gather(*(s.read() for s in streams), return_exceptions=True)
            watching = sum(isinstance(update, lro.Operation) for update in first)
            wait = lro.WaitOperationRequest(name=operation)
            wait.timeout.FromSeconds(int(HOLD_S))
            calls = [operations.WaitOperation(wait) for _ in range(waiters)]
            tasks = [asyncio.ensure_future(call) for call in calls]
            # A call the server refused ends at once; give refusals time to come back.
            await asyncio.sleep(2.0)
            waiting = sum(not task.done() for task in tasks)
            pipe.send((watching, waiting))
            await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
            early = sum(task.done() for task in tasks) + sum(s.done() for s in streams)
            for call in [*streams, *calls]:
                call.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            pipe.send(early)

    asyncio.run(main())


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    if not ordered:
        return float("nan"), float("nan")
    return statistics.median(ordered), ordered[round(0.99 * (len(ordered) - 1))]


class Phase:
    """A loop of small jobs on one channel while another channel checks health."""

    def __init__(self, address: str, jobs: int, first_job: int) -> None:
        self.address = address
        self.jobs = jobs
        self.first_job = first_job
        self.job_seconds: list[float] = []
        self.health_seconds: list[float] = []
        self.failed_jobs = 0
        self.failed_health = 0

    def run(self) -> Phase:
        done = threading.Event()
        checker = threading.Thread(target=self._check_health, args=(done,))
        checker.start()
        try:
            self._run_jobs()
        finally:
            done.set()
            checker.join()
        return self

    def _check_health(self, done: threading.Event) -> None:
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while not done.wait(HEALTH_INTERVAL_S):
                started = time.perf_counter()
                try:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                except grpc.RpcError:
                    self.failed_health += 1
                    continue
                self.health_seconds.append(time.perf_counter() - started)

    def _run_jobs(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            sessions = session_pb2_grpc.SessionServiceStub(channel)
            raster = raster_pb2_grpc.RasterServiceStub(channel)
            operations = lro_grpc.OperationsStub(channel)
            for index in range(self.first_job, self.first_job + self.jobs):
                started = time.perf_counter()
                try:
                    self._job(sessions, raster, operations, index)
                except (grpc.RpcError, RuntimeError):
                    self.failed_jobs += 1
                    continue
                self.job_seconds.append(time.perf_counter() - started)

    @staticmethod
    def _job(sessions, raster, operations, index: int) -> None:
        """CreateSession, a small NDVI waited for, DeleteSession."""
        session = sessions.CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=1, available_ram_mib=512)
            ),
            timeout=CALL_TIMEOUT_S,
        )
        try:
            operation = raster.BandCalc(
                raster_pb2.BandCalcRequest(
                    session=session.name,
                    expression=NDVI,
                    inputs=[
                        raster_pb2.RasterInput(name="nir", path="nir.tif"),
                        raster_pb2.RasterInput(name="red", path="red.tif"),
                    ],
                    output_path=f"out/ndvi_{index}.tif",
                    overwrite=True,
                ),
                timeout=CALL_TIMEOUT_S,
            )
            wait = lro.WaitOperationRequest(name=operation.name)
            wait.timeout.FromSeconds(int(CALL_TIMEOUT_S))
            finished = operations.WaitOperation(wait, timeout=CALL_TIMEOUT_S + 5)
            if not finished.done or finished.HasField("error"):
                raise RuntimeError(f"the small job did not succeed: {finished.error}")
        finally:
            sessions.DeleteSession(
                session_pb2.DeleteSessionRequest(name=session.name), timeout=CALL_TIMEOUT_S
            )


def _server_state(pid: int) -> str:
    process = psutil.Process(pid)
    return f"{process.num_threads()} threads, {process.memory_info().rss / (1 << 20):.0f} MiB RSS"


def _row(name: str, unloaded: list[float], loaded: list[float]) -> str:
    u50, u99 = _percentiles(unloaded)
    l50, l99 = _percentiles(loaded)
    return (
        f"  {name:<14} {1e3 * u50:9.1f} {1e3 * u99:9.1f}   {1e3 * l50:9.1f} {1e3 * l99:9.1f}"
        f"   {l50 / u50:5.2f}x   ({len(unloaded)} and {len(loaded)} samples)"
    )


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--watchers", type=int, default=2000)
    parser.add_argument("--waiters", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=30, help="small jobs per phase")
    args = parser.parse_args()
    workdir, _ = make_workdir(args.workdir)
    data_root = workdir / "data"
    (data_root / "out").mkdir(parents=True, exist_ok=True)
    _write_inputs(data_root)
    release = threading.Event()
    http_server = _held_http_server(release)
    deployments = workdir / "deployments.json"
    deployments.write_text(
        json.dumps(
            {
                "cache_dir": str(workdir / "cache"),
                "deployments": {
                    "held": {
                        "base_url": f"http://127.0.0.1:{http_server.server_address[1]}",
                        "read_timeout_seconds": HOLD_S,
                    }
                },
            }
        )
    )
    # Every serve flag defaults to its environment variable.
    os.environ["RSGRPC_DEPLOYMENTS"] = str(deployments)
    os.environ["RSGRPC_GRACE_PERIOD_S"] = "2"
    print(machine(grpcio=grpc.__version__))
    context = multiprocessing.get_context("spawn")
    try:
        with rsgrpc_server(data_root, workdir / "server.log") as (address, server):
            Phase(address, 3, first_job=0).run()  # warm: kernel compiled, caches filled
            idle_state = _server_state(server.pid)
            unloaded = Phase(address, args.jobs, first_job=100).run()

            with grpc.insecure_channel(address) as channel:
                holder = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
                    session_pb2.CreateSessionRequest(
                        session=session_pb2.Session(process_count=1, available_ram_mib=256)
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
                held = download_pb2_grpc.DownloadServiceStub(channel).Download(
                    download_pb2.DownloadRequest(
                        session=holder.name,
                        deployment="held",
                        items=[download_pb2.DownloadItem(uri="held", output_path="out/held.json")],
                        redownload=True,
                        overwrite=True,
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
            ours, theirs = context.Pipe()
            holding = context.Process(
                target=hold_waiting_calls,
                args=(address, held.name, args.watchers, args.waiters, theirs),
            )
            started = time.perf_counter()
            holding.start()
            watching, waiting = ours.recv()
            set_up_s = time.perf_counter() - started
            held_state = _server_state(server.pid)
            loaded = Phase(address, args.jobs, first_job=200).run()
            loaded_state = _server_state(server.pid)
            ours.send("stop")
            early = ours.recv()
            holding.join(60)
            release.set()
    finally:
        release.set()
        http_server.shutdown()

    print(
        f"load: {watching} of {args.watchers} WatchOperation streams and {waiting} of "
        f"{args.waiters} WaitOperation calls waiting on one running operation "
        f"(opened in {set_up_s:.1f} s); {early} ended before the run did"
    )
    print("latency (ms)        unloaded p50       p99      loaded p50       p99   p50 ratio")
    print(_row("Health.Check", unloaded.health_seconds, loaded.health_seconds))
    print(_row("small job", unloaded.job_seconds, loaded.job_seconds))
    print(
        f"failed calls: health {unloaded.failed_health} unloaded, {loaded.failed_health} "
        f"loaded; small jobs {unloaded.failed_jobs} unloaded, {loaded.failed_jobs} loaded"
    )
    print(
        f"server process: {idle_state} idle; {held_state} holding the waiting calls; "
        f"{loaded_state} after the loaded phase"
    )
    health_p99 = _percentiles(loaded.health_seconds)[1]
    ratio = _percentiles(loaded.job_seconds)[0] / _percentiles(unloaded.job_seconds)[0]
    print(
        f"aims: health p99 under load {1e3 * health_p99:.1f} ms (< 50 ms: "
        f"{'met' if health_p99 < 0.05 and not loaded.failed_health else 'not met'}); "
        f"small job p50 loaded / unloaded {ratio:.2f}x (<= 1.5x: "
        f"{'met' if ratio <= 1.5 and not loaded.failed_jobs else 'not met'})"
    )


if __name__ == "__main__":
    main()
