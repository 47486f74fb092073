"""A session's log through a real server: each record names the operation whose job logged
it, ListLogEntries filters by operation (page tokens included), and a closed session's log
stays readable by its owner, and by no one else, for the configured time, with a bound on
how many closed logs are kept."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro

from rsgrpc.client import Session
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import create_session, make_config, serving, write_geotiff

TOKENS = "alice a1ice-token\nbob b0b-token\n"
ALICE = (("authorization", "Bearer a1ice-token"),)
BOB = (("authorization", "Bearer b0b-token"),)
RETENTION_S = 3.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server with two identities, keeping closed logs `RETENTION_S`, at most two."""
    tmp_path = tmp_path_factory.mktemp("log-retention")
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKENS)
    config = make_config(
        tmp_path,
        auth_token_file=str(tokens),
        closed_session_log_s=RETENTION_S,
        max_closed_session_logs=2,
    )
    with serving(config) as (running, channel):
        rng = np.random.default_rng(3)
        write_geotiff(running.data_root.root / "a.tif", rng.random((64, 64), dtype=np.float32))
        yield running, channel


def _entries(channel, parent: str, *, metadata=ALICE, **fields) -> list[session_pb2.LogEntry]:
    """Every entry of `parent`'s log that the request's fields select, page by page."""
    stub = session_pb2_grpc.SessionServiceStub(channel)
    entries, token = [], ""
    while True:
        page = stub.ListLogEntries(
            session_pb2.ListLogEntriesRequest(parent=parent, page_token=token, **fields),
            metadata=metadata,
        )
        if not page.log_entries:
            return entries
        entries.extend(page.log_entries)
        token = page.next_page_token


def _refusal(channel, parent: str, *, metadata=ALICE, **fields) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        session_pb2_grpc.SessionServiceStub(channel).ListLogEntries(
            session_pb2.ListLogEntriesRequest(parent=parent, **fields), metadata=metadata
        )
    return caught.value


def _band_calc(channel, session: str, output: str) -> lro.Operation:
    return raster_pb2_grpc.RasterServiceStub(channel).BandCalc(
        raster_pb2.BandCalcRequest(
            session=session,
            expression="a * 2",
            inputs=[raster_pb2.RasterInput(name="a", path="a.tif")],
            output_path=output,
            overwrite=True,
        ),
        metadata=ALICE,
    )


def _finished(channel, operation: lro.Operation) -> lro.Operation:
    """`operation` once done, asserting that it succeeded."""
    operations = lro_grpc.OperationsStub(channel)
    deadline = time.monotonic() + 60
    while not operation.done and time.monotonic() < deadline:
        request = lro.WaitOperationRequest(name=operation.name)
        request.timeout.FromSeconds(5)
        operation = operations.WaitOperation(request, metadata=ALICE)
    assert operation.done and not operation.HasField("error"), operation
    return operation


def _delete(channel, session: str, *, metadata=ALICE) -> None:
    session_pb2_grpc.SessionServiceStub(channel).DeleteSession(
        session_pb2.DeleteSessionRequest(name=session), metadata=metadata
    )


def test_the_records_of_two_operations_are_read_apart(server):
    _, channel = server
    session = create_session(channel, metadata=ALICE)
    # Started together: the second is queued while the first runs.
    first = _band_calc(channel, session, "first.tif")
    second = _band_calc(channel, session, "second.tif")
    for operation in (first, second):
        _finished(channel, operation)

    everything = _entries(channel, session)
    assert {e.operation for e in everything} == {"", first.name, second.name}
    for operation in (first, second):
        own = _entries(channel, session, filter=f'operation = "{operation.name}"')
        assert own == [e for e in everything if e.operation == operation.name]
        messages = [e.message for e in own]
        # The job's start and end, and what it logged between, in its own thread.
        assert f"BandCalc {operation.name} started" in messages[0]
        assert f"BandCalc {operation.name} done" in messages[-1]
        assert len(messages) >= 3
    session_own = _entries(channel, session, filter=' operation="" ')
    assert session_own and all(e.operation == "" for e in session_own)
    assert "session started" in session_own[0].message

    # Page by page, one record a page, with the filter: the same records.
    filtered = f'operation = "{first.name}"'
    stub = session_pb2_grpc.SessionServiceStub(channel)
    paged, token = [], ""
    while True:
        page = stub.ListLogEntries(
            session_pb2.ListLogEntriesRequest(
                parent=session, filter=filtered, page_size=1, page_token=token
            ),
            metadata=ALICE,
        )
        if not page.log_entries:
            break
        paged.extend(page.log_entries)
        token = page.next_page_token
    assert paged == [e for e in everything if e.operation == first.name]

    # The Python client reads one operation's records too (by operation or by name).
    rs = Session(1, 1, channel=channel, token="a1ice-token")
    try:
        assert rs.log(operation=first.name) == []  # another session's operation
        third = _finished(channel, _band_calc(channel, rs.name, "third.tif"))
        lines = rs.log(operation=third)
        assert lines == rs.log(operation=third.name)
        assert lines and all(third.name in line for line in lines)
        assert len(rs.log()) > len(lines)
    finally:
        rs.close()
    _delete(channel, session)


