"""NDVI and sieve on local workers against a Dask cluster on the same machine.

    python benchmarks/bench_dask.py --workdir /some/scratch/dir [--size 10980]

Inputs: the red and nir bands of ``bench_band_calc.py`` and the class raster of
``bench_sieve_morphology.py``, --size pixels square (10980 by default), generated
once into the workdir and reused.

Runs, each of NDVI (``("nir" - "red") / ("nir" + "red")`` to float32) and a sieve
(threshold 10, 4-connected), from the call to the operation done, the best of
--repeats after one run that loads the kernels:

- local     ``rsgrpc serve`` with its own worker processes: sessions of 1 and of 2
            processes;
- dask 1    ``rsgrpc serve --dask-scheduler``, a scheduler and 1 worker started by
            Dask's command line (``dask scheduler``, ``dask worker --nthreads 1
            --no-nanny``) on 127.0.0.1; a session of 1 process;
- dask 2    the same with 2 workers and a session of 2 processes.

Every session has --ram MiB. Printed for each run: wall seconds, CPU seconds of
every process tree (the server and its workers; the scheduler; Dask's workers),
the ratios to the local run of as many processes, the bytes the scheduler moved
during the timed runs and their share of the output's size, and the peak resident
memory of each side (the server's tree; the cluster's processes, summed), sampled
every 50 ms in one more run. The scheduler's bytes are its TCP connections' byte
counters (sent and received, as ``ss`` reports them) plus the ``rchar`` and
``wchar`` of /proc/<pid>/io, printed apart: /proc/<pid>/io counts read(2) and
write(2) and their kin, files and pipes, but not the send(2) and recv(2) that
Dask's TCP connections use, so it alone would miss tiles relayed by the scheduler.

Last, a scaling estimate for N machines from the per-tile costs measured (the
model is printed with it). Nothing is asserted. Outputs go under --workdir (a
temporary directory by default), never into the repository.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_band_calc import EXPRESSION, OUT_NODATA  # noqa: E402
from bench_band_calc import generate_inputs as generate_bands  # noqa: E402
from bench_sieve_morphology import generate_input as generate_classes  # noqa: E402
from harness import (  # noqa: E402
    MIB,
    OtherCpu,
    benchmark_parser,
    clean_workdir,
    clear_output,
    environment,
    free_port,
    logged_process,
    machine,
    machine_load,
    make_workdir,
    rsgrpc_server,
    settle,
)
from process_tree import tree_cpu_seconds, tree_memory  # noqa: E402

from rsgrpc.v1 import (  # noqa: E402
    operation_pb2,
    operation_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

SIEVE_SIZE = 10
START_SECONDS = 120.0  # a scheduler and its workers to start, or a server
JOB_SECONDS = 3600.0  # one job, at most
TOOLS = ("ndvi", "sieve")


# ------------------------------------------------------------------- the processes


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self.workers]


@contextlib.contextmanager
def dask_cluster(workers: int, logs: Path) -> Iterator[Cluster]:
    """A scheduler and `workers` single-threaded workers, by Dask's command line, on
    127.0.0.1; yielded once every worker has joined; in the environment the image gives
    them (`image_environment`)."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    python = [sys.executable, "-m"]
    scheduler_command = python + [
        "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
        "--no-dashboard",
    ]  # fmt: skip
    worker_command = python + [
        "distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--nthreads", "1",
        "--no-nanny", "--no-dashboard",
    ]  # fmt: skip
    with contextlib.ExitStack() as stack:
        stack.enter_context(image_environment())
        scheduler = stack.enter_context(logged_process(scheduler_command, logs / "scheduler.log"))
        started = [
            stack.enter_context(logged_process(worker_command, logs / f"worker{i}.log"))
            for i in range(workers)
        ]
        with Client(address, timeout=START_SECONDS, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=START_SECONDS)
        yield Cluster(address, scheduler, started)


def image_environment() -> contextlib.AbstractContextManager[None]:
    """While active, processes started get the Dask settings the Dockerfile's ENV gives
    `dask worker`: the server's kernel cache folder as numba's, and no Dask profiler."""
    from rsgrpc.server.config import ServerConfig

    folder = os.environ.get("RSGRPC_KERNEL_CACHE_DIR") or ServerConfig().kernel_cache_dir
    return environment(
        NUMBA_CACHE_DIR=str(folder), DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="False"
    )


# --------------------------------------------------------------- what is measured


def io_bytes(pid: int) -> int:
    """rchar + wchar of /proc/<pid>/io: read(2), write(2) and their kin (files, pipes)."""
    with open(f"/proc/{pid}/io") as io:
        fields = dict(line.split(":", 1) for line in io)
    return int(fields["rchar"]) + int(fields["wchar"])


