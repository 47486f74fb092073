"""Reclassify (Remotior's raster_reclassification) through a real gRPC channel, the Python
client and the command line: value tables, conditions and CSV tables against a NumPy
reference, several dtypes, nodata, tiled equals untiled, cancellation, and tables refused at
the door."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2
from rsgrpc_kernels import reclassify

from rsgrpc.client import Session
from rsgrpc.engine.paths import DataRoot
from rsgrpc.tools.reclassification import (
    RECLASSIFICATION,
    RECLASSIFY_DTYPES,
    ReclassificationParameters,
)
from rsgrpc.v1 import raster_pb2, session_pb2, session_pb2_grpc
from tests.conftest import (
    CRS,
    operation_metadata,
    operation_updates,
    watch_to_response,
    write_geotiff,
)
from tests.halo_job_checks import outputs_by_tile_edge

NODATA = 255
NAN = math.nan
# A rule of the reference: old is a number, None (nodata pixels) or (condition text, the
# same condition as a NumPy function of the pixels).
Condition = tuple[str, Callable[[np.ndarray], np.ndarray]]


def reference(
    array: np.ndarray,
    nodata: float | None,
    rules: list[tuple[float | None | Condition, float]],
    out_dtype: str,
    out_nodata: float | None,
) -> np.ndarray:
    """Each rule in turn overwrites the pixels it selects (so the last one wins); valid
    pixels no rule selects keep their value, rounded half away from zero into an integer
    type and nodata outside its range."""
    floating = array.dtype.kind == "f"
    missing = np.isnan(array) if floating else np.zeros(array.shape, bool)
    if nodata is not None and not math.isnan(nodata):
        missing |= array == array.dtype.type(nodata)
    values = array.astype(np.float64)
    out = np.where(missing, np.nan, values)
    if np.dtype(out_dtype).kind != "f":
        info = np.iinfo(out_dtype)
        rounded = np.where(values >= 0, np.floor(values + 0.5), np.ceil(values - 0.5))
        out = np.where((rounded < info.min) | (rounded > info.max), np.nan, rounded)
        out[missing] = np.nan
    with np.errstate(invalid="ignore"):
        for old, new in rules:
            if old is None:
                selected = missing
            elif isinstance(old, tuple):
                selected = ~missing & old[1](array)
            else:
                selected = ~missing & (array == array.dtype.type(old))
            out[selected] = new
    if out_nodata is None:
        assert not np.isnan(out).any()
        return out.astype(out_dtype)
    return np.where(np.isnan(out), out_nodata, out).astype(out_dtype)


def _message_rules(rules) -> list[raster_pb2.ReclassificationRule]:
    """The reference's rules as messages; messages as they are."""
    made = []
    for rule in rules:
        if isinstance(rule, raster_pb2.ReclassificationRule):
            made.append(rule)
            continue
        old, new = rule
        if isinstance(old, tuple):
            made.append(raster_pb2.ReclassificationRule(condition=old[0], new_value=new))
        else:
            made.append(
                raster_pb2.ReclassificationRule(
                    old_value=NAN if old is None else old, new_value=new
                )
            )
    return made


def _request(
    session: str,
    path: str = "rc/a.tif",
    output: str = "bad/out.tif",
    rules=None,
    **parameters,
) -> raster_pb2.ReclassifyRequest:
    """A request of `rules` (reference rules or messages); by default one rule 1 -> 2,
    unless a table_path is given."""
    if rules is None and "table_path" not in parameters:
        rules = [(1, 2)]
    return raster_pb2.ReclassifyRequest(
        session=session,
        inputs=[raster_pb2.RasterBand(path=path)],
        parameters=raster_pb2.ReclassifyParameters(rules=_message_rules(rules or []), **parameters),
        output=raster_pb2.ToolOutput(path=output, overwrite=True),
    )


def _read(root: Path, path: str):
    with rasterio.open(root / path) as ds:
        return ds.read(1), ds.profile


def _run(channel, raster_stub, request):
    return watch_to_response(
        channel, raster_stub.Reclassify(request), raster_pb2.ReclassifyResponse
    )


