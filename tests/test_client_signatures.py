"""The Python client takes Remotior Sensus' signatures: names, order and defaults as
Remotior 0.7.5 declares them (written out here, independent of the client's table), with
positional calls landing in the right request fields, Remotior's RAM units, clamped
processes, Remotior's progress calls, and re-runs into existing outputs."""

from __future__ import annotations

import inspect
import logging
import warnings

import grpc
import numpy as np
import pytest
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from rsgrpc.client import Session
from rsgrpc.client.signatures import SIGNATURES, compatibility_rows
from rsgrpc.v1 import raster_pb2, session_pb2, session_pb2_grpc
from tests.conftest import write_geotiff, write_speckled_classes

_REQUIRED = inspect.Parameter.empty
_BAND_TOOL_TAIL = [
    ("prefix", ""),
    ("extent_list", None),
    ("multiple_resolution", True),
    ("n_processes", None),
    ("available_ram", None),
    ("bandset_catalog", None),
    ("virtual_output", None),
    ("progress_message", True),
]
_MORPHOLOGY = [
    ("input_bands", _REQUIRED),
    ("value_list", _REQUIRED),
    ("size", _REQUIRED),
    ("output_path", None),
    ("overwrite", False),
    ("circular_structure", None),
    *_BAND_TOOL_TAIL,
]
REMOTIOR = {
    "__init__": [
        ("n_processes", 2),
        ("available_ram", 2),
        ("temporary_directory", None),
        ("directory_prefix", None),
        ("log_level", 20),
        ("log_time", True),
        ("progress_callback", None),
        ("multiprocess_module", None),
        ("messages_callback", None),
        ("smtp_server", None),
        ("smtp_user", None),
        ("smtp_password", None),
        ("smtp_recipients", None),
        ("smtp_notification", None),
        ("sound_notification", None),
        ("log_stream_handler", True),
        ("mpi_module", None),
        ("keep_log", None),
    ],
    "set": [
        ("n_processes", None),
        ("available_ram", None),
        ("temporary_directory", None),
        ("directory_prefix", None),
        ("log_level", None),
        ("log_time", None),
        ("progress_callback", None),
        ("smtp_server", None),
        ("smtp_user", None),
        ("smtp_password", None),
        ("smtp_recipients", None),
        ("sound_notification", None),
        ("smtp_notification", None),
        ("log_stream_handler", True),
    ],
    "band_calc": [
        ("expression_string", _REQUIRED),
        ("output_path", None),
        ("input_raster_list", None),
        ("input_name_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("align_raster", None),
        ("extent_raster", None),
        ("extent_list", None),
        ("extent_intersection", True),
        ("xy_resolution_list", None),
        ("input_nodata_as_value", None),
        ("use_value_as_nodata", None),
        ("output_nodata", None),
        ("output_datatype", None),
        ("use_scale", None),
        ("use_offset", None),
        ("calc_datatype", None),
        ("any_nodata_mask", False),
        ("bandset_catalog", None),
        ("bandset_number", None),
        ("input_bands", None),
        ("point_coordinates", None),
        ("progress_message", True),
        ("device", None),
    ],
    "band_sieve": [
        ("input_bands", _REQUIRED),
        ("size", _REQUIRED),
        ("output_path", None),
        ("connected", None),
        ("overwrite", False),
        *_BAND_TOOL_TAIL,
    ],
    "band_dilation": _MORPHOLOGY,
    "band_erosion": _MORPHOLOGY,
}


@pytest.mark.parametrize("method", sorted(REMOTIOR))
def test_signatures_are_remotiors_then_keyword_only_additions(method):
    parameters = list(inspect.signature(getattr(Session, method)).parameters.values())
    assert parameters[0].name == "self"
    positional = [p for p in parameters[1:] if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert [(p.name, p.default) for p in positional] == REMOTIOR[method]
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters[1 + len(positional) :])


def test_session_connection_settings_are_keyword_only():
    parameters = inspect.signature(Session).parameters
    for name in ("target", "channel", "credentials", "token"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


def test_every_remotior_parameter_has_a_compatibility_row():
    rows = {where for where, _, _ in compatibility_rows()}
    for method, parameters in REMOTIOR.items():
        where = "Session(...)" if method == "__init__" else f"{method}(...)"
        for name, _ in parameters:
            assert f"{where} `{name}`" in rows
    for key, spec in SIGNATURES.items():
        assert set(spec.notes) <= {name for name, _ in spec.remotior}, key


class _Refused(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return "recorded"

    def trailing_metadata(self) -> tuple:
        return ()


class _RecordingChannel(grpc.Channel):
    """A channel that records each request: sessions are created, tools are refused."""

    def __init__(self) -> None:
        self.requests: dict[str, list] = {}

    def _record(self, method: str, response):
        def call(request, metadata=None, **kwargs):
            self.requests.setdefault(method.rsplit("/", 1)[1], []).append(request)
            if response is None:
                raise _Refused()
            return response(request)

        return call

    def unary_unary(self, method, *args, **kwargs):
        if method.endswith("/CreateSession"):
            return self._record(
                method, lambda r: session_pb2.Session(name="sessions/fake", **_settings(r))
            )
        return self._record(method, None)

    def unary_stream(self, method, *args, **kwargs):
        done = lro.Operation(done=True, error=status_pb2.Status(code=3, message="recorded"))
        return self._record(method, lambda r: iter([done]))

    def stream_unary(self, method, *args, **kwargs):
        return self._record(method, None)

    def stream_stream(self, method, *args, **kwargs):
        return self._record(method, None)

    def subscribe(self, *args, **kwargs) -> None:
        return None

    def unsubscribe(self, *args, **kwargs) -> None:
        return None

    def close(self) -> None:
        return None


def _settings(request: session_pb2.CreateSessionRequest) -> dict:
    s = request.session
    return {"process_count": s.process_count, "available_ram_mib": s.available_ram_mib}


def test_positional_calls_land_in_remotiors_fields():
    channel = _RecordingChannel()
    rs = Session(3, 1.5, None, "pre", 10, False, channel=channel)
    created = channel.requests["CreateSession"][0].session
    assert (created.process_count, created.available_ram_mib) == (3, 1536)
    assert (created.directory_prefix, created.log_level, created.log_time) == (
        "pre",
        session_pb2.LOG_LEVEL_DEBUG,
        False,
    )
    assert rs.configurations.n_processes == 3 and rs.configurations.available_ram == 1536

    rs.band_calc('"a" + "b"', "o/calc", ["x.tif", "y.tif"], ["a", "b"], output_datatype="byte")
    calc = channel.requests["BandCalc"][0]
    assert calc.expression == '"a" + "b"' and calc.output_path == "o/calc.tif"
    assert [(i.name, i.path, i.band) for i in calc.inputs] == [("a", "x.tif", 1), ("b", "y.tif", 1)]
    assert calc.output_data_type == raster_pb2.DATA_TYPE_UINT8 and calc.output_nodata == 255
    assert calc.overwrite

    rs.band_sieve(["s.tif", ("t.tif", 2)], 5, "o/dir", True, False, "p_")
    sieve = channel.requests["Sieve"][0]
    assert [(i.path, i.band) for i in sieve.inputs] == [("s.tif", 1), ("t.tif", 2)]
    assert (sieve.size, sieve.connectivity) == (5, raster_pb2.CONNECTIVITY_8)
    assert (sieve.output.path, sieve.output.prefix, sieve.output.overwrite) == ("o/dir", "p_", True)

    for method, rpc in (("band_dilation", "Dilate"), ("band_erosion", "Erode")):
        getattr(rs, method)("d.tif", [1, 2], 3, ["o/one.img"], True, True)
        sent = channel.requests[rpc][0]
        assert [i.path for i in sent.inputs] == ["d.tif"]
        assert list(sent.parameters.value_list) == [1.0, 2.0]
        assert (sent.parameters.size, sent.parameters.circular_structure) == (3, True)
        assert (sent.output.path, sent.output.overwrite) == ("o/one.tif", True)


def test_band_tools_send_extent_list_and_multiple_resolution_as_the_input_grid():
    channel = _RecordingChannel()
    rs = Session(channel=channel)
    rs.band_sieve(["s.tif", "t.tif"], 5, "o/dir", extent_list=[1, 9, 5, 2])
    [sieve] = channel.requests["Sieve"]
    extent = sieve.input_grid.extent
    assert (extent.left, extent.top, extent.right, extent.bottom) == (1, 9, 5, 2)
    assert not sieve.input_grid.first_input_resolution
    assert not sieve.input_grid.HasField("reference")
    rs.band_dilation(["d.tif", "e.tif"], [1], 1, "o/dir", multiple_resolution=False)
    [dilate] = channel.requests["Dilate"]
    assert dilate.input_grid.first_input_resolution
    assert not dilate.input_grid.HasField("extent")


def test_parameters_the_server_cannot_take_yet_are_refused_before_sending():
    channel = _RecordingChannel()
    errors: list[str] = []

    class Messages:
        @staticmethod
        def error(message: str) -> None:
            errors.append(message)

    rs = Session(messages_callback=Messages, channel=channel)
    out = rs.band_sieve(["a.tif"], 2, "o", extent_list=[0, 10, 10])
    assert not out.check and "extent_list" in out.extra["message"]
    assert out.grpc.code == "INVALID_ARGUMENT" and errors == [out.extra["message"]]
    assert not rs.band_calc('"a"', None, [["a.tif", "a"]]).check
    assert not rs.band_dilation(3, [1], 1, "o").check  # a BandSet number
    assert "Sieve" not in channel.requests and "BandCalc" not in channel.requests
    # Accepted and ignored: what concerns the local machine only.
    assert rs.band_sieve(["a.tif"], 2, "o", n_processes=8, virtual_output=True).extra == {
        "message": "recorded"
    }


def test_available_ram_under_1000_is_gigabytes_and_defaults_to_2048(server):
    _, channel = server
    with Session(1, 2, channel=channel) as rs:
        assert rs.session.available_ram_mib == 2048 == rs.configurations.available_ram
        rs.set(available_ram=1500)
        assert rs.session.available_ram_mib == 1500
        rs.set(available_ram=1)
        assert rs.configurations.available_ram == 1024
    with Session(channel=channel) as rs:
        assert (rs.session.process_count, rs.session.available_ram_mib) == (2, 2048)
        assert rs.configurations.temp.dir == rs.session.temporary_directory != ""


def test_local_settings_are_accepted_and_have_no_effect(server):
    _, channel = server
    with Session(
        1,
        1,
        "/somewhere/local",
        None,
        logging.DEBUG,
        True,
        None,
        object(),
        None,
        "smtp.example.org",
        "user",
        "password",
        "a@example.org",
        True,
        True,
        False,
        None,
        True,
        channel=channel,
    ) as rs:
        assert rs.configurations.smtp_server == "smtp.example.org"
        assert rs.configurations.log_level == logging.DEBUG
        rs.set(temporary_directory="/elsewhere", sound_notification=False, log_stream_handler=False)


def test_n_processes_above_the_servers_maximum_warns_and_clamps(server):
    running, channel = server
    most = running.registry.limits.process_count
    with pytest.warns(UserWarning, match=f"n_processes {most + 60} .* using {most}"):
        rs = Session(most + 60, 1, channel=channel)
    try:
        assert rs.session.process_count == most == rs.configurations.n_processes
        rs.set(n_processes=1)
        assert rs.session.process_count == 1
        with pytest.warns(UserWarning, match=f"n_processes 99 .* using {most}"):
            rs.set(n_processes=99)
        assert rs.session.process_count == most
    finally:
        rs.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Session(1, 1, channel=channel).close()


def test_ram_above_what_the_server_has_left_warns_and_clamps(server):
    running, channel = server
    total = running.registry.limits.ram_mib
    with pytest.warns(UserWarning, match=r"available_ram \d+ MB is more than the server has"):
        rs = Session(1, 900, channel=channel)  # 900 GB
    try:
        assert 0 < rs.session.available_ram_mib <= total
    finally:
        rs.close()


def test_refusals_name_the_servers_limits_in_their_error_info(server):
    running, channel = server
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    limits = running.registry.limits
    for settings, key, most in (
        (
            session_pb2.Session(process_count=limits.process_count + 1, available_ram_mib=1024),
            "max_process_count",
            limits.process_count,
        ),
        (
            session_pb2.Session(process_count=1, available_ram_mib=limits.ram_mib * 4),
            "max_available_ram_mib",
            None,
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            sessions.CreateSession(session_pb2.CreateSessionRequest(session=settings))
        status = rpc_status.from_call(refused.value)
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info)
        assert key in info.metadata
        if most is not None:
            assert int(info.metadata[key]) == most
        else:
            assert 0 < int(info.metadata[key]) <= limits.ram_mib


def _remotior_progress(calls: list[dict]):
    """A callback with the parameters of Remotior's `Progress.print_progress`."""

    def progress(
        process=None,
        step=None,
        message=None,
        percentage=None,
        elapsed_time=None,
        previous_step=None,
        start=None,
        end=None,
        failed=None,
        ping=0,
    ):
        calls.append(
            {
                "process": process,
                "step": step,
                "message": message,
                "percentage": percentage,
                "elapsed_time": elapsed_time,
                "previous_step": previous_step,
                "start": start,
                "end": end,
                "failed": failed,
            }
        )

    return progress


def test_progress_callback_receives_remotiors_arguments(server):
    running, channel = server
    root = running.data_root.root
    write_geotiff(root / "sig" / "p.tif", np.arange(400 * 300, dtype=np.int16).reshape(400, 300))
    calls: list[dict] = []
    with Session(1, 1, progress_callback=_remotior_progress(calls), channel=channel) as rs:
        out = rs.band_calc('"p" + 1', "sig/p1.tif", [["sig/p.tif", "p"]])
        assert out.check, out.grpc
        first, last = calls[0], calls[-1]
        assert first["start"] is True and first["process"] == "band calc" and first["step"] == 0
        assert last["end"] is True and (last["step"], last["percentage"]) == (100, 100)
        assert last["message"] == "finished" and last["elapsed_time"] >= 0
        middle = calls[1:-1]
        assert middle and all(1 <= c["step"] <= 99 for c in middle)
        assert all(c["process"] == "band calc" and not c["start"] for c in middle)

        calls.clear()
        rs.band_sieve(["sig/p.tif"], 2, "sig/quiet", progress_message=False)
        assert calls and not any(c["start"] for c in calls)

        calls.clear()
        failed = rs.band_calc('"p" + 1', "sig/p2.tif", [["sig/missing.tif", "p"]])
        assert not failed.check
        assert calls[0]["start"] and calls[-1]["failed"] is True and calls[-1]["step"] == 100


def test_rerunning_into_existing_outputs_replaces_them_as_remotior_does(server):
    running, channel = server
    root = running.data_root.root
    classes = write_speckled_classes(
        root / "sig" / "lc.tif", seed=5, grid=(5, 5), block=20, classes=3, speckle=5, density=0.1
    )
    with Session(1, 1, channel=channel) as rs:
        for _ in range(2):
            calc = rs.band_calc('"c" * 2', "sig/twice.tif", [["sig/lc.tif", "c"]])
            assert calc.check, calc.grpc
            sieve = rs.band_sieve(["sig/lc.tif"], 3, "sig/sieved")
            assert sieve.check, sieve.grpc
            dilation = rs.band_dilation("sig/lc.tif", [5], 1, "sig/dilated.tif")
            assert dilation.check, dilation.grpc
        assert (root / "sig" / "sieved" / "lc.tif").exists()
        # A list of paths: Remotior raises on an existing path; here overwrite=True replaces.
        listed = rs.band_erosion(["sig/lc.tif"], [5], 1, ["sig/eroded.tif"])
        assert listed.check, listed.grpc
        again = rs.band_erosion(["sig/lc.tif"], [5], 1, ["sig/eroded.tif"])
        assert not again.check and again.grpc.code == "ALREADY_EXISTS"
        replaced = rs.band_erosion(["sig/lc.tif"], [5], 1, ["sig/eroded.tif"], overwrite=True)
        assert replaced.check, replaced.grpc
        with_classes = np.count_nonzero(classes == 5)
        assert replaced.grpc.response.outputs[0].pixels_changed <= with_classes


def test_close_writes_the_log_where_the_script_runs_and_always_closes(server, tmp_path):
    """As Remotior: the log is copied to `log_path` on the client's machine, replacing a
    file there; a log that cannot be written warns and the session closes anyway."""
    _, channel = server
    sessions = session_pb2_grpc.SessionServiceStub(channel)
    log_path = tmp_path / "session.log"
    log_path.write_text("an older log\n")
    rs = Session(1, 1024, channel=channel)
    rs.close(log_path=str(log_path))
    text = log_path.read_text()
    assert "session started" in text and "an older log" not in text
    with pytest.raises(grpc.RpcError) as gone:
        sessions.GetSession(session_pb2.GetSessionRequest(name=rs.name))
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND

    rs = Session(1, 1024, channel=channel)
    with pytest.warns(UserWarning, match="could not be written"):
        rs.close(log_path=str(tmp_path / "missing-folder" / "session.log"))
    with pytest.raises(grpc.RpcError) as gone:
        sessions.GetSession(session_pb2.GetSessionRequest(name=rs.name))
    assert gone.value.code() is grpc.StatusCode.NOT_FOUND


def test_the_readmes_compatibility_table_is_the_signature_tables():
    from pathlib import Path

    from rsgrpc.client.signatures import compatibility_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert compatibility_table() in readme