_SOCKET = re.compile(r"^\S+\s+\S+\s+\S+\s+(\S+)\s+(\S+).*\bpid=(\d+),")
_COUNTERS = re.compile(r"\bbytes_(?:sent|received):(\d+)")


def socket_bytes(pid: int) -> dict[tuple[str, str], int]:
    """Bytes each TCP connection of `pid` has sent and received so far, by its local and
    remote address: the kernel's counters, as ``ss -tinp`` reports them."""
    lines = subprocess.run(
        ["ss", "-tinpH"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    found = {}
    for line, info in zip(lines, lines[1:], strict=False):
        match = _SOCKET.match(line)
        if match and int(match.group(3)) == pid:
            found[match.group(1), match.group(2)] = sum(map(int, _COUNTERS.findall(info)))
    return found


class Sampler:
    """While active: every 50 ms, the summed RSS of each group of process trees (its
    peak kept); and every `SOCKET_SECONDS`, for `socket_pid`, its TCP connections'
    counters (so that a connection closed meanwhile counts up to its last reading).
    Each `ss -p` walks every process's descriptors, about 10 ms of CPU here: read every
    50 ms, it took a tenth of the machine from the runs it measured."""

    SOCKET_SECONDS = 0.5

    def __init__(self, groups: dict[str, list[int]], socket_pid: int | None = None) -> None:
        self.groups = groups
        self.peaks = dict.fromkeys(groups, 0)
        self.socket_pid = socket_pid
        self._sockets_before = socket_bytes(socket_pid) if socket_pid else {}
        self._sockets = dict(self._sockets_before)
        self._io_before = io_bytes(socket_pid) if socket_pid else 0
        self.io = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _look(self, *, sockets: bool = True) -> None:
        for name, pids in self.groups.items():
            rss = sum(tree_memory(pid, with_pss=False).rss for pid in pids)
            self.peaks[name] = max(self.peaks[name], rss)
        if self.socket_pid and sockets:
            for key, count in socket_bytes(self.socket_pid).items():
                self._sockets[key] = max(count, self._sockets.get(key, 0))

    def _run(self) -> None:
        sockets_read = time.monotonic()
        while not self._stop.wait(0.05):
            due = time.monotonic() - sockets_read >= self.SOCKET_SECONDS
            self._look(sockets=due)
            if due:
                sockets_read = time.monotonic()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._look()
        if self.socket_pid:
            self.io = io_bytes(self.socket_pid) - self._io_before

    @property
    def socket_bytes(self) -> int:
        return sum(n - self._sockets_before.get(k, 0) for k, n in self._sockets.items())


# ----------------------------------------------------------------------------- jobs


@contextlib.contextmanager
def session_of(channel: grpc.Channel, processes: int, ram_mib: int) -> Iterator[str]:
    """A session of `processes` processes and `ram_mib` MiB, deleted at the end."""
    session = session_pb2.Session(process_count=processes, available_ram_mib=ram_mib)
    stub = session_pb2_grpc.SessionServiceStub(channel)
    request = session_pb2.CreateSessionRequest(session=session)
    name = stub.CreateSession(request, timeout=START_SECONDS).name
    try:
        yield name
    finally:
        stub.DeleteSession(session_pb2.DeleteSessionRequest(name=name), timeout=START_SECONDS)


def run_job(channel: grpc.Channel, session: str, tool: str, inputs: dict, output: str) -> int:
    """One NDVI or sieve, to its end; returns its tiles (the sieve's count each twice)."""
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    if tool == "ndvi":
        request = raster_pb2.BandCalcRequest(
            session=session,
            expression=EXPRESSION,
            inputs=[raster_pb2.RasterInput(name=n, path=inputs[n]) for n in ("red", "nir")],
            output_path=output,
            overwrite=True,
            output_data_type=raster_pb2.DATA_TYPE_FLOAT32,
            output_nodata=OUT_NODATA,
        )
        operation = stub.BandCalc(request, timeout=START_SECONDS)
    else:
        request = raster_pb2.SieveRequest(
            session=session,
            inputs=[raster_pb2.RasterBand(path=inputs["classes"])],
            size=SIEVE_SIZE,
            connectivity=raster_pb2.CONNECTIVITY_4,
            output=raster_pb2.ToolOutput(path=output),
        )
        operation = stub.Sieve(request, timeout=START_SECONDS)
    if not operation.done:
        watch = operation_pb2_grpc.OperationWatchServiceStub(channel)
        name = operation_pb2.WatchOperationRequest(name=operation.name)
        *_, operation = watch.WatchOperation(name, timeout=JOB_SECONDS)
    if operation.HasField("error"):
        raise RuntimeError(f"{tool} failed: {operation.error}")
    metadata = operation_pb2.OperationMetadata()
    operation.metadata.Unpack(metadata)
    return metadata.tiles_total


@dataclass
class Run:
    """One configuration's best timed run of one tool."""

    label: str
    tool: str
    workers: int
    seconds: float = float("inf")
    cpu: dict[str, float] = field(default_factory=dict)  # of the best run, by side
    all_seconds: list[float] = field(default_factory=list)
    tiles: int = 0
    output_bytes: int = 0
    scheduler_sockets: int | None = None  # summed over the timed runs
    scheduler_io: int | None = None
    peaks: dict[str, int] = field(default_factory=dict)

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu.values())


def measure(
    label: str,
    channel: grpc.Channel,
    session: str,
    tool: str,
    inputs: dict,
    outputs: Path,
    sides: dict[str, list[int]],
    scheduler_pid: int | None,
    repeats: int,
    workers: int,
) -> Run:
    """The tool once to load the kernels, --repeats timed runs (the best kept, the
    scheduler's bytes summed over all of them), then one more for peak memory."""
    name = f"{label.replace(' ', '_')}_{tool}.tif"
    path, out_file = f"outputs/{name}", outputs / name
    run = Run(label, tool, workers)
    run_job(channel, session, tool, inputs, path)
    sockets = io = 0
    for _ in range(repeats):
        clear_output(out_file)
        cpu = {side: sum(tree_cpu_seconds(p) for p in pids) for side, pids in sides.items()}
        with Sampler({}, scheduler_pid) as sampler:
            started = time.perf_counter()
            tiles = run_job(channel, session, tool, inputs, path)
            seconds = time.perf_counter() - started
        sockets, io = sockets + sampler.socket_bytes, io + sampler.io
        run.all_seconds.append(seconds)
        if seconds < run.seconds:
            run.seconds, run.tiles = seconds, tiles
            run.cpu = {
                side: sum(tree_cpu_seconds(p) for p in pids) - cpu[side]
                for side, pids in sides.items()
            }
        settle()
    run.output_bytes = out_file.stat().st_size
    if scheduler_pid:
        run.scheduler_sockets, run.scheduler_io = sockets, io
    clear_output(out_file)
    with Sampler(sides) as sampler:
        run_job(channel, session, tool, inputs, path)
    run.peaks = sampler.peaks
    settle()
    return run


# ---------------------------------------------------------------------------- report


def _cpu(run: Run) -> str:
    return ", ".join(f"{side} {seconds:.2f}" for side, seconds in run.cpu.items())


def report_run(run: Run, local: Run | None) -> None:
    seconds = ", ".join(f"{s:.2f}" for s in run.all_seconds)
    print(f"  {run.label:<8} {run.seconds:7.2f} s wall   {run.total_cpu:7.2f} CPU s ({_cpu(run)})")
    print(
        f"           runs: {seconds} s; {run.tiles} tiles; output {run.output_bytes / MIB:.1f} MiB"
    )
    if local is not None:
        print(
            f"           dask/local ({local.label}): wall {run.seconds / local.seconds:.2f}x, "
            f"CPU {run.total_cpu / local.total_cpu:.2f}x"
        )
    if run.scheduler_sockets is not None:
        output = run.output_bytes * len(run.all_seconds)
        moved = run.scheduler_sockets + (run.scheduler_io or 0)
        print(
            f"           scheduler moved {moved / 1024:.1f} KiB over {len(run.all_seconds)} runs "
            f"(TCP {run.scheduler_sockets / 1024:.1f} KiB, /proc io "
            f"{(run.scheduler_io or 0) / 1024:.1f} KiB): {100 * moved / output:.3f} % of the "
            "output bytes written"
        )
    peaks = ", ".join(f"{side} {peak / MIB:.0f} MiB" for side, peak in run.peaks.items())
    print(f"           peak RSS: {peaks}")


def report_scaling(run: Run, link_gbps: float, per_machine: int) -> None:
    """The estimate for N machines, from the per-tile costs of a Dask run."""
    tiles = max(1, run.tiles)
    worker_tile = run.cpu.get("dask workers", 0.0) / tiles
    server_tile = run.cpu.get("server", 0.0) / tiles
    scheduler_tile = run.cpu.get("scheduler", 0.0) / tiles
    link_tile = run.output_bytes / tiles / (link_gbps * 1e9 / 8)
    serial = max(server_tile, scheduler_tile, link_tile)
    fixed = max(0.0, run.seconds - max(tiles * worker_tile / run.workers, tiles * serial))
    print(
        f"  {run.tool}: {tiles} tiles; per tile, the workers {1000 * worker_tile:.1f} ms of CPU, "
        f"the server {1000 * server_tile:.1f} ms, the scheduler {1000 * scheduler_tile:.2f} ms, "
        f"its output over {link_gbps:g} Gbit/s {1000 * link_tile:.1f} ms; fixed {fixed:.2f} s"
    )
    cells = []
    for machines in (1, 2, 4, 8, 16, 32):
        wall = fixed + max(tiles * worker_tile / (machines * per_machine), tiles * serial)
        cells.append(f"{machines}: {wall:.2f} s")
    print(f"    N machines of {per_machine} workers -> " + ", ".join(cells))


MODEL = """\
Model of the scaling estimate, from the dask 2 run: every tile's work runs on some
worker, and every tile passes through the one server (which receives its encoded blocks
from the worker and writes them) and costs the scheduler its control messages; so for
N machines of W single-threaded workers each,
    wall(N) = fixed + max(T * worker / (N * W), T * max(server, scheduler, link))
with T the job's tiles (the sieve counts each tile twice: its pass on a worker, and its
last pass, which runs in the server), `worker`, `server` and `scheduler` their CPU
seconds per tile, `link` a tile's output bytes over the server's link (--link-gbps),
and `fixed` what the run took beyond both terms on its 2 workers (planning, the first
and last tile, finishing the file). It assumes that every worker reads its inputs as
fast as here (shared storage that keeps up), as many tiles as here, and no other
bottleneck; past the N where the second term wins, more machines do not help."""


def run_local(workdir: Path, outputs: Path, inputs: dict, logs: Path, args) -> dict:
    """Every tool on local workers, in sessions of 1 and of 2 processes."""
    runs = {}
    with (
        rsgrpc_server(workdir, logs / "local.log") as (address, server),
        grpc.insecure_channel(address) as channel,
    ):
        for processes in (1, 2):
            label = f"local {processes}"
            with session_of(channel, processes, args.ram) as session:
                for tool in TOOLS:
                    runs[label, tool] = measure(
                        label, channel, session, tool, inputs, outputs,
                        {"server": [server.pid]}, None, args.repeats, processes,
                    )  # fmt: skip
    return runs


def run_dask(workers: int, workdir: Path, outputs: Path, inputs: dict, logs: Path, args) -> dict:
    """Every tool on a cluster of `workers` workers, in a session of as many processes."""
    runs = {}
    label = f"dask {workers}"
    with (
        dask_cluster(workers, logs) as cluster,
        rsgrpc_server(
            workdir, logs / f"dask{workers}.log", flags=("--dask-scheduler", cluster.address)
        ) as (address, server),
        grpc.insecure_channel(address) as channel,
    ):
        sides = {
            "server": [server.pid],
            "scheduler": [cluster.scheduler.pid],
            "dask workers": cluster.worker_pids,
        }
        with session_of(channel, workers, args.ram) as session:
            for tool in TOOLS:
                runs[label, tool] = measure(
                    label, channel, session, tool, inputs, outputs, sides,
                    cluster.scheduler.pid, args.repeats, workers,
                )  # fmt: skip
    return runs


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--ram", type=int, default=2048, help="each session's available_ram_mib")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument(
        "--link-gbps", type=float, default=10.0, help="the server's link, for the scaling model"
    )
    parser.add_argument(
        "--workers-per-machine",
        type=int,
        default=os.cpu_count() or 1,
        help="Dask workers per machine in the scaling model (default: this machine's CPUs)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args()
    if shutil.which("ss") is None:
        sys.exit("needs `ss` (iproute2) to read the scheduler's TCP byte counters")
    temporary = args.workdir is None
    workdir, outputs = make_workdir(args.workdir)
    others = OtherCpu()
    print(machine())
    print(machine_load())
    red, nir, made = generate_bands(workdir, args.size)
    classes, _, made_classes = generate_classes(workdir, args.size)
    print(f"inputs {args.size} x {args.size} in {workdir} (made in {made + made_classes:.1f} s)")
    inputs = {"red": red.name, "nir": nir.name, "classes": classes.name}
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    runs: dict[tuple[str, str], Run] = {}
    try:
        runs.update(run_local(workdir, outputs, inputs, logs, args))
        for workers in (1, 2):
            runs.update(run_dask(workers, workdir, outputs, inputs, logs, args))
        print()
        print(
            "A local session of 1 process gives it every core's threads; a Dask worker has 1"
            " thread. Local peaks count the server's whole tree, spare workers included."
        )
        for tool in TOOLS:
            print(f"{tool} ({args.size} x {args.size}, sessions of {args.ram} MiB):")
            for label in ("local 1", "local 2", "dask 1", "dask 2"):
                local = runs.get((f"local {label[-1]}", tool)) if label.startswith("dask") else None
                report_run(runs[label, tool], local)
        print()
        print(MODEL)
        for tool in TOOLS:
            report_scaling(runs["dask 2", tool], args.link_gbps, args.workers_per_machine)
        print()
        print(machine_load())
        print(others.report())
    finally:
        clean_workdir(workdir, outputs, keep=args.keep, temporary=temporary)


if __name__ == "__main__":
    main()
