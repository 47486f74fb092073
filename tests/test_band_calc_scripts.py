"""Band calc scripts of several lines, as Remotior takes them: through a real gRPC channel and
through the Python client. Outputs named with '@', later lines reading earlier outputs,
pixels against numpy, errors at the door naming the line, and cancel leaving no output."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2

from rsgrpc.client import Session
from rsgrpc.engine.band_calc_script import MAX_STATEMENTS, split_script
from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.v1 import raster_pb2
from tests.conftest import (
    operation_metadata,
    operation_updates,
    watch_to_response,
    write_geotiff,
)

NODATA = -32768.0


def _request(session, expression, output, inputs, **kwargs) -> raster_pb2.BandCalcRequest:
    return raster_pb2.BandCalcRequest(
        session=session,
        expression=expression,
        inputs=[raster_pb2.RasterInput(name=n, path=p) for n, p in inputs.items()],
        output_path=output,
        **kwargs,
    )


@pytest.fixture(scope="module")
def ab(server):
    """Two inputs on one grid: `a` with a nodata stripe (0), `b` without nodata."""
    running, _ = server
    rng = np.random.default_rng(11)
    shape = (700, 650)
    a = rng.integers(1, 1000, shape).astype(np.int16)
    b = rng.integers(1, 2000, shape).astype(np.uint16)
    a[100:120, :] = 0
    root = running.data_root.root
    write_geotiff(root / "in" / "a.tif", a, nodata=0)
    write_geotiff(root / "in" / "b.tif", b)
    return a, b


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def _masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask, np.float32(NODATA), values.astype(np.float32))


INPUTS = {"a": "in/a.tif", "b": "in/b.tif"}

SCRIPT = """# a ratio, then a scaled copy of it, then both inputs again
("b" - "a") / ("b" + "a") @ ratio

# a later line reads an earlier output by its name
where("ratio" > 0, "ratio" * 100, 0) @ scaled
  "scaled" + "a" / 10 @ scripts/other @ final
