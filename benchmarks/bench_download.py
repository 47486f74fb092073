"""Download benchmark: rsgrpc's library, rsgrpc through gRPC and sentinelhub-py, one fake server.

The fake Sentinel Hub deployment lives in ``tests/download/fake_sentinelhub.py`` (shared with
the tests) and runs in this process on 127.0.0.1, a new one for each run so that its counts
(429 answers) are the run's own. Every client runs in a child process of its own
(multiprocessing's spawn), so that its peak resident memory is its own:

- "library": ``rsgrpc.download.SentinelHubDownloadClient`` in the child;
- "gRPC": a real ``rsgrpc serve`` subprocess on 127.0.0.1, given a deployments file naming
  the fake hub (a new cache folder and data root each run, so nothing comes from a cache),
  and ``rsgrpc.client.Session.download`` in the child (its session made, and the server
  let settle, before the clock starts, as the library's client is made before its own);
  its peak is the server's (VmHWM) plus the client's;
- "sentinelhub-py": sentinelhub-py's ``SentinelHubDownloadClient`` in the child.

Every client saves each answer to disk, as the server does (a new folder each run), and
runs the same number of threads. The configurations:

1. no limit on the server, 50 ms latency per answer, small JSON answers: 500 and 2,000
   requests; gRPC / library time (aim <= 1.1) and library / sentinelhub-py throughput;
2. the server limits the account to 50 requests a second (a bucket of 10), the clients keep
   to 50 a second (burst 1): 500 and 2,000 requests; time against N / 50 s (aim <= 1.05)
   and 429s (aim 0);
3. 20 answers of 50 MB on 4 threads: time, MB/s and peak memory;
4. two processes, each a library client of the same deployment with 250 requests, under
   the server's 50 a second: with a shared limit folder (combined time against 500 / 50 s,
   aim <= 1.05; 429s, aim 0), then without one, to show the difference;

then a summary, each aim beside its measured value on a line.

sentinelhub-py paces itself: one request every 50 ms at most with its default
``number_of_download_processes = 1``, whatever the threads, so it runs at 20 requests a second
at most; its figures are a reference.

Run: ``python benchmarks/bench_download.py [--quick]`` (``--quick``: a tenth of the requests).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Only the standard library at the top: each child imports just what its client needs.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "download"))

THREADS = 32
LATENCY_S = 0.05
RATE = 50  # requests a second, on the server and in the clients' deployment
SERVER_BUCKET = 10
LARGE_COUNT = 20
LARGE_SIZE = 50_000_000
LARGE_THREADS = 4
SHARED_EACH = 250
DEPLOYMENT = "fake-hub"
PROCESS_URI = "api/v1/process"
CHILD_TIMEOUT_S = 900.0
TEMP_PREFIX = "rsgrpc-bench-download-"
MB = 1_000_000
MIB = 1 << 20

# Quick retries, as the download tests use, for every rsgrpc client.
RETRY = {
    "max_attempts": 4,
    "backoff_base_seconds": 0.01,
    "backoff_max_seconds": 0.05,
    "max_rate_limit_retries": 50,
}
EXTENSIONS = {"json": "json", "large_tiff": "tif"}
DATA_TYPES = {"json": "json", "large_tiff": "tiff"}


# ------------------------------------------------------------------------ what is run


@dataclass(frozen=True)
class Hub:
    """Where the fake hub answers (picklable, for the children)."""

    base_url: str
    token_url: str
    process_url: str


@dataclass(frozen=True)
class Job:
    """A batch: ``count`` requests for answers of ``kind`` (and ``size`` bytes for large ones),
    on ``threads`` threads; ``paced`` clients keep to RATE a second (burst 1)."""

    count: int
    kind: str = "json"
    size: int = 0
    threads: int = THREADS
    paced: bool = False
    first: int = 0  # the first request's number, so that two processes ask different things

    def body(self, index: int) -> dict[str, Any]:
        body: dict[str, Any] = {"id": f"r{self.first + index}", "format": self.kind}
        if self.size:
            body["size"] = self.size
        return body

    def output_name(self, index: int) -> str:
        return f"r{self.first + index}.{EXTENSIONS[self.kind]}"


def deployment_settings(hub: Hub, job: Job, shared_limit_dir: str | None = None) -> dict:
    """The deployment every rsgrpc client of ``job`` uses, as the deployments file's fields
    (without the retry table)."""
    from fake_sentinelhub import CLIENT_ID, CLIENT_SECRET

    settings: dict[str, Any] = {
        "base_url": hub.base_url,
        "token_url": hub.token_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "max_threads": job.threads,
        "pool_connections": job.threads,
        "connect_timeout_seconds": 5.0,
        "read_timeout_seconds": 30.0,
        "token_timeout_seconds": 10.0,
    }
    if job.paced:
        settings.update(requests_per_second=float(RATE), burst=1)
    if shared_limit_dir is not None:
        settings["shared_limit_dir"] = shared_limit_dir
    return settings


def deployments_file(settings: dict, cache_dir: Path) -> str:
    """The TOML deployments file of `rsgrpc serve` for one deployment."""
    lines = [f"cache_dir = {json.dumps(str(cache_dir))}", "", f"[deployments.{DEPLOYMENT}]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    lines += ["", f"[deployments.{DEPLOYMENT}.retry]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in RETRY.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Result:
    """One client's run: wall seconds, 429s the hub saw, failed requests, peak RSS (bytes)
    of the process that downloaded, and for gRPC the client's beside the server's."""

    client: str
    requests: int
    seconds: float
    rate_limited: int
    failures: int
    peak_rss: int
    client_peak_rss: int | None = None
    server_start_rss: int = 0
    megabytes: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def line(self) -> str:
        text = (
            f"  {self.client:<20} {self.requests:6d} {self.seconds:8.2f} s "
            f"{self.per_second:8.1f} req/s {self.rate_limited:6d} x429 {self.failures:5d} failed "
            f"  peak RSS {self.peak_rss / MIB:6.0f} MiB"
        )
        if self.client_peak_rss is not None:
            text += (
                f" (server, {self.server_start_rss / MIB:.0f} MiB at start) "
                f"+ {self.client_peak_rss / MIB:.0f} MiB (client)"
            )
        if self.megabytes:
            text += f"  {self.megabytes / self.seconds:7.1f} MB/s"
        return text + "".join(f"\n      {note}" for note in self.notes)


# -------------------------------------------------------------------- child processes


def peak_rss_self() -> int:
    """This process's high-water mark of resident memory (VmHWM: unlike ru_maxrss, not
    inherited from the parent that forked it), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_of(pid: int, field: str = "VmHWM") -> int:
    """``field`` of /proc/PID/status (VmHWM: the peak resident memory; VmRSS: now), in
    bytes (0 if it cannot be read)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _child_main(queue: Any, index: int, start: Any, target: Callable, args: tuple) -> None:
    warnings.simplefilter("ignore")
    try:
        queue.put((index, target(start, *args), None))
    except BaseException:  # reported to the parent, which raises it
        queue.put((index, None, traceback.format_exc()))


def run_children(target: Callable, arguments: Sequence[tuple]) -> list[dict]:
    """Run ``target(start, *args)`` for each tuple of ``arguments`` at once, each in a new
    interpreter; ``start`` is a barrier they all pass when set up, just before their clocks
    start. Returns their values in order; raises if one failed. The children are ended
    whatever happens (Ctrl-C included)."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(arguments))
    queue = context.Queue()
    children = [
        context.Process(target=_child_main, args=(queue, index, start, target, args), daemon=True)
        for index, args in enumerate(arguments)
    ]
    values: list[dict] = [{}] * len(arguments)
    try:
        for child in children:
            child.start()
        for _ in children:
            index, value, error = queue.get(timeout=CHILD_TIMEOUT_S)
            if error is not None:
                raise RuntimeError(f"child {index} failed:\n{error}")
            values[index] = value
        for child in children:
            child.join(timeout=60)
    finally:
        for child in children:
            if child.is_alive():
                child.terminate()
                child.join(timeout=10)
        queue.close()
    return values


