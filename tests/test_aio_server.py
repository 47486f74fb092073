"""The server on grpc.aio: thousands of waiting clients cost no threads, health answers
meanwhile, waiting calls are capped per session, and shutdown answers UNAVAILABLE."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import traceback

import grpc
import numpy as np
import psutil
import pytest
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from rsgrpc.server import session_servicer
from rsgrpc.v1 import (
    operation_pb2,
    operation_pb2_grpc,
    raster_pb2,
    raster_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from tests.conftest import (
    create_session,
    held_deployment,
    held_http_server,
    make_config,
    operation_metadata,
    serving,
    start_held_download,
    watch_operation,
    write_geotiff,
)

WATCHERS = 2000


def _health(channel: grpc.Channel) -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(), timeout=30)
        .status
    )


def _watch(name: str) -> operation_pb2.WatchOperationRequest:
    return operation_pb2.WatchOperationRequest(name=name)


def _wait(name: str, seconds: int = 300) -> lro.WaitOperationRequest:
    request = lro.WaitOperationRequest(name=name)
    request.timeout.FromSeconds(seconds)
    return request


def test_health_answers_while_2000_watchers_wait_and_threads_stay_few(tmp_path):
    with held_http_server() as (url, release):
        config = make_config(tmp_path, deployments=held_deployment(tmp_path, url))
        with serving(config) as (running, channel):
            session = create_session(channel)
            operation = start_held_download(channel, session)
            process = psutil.Process()
            threads_before = process.num_threads()

            async def watch_all():
                target = f"127.0.0.1:{running.port}"
                async with grpc.aio.insecure_channel(target) as aio_channel:
                    stub = operation_pb2_grpc.OperationWatchServiceStub(aio_channel)
                    calls = [stub.WatchOperation(_watch(operation.name)) for _ in range(WATCHERS)]
                    first = await asyncio.gather(*(call.read() for call in calls))
                    threads_held = process.num_threads()
                    status = await asyncio.to_thread(_health, channel)
                    release.set()
                    last = await asyncio.gather(*(_last_update(call) for call in calls))
                return first, threads_held, status, last

            first, threads_held, status, last = asyncio.run(watch_all())

    assert [update.done for update in first] == [False] * WATCHERS
    assert status == health_pb2.HealthCheckResponse.SERVING
    # A thread per waiting client would be 2,000 threads.
    assert threads_held - threads_before < 20, (threads_before, threads_held)
    assert all(update.done and not update.HasField("error") for update in last)


async def _last_update(call):
    """The last update a stream sends (its first was read with `read`)."""
    last = None
    while (update := await call.read()) is not grpc.aio.EOF:
        last = update
    return last


def test_watchers_of_a_running_job_each_see_its_progress_in_order_and_its_end(tmp_path):
    with serving(make_config(tmp_path)) as (running, channel):
        values = np.arange(2048 * 2048, dtype=np.float32).reshape(2048, 2048)
        write_geotiff(running.data_root.root / "big.tif", values, block=256)
        session = create_session(channel)

        async def watch_job():
            target = f"127.0.0.1:{running.port}"
            async with grpc.aio.insecure_channel(target) as aio_channel:
                job = await raster_pb2_grpc.RasterServiceStub(aio_channel).BandCalc(
                    raster_pb2.BandCalcRequest(
                        session=session,
                        expression="x * 2",
                        inputs=[raster_pb2.RasterInput(name="x", path="big.tif")],
                        output_path="twice.tif",
                    )
                )
                stub = operation_pb2_grpc.OperationWatchServiceStub(aio_channel)
                calls = [stub.WatchOperation(_watch(job.name)) for _ in range(500)]
                return await asyncio.gather(*(_all_updates(call) for call in calls))

        seen = asyncio.run(watch_job())

    for updates in seen:
        metadata = [operation_metadata(update) for update in updates]
        assert updates[-1].done and not updates[-1].HasField("error")
        assert [m.tiles_done for m in metadata] == sorted(m.tiles_done for m in metadata)
        assert [m.stage for m in metadata] == sorted(m.stage for m in metadata)
        assert metadata[-1].tiles_done == metadata[-1].tiles_total > 1


async def _all_updates(call) -> list:
    return [update async for update in call]


def test_waiting_calls_past_the_session_limit_get_resource_exhausted(tmp_path):
    with held_http_server() as (url, release):
        config = make_config(
            tmp_path, deployments=held_deployment(tmp_path, url), max_waiters_per_session=3
        )
        with serving(config) as (running, channel):
            full = create_session(channel)
            other = create_session(channel)
            write_geotiff(running.data_root.root / "a.tif", np.ones((8, 8), np.uint8))
            finished = raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
                raster_pb2.BandCalcRequest(
                    session=full,
                    expression="a + 1",
                    inputs=[raster_pb2.RasterInput(name="a", path="a.tif")],
                    output_path="b.tif",
                )
            )
            assert watch_operation(channel, finished)[-1].done
            held = start_held_download(channel, full, "full.json")
            elsewhere = start_held_download(channel, other, "other.json")
            watch = operation_pb2_grpc.OperationWatchServiceStub(channel)
            operations = lro_grpc.OperationsStub(channel)
            holders = [watch.WatchOperation(_watch(held.name)) for _ in range(3)]
            for holder in holders:
                assert not next(holder).done  # each is now waiting on the server
            with pytest.raises(grpc.RpcError) as refused_watch:
                next(watch.WatchOperation(_watch(held.name)))
            with pytest.raises(grpc.RpcError) as refused_wait:
                operations.WaitOperation(_wait(held.name))
            # A finished operation is answered at once: nothing waits.
            assert operations.WaitOperation(_wait(finished.name)).done
            assert [u.done for u in watch.WatchOperation(_watch(finished.name))] == [True]
            # The limit is per session: another session's operation can still be watched.
            other_watch = watch.WatchOperation(_watch(elsewhere.name))
            assert not next(other_watch).done
            # A waiting call that ends makes room for another.
            holders.pop().cancel()
            admitted, first = _admitted_watch(watch, held.name)
            assert not first.done
            release.set()
            assert [list(h)[-1].done for h in [*holders, admitted]] == [True] * 3
            assert list(other_watch)[-1].done

    for refused in (refused_watch.value, refused_wait.value):
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert full in refused.details()
        assert "3 calls waiting" in refused.details()
        assert "limit of 3" in refused.details()


def _admitted_watch(watch, name: str):
    """A watch of `name` and its first update, once the server admits one (a cancelled
    call frees its place as soon as the server sees the cancellation)."""
    for _ in range(500):
        call = watch.WatchOperation(_watch(name))
        try:
            return call, next(call)
        except grpc.RpcError as refused:
            assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused
        threading.Event().wait(0.02)
    raise AssertionError(f"no watch of {name} was admitted")


def test_shutdown_answers_unavailable_to_waiting_and_new_calls(tmp_path):
    with held_http_server() as (url, release):
        # The grace period (5 s) leaves time for the new calls below.
        config = make_config(tmp_path, deployments=held_deployment(tmp_path, url))
        context = serving(config)
        running, channel = context.__enter__()
        session = create_session(channel)
        held = start_held_download(channel, session)
        client = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        operations = lro_grpc.OperationsStub(client)
        waiting = operations.WaitOperation.future(_wait(held.name))
        watching = operation_pb2_grpc.OperationWatchServiceStub(client).WatchOperation(
            _watch(held.name)
        )
        assert not next(watching).done
        stopping = threading.Thread(target=context.__exit__, args=(None, None, None))
        stopping.start()
        try:
            health = health_pb2_grpc.HealthStub(client)
            for _ in range(1000):
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=30).status
                if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                threading.Event().wait(0.01)
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
            # In the grace period: the new calls, a new operation among them, are refused.
            new_calls = {
                "GetOperation": lambda: operations.GetOperation(
                    lro.GetOperationRequest(name=held.name), timeout=30
                ),
                "BandCalc": lambda: raster_pb2_grpc.RasterServiceStub(client).BandCalc(
                    raster_pb2.BandCalcRequest(session=session, expression="1"), timeout=30
                ),
                "CreateSession": lambda: create_session(client),
            }
            refusals = {}
            for name, call in new_calls.items():
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                refusals[name] = refused.value
            # The calls waiting on the operation end when the grace period does.
            with pytest.raises(grpc.RpcError) as waited:
                waiting.result(timeout=60)
            # Updates sent before the grace period ended may come first (a slow machine
            # takes longer between the steps above); the stream then ends UNAVAILABLE.
            with pytest.raises(grpc.RpcError) as watched:
                for update in watching:
                    assert not update.done
            release.set()  # the cancelled job can now end, and its session close
        finally:
            stopping.join()
            client.close()

    for refused in [*refusals.values(), waited.value, watched.value]:
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, refused
        assert "shutting down" in refused.details()
        info = error_details_pb2.ErrorInfo()
        assert rpc_status.from_call(refused).details[0].Unpack(info)
        assert info.reason == "SHUTTING_DOWN"


def test_a_bug_is_internal_naming_a_request_id_that_the_server_log_holds(
    tmp_path, monkeypatch, caplog
):
    secret = str(tmp_path / "server-side" / "state.bin")

    def broken(session):
        raise OSError(5, "Input/output error", secret)

    with serving(make_config(tmp_path)) as (_, channel), caplog.at_level(logging.ERROR):
        name = create_session(channel)
        # The server runs in this process: GetSession fails as a bug would.
        monkeypatch.setattr(session_servicer, "session_to_proto", broken)
        with pytest.raises(grpc.RpcError) as failed:
            session_pb2_grpc.SessionServiceStub(channel).GetSession(
                session_pb2.GetSessionRequest(name=name)
            )
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    match = re.fullmatch(
        r"internal error, request id ([0-9a-f]{12}); see the server log", failed.value.details()
    )
    assert match, failed.value.details()
    logged = [r for r in caplog.records if match.group(1) in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert secret in "".join(traceback.format_exception(*logged[0].exc_info))