@pytest.fixture(scope="module")
def values(server):
    """Classes 0 to 29 with scattered nodata and a band of nodata across tile seams, on an
    odd-sized grid."""
    running, _ = server
    rng = np.random.default_rng(41)
    array = rng.integers(0, 30, (93, 71), dtype=np.uint8)
    array[rng.random(array.shape) < 0.1] = NODATA
    array[40:52, 10:60] = NODATA
    write_geotiff(running.data_root.root / "rc" / "a.tif", array, nodata=NODATA)
    return array


BETWEEN = ("(raster >= 10) & (raster < 20)", lambda a: (a >= 10) & (a < 20))
ABOVE = ("raster > 25", lambda a: a > 25)


def test_a_table_of_values_and_conditions_equals_the_reference(
    server, session_name, raster_stub, values
):
    running, channel = server
    rules = [
        (1, 100),
        (BETWEEN, 50),
        (15, 60),  # after the condition: wins on 15
        (2, 101),
        (2, 102),  # the same old value again: the later wins
        (ABOVE, NAN),  # nodata
        (None, 7),  # nodata pixels become 7
        (3, 103),
    ]
    updates, response = _run(
        channel, raster_stub, _request(session_name, output="rc/out/table.tif", rules=rules)
    )
    got, profile = _read(running.data_root.root, "rc/out/table.tif")
    assert (profile["dtype"], profile["nodata"], profile["crs"]) == ("uint8", NODATA, CRS)
    expected = reference(values, NODATA, rules, "uint8", NODATA)
    np.testing.assert_array_equal(got, expected)
    assert got[values == 15].tolist() == [60] * int(np.count_nonzero(values == 15))
    assert (got[values == NODATA] == 7).all()
    [out] = response.outputs
    assert (out.input.path, out.output_path) == ("rc/a.tif", "rc/out/table.tif")
    assert out.pixels_changed == np.count_nonzero(got != values)
    last = operation_metadata(updates[-1])
    assert last.tiles_done == last.tiles_total >= 1


def test_a_later_condition_wins_over_an_earlier_value(server, session_name, raster_stub, values):
    running, channel = server
    rules = [(12, 1), (BETWEEN, 2)]
    _run(channel, raster_stub, _request(session_name, output="rc/out/later.tif", rules=rules))
    got, _ = _read(running.data_root.root, "rc/out/later.tif")
    assert (got[values == 12] == 2).all()
    np.testing.assert_array_equal(got, reference(values, NODATA, rules, "uint8", NODATA))


DTYPE_CASES = {
    # input dtype, nodata, rules, output type (None: the input's), expected output dtype
    "int16 negatives": (
        "int16",
        -9999,
        [(("raster < 0", lambda a: a < 0), -1), (0, 1000), (None, -5)],
        None,
        "int16",
    ),
    "uint16 widened to int32 by a negative value": (
        "uint16",
        0,
        [(("raster > 40000", lambda a: a > 40000), -7), (5, 6)],
        None,
        "int32",
    ),
    "uint32 into uint8, out-of-range values nodata": (
        "uint32",
        None,
        [(("raster <= 3", lambda a: a <= 3), 1)],
        raster_pb2.DATA_TYPE_UINT8,
        "uint8",
    ),
    "float32 conditions in float32": (
        "float32",
        -1.0,
        [(("raster > 0.3", lambda a: a > np.float32(0.3)), 9.5), (0.25, 2.25)],
        None,
        "float32",
    ),
    "float64 into int32, halves away from zero": (
        "float64",
        NAN,
        [(("abs(raster) > 1e6", lambda a: np.abs(a) > 1e6), 0)],
        raster_pb2.DATA_TYPE_INT32,
        "int32",
    ),
    "int32 values searched": (
        "int32",
        -999,
        [(k, k * 1000) for k in range(-40, 40, 3)]
        + [(-40, 7), (("raster >= 30", lambda a: a >= 30), -2), (32, 5)],
        None,
        "int32",
    ),
    "int8 into float64": (
        "int8",
        -128,
        [(("(raster > -5) and (raster < 5)", lambda a: (a > -5) & (a < 5)), 0.5), (None, NAN)],
        raster_pb2.DATA_TYPE_FLOAT64,
        "float64",
    ),
}


