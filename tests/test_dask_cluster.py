"""Tiles on real Dask clusters, through a real gRPC channel: outputs equal to local
workers', results that never pass through the scheduler, a session's process_count
bounding its tasks on a larger cluster, and a worker killed during a job.

Two clusters: a `distributed.LocalCluster` of two worker processes, and a scheduler and
two workers started as processes by Dask's command line, as a deployment runs them.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import field_mask_pb2
from google.rpc import code_pb2

from rsgrpc.engine.tiles import CLUSTER_TILE_EDGE, LOCAL_TILE_EDGE
from rsgrpc.v1 import (
    operation_pb2,
    operation_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from tests.conftest import (
    free_port,
    make_config,
    module_process,
    operation_metadata,
    serving,
    write_geotiff,
    write_speckled_classes,
)

distributed = pytest.importorskip("distributed")

# Bound of every wait: a cluster to start, a job to end, a process to be gone.
_WAIT_SECONDS = 60
_EDGE = 2048
# Small enough that each job takes several tiles: local workers count their own memory
# in a session's budget, a cluster's workers do not.
_RAM_MIB = 320
_LOCAL_RAM_MIB = 600
_NDVI = '("nir" - "red") / ("nir" + "red")'
_TOOLS = ("ndvi", "sieve", "dilate", "erode")


def _write_inputs(root: Path) -> None:
    """Red and nir bands of noise (an NDVI of several MB whatever its codec) and a class
    raster with speckle, each _EDGE pixels square."""
    rng = np.random.default_rng(5)
    for name in ("red", "nir"):
        band = rng.integers(1, 10000, (_EDGE, _EDGE), dtype=np.uint16)
        write_geotiff(root / f"{name}.tif", band, nodata=0)
    write_speckled_classes(
        root / "classes.tif", seed=6, grid=(64, 64), block=32, classes=5, speckle=6, density=0.1
    )


def _classes() -> list[raster_pb2.RasterBand]:
    return [raster_pb2.RasterBand(path="classes.tif")]


def _start(channel: grpc.Channel, session: str, tool: str, output: str) -> lro.Operation:
    """Start one of _TOOLS on the inputs of `_write_inputs`, into `output`."""
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    to = raster_pb2.ToolOutput(path=output)
    if tool == "ndvi":
        inputs = [raster_pb2.RasterInput(name=n, path=f"{n}.tif") for n in ("red", "nir")]
        request = raster_pb2.BandCalcRequest(
            session=session, expression=_NDVI, inputs=inputs, output_path=output, overwrite=True
        )
        return stub.BandCalc(request, timeout=_WAIT_SECONDS)
    if tool == "sieve":
        request = raster_pb2.SieveRequest(
            session=session,
            inputs=_classes(),
            size=12,
            connectivity=raster_pb2.CONNECTIVITY_8,
            output=to,
        )
        return stub.Sieve(request, timeout=_WAIT_SECONDS)
    if tool == "dilate":
        parameters = raster_pb2.MorphologyParameters(value_list=[2, 4], size=2)
        request = raster_pb2.DilateRequest(
            session=session, inputs=_classes(), parameters=parameters, output=to
        )
        return stub.Dilate(request, timeout=_WAIT_SECONDS)
    parameters = raster_pb2.MorphologyParameters(value_list=[1, 3], size=2)
    request = raster_pb2.ErodeRequest(
        session=session, inputs=_classes(), parameters=parameters, output=to
    )
    return stub.Erode(request, timeout=_WAIT_SECONDS)


def _updates(channel: grpc.Channel, operation: lro.Operation) -> Iterator[lro.Operation]:
    """The operation's updates until it is done, within _WAIT_SECONDS."""
    if operation.done:
        yield operation
        return
    stub = operation_pb2_grpc.OperationWatchServiceStub(channel)
    request = operation_pb2.WatchOperationRequest(name=operation.name)
    yield from stub.WatchOperation(request, timeout=_WAIT_SECONDS)


def _finish(channel: grpc.Channel, operation: lro.Operation) -> lro.Operation:
    """The finished operation, asserting that it succeeded."""
    *_, last = _updates(channel, operation)
    assert last.done and not last.HasField("error"), last.error
    return last


def _run(channel: grpc.Channel, session: str, tool: str, output: str) -> int:
    """Run a tool to its end; returns how many tiles it took."""
    return operation_metadata(_finish(channel, _start(channel, session, tool, output))).tiles_total


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _create_session(channel: grpc.Channel, process_count: int, ram_mib: int = _RAM_MIB) -> str:
    session = session_pb2.Session(process_count=process_count, available_ram_mib=ram_mib)
    stub = session_pb2_grpc.SessionServiceStub(channel)
    return stub.CreateSession(
        session_pb2.CreateSessionRequest(session=session), timeout=_WAIT_SECONDS
    ).name


