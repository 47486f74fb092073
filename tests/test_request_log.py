"""Request ids: each call's id is told to the client and carried by every line the server
logs for it and for the job it starts; `--log-format json` writes those lines as JSON."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from rsgrpc.engine.log_context import ContextFilter, JsonFormatter
from rsgrpc.server.request_ids import REQUEST_ID_KEY
from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import make_config, serving, write_geotiff

BAND_CALC = "/rsgrpc.v1.RasterService/BandCalc"


@pytest.fixture
def json_log():
    """The root logger's INFO lines, as the server writes them with --log-format json."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _band_calc(channel, session: str, metadata=()):
    request = raster_pb2.BandCalcRequest(
        session=session,
        expression='"a" * 2',
        inputs=[raster_pb2.RasterInput(name="a", path="a.tif")],
        output_path="out/a2.tif",
        overwrite=True,
    )
    return raster_pb2_grpc.RasterServiceStub(channel).BandCalc.with_call(
        request, metadata=metadata, timeout=30
    )


def _wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not within the time given"
        time.sleep(0.02)


def test_a_jobs_log_lines_carry_the_id_of_the_request_that_started_it(tmp_path, json_log):
    with serving(make_config(tmp_path)) as (running, channel):
        write_geotiff(
            running.data_root.root / "a.tif", np.arange(600, dtype=np.uint16).reshape(20, 30)
        )
        session = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
            session_pb2.CreateSessionRequest(session=session_pb2.Session(process_count=1))
        )
        operation, call = _band_calc(channel, session.name, ((REQUEST_ID_KEY, "calc-0042"),))
        assert (REQUEST_ID_KEY, "calc-0042") in call.initial_metadata()

        def mine() -> list[dict]:
            return [line for line in _lines(json_log) if line.get("request_id") == "calc-0042"]

        _wait_for(lambda: any("ended" in line["message"] for line in mine()))
    lines = mine()
    messages = [line["message"] for line in lines]
    assert f"BandCalc {operation.name} started" in messages
    assert f"BandCalc {operation.name} ended: succeeded" in messages
    for line in lines:
        # Each line names its call, session and operation, and says when and what.
        assert line["method"] == BAND_CALC
        assert line["session"] == session.name
        assert line["operation"] == operation.name
        assert set(line) >= {"time", "level", "logger", "message"}


@pytest.mark.parametrize("given", [None, "two words", "x" * 65, 'quote"d'], ids=repr)
def test_a_call_without_a_plain_id_gets_a_new_one(tmp_path, given):
    metadata = () if given is None else ((REQUEST_ID_KEY, given),)
    with serving(make_config(tmp_path)) as (_, channel):
        stub = session_pb2_grpc.SessionServiceStub(channel)
        _, call = stub.ListSessions.with_call(
            session_pb2.ListSessionsRequest(), metadata=metadata, timeout=30
        )
    ids = [value for key, value in call.initial_metadata() if key == REQUEST_ID_KEY]
    assert len(ids) == 1 and ids[0] != given
    assert len(ids[0]) == 16 and ids[0].isalnum()


def test_a_refused_call_still_tells_its_id(tmp_path):
    with serving(make_config(tmp_path)) as (_, channel), pytest.raises(grpc.RpcError) as caught:
        _band_calc(channel, "sessions/none", ((REQUEST_ID_KEY, "lost-1"),))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert (REQUEST_ID_KEY, "lost-1") in caught.value.initial_metadata()


def test_serve_refuses_an_unknown_log_format(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "serve",
            "--data-root",
            str(tmp_path),
            "--log-format",
            "xml",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "log format 'xml' is not one of text, json" in result.stderr