def _sample(dtype: str, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    if dtype == "float32":
        array = rng.choice(np.array([0.1, 0.25, 0.3, 0.7, 2.5, -3.5], np.float32), shape)
        array[rng.random(shape) < 0.05] = np.nan
        return array
    if dtype == "float64":
        array = rng.normal(0, 3e6, shape)
        array[:4, 0] = [0.5, -0.5, 1.5, -2.5]  # halves, away from zero
        array[rng.random(shape) < 0.05] = np.nan
        return array
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, shape, dtype=np.int64).astype(dtype)


@pytest.mark.parametrize("case", list(DTYPE_CASES))
def test_each_dtype_equals_the_reference(server, session_name, raster_stub, case):
    running, channel = server
    dtype, nodata, rules, output_type, out_dtype = DTYPE_CASES[case]
    rng = np.random.default_rng(len(case))
    array = _sample(dtype, rng, (37, 53))
    if dtype == "int32":
        array = rng.integers(-50, 50, array.shape).astype(dtype)
    if dtype in ("int16", "int8"):
        array[::7] = rng.integers(-6, 6, array[::7].shape)
    if dtype == "uint16":
        array[::5, ::3] = 5
    if dtype == "uint32":
        array[::3] = rng.integers(0, 300, array[::3].shape)
    if nodata is not None and not math.isnan(nodata):
        array[rng.random(array.shape) < 0.1] = nodata
    name = case.replace(" ", "-").replace(",", "")
    write_geotiff(running.data_root.root / "rc" / "types" / f"{name}.tif", array, nodata=nodata)
    output = f"rc/types/out/{name}.tif"
    request = _request(
        session_name,
        path=f"rc/types/{name}.tif",
        output=output,
        rules=rules,
        output_data_type=output_type or raster_pb2.DATA_TYPE_UNSPECIFIED,
    )
    _run(channel, raster_stub, request)
    got, profile = _read(running.data_root.root, output)
    assert profile["dtype"] == out_dtype
    out_nodata = profile["nodata"]
    expected_nodata = {
        "int16 negatives": -9999,
        "uint16 widened to int32 by a negative value": 0,
        "uint32 into uint8, out-of-range values nodata": 255,
        "float32 conditions in float32": -1.0,
        "float64 into int32, halves away from zero": -32768,
        "int8 into float64": -128,
        "int32 values searched": -999,
    }[case]
    assert out_nodata == expected_nodata
    np.testing.assert_array_equal(got, reference(array, nodata, rules, out_dtype, out_nodata))


def test_an_input_without_nodata_gives_an_output_without(server, session_name, raster_stub):
    running, channel = server
    array = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30)
    write_geotiff(running.data_root.root / "rc" / "plain.tif", array)
    rules = [(("raster >= 600", lambda a: a >= 600), 1), (3, 4)]
    _run(channel, raster_stub, _request(session_name, "rc/plain.tif", "rc/out/plain.tif", rules))
    got, profile = _read(running.data_root.root, "rc/out/plain.tif")
    assert (profile["dtype"], profile["nodata"]) == ("uint16", None)
    np.testing.assert_array_equal(got, reference(array, None, rules, "uint16", None))


# --- CSV tables ---------------------------------------------------------------------------


CSV_TABLES = {
    "commas, with Remotior's header and a comma inside a condition": (
        "old_value,new_value\n1,100\n\nclip(raster, 0, 12) >= 12 , 50\n20,nan\nnull,9\n",
        ",",
        [
            (1, 100),
            (("clip(raster, 0, 12) >= 12", lambda a: np.clip(a, 0, 12) >= 12), 50),
            (20, NAN),
            (None, 9),
        ],
    ),
    "semicolons": (
        "(raster >= 10) & (raster < 20);5\n 12 ; 6 \nNaN;NULL\n",
        ";",
        [(BETWEEN, 5), (12, 6), (None, NAN)],
    ),
    "tabs": ("raster > 25\t1\n3\t2\n", "\t", [(ABOVE, 1), (3, 2)]),
}


