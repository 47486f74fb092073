"""Random and hostile requests through a real channel: whatever a client sends, the answer
is a status that names the client's mistake (never INTERNAL or UNKNOWN), no message shows
the server's own folders, nothing is written outside the data root, no partial output is
left behind, and health stays SERVING."""

from __future__ import annotations

import os
import string
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsgrpc.v1 import raster_pb2, raster_pb2_grpc, session_pb2, session_pb2_grpc
from tests.conftest import make_config, serving, write_geotiff

# Codes that would say the server, not the client, is at fault.
_SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
_SERVER_FAULT_CODES = {code_pb2.INTERNAL, code_pb2.UNKNOWN}
_WAIT_SECONDS = 60.0
_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A server whose data root holds good inputs and files that try to escape it."""
    base = tmp_path_factory.mktemp("hostile")
    outside = base / "outside"
    classes = np.random.default_rng(3).integers(1, 5, (48, 40), dtype=np.uint8)
    write_geotiff(outside / "secret.tif", np.full((48, 40), 42, np.uint16))
    with serving(make_config(base)) as (running, channel):
        root = running.data_root.root
        write_geotiff(root / "in" / "a.tif", np.arange(48 * 40, dtype=np.uint16).reshape(48, 40))
        write_geotiff(root / "in" / "b.tif", np.ones((48, 40), np.float32), nodata=-1.0)
        write_geotiff(root / "in" / "classes.tif", classes, nodata=0)
        (root / "in" / "vrt.tif").write_text(
            f'<VRTDataset rasterXSize="40" rasterYSize="48"><VRTRasterBand dataType="UInt16" '
            f'band="1"><SimpleSource><SourceFilename relativeToVRT="0">{outside / "secret.tif"}'
            "</SourceFilename><SourceBand>1</SourceBand></SimpleSource></VRTRasterBand>"
            "</VRTDataset>"
        )
        (root / "in" / "text.tif").write_text("not a raster")
        (root / "in" / "link.tif").symlink_to(outside / "secret.tif")
        (root / "in" / "dir.tif").mkdir()
        session = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=1, available_ram_mib=1024)
            )
        )
        yield running, channel, session.name, outside
        leftovers = [p for p in root.rglob("*") if p.name.endswith(".partial.tif")]
        assert not leftovers, leftovers
        assert sorted(p.name for p in outside.iterdir()) == ["secret.tif"]


_INPUT_FILES = ["in/a.tif", "in/b.tif", "in/classes.tif", "in/vrt.tif", "in/text.tif"]
_HOSTILE_PATHS = [
    "in/link.tif",
    "in/dir.tif",
    "../outside/secret.tif",
    "/etc/passwd",
    "in/a.tif/x.tif",
    "/vsicurl/http://127.0.0.1:9/x.tif",
    "s3://bucket/in/a.tif",  # object storage, which this server has no root in
    "/vsis3/bucket/in/a.tif",
    "s3://",
    "in/" + "n" * 300 + ".tif",
    "x" * 5000,
    "in/\x00.tif",
    "",
    ".",
    "in/",
    "~/x.tif",
    "\\\\host\\share\\x.tif",
]
# Each strategy mixes requests that are nearly right (so that many reach a worker, where a
# mistake that slipped past the door would surface) with hostile and random ones.
good_paths = st.sampled_from(["in/a.tif", "in/b.tif", "in/classes.tif"])
paths = st.one_of(
    good_paths,
    good_paths,
    good_paths,
    st.sampled_from(_INPUT_FILES + _HOSTILE_PATHS),
    st.text(alphabet=string.ascii_letters + "./\\-_~ \x00é", max_size=40),
)
new_outputs = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8)
output_paths = st.one_of(
    new_outputs.map(lambda name: f"out/{name}.tif"),
    new_outputs.map(lambda name: f"out/{name}.tif"),
    new_outputs.map(lambda name: f"out/{name}"),
    st.sampled_from(["out/", "out", "in/a.tif", "in/dir.tif", *_HOSTILE_PATHS]),
    st.text(alphabet=string.ascii_letters + "./-_\x00", min_size=1, max_size=30),
)
numbers = st.one_of(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.sampled_from([0, 1, 2, 3, 4, 8, 255, 65535, 2**31 - 1]),
)
small_numbers = st.one_of(st.integers(0, 4), st.integers(0, 4), numbers)
bands = st.one_of(st.just(1), st.just(1), st.just(0), numbers)
doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, -32768.0, 1e300, -1e300, 2.5, 255.0, 65536.0]),
)
_TOKENS = [
    "a", "b", '"a"', '"b"', "c", "1", "0", "2.5", "1e308", "nan", "+", "-", "*", "/", "//",
    "%", "**", "<", ">=", "==", "&", "|", "~", "and", "or", "not", "(", ")", ",", "where(",
    "sqrt(", "log(", "clip(", "minimum(", "max(", "percentile(", "nodata(", "__import__(",
    "lambda", "[", "]", ".", "'", '"', ":", "if", "else", "x.y", "a.__class__",
]  # fmt: skip
_GOOD_EXPRESSIONS = [
    "a + b",
    "a * 2",
    "where(a > 5, a, b)",
    '("a" - "b") / ("a" + "b")',
    "a // 0",
    "a ** 40",
    "log(a - a)",
    "a % 0",
    "clip(a, 3, 1)",
    'nodata("a")',
    "percentile(a, b, 50)",
]
good_expressions = st.sampled_from(_GOOD_EXPRESSIONS)
expressions = st.one_of(
    good_expressions,
    good_expressions,
    st.lists(st.sampled_from(_TOKENS), max_size=25).map(" ".join),
    st.text(max_size=60),
    st.integers(1, 400).map(lambda n: "+".join(["a"] * n)),
    st.integers(1, 200).map(lambda n: "sqrt(" * n + "a" + ")" * n),
)
options = st.one_of(
    st.just(raster_pb2.OutputOptions()),
    st.just(raster_pb2.OutputOptions()),
    st.builds(
        raster_pb2.OutputOptions,
        compression=st.integers(-1, 6),
        level=small_numbers,
        predictor=small_numbers,
        cloud_optimized=st.booleans(),
    ),
)
data_types = st.one_of(st.just(0), st.integers(-1, 10))
nodatas = st.one_of(st.none(), st.none(), doubles)
names = st.one_of(
    st.just(["a", "b"]),
    st.just(["a", "b"]),
    st.lists(st.sampled_from(["a", "b", "c", "", "a b", '"', "n" * 70]), max_size=4),
)


def _no_server_paths(message: str, running) -> None:
    for folder in (str(running.data_root.root), str(Path.cwd()), os.path.expanduser("~")):
        assert folder not in message, message


def _check_answer(call, running, channel) -> None:
    """Send one request; its status, or its operation's outcome, must not be a server fault."""
    try:
        operation = call()
    except grpc.RpcError as error:
        assert error.code() not in _SERVER_FAULTS, error.details()
        _no_server_paths(error.details() or "", running)
        return
    done = lro_grpc.OperationsStub(channel).WaitOperation(
        lro.WaitOperationRequest(name=operation.name),
        timeout=_WAIT_SECONDS,
    )
    assert done.done, f"{operation.name} did not end within {_WAIT_SECONDS} s"
    if done.HasField("error"):
        assert done.error.code not in _SERVER_FAULT_CODES, done.error.message
        _no_server_paths(done.error.message, running)