def _run_every_tool(channel: grpc.Channel, session: str, root: Path, folder: str) -> dict:
    """Each of _TOOLS into `folder`: {tool: (its output's pixels, its tiles)}."""
    outputs = {}
    for tool in _TOOLS:
        tiles = _run(channel, session, tool, f"{folder}/{tool}.tif")
        outputs[tool] = _read(root / folder / f"{tool}.tif"), tiles
    return outputs


@pytest.fixture(scope="module")
def local_outputs(tmp_path_factory) -> dict:
    """Every tool's output on the local executor: the reference."""
    with serving(make_config(tmp_path_factory.mktemp("local"))) as (running, channel):
        root = running.data_root.root
        _write_inputs(root)
        session = _create_session(channel, 2, _LOCAL_RAM_MIB)
        return _run_every_tool(channel, session, root, "local")


# ------------------------------------------------------------------------ clusters


class CliCluster:
    """A scheduler and workers started by Dask's command line, on 127.0.0.1."""

    def __init__(self, address: str, scheduler: subprocess.Popen, workers: list) -> None:
        self.address = address
        self.scheduler = scheduler
        self.workers = workers


def _wait_for_workers(address: str, count: int) -> None:
    with distributed.Client(address, timeout=_WAIT_SECONDS, set_as_default=False) as client:
        client.wait_for_workers(count, timeout=_WAIT_SECONDS)