@pytest.mark.parametrize("case", list(CSV_TABLES))
def test_a_csv_table_equals_its_rules(server, session_name, raster_stub, values, case):
    running, channel = server
    text, separator, rules = CSV_TABLES[case]
    name = case.split(",")[0]
    (running.data_root.root / "rc" / "tables").mkdir(parents=True, exist_ok=True)
    (running.data_root.root / "rc" / "tables" / f"{name}.csv").write_text(text)
    output = f"rc/out/csv-{name}.tif"
    request = _request(
        session_name, output=output, table_path=f"rc/tables/{name}.csv", separator=separator
    )
    if separator == ",":
        request.parameters.separator = ""  # the default
    _run(channel, raster_stub, request)
    got, _ = _read(running.data_root.root, output)
    np.testing.assert_array_equal(got, reference(values, NODATA, rules, "uint8", NODATA))


# --- tiled equals untiled, through the engine -------------------------------------------


def test_many_tiles_equal_one_tile_and_the_reference(server, session_name, tmp_path):
    running, _ = server
    engine_session = running.registry.get(session_name)
    root = DataRoot.at(tmp_path)
    rng = np.random.default_rng(11)
    surface = rng.normal(100, 40, (301, 259)).astype(np.float32)
    surface[100:140, 30:200] = np.nan
    write_geotiff(tmp_path / "surface.tif", surface, nodata=np.nan, block=64)
    conditions = [
        ("raster < 50", lambda a: a < 50),
        ("(raster >= 90) & (raster < 110)", lambda a: (a >= 90) & (a < 110)),
        ("raster > 170", lambda a: a > 170),
    ]
    rules = [(conditions[0], 1), (conditions[1], 2), (conditions[2], NAN), (None, 4)]
    parameters = ReclassificationParameters(
        rules=tuple((old[0] if isinstance(old, tuple) else old, new) for old, new in rules),
        output_dtype="int16",
    )
    outputs = outputs_by_tile_edge(
        RECLASSIFICATION, parameters, "surface.tif", root, engine_session, tmp_path
    )
    tiled, profile_tiled = outputs[64]
    np.testing.assert_array_equal(tiled, outputs[512][0])
    assert (profile_tiled["dtype"], profile_tiled["nodata"]) == ("int16", -32768)
    np.testing.assert_array_equal(tiled, reference(surface, NAN, rules, "int16", -32768))


def test_the_declared_dtypes_are_the_kernels():
    assert RECLASSIFY_DTYPES == reclassify.RECLASSIFY_DTYPES


# --- cancel and refusals ------------------------------------------------------------------


def _temporary_files(channel, session_name: str) -> set[Path]:
    session = session_pb2_grpc.SessionServiceStub(channel).GetSession(
        session_pb2.GetSessionRequest(name=session_name)
    )
    return set(Path(session.temporary_directory).iterdir())


def test_cancel_leaves_no_output_and_no_temporary_files(server, session_name, raster_stub):
    running, channel = server
    big = running.data_root.root / "rc" / "big.tif"
    if not big.exists():
        write_geotiff(big, np.random.default_rng(5).integers(0, 200, (3072, 3072), np.uint8))
    before = _temporary_files(channel, session_name)
    # Every condition is a pass over each tile: slow enough to cancel half way.
    rules = [
        raster_pb2.ReclassificationRule(condition=f"raster > {k}", new_value=k) for k in range(200)
    ]
    request = _request(session_name, "rc/big.tif", "rc/cancelled/out.tif", rules=rules)
    operation = raster_stub.Reclassify(request)
    updates = operation_updates(channel, operation)
    started = next(u for u in updates if operation_metadata(u).tiles_done >= 1)
    updates.cancel()
    operations = lro_grpc.OperationsStub(channel)
    operations.CancelOperation(lro.CancelOperationRequest(name=started.name))
    final = operations.WaitOperation(lro.WaitOperationRequest(name=started.name, timeout=None))
    assert final.done and final.error.code == code_pb2.CANCELLED
    assert not any((running.data_root.root / "rc" / "cancelled").glob("*"))
    assert _temporary_files(channel, session_name) == before


def _condition(text: str) -> list[raster_pb2.ReclassificationRule]:
    return [raster_pb2.ReclassificationRule(condition=text, new_value=1)]