@pytest.fixture(autouse=True)
def still_serving(hostile):
    yield
    health = health_pb2_grpc.HealthStub(hostile[1])
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def _draw_fields(data, good: dict, hostile: dict) -> dict:
    """A request's fields: right ones, with up to two of them hostile or random."""
    spoiled = data.draw(st.sets(st.sampled_from(sorted(hostile)), max_size=2), label="spoiled")
    return {
        name: data.draw(hostile[name] if name in spoiled else good[name], label=name)
        for name in good
    }


_GOOD_OUTPUTS = new_outputs.map(lambda name: f"out/{name}.tif")


@_SETTINGS
@given(data=st.data())
def test_random_band_calc_requests_get_client_errors_or_run(hostile, data):
    running, channel, session, _ = hostile
    fields = _draw_fields(
        data,
        good={
            "expression": good_expressions,
            "names": st.just(["a", "b"]),
            "paths": st.lists(good_paths, min_size=2, max_size=2),
            "bands": st.just([1, 1]),
            "output": _GOOD_OUTPUTS,
            "overwrite": st.booleans(),
            "data_type": st.integers(0, 8),
            "nodata": st.none(),
            "options": st.just(raster_pb2.OutputOptions()),
        },
        hostile={
            "expression": expressions,
            "names": names,
            "paths": st.lists(paths, min_size=1, max_size=4),
            "bands": st.lists(bands, min_size=4, max_size=4),
            "output": output_paths,
            "data_type": data_types,
            "nodata": doubles,
            "options": options,
        },
    )
    request = raster_pb2.BandCalcRequest(
        session=session,
        expression=fields["expression"],
        inputs=[
            raster_pb2.RasterInput(name=name, path=path, band=band)
            for name, path, band in zip(
                fields["names"], fields["paths"] * 4, fields["bands"] * 4, strict=False
            )
        ],
        output_path=fields["output"],
        overwrite=fields["overwrite"],
        output_data_type=fields["data_type"],
        output_options=fields["options"],
    )
    if fields["nodata"] is not None:
        request.output_nodata = fields["nodata"]
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    _check_answer(lambda: stub.BandCalc(request), running, channel)