"""


def test_three_line_script_runs_in_order_and_equals_numpy(server, session_name, raster_stub, ab):
    running, channel = server
    a, b = ab
    root = running.data_root.root
    operation = raster_stub.BandCalc(
        _request(session_name, SCRIPT, "scripts/out.tif", INPUTS, overwrite=True)
    )
    updates, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert [(o.name, o.output_path, o.line) for o in response.outputs] == [
        ("ratio", "scripts/ratio.tif", 2),
        ("scaled", "scripts/scaled.tif", 5),
        ("final", "scripts/other/final.tif", 6),
    ]
    # The single-output fields hold the last calculation's.
    assert response.output_path == "scripts/other/final.tif"
    assert response.statistics == response.outputs[-1].statistics
    assert not (root / "scripts" / "out.tif").exists()

    mask = a == 0
    af, bf = a.astype(np.float64), b.astype(np.float64)
    ratio = _masked((bf - af) / (bf + af), mask)
    np.testing.assert_allclose(_read(root / "scripts" / "ratio.tif"), ratio, rtol=1e-6)
    r = ratio.astype(np.float64)
    scaled = _masked(np.where(r > 0, r * 100, 0), mask)
    np.testing.assert_allclose(_read(root / "scripts" / "scaled.tif"), scaled, rtol=1e-6)
    final = _masked(scaled.astype(np.float64) + af / 10, mask)
    np.testing.assert_allclose(_read(root / "scripts" / "other" / "final.tif"), final, rtol=1e-6)
    assert response.outputs[0].statistics.nodata_pixel_count == np.count_nonzero(mask)
    assert response.outputs[2].statistics.valid_pixel_count == np.count_nonzero(~mask)

    # Progress counts every line's tiles, once.
    last = operation_metadata(updates[-1])
    assert last.tiles_total >= 3 and last.tiles_done == last.tiles_total


def test_lines_without_a_name_write_output_n_in_a_folder(server, session_name, raster_stub, ab):
    running, channel = server
    a, _ = ab
    root = running.data_root.root
    text = '"a" * 2\n\n"output1" + 1\n'
    operation = raster_stub.BandCalc(
        _request(
            session_name,
            text,
            "unnamed",
            {"a": "in/a.tif"},
            output_data_type=raster_pb2.DATA_TYPE_INT32,
        )
    )
    _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert [o.output_path for o in response.outputs] == [
        "unnamed/output1.tif",
        "unnamed/output2.tif",
    ]
    expected = np.where(a == 0, NODATA, a.astype(np.int32) * 2 + 1).astype(np.int32)
    np.testing.assert_array_equal(_read(root / "unnamed" / "output2.tif"), expected)


def test_one_line_named_with_at_writes_in_the_output_folder(server, session_name, raster_stub, ab):
    running, channel = server
    _, b = ab
    root = running.data_root.root
    operation = raster_stub.BandCalc(
        _request(session_name, '"b" - 1 @ minus_one.tif', "named/ignored.tif", INPUTS)
    )
    _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert response.output_path == "named/minus_one.tif"
    assert [o.name for o in response.outputs] == ["minus_one"]
    np.testing.assert_array_equal(_read(root / "named" / "minus_one.tif"), b - 1.0)
    assert not (root / "named" / "ignored.tif").exists()


def test_a_single_expression_lists_its_one_output(server, session_name, raster_stub, ab):
    _, channel = server
    operation = raster_stub.BandCalc(_request(session_name, '"a" + 1', "single/x.tif", INPUTS))
    _, response = watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    assert response.output_path == "single/x.tif"
    assert [(o.name, o.output_path, o.line) for o in response.outputs] == [("x", "single/x.tif", 1)]
    assert response.outputs[0].statistics == response.statistics


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ('"a" + 1 @ x\n"nope" * 2 @ y', 'expression line 2, column 1: unknown input "nope"'),
        ('"later" + 1 @ first\n"a" * 2 @ later', '"later" is the output of line 2'),
        ('"x" + 1 @ x', '"x" is its own output'),
        ('"a" @ x\n"b" @ x', 'output name "x" is also the output of line 1'),
        ('"a" @ x\n"b" @ x.tif', 'output name "x" is also the output of line 1'),
        ('"a" @ a', 'output name "a" is the name of an input'),
        ('"a" + 1 @ x\n\n"a" + * 2 @ y', "expression line 3, column 7: syntax error"),
        ('"a" + 1 @ x\n# fine\n__import__("os") @ y', "expression line 3, column 1: function"),
        ('"a" @ /etc @ x', "outside the server's data roots"),
        ('"a" @ ../up @ x', "contains '..'"),
        ('"a" @ bad/name', "is not a valid file name"),
        ('"a" @ x @ y @ z', "at most two '@'"),
        ('"a" @ ', "the output name after '@' is empty"),
        ('"a" @ temp @ x', "temporary folder"),
        ('"a" @ x%2', "line 1, column 5: band set 2 does not exist"),
        ('"#NDVI#" @ x', '"#NDVI#" reads "#NIR#": "#NIR#" reads band set 1, which has no bands'),
        ('"a" @ x\n"bandset1b1" * 2 @ y', "line 2, column 1: band set 1 has 0 band(s)"),
        ('forbandsets[1:2]\n"a" @ x', "line 1, column 13: band set 2 does not exist"),
        ('"a" @ x\nforbandsets[1]\n"a" @ y', "line 2, column 1: a band set iteration is the first"),
        ("\n".join(['"a"'] * (MAX_STATEMENTS + 1)), f"at most {MAX_STATEMENTS} calculations"),
    ],
)
def test_a_bad_script_is_refused_at_the_door_and_writes_nothing(
    server, session_name, raster_stub, ab, script, message
):
    running, _ = server
    root = running.data_root.root
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandCalc(_request(session_name, script, "refused/out.tif", INPUTS))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert message in caught.value.details()
    assert not (root / "refused").exists()


def test_an_alias_of_an_empty_bandset_is_refused_naming_it(session_name, raster_stub, ab):
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandCalc(_request(session_name, '2 * "#NIR#"', "refused/x.tif", INPUTS))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == (
        'expression line 1, column 5: "#NIR#" reads band set 1, which has no bands'
    )


def test_an_existing_output_of_a_later_line_is_refused_before_any_line_runs(
    server, session_name, raster_stub, ab
):
    running, _ = server
    root = running.data_root.root
    (root / "exists").mkdir()
    (root / "exists" / "y.tif").write_bytes(b"kept")
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandCalc(_request(session_name, '"a" @ x\n"x" @ y', "exists/o.tif", INPUTS))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "line 2 output 'exists/y.tif' exists" in caught.value.details()
    assert sorted(p.name for p in (root / "exists").iterdir()) == ["y.tif"]


def test_cancel_during_a_later_line_leaves_no_output_of_any_line(server, session_name, raster_stub):
    running, channel = server
    root = running.data_root.root
    big = root / "big_script.tif"
    write_geotiff(big, np.arange(4096 * 4096, dtype=np.float32).reshape(4096, 4096), block=256)
    heavy = " + ".join(f"sin(first + {k})" for k in range(40))
    script = f'"x" * 1 @ first\n{heavy} @ second\n'
    operation = raster_stub.BandCalc(
        _request(session_name, script, "cancel_script/out.tif", {"x": "big_script.tif"})
    )
    operations = lro_grpc.OperationsStub(channel)
    for update in operation_updates(channel, operation):
        metadata = operation_metadata(update)
        if metadata.tiles_total and metadata.tiles_done > metadata.tiles_total // 2:
            # The first line is written: the second is running.
            assert (root / "cancel_script" / "first.tif").exists()
            operations.CancelOperation(lro.CancelOperationRequest(name=operation.name))
            break
    final = operations.WaitOperation(lro.WaitOperationRequest(name=operation.name))
    assert final.done
    assert final.error.code == code_pb2.CANCELLED
    assert list((root / "cancel_script").iterdir()) == []


def test_a_later_line_failing_as_it_runs_removes_the_earlier_lines_outputs(
    server, session_name, raster_stub, ab
):
    running, channel = server
    _, b = ab
    root = running.data_root.root
    write_geotiff(root / "in" / "c.tif", b)
    blocker_input = root / "blocker.tif"
    write_geotiff(blocker_input, np.ones((2048, 2048), np.float32), block=256)
    heavy = " + ".join(f"sin(x + {k})" for k in range(40))
    # A job ahead of the script in the session's queue, while the script's second
    # input, checked at the door, becomes unreadable.
    blocker = raster_stub.BandCalc(
        _request(session_name, heavy, "blocked/out.tif", {"x": "blocker.tif"})
    )
    script = raster_stub.BandCalc(
        _request(
            session_name,
            '"b" * 2 @ first\n"first" + "c" @ second',
            "fails/o.tif",
            {
                "b": "in/b.tif",
                "c": "in/c.tif",
            },
        )
    )
    (root / "in" / "c.tif").write_bytes(b"not a GeoTIFF any more")
    operations = lro_grpc.OperationsStub(channel)
    operations.CancelOperation(lro.CancelOperationRequest(name=blocker.name))
    final = operations.WaitOperation(lro.WaitOperationRequest(name=script.name))
    assert final.done and final.HasField("error")
    assert "in/c.tif" in final.error.message
    assert not (root / "fails").exists() or list((root / "fails").iterdir()) == []


def test_the_client_returns_every_line_s_output_in_order(server, ab):
    running, channel = server
    a, b = ab
    root = running.data_root.root
    with Session(1, 1, channel=channel) as rs:
        out = rs.band_calc(
            expression_string='# two lines\n"a" + "b" @ total\n\n"total" / 2 @ half\n',
            output_path="client_script",
            input_raster_list=[["in/a.tif", "a"], ["in/b.tif", "b"]],
        )
        assert out.check, out.grpc
        assert out.paths == ["client_script/total.tif", "client_script/half.tif"]
        assert out.path == "client_script/total.tif"
        expected = _masked((a.astype(np.float64) + b) / 2, a == 0)
        np.testing.assert_allclose(_read(root / "client_script" / "half.tif"), expected)

        single = rs.band_calc('"a" * 3', "client_script/single", [["in/a.tif", "a"]])
        assert single.check and single.paths == ["client_script/single.tif"]

        refused = rs.band_calc('"a" @ x\n"y" * 2 @ z', "client_script/bad", [["in/a.tif", "a"]])
        assert not refused.check
        assert refused.grpc.code == "INVALID_ARGUMENT"
        assert "expression line 2" in refused.extra["message"]
        assert not (root / "client_script" / "bad").exists()


# The splitting of a script, as text.


def test_statements_follow_lines_brackets_quotes_and_comments():
    script = split_script(
        '# c\r\n("a@b" +\n  "c")  @ out # @ no\n\n   \n"out" * 2 @ d @ name.tif\n# end'
    )
    assert script.has_comments and not script.is_single_expression
    first, second = script.statements
    assert (first.number, first.line, first.expression.strip()) == (1, 2, '("a@b" +\n  "c")')
    assert (first.folder, first.name) == (None, "out")
    assert (second.line, second.folder, second.name) == (6, "d", "name.tif")


def test_a_single_expression_is_recognised():
    assert split_script("  (red +\n   nir)").is_single_expression
    assert split_script('"a" + 1\n').is_single_expression
    assert not split_script('"a" + 1 @ x').is_single_expression
    assert not split_script('"a"\n"b"').is_single_expression
    assert not split_script('# c\n"a"').is_single_expression


def test_too_many_at_is_refused_with_its_position():
    with pytest.raises(InvalidArgumentError, match="line 2, column 13"):
        split_script('"a"\n"b" @ c @ d @ e')