BAD_PARAMETERS = {
    "hostile condition": (
        {"rules": _condition("__import__('os')")},
        "function '__import__' is not allowed",
    ),
    "hostile call chain": (
        {"rules": _condition("__import__('os').system('id')")},
        "calling attribute access is not allowed",
    ),
    "attribute access": ({"rules": _condition("raster.__class__ > 1")}, "not allowed"),
    "unknown name": ({"rules": _condition("nir > 1")}, "unknown name 'nir'"),
    "unparseable": ({"rules": _condition("raster >")}, "syntax error"),
    "not true or false": ({"rules": _condition("raster * 2")}, "is not true or false"),
    "reads no raster": ({"rules": _condition("1 > 0")}, "does not read raster"),
    "no table": ({"rules": []}, "the reclassification table is empty"),
    "rules and a table": (
        {"rules": _condition("raster > 1"), "table_path": "rc/x.csv"},
        "not both",
    ),
    "a rule without old": (
        {"rules": [raster_pb2.ReclassificationRule(new_value=1)]},
        "rule 1 has neither an old_value nor a condition",
    ),
    "infinite new value": (
        {"rules": [raster_pb2.ReclassificationRule(old_value=1, new_value=math.inf)]},
        "rule 1: new value inf is not a pixel value",
    ),
    "new value over the input type": (
        {"rules": [raster_pb2.ReclassificationRule(old_value=1, new_value=300)]},
        "new value 300 is not a value of the output type uint8",
    ),
    "fractional new value into an integer type": (
        {"rules": [raster_pb2.ReclassificationRule(old_value=1, new_value=2.5)]},
        "new value 2.5 is not a value of the output type uint8",
    ),
    "negative new value into a given UInt16": (
        {
            "rules": [raster_pb2.ReclassificationRule(old_value=1, new_value=-1)],
            "output_data_type": raster_pb2.DATA_TYPE_UINT16,
        },
        "new value -1 is not a value of the output type uint16",
    ),
    "old value no pixel holds": (
        {"rules": [raster_pb2.ReclassificationRule(old_value=1.5, new_value=1)]},
        "old value 1.5 is not a value of input 'rc/a.tif' band 1, which is uint8",
    ),
    "old value that is nodata": (
        {"rules": [raster_pb2.ReclassificationRule(old_value=NODATA, new_value=1)]},
        "old value 255 is the nodata value of input 'rc/a.tif' band 1; nan selects nodata",
    ),
    "too many conditions": (
        {"rules": [r for k in range(257) for r in _condition(f"raster > {k}")]},
        "more than 256 conditions",
    ),
    "unknown output type": ({"output_data_type": 42}, "unknown output_data_type 42"),
}


@pytest.mark.parametrize("case", list(BAD_PARAMETERS))
def test_bad_parameters_are_invalid_argument(server, session_name, raster_stub, values, case):
    running, _ = server
    parameters, fragment = BAD_PARAMETERS[case]
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.Reclassify(_request(session_name, **parameters))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