def library_child(start: Any, hub: Hub, job: Job, settings: dict, folder: str) -> dict:
    """rsgrpc's library in this process: each answer checked and saved under ``folder``
    (not returned, as the server asks for them)."""
    from rsgrpc.download import (
        Deployment,
        DownloadRequest,
        MimeType,
        RetryPolicy,
        SentinelHubDownloadClient,
    )

    data_type = MimeType.TIFF if job.kind == "large_tiff" else MimeType.JSON
    requests_ = [
        DownloadRequest(
            url=hub.process_url,
            request_type="POST",
            post_values=job.body(i),
            headers={"Content-Type": "application/json"},
            use_session=True,
            data_type=data_type,
            save_response=True,
            data_folder=folder,
            return_data=False,
        )
        for i in range(job.count)
    ]
    deployment = Deployment(name=DEPLOYMENT, retry=RetryPolicy(**RETRY), **settings)
    with SentinelHubDownloadClient(deployment=deployment) as client:
        start.wait()
        started = time.monotonic()
        results = client.download_results(requests_, max_threads=job.threads)
        ended = time.monotonic()
    peak = peak_rss_self()
    return {
        "started": started,
        "ended": ended,
        "failures": sum(not result.ok or result.cache_hit for result in results),
        "peak_rss": peak,
    }