@contextlib.contextmanager
def _cli_cluster(workers: int) -> Iterator[CliCluster]:
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler_args = ("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port))
    worker_args = (
        "distributed.cli.dask_worker", address, "--host", "127.0.0.1", "--no-nanny",
        "--nthreads", "1", "--no-dashboard",
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        scheduler = stack.enter_context(module_process(*scheduler_args, "--no-dashboard"))
        started = [stack.enter_context(module_process(*worker_args)) for _ in range(workers)]
        _wait_for_workers(address, workers)
        yield CliCluster(address, scheduler, started)


@pytest.fixture(scope="module")
def cli_cluster() -> Iterator[CliCluster]:
    with _cli_cluster(2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[str]:
    cluster = distributed.LocalCluster(
        processes=True,
        n_workers=2,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address=None,
    )
    try:
        _wait_for_workers(cluster.scheduler_address, 2)
        yield cluster.scheduler_address
    finally:
        cluster.close(timeout=_WAIT_SECONDS)


@contextlib.contextmanager
def _dask_server(tmp_path: Path, address: str) -> Iterator[tuple[Path, grpc.Channel]]:
    """A server whose tiles run on the cluster at `address`, with the inputs written."""
    with serving(make_config(tmp_path, dask_scheduler=address)) as (running, channel):
        root = running.data_root.root
        _write_inputs(root)
        yield root, channel


# --------------------------------------------------------------------------- tests


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cluster", ["local_cluster", "cli_cluster"])
def test_every_tool_on_dask_equals_the_local_executor(cluster, local_outputs, request, tmp_path):
    target = request.getfixturevalue(cluster)
    address = getattr(target, "address", target)  # a CliCluster, or the address itself
    with _dask_server(tmp_path, address) as (root, channel):
        session = _create_session(channel, 2)
        outputs = _run_every_tool(channel, session, root, "dask")
    for tool in _TOOLS:
        (got, tiles), (expected, local_tiles) = outputs[tool], local_outputs[tool]
        assert tiles > 1 and local_tiles > 1, (tool, tiles, local_tiles)
        np.testing.assert_array_equal(got, expected, err_msg=tool)

    # Each worker that ran tiles was set up as a local worker is: freed memory kept
    # between tiles, inputs kept open by the thread that runs them, and fused band-calc
    # kernels compiled in the background (without them, every expression ran as its block
    # program). (Defined here, the check travels by value to workers that cannot import
    # this module.)
    def set_up_as_a_local_worker() -> bool:
        from rsgrpc_kernels import bandcalc

        from rsgrpc.engine import raster_io, worker_heap

        return (
            worker_heap._keeper is not None
            and raster_io._open_inputs_thread is not None
            and bandcalc._COMPILER._thread is not None
        )

    with distributed.Client(address, timeout=_WAIT_SECONDS, set_as_default=False) as client:
        assert set(client.run(set_up_as_a_local_worker).values()) == {True}


def _io_bytes(pid: int) -> int:
    """What /proc/<pid>/io counts as read and written: files and pipes (read, write and
    their kin), not sockets' send and recv."""
    with open(f"/proc/{pid}/io") as io:
        fields = dict(line.split(":", 1) for line in io)
    return int(fields["rchar"]) + int(fields["wchar"])


_SOCKET = re.compile(r"^\S+\s+\S+\s+\S+\s+(\S+)\s+(\S+).*\bpid=(\d+),")
_SENT = re.compile(r"\bbytes_sent:(\d+)")
_RECEIVED = re.compile(r"\bbytes_received:(\d+)")


def _socket_bytes(pid: int) -> dict[tuple[str, str], int]:
    """Bytes each TCP connection of `pid` has sent and received so far, by its local and
    remote address (the kernel's counters, as `ss` reports them)."""
    lines = subprocess.run(
        ["ss", "-tinpH"], capture_output=True, text=True, timeout=_WAIT_SECONDS, check=True
    ).stdout.splitlines()
    found = {}
    for line, info in zip(lines, lines[1:], strict=False):
        match = _SOCKET.match(line)
        if match is None or int(match.group(3)) != pid:
            continue
        sent, received = _SENT.search(info), _RECEIVED.search(info)
        found[match.group(1), match.group(2)] = sum(int(m.group(1)) for m in (sent, received) if m)
    return found


class SocketBytes:
    """Bytes a process sends and receives over TCP while active: its connections' counters
    read every 50 ms, so that a connection closed meanwhile counts up to its last reading."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._before = _socket_bytes(pid)
        self._seen = dict(self._before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self._look()

    def _look(self) -> None:
        for key, count in _socket_bytes(self.pid).items():
            self._seen[key] = max(count, self._seen.get(key, 0))

    def __enter__(self) -> SocketBytes:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(_WAIT_SECONDS)
        self._look()

    @property
    def moved(self) -> int:
        return sum(count - self._before.get(key, 0) for key, count in self._seen.items())


@pytest.mark.timeout(300)
def test_tiles_come_from_the_workers_not_through_the_scheduler(cli_cluster, tmp_path):
    if shutil.which("ss") is None:
        pytest.skip("needs `ss` (iproute2) to read the scheduler's TCP byte counters")
    pid = cli_cluster.scheduler.pid
    with _dask_server(tmp_path, cli_cluster.address) as (root, channel):
        session = _create_session(channel, 2)
        _run(channel, session, "ndvi", "warm.tif")  # the workers load the kernels
        io_before = _io_bytes(pid)
        with SocketBytes(pid) as sockets:
            tiles = _run(channel, session, "ndvi", "ndvi.tif")
        moved = sockets.moved + _io_bytes(pid) - io_before
        size = (root / "ndvi.tif").stat().st_size
    assert tiles > 1
    assert size > 4 << 20
    # The scheduler carried each tile's task and its end, never its pixels.
    assert moved < 0.01 * size, f"the scheduler moved {moved} bytes for an output of {size}"


def _most_at_once(records: list[dict]) -> int:
    """The most tasks whose compute spans (from the task stream) overlap."""
    events = []
    for record in records:
        for span in record["startstops"]:
            if span["action"] == "compute":
                events += [(span["start"], 1), (span["stop"], -1)]
    running = most = 0
    for _, step in sorted(events):  # at a tie, an end (-1) sorts before a start
        running += step
        most = max(most, running)
    return most


@pytest.mark.timeout(300)
def test_a_session_of_one_process_runs_one_task_at_a_time_on_two_workers(cli_cluster, tmp_path):
    address = cli_cluster.address
    with (
        _dask_server(tmp_path, address) as (_, channel),
        distributed.Client(address, timeout=_WAIT_SECONDS, set_as_default=False) as observer,
    ):
        session = _create_session(channel, 1)
        _run(channel, session, "ndvi", "warm.tif")
        before = len(observer.get_task_stream())
        tiles = _run(channel, session, "ndvi", "ndvi.tif")
        records = observer.get_task_stream()[before:]
        two = _create_session(channel, 2)
        before = len(observer.get_task_stream())
        _run(channel, two, "ndvi", "ndvi2.tif")
        records_two = observer.get_task_stream()[before:]
    # The cluster could have run them side by side: a session of two used both workers.
    assert {r["worker"] for r in records_two} == _workers(address)
    assert tiles > 2 and len(records) == tiles
    assert _most_at_once(records) == 1


def _workers(address: str) -> set[str]:
    with distributed.Client(address, timeout=_WAIT_SECONDS, set_as_default=False) as client:
        return set(client.scheduler_info(n_workers=-1)["workers"])


@pytest.mark.timeout(300)
def test_a_worker_killed_during_a_job_has_its_tiles_run_again_elsewhere(local_outputs, tmp_path):
    """Dask's scheduler sees the killed worker's connection close and runs its tasks, and
    the results it held, again on the other worker: the job ends done, its output the same
    as local workers' (where a local worker's death fails the job UNAVAILABLE)."""
    with (
        _cli_cluster(2) as cluster,
        _dask_server(tmp_path, cluster.address) as (root, channel),
    ):
        session = _create_session(channel, 2)
        _run(channel, session, "sieve", "warm.tif")
        victim = cluster.workers[0]
        operation = _start(channel, session, "sieve", "sieved.tif")
        killed = False
        for update in _updates(channel, operation):
            metadata = operation_metadata(update)
            if not killed and 1 <= metadata.tiles_done < metadata.tiles_total // 2:
                victim.send_signal(signal.SIGKILL)
                killed = True
        assert killed, "the sieve ended before the worker was killed"
        assert victim.wait(_WAIT_SECONDS) == -signal.SIGKILL
        assert update.done and not update.HasField("error"), update.error
        np.testing.assert_array_equal(_read(root / "sieved.tif"), local_outputs["sieve"][0])
        assert len(_workers(cluster.address)) == 1


@pytest.mark.timeout(300)
def test_a_cancelled_job_ends_as_soon_as_its_tiles_on_the_cluster_are_cancelled(
    local_cluster, tmp_path
):
    """The tiles a cancelled job has on the cluster are cancelled there, and the job ends
    then: well before the bound it would wait for tiles still running (60 s)."""
    with _dask_server(tmp_path, local_cluster) as (root, channel):
        session = _create_session(channel, 2)
        operation = _start(channel, session, "sieve", "cancelled/sieved.tif")
        operations = lro_grpc.OperationsStub(channel)
        operations.CancelOperation(lro.CancelOperationRequest(name=operation.name))
        final = operations.WaitOperation(
            lro.WaitOperationRequest(name=operation.name), timeout=_WAIT_SECONDS / 2
        )
    assert final.done and final.error.code == code_pb2.CANCELLED, final.error
    assert not (root / "cancelled" / "sieved.tif").exists()


def _stop_a_worker_running_a_tile(
    client: distributed.Client, workers: list[subprocess.Popen]
) -> subprocess.Popen:
    """Stop (SIGSTOP) a worker process while the scheduler has a tile of it processing,
    and return it: a stopped worker cannot finish the tile it holds."""
    by_pid = {worker.pid: worker for worker in workers}
    pids = client.run(os.getpid)  # by worker address
    deadline = time.monotonic() + _WAIT_SECONDS
    while time.monotonic() < deadline:
        for address, keys in client.processing().items():
            if not keys:
                continue
            victim = by_pid[pids[address]]
            victim.send_signal(signal.SIGSTOP)
            time.sleep(0.3)  # what it sent before it stopped reaches the scheduler
            if client.processing(workers=[address])[address]:
                return victim
            victim.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    raise AssertionError(f"no worker ran a tile within {_WAIT_SECONDS} s")


@pytest.mark.timeout(300)
def test_a_tile_whose_workers_keep_dying_fails_the_job_unavailable(tmp_path, monkeypatch):
    """Once the workers running a task have died more often than the scheduler's
    `allowed-failures` (here 0: at the first death), Dask gives the task up with
    KilledWorker: the job fails UNAVAILABLE, as when a local worker dies, with no output."""
    monkeypatch.setenv("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", "0")  # the CLI's
    with (
        _cli_cluster(2) as cluster,
        _dask_server(tmp_path, cluster.address) as (root, channel),
        distributed.Client(cluster.address, timeout=_WAIT_SECONDS, set_as_default=False) as client,
    ):
        session = _create_session(channel, 2)
        operation = _start(channel, session, "sieve", "sieved.tif")
        victim = _stop_a_worker_running_a_tile(client, cluster.workers)
        victim.kill()
        assert victim.wait(_WAIT_SECONDS) == -signal.SIGKILL
        *_, last = _updates(channel, operation)
    assert last.done and last.error.code == code_pb2.UNAVAILABLE, last.error
    assert "died" in last.error.message and "Dask" in last.error.message
    assert not (root / "sieved.tif").exists()


@pytest.mark.timeout(300)
def test_a_budget_too_small_for_one_tile_is_refused_on_the_cluster_as_locally(
    local_cluster, tmp_path
):
    """A cluster's workers are not in a session's budget, the tiles in flight are: a
    budget that cannot hold one tile is RESOURCE_EXHAUSTED naming the least that can,
    and that least runs the job."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with _dask_server(tmp_path, local_cluster) as (root, channel):
        session = _create_session(channel, 2, ram_mib=64)
        with pytest.raises(grpc.RpcError) as refused:
            _start(channel, session, "sieve", "small-budget/sieved.tif")
        assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_details_pb2.ErrorInfo()
        assert rpc_status.from_call(refused.value).details[0].Unpack(info)
        minimum = int(info.metadata["minimum_ram_mib"])
        assert minimum > 64 and f"the minimum is {minimum} MiB" in refused.value.details()
        stub = session_pb2_grpc.SessionServiceStub(channel)
        stub.UpdateSession(
            session_pb2.UpdateSessionRequest(
                session=session_pb2.Session(name=session, available_ram_mib=minimum),
                update_mask=field_mask_pb2.FieldMask(paths=["available_ram_mib"]),
            ),
            timeout=_WAIT_SECONDS,
        )
        _finish(channel, _start(channel, session, "sieve", "small-budget/sieved.tif"))
    assert not list((root / "small-budget").glob(".*"))


@pytest.mark.timeout(300)
def test_a_cluster_session_plans_fewer_larger_tiles_than_local_workers(local_cluster, tmp_path):
    """Each task costs the cluster messages between the scheduler, the server and a worker:
    a session on a cluster plans tiles of up to CLUSTER_TILE_EDGE pixels on an edge, where
    local workers stop at LOCAL_TILE_EDGE. A raster of 3 x 3 local tiles takes 2 x 2."""
    edge = 3 * LOCAL_TILE_EDGE
    with _dask_server(tmp_path, local_cluster) as (root, channel):
        write_geotiff(root / "flat.tif", np.full((edge, edge), 7, np.uint8), block=512)
        session = _create_session(channel, 1, ram_mib=2048)
        request = raster_pb2.BandCalcRequest(
            session=session,
            expression='"flat" * 2',
            inputs=[raster_pb2.RasterInput(name="flat", path="flat.tif")],
            output_path="large-tiles/double.tif",
        )
        operation = raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
            request, timeout=_WAIT_SECONDS
        )
        tiles = operation_metadata(_finish(channel, operation)).tiles_total
        pixels = _read(root / "large-tiles" / "double.tif")
    assert CLUSTER_TILE_EDGE == 2 * LOCAL_TILE_EDGE and tiles == 4
    assert pixels.shape == (edge, edge) and (pixels == 14).all()


# ------------------------------------------------------------------ object storage


def _object_pixels(s3, bucket: str, key: str) -> np.ndarray:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    with rasterio.MemoryFile(body) as memory, memory.open() as ds:
        return ds.read(1)


@pytest.mark.timeout(300)
def test_a_cluster_works_on_an_object_root_with_no_shared_folder(
    local_outputs, s3, tmp_path, monkeypatch
):
    """The primary root is a prefix of a bucket, and its inputs exist nowhere else: the
    workers read their windows from the store, the server uploads what they computed,
    and the outputs equal local workers'."""
    bucket = s3.bucket("dask-root")
    _write_inputs(tmp_path / "inputs")
    for name in ("red", "nir", "classes"):
        s3.client().upload_file(str(tmp_path / "inputs" / f"{name}.tif"), bucket, f"p/{name}.tif")
    shutil.rmtree(tmp_path / "inputs")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)  # the server's and the workers' alike
    with (
        _cli_cluster(2) as cluster,
        serving(
            make_config(tmp_path, data_root=f"s3://{bucket}/p", dask_scheduler=cluster.address)
        ) as (_, channel),
    ):
        session = _create_session(channel, 2)
        for tool in ("ndvi", "sieve"):
            tiles = _run(channel, session, tool, f"out/{tool}.tif")
            got = _object_pixels(s3, bucket, f"p/out/{tool}.tif")
            assert tiles > 1, tool
            np.testing.assert_array_equal(got, local_outputs[tool][0], err_msg=tool)


@pytest.mark.timeout(300)
def test_a_session_is_refused_while_a_worker_cannot_reach_the_object_storage(
    s3, tmp_path, monkeypatch
):
    bucket = s3.bucket("dask-unreached")
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the worker's: nothing there
    with _cli_cluster(1) as cluster:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)  # the server's
        config = make_config(tmp_path, data_root=f"s3://{bucket}/p", dask_scheduler=cluster.address)
        with serving(config) as (_, channel), pytest.raises(grpc.RpcError) as refused:
            _create_session(channel, 1)
    details = refused.value.details()
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION, details
    assert "data root 'data'" in details and "AWS_ENDPOINT_URL" in details, details
    assert "127.0.0.1:9" not in details and bucket not in details