BAD_TABLES = {
    "no separator": ("1 2\n", "line 1 has no ',' between its old and new value"),
    "a new value that is code": ("1,__import__('os')\n", "line 1: new value"),
    "a hostile condition": ("__import__('os').remove('x'),1\n", "is not allowed"),
    "a condition of unknown names": ("3,4\nred > 1,2\n", "rule 2: condition 'red > 1'"),
    "only a header": ("old_value,new_value\n", "the reclassification table is empty"),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_csv_tables_are_invalid_argument(server, session_name, raster_stub, values, case):
    running, _ = server
    text, fragment = BAD_TABLES[case]
    path = running.data_root.root / "rc" / "bad-tables" / f"{case}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.Reclassify(_request(session_name, table_path=f"rc/bad-tables/{case}.csv"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in caught.value.details()
    assert str(running.data_root.root) not in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


def test_a_table_outside_the_data_root_is_refused(server, session_name, raster_stub, values):
    running, _ = server
    outside = running.data_root.root.parent / "outside.csv"
    outside.write_text("1,2\n")
    for path, code in (
        ("../outside.csv", grpc.StatusCode.PERMISSION_DENIED),
        (str(outside), grpc.StatusCode.PERMISSION_DENIED),
        ("rc/missing.csv", grpc.StatusCode.NOT_FOUND),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.Reclassify(_request(session_name, table_path=path))
        assert caught.value.code() == code, path
        assert str(running.data_root.root) not in caught.value.details()
    assert not (running.data_root.root / "bad").exists()


# --- the Python client and the command line -----------------------------------------------


def test_the_client_takes_remotiors_signature(server, values):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        parameters = inspect.signature(rs.raster_reclassification).parameters.values()
        positional = [(p.name, p.default) for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        # Remotior 0.7.5's raster_reclassification, written out here.
        assert positional == [
            ("raster_path", inspect.Parameter.empty),
            ("output_path", None),
            ("overwrite", False),
            ("reclassification_table", None),
            ("csv_path", None),
            ("separator", ","),
            ("output_data_type", None),
            ("extent_list", None),
            ("n_processes", None),
            ("available_ram", None),
            ("virtual_output", None),
            ("progress_message", True),
        ]
        table = [[1, -10], ["raster > 20", "20"], ["nan", 6000], [2, "null"]]
        # raster_path, output_path, overwrite, reclassification_table, csv_path, separator,
        # output_data_type
        out = rs.raster_reclassification(
            "rc/a.tif", "rc/client/table", False, table, None, ",", "Int16"
        )
        assert out.check, out.grpc
        assert out.paths == ["rc/client/table.tif"]
        got, profile = _read(root, out.path)
        assert (profile["dtype"], profile["nodata"]) == ("int16", NODATA)
        rules = [(1, -10), (("raster > 20", lambda a: a > 20), 20), (None, 6000), (2, NAN)]
        np.testing.assert_array_equal(got, reference(values, NODATA, rules, "int16", NODATA))

        again = rs.raster_reclassification("rc/a.tif", "rc/client/table.tif", False, table)
        assert again.check is False and again.grpc.code == "ALREADY_EXISTS"

        (root / "rc" / "client" / "table.csv").write_text("raster < 5;1\n")
        csv = rs.raster_reclassification(
            "rc/a.tif", "rc/client/csv.tif", csv_path="rc/client/table.csv", separator=";"
        )
        assert csv.check, csv.grpc
        rules = [(("raster < 5", lambda a: a < 5), 1)]
        np.testing.assert_array_equal(
            _read(root, csv.path)[0], reference(values, NODATA, rules, "uint8", NODATA)
        )

        # Remotior's extent_list: left, top, right, bottom, on the input's pixel lines.
        clipped = rs.raster_reclassification(
            "rc/a.tif",
            "rc/client/clipped.tif",
            reclassification_table=[[1, 10]],
            extent_list=[500050.0, 4599960.0, 500250.0, 4599700.0],
        )
        assert clipped.check, clipped.grpc
        window = values[4:30, 5:25]
        np.testing.assert_array_equal(
            _read(root, clipped.path)[0], reference(window, NODATA, [(1, 10)], "uint8", NODATA)
        )

        refused = rs.raster_reclassification(
            "rc/a.tif", "rc/client/x.tif", reclassification_table=[["exec('1') > 0", 1]]
        )
        assert refused.check is False and refused.grpc.code == "INVALID_ARGUMENT"
        assert "'exec' is not allowed" in refused.grpc.message
        neither = rs.raster_reclassification("rc/a.tif", "rc/client/x.tif")
        assert neither.check is False
        assert "give a reclassification_table or a csv_path" in neither.grpc.message
        assert not (root / "rc" / "client" / "x.tif").exists()
    finally:
        rs.close()


def test_the_command_writes_its_output_with_a_progress_bar(server, values):
    running, _ = server
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "reclassify",
            "--target",
            f"127.0.0.1:{running.port}",
            "--processes",
            "1",
            "--input",
            "rc/a.tif",
            "--rule",
            "1=10",
            "--rule",
            "raster >= 20=0",
            "--rule",
            "nan=3",
            "--dtype",
            "Int16",
            "--output",
            "rc/cli.tif",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "rc/cli.tif:" in result.stdout and "pixels changed" in result.stdout
    assert "[####" in result.stderr
    got, profile = _read(running.data_root.root, "rc/cli.tif")
    assert profile["dtype"] == "int16"
    rules = [(1, 10), (("raster >= 20", lambda a: a >= 20), 0), (None, 3)]
    np.testing.assert_array_equal(got, reference(values, NODATA, rules, "int16", NODATA))