def sentinelhub_child(start: Any, hub: Hub, job: Job, folder: str) -> dict:
    """sentinelhub-py's client in this process, saving each answer under ``folder`` and
    returning it undecoded (it keeps answers in memory whatever it is asked), with its
    default pacing (see the module's docstring)."""
    os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"
    from fake_sentinelhub import CLIENT_ID, CLIENT_SECRET
    from sentinelhub import DownloadRequest, MimeType, SentinelHubDownloadClient, SHConfig

    config = SHConfig(
        sh_client_id=CLIENT_ID,
        sh_client_secret=CLIENT_SECRET,
        sh_base_url=hub.base_url,
        sh_token_url=hub.token_url,
        use_defaults=True,
    )
    data_type = MimeType.TIFF if job.kind == "large_tiff" else MimeType.JSON
    requests_ = [
        DownloadRequest(
            url=hub.process_url,
            request_type="POST",
            post_values=job.body(i),
            headers={"Content-Type": "application/json"},
            use_session=True,
            data_type=data_type,
            save_response=True,
            data_folder=folder,
        )
        for i in range(job.count)
    ]
    client = SentinelHubDownloadClient(config=config, raise_download_errors=False)
    start.wait()
    started = time.monotonic()
    answers = client.download(requests_, max_threads=job.threads, decode_data=False)
    ended = time.monotonic()
    peak = peak_rss_self()
    return {
        "started": started,
        "ended": ended,
        "failures": sum(answer is None for answer in answers),
        "peak_rss": peak,
    }


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        used[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += used.get(current, 0.0)
        todo.extend(children.get(current, ()))
    return total


def wait_until_quiet(pid: int, limit: float = 60.0) -> None:
    """Wait until the process tree of ``pid`` has used under 5% of a core for half a
    second (at most ``limit`` seconds): a new session's server-side setup (the spare
    workers it takes are replaced in the background) is not part of a download."""
    deadline = time.monotonic() + limit
    before = tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_cpu_seconds(pid)
        if now - before < 0.025:
            return
        before = now


def grpc_child(start: Any, address: str, server_pid: int, job: Job) -> dict:
    """rsgrpc's Python client in this process, the server downloading into its data root.
    As the library's client is made before its clock starts, so is the session, and the
    server is let settle after it."""
    from rsgrpc.client import Session
    from rsgrpc.v1 import download_pb2

    items = [
        {
            "uri": PROCESS_URI,
            "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "body": job.body(i),
            "data_type": DATA_TYPES[job.kind],
            "output_path": f"out/{job.output_name(i)}",
        }
        for i in range(job.count)
    ]
    # One batch of any size: the client streams it to the server.
    session = Session(n_processes=1, available_ram=1024, target=address)
    try:
        wait_until_quiet(server_pid)
        start.wait()
        started = time.monotonic()
        outputs = [session.download(items, DEPLOYMENT)]
        ended = time.monotonic()
    finally:
        with contextlib.suppress(Exception):
            session.close()
    peak = peak_rss_self()
    succeeded = download_pb2.DownloadItemResult.STATUS_SUCCEEDED
    ok = sum(
        result.status == succeeded and not result.cache_hit
        for output in outputs
        for result in output.extra.get("results", [])
    )
    errors = sorted({str(o.extra.get("error", ""))[:200] for o in outputs if not o.check})
    return {
        "started": started,
        "ended": ended,
        "failures": job.count - ok,
        "peak_rss": peak,
        "errors": errors,
    }


# ---------------------------------------------------------------- runs, from the parent


@contextlib.contextmanager
def fake_hub(**options: Any) -> Iterator[tuple[Any, Hub]]:
    from fake_sentinelhub import FakeSentinelHub

    with FakeSentinelHub(**options) as hub:
        yield hub, Hub(hub.base_url, hub.token_url, hub.process_url)


def hub_options(job: Job) -> dict:
    if job.paced:
        return {"requests_per_second": RATE, "burst": SERVER_BUCKET}
    if job.kind == "json":
        return {"latency": LATENCY_S}
    return {}


def run_library(job: Job, label: str = "library") -> Result:
    with (
        fake_hub(**hub_options(job)) as (hub, where),
        tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as folder,
    ):
        (value,) = run_children(
            library_child, [(where, job, deployment_settings(where, job), folder)]
        )
        return Result(
            label,
            job.count,
            value["ended"] - value["started"],
            hub.stats.rate_limited,
            value["failures"],
            value["peak_rss"],
            megabytes=answer_megabytes(job),
        )


def run_sentinelhub(job: Job) -> Result:
    with (
        fake_hub(**hub_options(job)) as (hub, where),
        tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as folder,
    ):
        (value,) = run_children(sentinelhub_child, [(where, job, folder)])
        return Result(
            "sentinelhub-py",
            job.count,
            value["ended"] - value["started"],
            hub.stats.rate_limited,
            value["failures"],
            value["peak_rss"],
            megabytes=answer_megabytes(job),
        )


def expected_size(job: Job, index: int) -> int:
    from fake_sentinelhub import FakeSentinelHub, large_tiff

    if job.kind == "large_tiff":
        return large_tiff(job.size)[0]
    return len(FakeSentinelHub.body_for(job.body(index))[0])


def answer_megabytes(job: Job) -> float:
    """The MB of the answers to a job of large answers (0 for small ones)."""
    if job.kind != "large_tiff":
        return 0.0
    return sum(expected_size(job, i) for i in range(job.count)) / MB


def missing_outputs(job: Job, out: Path) -> int:
    """Outputs of ``job`` under ``out`` that are absent or not of the answer's size."""
    sizes = {job.output_name(i): expected_size(job, i) for i in range(job.count)}
    missing = 0
    for name, size in sizes.items():
        path = out / name
        if not path.is_file() or path.stat().st_size != size:
            missing += 1
    return missing


def run_grpc(job: Job) -> Result:
    """A new `rsgrpc serve` (new cache folder, new data root) downloading for a client in a
    child process; the outputs are checked afterwards."""
    from harness import environment, rsgrpc_server

    with (
        fake_hub(**hub_options(job)) as (hub, where),
        tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as folder,
    ):
        work = Path(folder)
        data_root = work / "data"
        (data_root / "out").mkdir(parents=True)
        settings_file = work / "deployments.toml"
        settings_file.write_text(deployments_file(deployment_settings(where, job), work / "cache"))
        with (
            environment(RSGRPC_DEPLOYMENTS=str(settings_file)),
            rsgrpc_server(data_root, work / "server.log") as (address, server),
        ):
            server_start = memory_of(server.pid, "VmRSS")
            (value,) = run_children(grpc_child, [(address, server.pid, job)])
            server_peak = memory_of(server.pid)
        wrong = missing_outputs(job, data_root / "out")
        notes = [f"error: {error}" for error in value["errors"]]
        if wrong:
            notes.append(f"{wrong} outputs missing or of the wrong size")
        return Result(
            "gRPC",
            job.count,
            value["ended"] - value["started"],
            hub.stats.rate_limited,
            max(value["failures"], wrong),
            server_peak,
            client_peak_rss=value["peak_rss"],
            server_start_rss=server_start,
            megabytes=answer_megabytes(job),
            notes=notes,
        )


def run_two_processes(job: Job, shared: bool) -> Result:
    """Two library clients of one deployment in two processes at once, each ``job.count``
    requests (different ones), with or without a shared limit folder: their combined time
    (first start to last end) and the 429s the hub saw."""
    with (
        fake_hub(**hub_options(job)) as (hub, where),
        tempfile.TemporaryDirectory(prefix=TEMP_PREFIX) as folder,
    ):
        work = Path(folder)
        shared_dir = str(work / "limits") if shared else None
        if shared_dir is not None:
            os.makedirs(shared_dir)
        arguments = []
        for index in range(2):
            part = replace(job, first=index * job.count)
            out = work / f"out{index}"
            out.mkdir()
            arguments.append((where, part, deployment_settings(where, part, shared_dir), str(out)))
        values = run_children(library_child, arguments)
        seconds = max(v["ended"] for v in values) - min(v["started"] for v in values)
        return Result(
            "2 x library" + (", shared" if shared else ", apart"),
            2 * job.count,
            seconds,
            hub.stats.rate_limited,
            sum(v["failures"] for v in values),
            max(v["peak_rss"] for v in values),
        )


# --------------------------------------------------------------------------- the report


HEADER = "  client               requests   wall s      req/s     429s  failed"


def aim(what: str, value: float, limit: float, unit: str = "x") -> str:
    """A summary line: ``value`` against an aim of at most ``limit``."""
    shown = f"{value:8.3f}{unit}" if unit else f"{value:8.0f} "
    verdict = "met" if value <= limit else "NOT met"
    return f"  {what:<52} {shown}  aim <= {limit:g}: {verdict}"


def figure(what: str, value: str) -> str:
    """A summary line without an aim."""
    return f"  {what:<52} {value}"


def unpaced(counts: Sequence[int], summary: list[str]) -> None:
    print(
        f"\n1. no limit, small JSON answers each delayed {1e3 * LATENCY_S:.0f} ms, "
        f"{THREADS} threads"
    )
    print(HEADER)
    for count in counts:
        job = Job(count)
        results = run_library(job), run_grpc(job), run_sentinelhub(job)
        for result in results:
            print(result.line())
        library, grpc, theirs = results
        ratio = grpc.seconds / library.seconds
        throughput = library.per_second / theirs.per_second
        print(
            f"  {count} requests: gRPC / library time {ratio:.3f}x; "
            f"library / sentinelhub-py throughput {throughput:.2f}x"
        )
        summary.append(aim(f"1. unpaced {count}: gRPC / library time", ratio, 1.1))
        summary.append(
            figure(
                f"1. unpaced {count}: library / sentinelhub-py throughput", f"{throughput:8.2f}x"
            )
        )
        for result in results:
            summary.append(
                aim(f"1. unpaced {count}: {result.client} failures", result.failures, 0, "")
            )


def paced(counts: Sequence[int], summary: list[str]) -> None:
    print(
        f"\n2. server limit {RATE} req/s (bucket {SERVER_BUCKET}); rsgrpc clients keep to "
        f"{RATE} req/s (burst 1); small JSON answers, {THREADS} threads"
    )
    print(HEADER)
    for count in counts:
        job = Job(count, paced=True)
        ideal = count / RATE
        for result in (run_library(job), run_grpc(job), run_sentinelhub(job)):
            ratio = result.seconds / ideal
            print(result.line() + f"   {ratio:.3f}x ideal {ideal:.0f} s")
            what = f"2. paced {count}: {result.client}"
            if result.client == "sentinelhub-py":  # no pacing of its own: for reference
                summary.append(
                    figure(
                        what + " time / ideal, 429s",
                        f"{ratio:8.3f}x  {result.rate_limited} x429 (reference, no aim)",
                    )
                )
                continue
            summary.append(aim(what + " time / ideal", ratio, 1.05))
            summary.append(aim(what + " 429s", result.rate_limited, 0, ""))


def large(count: int, summary: list[str]) -> None:
    print(
        f"\n3. {count} answers of about {LARGE_SIZE / MB:.0f} MB (uncompressed GeoTIFFs), "
        f"{LARGE_THREADS} threads, each saved to disk"
    )
    print(HEADER)
    job = Job(count, kind="large_tiff", size=LARGE_SIZE, threads=LARGE_THREADS)
    for result in (run_library(job), run_grpc(job), run_sentinelhub(job)):
        print(result.line())
        peak = f"{result.peak_rss / MIB:.0f} MiB"
        if result.client_peak_rss is not None:
            peak += f" server + {result.client_peak_rss / MIB:.0f} MiB client"
        summary.append(
            figure(
                f"3. large: {result.client}",
                f"{result.seconds:8.2f} s, {result.megabytes / result.seconds:.0f} MB/s, "
                f"peak RSS {peak}",
            )
        )
        summary.append(aim(f"3. large: {result.client} failures", result.failures, 0, ""))


def two_processes(each: int, summary: list[str]) -> None:
    ideal = 2 * each / RATE
    print(
        f"\n4. two processes, each a library client of one deployment ({RATE} req/s, burst 1) "
        f"with {each} requests; server limit {RATE} req/s (bucket {SERVER_BUCKET}); "
        f"ideal {ideal:.0f} s"
    )
    print(HEADER)
    job = Job(each, paced=True)
    shared = run_two_processes(job, shared=True)
    apart = run_two_processes(job, shared=False)
    for result in (shared, apart):
        print(result.line() + f"   {result.seconds / ideal:.3f}x ideal")
    summary.append(
        aim("4. two processes, shared limit: time / ideal", shared.seconds / ideal, 1.05)
    )
    summary.append(aim("4. two processes, shared limit: 429s", shared.rate_limited, 0, ""))
    summary.append(
        figure(
            "4. two processes, no shared folder: time / ideal, 429s",
            f"{apart.seconds / ideal:8.3f}x  {apart.rate_limited} x429, {apart.failures} failed",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the requests")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    warnings.simplefilter("ignore")
    # SIGTERM ends the run as Ctrl-C does: through every `finally`, so that the server,
    # the children and the temporary folders go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import grpc
    import sentinelhub
    from harness import machine, machine_load

    # The server: a spare worker and one per session (two when a batch is split).
    os.environ.update(
        RSGRPC_MAX_PROCESSES="4", RSGRPC_DEFAULT_PROCESS_COUNT="1", RSGRPC_GRACE_PERIOD_S="5"
    )
    print(machine(grpcio=grpc.__version__, sentinelhub=sentinelhub.__version__))
    print(machine_load())
    print(
        "each client in its own process; peak RSS: VmHWM of the downloading process "
        "(for gRPC, `rsgrpc serve` and the client); every answer saved to disk"
    )
    summary: list[str] = []
    started = time.monotonic()
    unpaced([500 // scale, 2000 // scale], summary)
    paced([500 // scale, 2000 // scale], summary)
    large(LARGE_COUNT // scale, summary)
    two_processes(SHARED_EACH // scale, summary)

    print(f"\nsummary ({time.monotonic() - started:.0f} s in all)")
    for line in summary:
        print(line)
    print(machine_load())


if __name__ == "__main__":
    main()