def test_bad_filters_and_tokens_of_another_filter_are_invalid_argument(server):
    _, channel = server
    session = create_session(channel, metadata=ALICE)
    try:
        for bad in (
            'session = "sessions/x"',
            "operation = operations/x",
            'operation = "jobs/x"',
            'operation != "operations/x"',
            'operation = "operations/x" AND operation = "operations/y"',
        ):
            refused = _refusal(channel, session, filter=bad)
            assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT, bad
            assert "filter must be empty or operation" in refused.details()
        stub = session_pb2_grpc.SessionServiceStub(channel)
        unfiltered = stub.ListLogEntries(
            session_pb2.ListLogEntriesRequest(parent=session, page_size=1), metadata=ALICE
        ).next_page_token
        one = 'operation = "operations/one"'
        filtered = stub.ListLogEntries(
            session_pb2.ListLogEntriesRequest(parent=session, page_size=1, filter=one),
            metadata=ALICE,
        ).next_page_token
        for token, other in (
            (unfiltered, one),
            (filtered, ""),
            (filtered, 'operation = "operations/two"'),
        ):
            refused = _refusal(channel, session, filter=other, page_token=token)
            assert refused.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "another filter" in refused.details()
        # The same filter, written differently, takes the token.
        stub.ListLogEntries(
            session_pb2.ListLogEntriesRequest(
                parent=session, filter='operation="operations/one"', page_token=filtered
            ),
            metadata=ALICE,
        )
    finally:
        _delete(channel, session)


def test_a_closed_sessions_log_is_its_owners_until_the_retention_ends(server):
    _, channel = server
    stub = session_pb2_grpc.SessionServiceStub(channel)
    session = create_session(channel, metadata=ALICE)
    operation = _finished(channel, _band_calc(channel, session, "closed.tif"))
    before = _entries(channel, session)
    _delete(channel, session)
    closed_at = time.monotonic()

    # The session is gone; its log is not, for its owner.
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetSession(session_pb2.GetSessionRequest(name=session), metadata=ALICE)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    refused = _band_calc_refusal(channel, session)
    assert refused in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
    after = _entries(channel, session)
    assert after[: len(before)] == before
    assert "session closed" in after[-1].message
    assert _entries(channel, session, filter=f'operation = "{operation.name}"') == [
        e for e in before if e.operation == operation.name
    ]

    # Another identity gets what a session that never existed gets.
    never = "sessions/never-was"
    for name in (session, never):
        refused = _refusal(channel, name, metadata=BOB)
        assert refused.code() is grpc.StatusCode.NOT_FOUND
        assert refused.details() == f"session {name!r} does not exist"

    # Past the retention: NOT_FOUND for the owner too.
    time.sleep(max(0.0, closed_at + RETENTION_S + 0.3 - time.monotonic()))
    refused = _refusal(channel, session)
    assert refused.code() is grpc.StatusCode.NOT_FOUND
    assert refused.details() == f"session {session!r} does not exist"


def _band_calc_refusal(channel, session: str) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        _band_calc(channel, session, "late.tif")
    return caught.value.code()


def test_an_idle_sessions_log_stays_readable_after_it_expires(server):
    _, channel = server
    stub = session_pb2_grpc.SessionServiceStub(channel)
    created = stub.CreateSession(
        session_pb2.CreateSessionRequest(
            session=session_pb2.Session(
                process_count=1, available_ram_mib=256, idle_timeout={"nanos": 300_000_000}
            )
        ),
        metadata=ALICE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            stub.GetSession(session_pb2.GetSessionRequest(name=created.name), metadata=ALICE)
        except grpc.RpcError as error:
            assert error.code() is grpc.StatusCode.NOT_FOUND
            break
        time.sleep(0.05)
    else:
        pytest.fail("the idle session did not expire")
    # Readable at once, and while the session closes (its last line comes then).
    messages = [e.message for e in _entries(channel, created.name)]
    while "session closed" not in messages[-1] and time.monotonic() < deadline:
        time.sleep(0.05)
        messages = [e.message for e in _entries(channel, created.name)]
    assert "session started" in messages[0] and "session closed" in messages[-1]


def test_past_the_bound_the_oldest_closed_log_is_forgotten_first(server):
    _, channel = server
    names = [create_session(channel, metadata=ALICE) for _ in range(3)]
    for name in names:
        _delete(channel, name)
    # The server keeps two closed logs: the first one closed is gone.
    assert _refusal(channel, names[0]).code() is grpc.StatusCode.NOT_FOUND
    for name in names[1:]:
        assert "session closed" in _entries(channel, name)[-1].message