@_SETTINGS
@given(tool=st.sampled_from(["Sieve", "Dilate", "Erode"]), data=st.data())
def test_random_neighbourhood_requests_get_client_errors_or_run(hostile, tool, data):
    running, channel, session, _ = hostile
    fields = _draw_fields(
        data,
        good={
            "paths": st.lists(st.just("in/classes.tif"), min_size=1, max_size=1),
            "bands": st.just([1]),
            "size": st.integers(1, 4),
            "connectivity": st.integers(0, 2),
            "filter": st.integers(0, 4),
            "values": st.lists(st.integers(1, 4).map(float), min_size=1, max_size=3),
            "circular": st.booleans(),
            "output": _GOOD_OUTPUTS,
            "prefix": st.just(""),
            "options": st.just(raster_pb2.OutputOptions()),
        },
        hostile={
            "paths": st.lists(paths, max_size=3),
            "bands": st.lists(bands, min_size=3, max_size=3),
            "size": numbers,
            "connectivity": st.integers(-1, 4),
            "filter": st.integers(-1, 6),
            "values": st.lists(doubles, max_size=4),
            "output": output_paths,
            "prefix": st.text(max_size=20),
            "options": options,
        },
    )
    inputs = [
        raster_pb2.RasterBand(path=path, band=band)
        for path, band in zip(fields["paths"], fields["bands"] * 3, strict=False)
    ]
    target = raster_pb2.ToolOutput(
        path=fields["output"], prefix=fields["prefix"], options=fields["options"]
    )
    stub = raster_pb2_grpc.RasterServiceStub(channel)
    if tool == "Sieve":
        request = raster_pb2.SieveRequest(
            session=session,
            inputs=inputs,
            size=fields["size"],
            connectivity=fields["connectivity"],
            output=target,
        )
    else:
        request_type = raster_pb2.DilateRequest if tool == "Dilate" else raster_pb2.ErodeRequest
        request = request_type(
            session=session,
            inputs=inputs,
            parameters=raster_pb2.MorphologyParameters(
                filter=fields["filter"],
                value_list=fields["values"],
                size=fields["size"],
                circular_structure=fields["circular"],
            ),
            output=target,
        )
    _check_answer(lambda: getattr(stub, tool)(request), running, channel)


@_SETTINGS
@given(
    session_id=st.text(max_size=70),
    processes=small_numbers,
    ram=st.one_of(st.sampled_from([64, 256, 1024, 100000]), numbers),
    prefix=st.text(max_size=40),
    idle_seconds=st.integers(-10, 10**9),
    name=st.one_of(st.text(max_size=40), st.just("sessions/")),
    log_path=st.one_of(st.just(""), paths),
)
def test_random_session_requests_get_client_errors(
    hostile, session_id, processes, ram, prefix, idle_seconds, name, log_path
):
    running, channel, _, _ = hostile
    stub = session_pb2_grpc.SessionServiceStub(channel)
    given_session = session_pb2.Session(
        process_count=processes, available_ram_mib=ram, directory_prefix=prefix
    )
    given_session.idle_timeout.FromSeconds(idle_seconds)
    for call in (
        lambda: stub.CreateSession(
            session_pb2.CreateSessionRequest(session=given_session, session_id=session_id)
        ),
        lambda: stub.GetSession(session_pb2.GetSessionRequest(name=name)),
        lambda: stub.DeleteSession(session_pb2.DeleteSessionRequest(name=name, log_path=log_path)),
    ):
        try:
            created = call()
        except grpc.RpcError as error:
            assert error.code() not in _SERVER_FAULTS, error.details()
            _no_server_paths(error.details() or "", running)
            continue
        if isinstance(created, session_pb2.Session) and created.name:
            stub.DeleteSession(session_pb2.DeleteSessionRequest(name=created.name))
