"""SessionService over a real channel: lifecycle, settings, logs, limits and expiry."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2

from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.v1 import session_pb2, session_pb2_grpc
from tests.conftest import make_config, serving


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A server whose totals are two processes and 3000 MiB."""
    config = make_config(tmp_path_factory.mktemp("sessions"), max_processes=2, max_ram_mib=3000)
    with serving(config) as pair:
        yield pair


def _stub(pair) -> session_pb2_grpc.SessionServiceStub:
    return session_pb2_grpc.SessionServiceStub(pair[1])


def _create(stub, **fields) -> session_pb2.Session:
    session_id = fields.pop("session_id", "")
    return stub.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(**fields), session_id=session_id
        )
    )


def test_create_get_list_and_delete_removes_temporary_directory(small_server):
    stub = _stub(small_server)
    created = _create(
        stub, process_count=1, available_ram_mib=512, directory_prefix="calc_", session_id="alpha"
    )
    assert created.name == "sessions/alpha"
    assert created.state == session_pb2.Session.STATE_ACTIVE
    temp = Path(created.temporary_directory)
    assert temp.is_dir() and temp.name.startswith("calc_alpha_")
    assert stub.GetSession(session_pb2.GetSessionRequest(name="sessions/alpha")) == created
    names = [s.name for s in stub.ListSessions(session_pb2.ListSessionsRequest()).sessions]
    assert "sessions/alpha" in names
    stub.DeleteSession(session_pb2.DeleteSessionRequest(name="sessions/alpha"))
    assert not temp.exists()
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetSession(session_pb2.GetSessionRequest(name="sessions/alpha"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_delete_keeps_the_log_under_the_data_root(small_server):
    running, _ = small_server
    stub = _stub(small_server)
    created = _create(stub, process_count=1, available_ram_mib=256)
    stub.DeleteSession(
        session_pb2.DeleteSessionRequest(name=created.name, log_path="logs/session.log")
    )
    log = (running.data_root.root / "logs" / "session.log").read_text()
    assert "session started" in log and "session closed" in log


def test_update_changes_settings_and_log_is_readable(small_server):
    stub = _stub(small_server)
    created = _create(stub, process_count=1, available_ram_mib=256, log_time=False)
    updated = stub.UpdateSession(
        session_pb2.UpdateSessionRequest(
            session=session_pb2.Session(
                name=created.name, process_count=2, log_level=session_pb2.LOG_LEVEL_DEBUG
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["process_count", "log_level"]),
        )
    )
    assert updated.process_count == 2 and updated.available_ram_mib == 256
    assert updated.log_level == session_pb2.LOG_LEVEL_DEBUG
    entries = stub.ListLogEntries(session_pb2.ListLogEntriesRequest(parent=created.name))
    messages = [e.message for e in entries.log_entries]
    assert messages[0].startswith("INFO session started")  # log_time off: no time
    assert any("settings changed" in m for m in messages)
    stub.DeleteSession(session_pb2.DeleteSessionRequest(name=created.name))


def test_sessions_past_the_server_totals_are_refused(small_server):
    stub = _stub(small_server)
    first = _create(stub, process_count=2, available_ram_mib=512)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _create(stub, process_count=1, available_ram_mib=512)
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "processes" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            stub.UpdateSession(
                session_pb2.UpdateSessionRequest(
                    session=session_pb2.Session(name=first.name, available_ram_mib=4000),
                    update_mask=field_mask_pb2.FieldMask(paths=["available_ram_mib"]),
                )
            )
        assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        stub.DeleteSession(session_pb2.DeleteSessionRequest(name=first.name))


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"process_count": 9}, "process_count"),
        ({"available_ram_mib": 8}, "available_ram_mib"),
        ({"directory_prefix": "../x"}, "directory_prefix"),
        ({"session_id": "Bad Id"}, "session_id"),
    ],
)
def test_bad_session_settings_are_invalid_argument(small_server, fields, fragment):
    with pytest.raises(grpc.RpcError) as caught:
        _create(_stub(small_server), **fields)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()


def test_idle_session_expires_and_its_files_are_removed(tmp_path):
    with serving(make_config(tmp_path)) as pair:
        stub = _stub(pair)
        created = _create(
            stub, process_count=1, available_ram_mib=256, idle_timeout={"nanos": 300_000_000}
        )
        temp = Path(created.temporary_directory)
        deadline = time.monotonic() + 30
        while temp.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not temp.exists()
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetSession(session_pb2.GetSessionRequest(name=created.name))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_shutdown_closes_sessions_and_removes_their_files(tmp_path):
    with serving(make_config(tmp_path)) as pair:
        created = _create(_stub(pair), process_count=1, available_ram_mib=256)
        temp = Path(created.temporary_directory)
        assert temp.exists()
    assert not temp.exists()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("outcome", ["result", "error", "cancelled"])
def test_a_job_has_ended_on_its_session_when_its_operation_is_done(small_server, outcome):
    """A client told that an operation is done may update or delete its session at once:
    the session counts the job as ended before the operation says it is done."""
    running, _ = small_server
    name = _create(_stub(small_server), process_count=1, available_ram_mib=256).name
    session = running.registry.get(name)
    operation = running.operations.add(name, "Test", owner=session.owner)
    busy_when_done = []
    operation.add_listener(lambda: operation.done and busy_when_done.append(session.busy))
    started = threading.Event()

    def job(session, operation):
        started.wait(5)
        if outcome == "error":
            raise InvalidArgumentError("a refused job")
        return "a result"

    if outcome == "cancelled":
        operation.cancel()
    session.submit(operation, job)
    started.set()
    deadline = time.monotonic() + 10
    while not operation.done and time.monotonic() < deadline:
        time.sleep(0.01)
    assert operation.done
    assert busy_when_done == [False]
    assert (operation.error is None) == (outcome == "result")
    stub = _stub(small_server)
    stub.UpdateSession(
        session_pb2.UpdateSessionRequest(
            session=session_pb2.Session(name=name, process_count=2),
            update_mask=field_mask_pb2.FieldMask(paths=["process_count"]),
        )
    )
    stub.DeleteSession(session_pb2.DeleteSessionRequest(name=name))
