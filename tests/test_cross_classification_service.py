"""CrossClassification (Remotior's cross_classification) through a real gRPC channel, the
Python client and the command line: pairs, codes and the map's classes against NumPy,
the error matrix's accuracies and area estimates against Olofsson et al. (2014) written
out here and checked on the paper's worked example, Remotior's CSV text, tiled equals
untiled, cancellation, and requests refused at the door."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import rasterio
from google.rpc import code_pb2
from rasterio.transform import from_origin

from rsgrpc.client import Session
from rsgrpc.engine.band_tool import BandInput
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.table_job import TableRequest, prepare_table_job, run_table_job
from rsgrpc.tools.accuracy import assess
from rsgrpc.tools.cross_classification import CROSS_CLASSIFICATION, CrossParameters
from rsgrpc.v1 import raster_pb2
from tests.conftest import operation_metadata, operation_response, watch_operation, write_geotiff
from tests.table_job_checks import assert_cancel_leaves_nothing, retiled

PIXEL_AREA = 10.0 * 10.0  # conftest's TRANSFORM: 10 m pixels
NODATA = 2**31 - 1

# Olofsson et al. (2014), section 5 (Tables 8 and 9): the map's pixels per class
# (deforestation, forest gain, stable forest, stable non-forest; 30 m pixels) and the
# sample's error matrix, rows the map's classes, columns the reference's.
PAPER_MAP_PIXELS = [200_000, 150_000, 3_200_000, 6_450_000]
PAPER_MATRIX = [[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]]
# The paper's results: estimated areas and 95% intervals in ha, user's, producer's and
# overall accuracies with their 95% intervals, rounded as the paper gives them.
PAPER_AREA_HA = [21_158, 11_686, 285_770, 581_386]
PAPER_AREA_CI_HA = [6_158, 3_756, 15_510, 16_282]
PAPER_USERS = [(0.88, 0.07), (0.73, 0.10), (0.93, 0.04), (0.96, 0.02)]
PAPER_PRODUCERS = [0.75, 0.85, 0.93, 0.96]
PAPER_OVERALL = (0.95, 0.02)


# --- the independent reference ------------------------------------------------------------


def pairs_reference(
    classification: np.ndarray,
    reference: np.ndarray,
    nodatas: tuple[float | None, float | None],
    nodata_value: float | None = None,
):
    """The pairs (reference, classification) of pixels valid in both, their counts, the
    raster of codes, and the map's classes and counts (valid classification pixels)."""
    valid_class = np.ones(classification.shape, bool)
    for value in (nodatas[0], nodata_value):
        if value is not None:
            valid_class &= classification != value
    valid = valid_class.copy()
    for value in (nodatas[1], nodata_value):
        if value is not None:
            valid &= reference != value
    stacked = np.stack(
        [reference[valid].astype(np.int64), classification[valid].astype(np.int64)], axis=1
    )
    pairs, inverse, counts = np.unique(stacked, axis=0, return_inverse=True, return_counts=True)
    codes = np.full(classification.shape, NODATA, np.int32)
    codes[valid] = inverse.ravel() + 1
    classes, class_counts = np.unique(classification[valid_class], return_counts=True)
    return pairs, counts, codes, classes.astype(np.int64), class_counts


def _ratio(a: float, b: float) -> float:
    """a / b, NaN where b is 0 (a class that the reference never holds)."""
    return a / b if b else math.nan


def olofsson(matrix: list[list[int]], map_pixels: list[int]) -> dict[str, list[float] | float]:
    """Olofsson et al. (2014), equations 1 to 10, written out term by term: rows i the
    map's classes (strata), columns j the reference's. A row without reference pixels
    is a stratum that no sum includes."""
    q = len(matrix)
    total_map = sum(map_pixels)
    w = [m / total_map for m in map_pixels]
    n_row = [sum(row) for row in matrix]
    strata = [i for i in range(q) if n_row[i]]
    p = [[w[i] * matrix[i][j] / n_row[i] if n_row[i] else 0.0 for j in range(q)] for i in range(q)]
    p_col = [sum(p[i][j] for i in strata) for j in range(q)]
    users = [_ratio(matrix[i][i], n_row[i]) for i in range(q)]
    producers = [_ratio(p[j][j], p_col[j]) for j in range(q)]
    overall = sum(p[k][k] for k in strata)
    var_overall = sum(w[i] ** 2 * users[i] * (1 - users[i]) / (n_row[i] - 1) for i in strata)
    var_users = [
        users[i] * (1 - users[i]) / (n_row[i] - 1) if n_row[i] else math.nan for i in range(q)
    ]
    var_producers = []
    for j in range(q):
        n_hat = sum(map_pixels[i] * matrix[i][j] / n_row[i] for i in strata)
        first = map_pixels[j] ** 2 * (1 - producers[j]) ** 2 * var_users[j] if n_row[j] else 0
        second = sum(
            map_pixels[i] ** 2
            * (matrix[i][j] / n_row[i])
            * (1 - matrix[i][j] / n_row[i])
            / (n_row[i] - 1)
            for i in strata
            if i != j
        )
        var_producers.append(_ratio(first + producers[j] ** 2 * second, n_hat**2))
    se_p_col = [
        math.sqrt(sum((w[i] * p[i][k] - p[i][k] ** 2) / (n_row[i] - 1) for i in strata))
        for k in range(q)
    ]
    total = sum(n_row)
    chance = sum(n_row[i] * sum(matrix[r][i] for r in range(q)) for i in range(q)) / total**2
    observed = sum(matrix[i][i] for i in range(q)) / total
    return {
        "p": [x for row in p for x in row],
        "p_col": p_col,
        "se_p_col": se_p_col,
        "users": users,
        "users_se": [math.sqrt(v) for v in var_users],
        "producers": producers,
        "producers_se": [math.sqrt(v) for v in var_producers],
        "overall": overall,
        "overall_se": math.sqrt(var_overall),
        "kappa": (observed - chance) / (1 - chance),
        "sample_overall": observed,
    }


def test_the_reference_formulas_give_the_papers_worked_example():
    ref = olofsson(PAPER_MATRIX, PAPER_MAP_PIXELS)
    hectares = sum(PAPER_MAP_PIXELS) * 0.09
    assert [round(x * hectares) for x in ref["p_col"]] == PAPER_AREA_HA
    assert [round(1.96 * x * hectares) for x in ref["se_p_col"]] == PAPER_AREA_CI_HA
    assert [
        (round(u, 2), round(1.96 * s, 2))
        for u, s in zip(ref["users"], ref["users_se"], strict=True)
    ] == PAPER_USERS
    assert [round(x, 2) for x in ref["producers"]] == PAPER_PRODUCERS
    assert (round(ref["overall"], 2), round(1.96 * ref["overall_se"], 2)) == PAPER_OVERALL


def test_assess_equals_the_reference_formulas_on_the_paper():
    classes = np.arange(1, 5)
    a = assess(classes, np.array(PAPER_MATRIX, np.int64), np.array(PAPER_MAP_PIXELS, np.int64))
    ref = olofsson(PAPER_MATRIX, PAPER_MAP_PIXELS)
    np.testing.assert_allclose(a.proportions.ravel(), ref["p"], rtol=1e-14)
    np.testing.assert_allclose(a.estimated, ref["p_col"], rtol=1e-14)
    np.testing.assert_allclose(a.estimated_se, ref["se_p_col"], rtol=1e-12)
    np.testing.assert_allclose(a.users, ref["users"], rtol=1e-14)
    np.testing.assert_allclose(a.users_se, ref["users_se"], rtol=1e-12)
    np.testing.assert_allclose(a.producers, ref["producers"], rtol=1e-14)
    np.testing.assert_allclose(a.producers_se, ref["producers_se"], rtol=1e-12)
    assert a.overall == pytest.approx(ref["overall"], rel=1e-14)
    assert a.overall_se == pytest.approx(ref["overall_se"], rel=1e-12)
    assert a.kappa == pytest.approx(ref["kappa"], rel=1e-12)
    assert a.unsampled == 0.0


def test_a_stratum_of_one_pixel_has_nan_variances_and_an_unsampled_class_is_reported():
    classes = np.arange(1, 4)
    counts = np.array([[5, 1, 0], [0, 1, 0], [0, 0, 0]], np.int64)
    a = assess(classes, counts, np.array([60, 30, 10], np.int64))
    assert a.unsampled == pytest.approx(0.1)
    assert np.isnan(a.users_se[1]) and not np.isnan(a.users_se[0])
    assert np.isnan(a.estimated_se).all() and np.isnan(a.overall_se)
    assert not np.isnan(a.users_se[0]) and not np.isnan(a.producers[1])
    assert np.isnan(a.users[2]) and a.proportions[2].sum() == 0.0
    assert a.estimated.sum() == pytest.approx(0.9)


# --- rasters --------------------------------------------------------------------------


def _rasters() -> dict[str, tuple[np.ndarray, float | None]]:
    """Odd-sized classification and reference bands of several integer types on one grid,
    with nodata, correlated as a classification is with its reference."""
    rng = np.random.default_rng(5)
    shape = (1031, 777)
    truth = rng.integers(1, 6, shape)
    noisy = np.where(rng.random(shape) < 0.8, truth, rng.integers(1, 7, shape))
    cls_u8 = noisy.astype(np.uint8)
    cls_u8[rng.random(shape) < 0.05] = 255
    ref_i16 = truth.astype(np.int16)
    ref_i16[rng.random(shape) < 0.7] = -9999  # a sparse reference, as sampled ROIs are
    cls_u32 = (noisy * 10_000).astype(np.uint32)
    ref_u16 = (truth * 10_000).astype(np.uint16)
    ref_u16[:200, :] = 0
    cls_i32 = (noisy - 3).astype(np.int32)
    ref_i8 = (truth - 3).astype(np.int8)
    ref_i8[rng.random(shape) < 0.5] = -128
    return {
        "cls_u8": (cls_u8, 255),
        "ref_i16": (ref_i16, -9999),
        "cls_u32": (cls_u32, None),
        "ref_u16": (ref_u16, 0),
        "cls_i32": (cls_i32, -2),
        "ref_i8": (ref_i8, -128),
    }


@pytest.fixture(scope="module")
def rasters(server):
    running, _ = server
    root = running.data_root.root
    made = _rasters()
    for name, (array, nodata) in made.items():
        write_geotiff(root / "cc" / f"{name}.tif", array, nodata=nodata, block=64)
    write_geotiff(root / "cc" / "c.tif", np.array([[1, 1, 2], [2, 9, 1]], np.uint8), nodata=9)
    write_geotiff(root / "cc" / "r.tif", np.array([[1, 2, 2], [2, 1, 0]], np.int16), nodata=0)
    return made


def _request(session: str, classification: str, reference: str, output: str, **kw):
    parameters = raster_pb2.CrossClassificationParameters(
        cross_matrix=kw.pop("cross_matrix", False),
        error_matrix=kw.pop("error_matrix", False),
        regression=kw.pop("regression", False),
    )
    if kw.get("nodata_value") is not None:
        parameters.nodata_value = kw.pop("nodata_value")
    inputs = kw.pop("inputs", [raster_pb2.RasterBand(path=classification)])
    return raster_pb2.CrossClassificationRequest(
        session=session,
        inputs=inputs,
        parameters=parameters,
        output=raster_pb2.RasterTableOutput(path=output, overwrite=kw.pop("overwrite", True)),
        reference=raster_pb2.CrossClassificationReference(
            path=reference, vector_field=kw.pop("vector_field", "")
        ),
    )


def _run(server, stub, request) -> raster_pb2.CrossClassificationResponse:
    _, channel = server
    final = watch_operation(channel, stub.CrossClassification(request))[-1]
    assert not final.HasField("error"), final.error
    assert operation_metadata(final).tiles_done >= 2
    return operation_response(final, raster_pb2.CrossClassificationResponse)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        assert ds.dtypes[0] == "int32" and ds.nodata == NODATA
        return ds.read(1)


def _assert_pairs(response, pairs, counts) -> None:
    got = [(r.reference, r.classification) for r in response.rows]
    assert got == [tuple(p) for p in pairs.tolist()]
    np.testing.assert_array_equal([r.pixel_count for r in response.rows], counts)
    assert [r.raster_value for r in response.rows] == list(range(1, len(counts) + 1))
    np.testing.assert_array_equal([r.area for r in response.rows], counts * PIXEL_AREA)


@pytest.mark.parametrize(
    ("classification", "reference"),
    [("cls_u8", "ref_i16"), ("cls_u32", "ref_u16"), ("cls_i32", "ref_i8")],
)
def test_pairs_codes_and_error_matrix_are_the_reference(
    server, session_name, raster_stub, rasters, classification, reference
):
    running, _ = server
    root = running.data_root.root
    output = f"cc/out/{classification}_{reference}.tif"
    request = _request(
        session_name, f"cc/{classification}.tif", f"cc/{reference}.tif", output, error_matrix=True
    )
    response = _run(server, raster_stub, request)
    (cls, cls_nodata), (ref, ref_nodata) = rasters[classification], rasters[reference]
    pairs, counts, codes, classes, class_counts = pairs_reference(
        cls, ref, (cls_nodata, ref_nodata)
    )
    _assert_pairs(response, pairs, counts)
    np.testing.assert_array_equal(_read(root / output), codes)
    assert response.raster_path == output
    assert response.output_path == output.replace(".tif", ".csv")
    em = response.error_matrix
    all_classes = np.union1d(np.unique(pairs), classes)
    assert list(em.classes) == all_classes.tolist()
    k = len(all_classes)
    matrix = np.zeros((k, k), np.int64)
    for (r, c), n in zip(pairs.tolist(), counts.tolist(), strict=True):
        matrix[all_classes.tolist().index(c), all_classes.tolist().index(r)] += n
    np.testing.assert_array_equal(np.array(em.pixel_counts).reshape(k, k), matrix)
    map_pixels = [int(class_counts[classes == c].sum()) for c in all_classes]
    assert [a.map_pixel_count for a in em.class_accuracies] == map_pixels
    unsampled = [i for i in range(k) if matrix[i].sum() == 0]
    assert all(map_pixels[i] == 0 for i in unsampled)
    ref_stats = olofsson(matrix.tolist(), map_pixels)
    accuracies = em.class_accuracies
    np.testing.assert_allclose(em.proportions, ref_stats["p"], rtol=1e-12)
    for name, field in (
        ("p_col", "estimated_proportion"),
        ("se_p_col", "estimated_proportion_standard_error"),
        ("users", "users_accuracy"),
        ("users_se", "users_accuracy_standard_error"),
        ("producers", "producers_accuracy"),
        ("producers_se", "producers_accuracy_standard_error"),
    ):
        np.testing.assert_allclose(
            [getattr(a, field) for a in accuracies], ref_stats[name], rtol=1e-10, err_msg=field
        )
    map_area = sum(map_pixels) * PIXEL_AREA
    assert em.map_area == map_area
    np.testing.assert_allclose(
        [a.estimated_area for a in accuracies], np.array(ref_stats["p_col"]) * map_area, rtol=1e-12
    )
    np.testing.assert_allclose(
        [a.estimated_area_confidence_interval for a in accuracies],
        1.96 * np.array(ref_stats["se_p_col"]) * map_area,
        rtol=1e-10,
    )
    assert em.overall_accuracy == pytest.approx(ref_stats["overall"], rel=1e-12)
    assert em.overall_accuracy_standard_error == pytest.approx(ref_stats["overall_se"], rel=1e-10)
    assert em.kappa == pytest.approx(ref_stats["kappa"], rel=1e-12)
    assert em.sample_overall_accuracy == pytest.approx(ref_stats["sample_overall"], rel=1e-14)
    assert em.unsampled_proportion == 0.0


def test_the_papers_example_through_the_service(server, session_name, raster_stub, tmp_path):
    """The paper's map at a thousandth of its pixels (its shares unchanged), each map
    class holding the paper's reference pixels and nodata elsewhere."""
    running, _ = server
    root = running.data_root.root
    scaled = [m // 1000 for m in PAPER_MAP_PIXELS]
    classification = np.repeat(np.arange(1, 5, dtype=np.uint8), scaled)
    reference = np.zeros_like(classification)
    start = 0
    for i, row in enumerate(PAPER_MATRIX):
        values = np.repeat(np.arange(1, 5, dtype=np.uint8), row)
        reference[start : start + len(values)] = values
        start += scaled[i]
    rng = np.random.default_rng(3)
    order = rng.permutation(classification.size)
    thirty = from_origin(500000.0, 4600000.0, 30.0, 30.0)
    shape = (100, 100)
    write_geotiff(
        root / "cc" / "paper_map.tif", classification[order].reshape(shape), transform=thirty
    )
    write_geotiff(
        root / "cc" / "paper_ref.tif", reference[order].reshape(shape), nodata=0, transform=thirty
    )
    request = _request(
        session_name, "cc/paper_map.tif", "cc/paper_ref.tif", "cc/paper/x.tif", error_matrix=True
    )
    final = watch_operation(server[1], raster_stub.CrossClassification(request))[-1]
    assert not final.HasField("error"), final.error
    em = operation_response(final, raster_pb2.CrossClassificationResponse).error_matrix
    assert np.array(em.pixel_counts).reshape(4, 4).tolist() == PAPER_MATRIX
    hectares = 1000 * em.map_area / 10_000  # back to the paper's map
    accuracies = em.class_accuracies
    assert [round(a.estimated_area * 1000 / 10_000) for a in accuracies] == PAPER_AREA_HA
    assert [
        round(a.estimated_area_confidence_interval * 1000 / 10_000) for a in accuracies
    ] == PAPER_AREA_CI_HA
    assert hectares == 900_000
    assert [
        (round(a.users_accuracy, 2), round(1.96 * a.users_accuracy_standard_error, 2))
        for a in accuracies
    ] == PAPER_USERS
    assert [round(a.producers_accuracy, 2) for a in accuracies] == PAPER_PRODUCERS
    assert (
        round(em.overall_accuracy, 2),
        round(1.96 * em.overall_accuracy_standard_error, 2),
    ) == PAPER_OVERALL
    text = (root / "cc" / "paper" / "x.csv").read_text()
    estimated = next(line for line in text.splitlines() if line.startswith("Estimated area,"))
    in_ha = [float(x) * 1000 / 10_000 for x in estimated.split(",")[1:]]
    assert [round(x) for x in in_ha] == [*PAPER_AREA_HA, 900_000]
    assert "Overall accuracy [%] = 94.6512\n" in text


def test_nodata_value_is_nodata_in_both_and_in_the_map(server, session_name, raster_stub, rasters):
    running, _ = server
    request = _request(
        session_name, "cc/cls_u8.tif", "cc/ref_i16.tif", "cc/out/nd.tif", nodata_value=2,
        error_matrix=True,
    )  # fmt: skip
    response = _run(server, raster_stub, request)
    (cls, cls_nodata), (ref, ref_nodata) = rasters["cls_u8"], rasters["ref_i16"]
    pairs, counts, codes, classes, class_counts = pairs_reference(
        cls, ref, (cls_nodata, ref_nodata), 2
    )
    assert 2 not in pairs and 2 not in classes
    _assert_pairs(response, pairs, counts)
    np.testing.assert_array_equal(_read(running.data_root.root / "cc/out/nd.tif"), codes)
    assert 2 not in response.error_matrix.classes
    assert sum(a.map_pixel_count for a in response.error_matrix.class_accuracies) == sum(
        class_counts
    )


def test_the_csv_is_remotiors_text_with_every_section(server, session_name, raster_stub, rasters):
    running, _ = server
    request = _request(
        session_name, "cc/c.tif", "cc/r.tif", "cc/small/s.tif",
        cross_matrix=True, error_matrix=True, regression=True,
    )  # fmt: skip
    response = _run(server, raster_stub, request)
    # classification [[1,1,2],[2,nd,1]], reference [[1,2,2],[2,1,nd]]
    assert [(r.reference, r.classification, r.pixel_count) for r in response.rows] == [
        (1, 1, 1),
        (2, 1, 1),
        (2, 2, 2),
    ]
    np.testing.assert_array_equal(
        _read(running.data_root.root / "cc/small/s.tif"), [[1, 2, 3], [3, NODATA, NODATA]]
    )
    text = (running.data_root.root / "cc" / "small" / "s.csv").read_text()
    head, rest = text.split("CROSS MATRIX", 1)
    assert head == (
        "RasterValue,Reference,Classification,PixelSum,Area [metre^2]\n"
        "1,1,1,1,100\n2,2,1,1,100\n3,2,2,2,200\n\n"
    )
    assert rest.startswith(
        " [metre^2]\n,Classification >\nReference V,1,2\n1,100,0\n2,100,200\nTotal,200,200\n"
        "ERROR MATRIX [pixel count]\n,> Reference\nV_Classified,1,2,Total\n"
        "1,1,1,2\n2,0,2,2\nTotal,1,3,4\n\nAREA BASED ERROR MATRIX\n"
    )
    # Map: class 1 has 3 pixels, class 2 two; W = 0.6, 0.4; p = [[.3,.3],[0,.4]].
    assert "1,0.3000,0.3000,300,0.6\n2,0,0.4000,200,0.4\n" in text
    assert "Estimated area,150,350,500\n" in text
    assert "UA [%],50.0000,100.0000\n" in text
    assert "PA [%],100.0000,57.1429\n" in text
    assert "Overall accuracy [%] = 70.0000\n" in text
    line = response.regression
    # Y (classification) on X (reference): points (1,1), (2,1), (2,2), (2,2).
    x, y = np.array([1, 2, 2, 2.0]), np.array([1, 1, 2, 2.0])
    slope, intercept = np.polyfit(x, y, 1)
    assert line.slope == pytest.approx(slope) and line.intercept == pytest.approx(intercept)
    assert line.correlation == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert f"B1\t{line.slope} ± {line.slope_interval}\n" in text


# --- tiling and cancellation, on the live server's session ---------------------------------


def _job(server, session_name, root: DataRoot, output: str, edge: int | None):
    running, _ = server
    session = running.registry.get(session_name)
    request = TableRequest(
        CROSS_CLASSIFICATION,
        CrossParameters(None, True, True, True),
        (BandInput("cls.tif"), BandInput("ref.tif")),
        output,
        overwrite=True,
        profile=OutputProfile("zstd", level=1, block_size=64),
    )
    job = prepare_table_job(request, root, session)
    if edge is not None:
        job = retiled(job, edge)
    return session, job


def test_many_tiles_equal_one_tile(server, session_name, tmp_path):
    made = _rasters()
    for name, source in (("cls", "cls_u8"), ("ref", "ref_i16")):
        array, nodata = made[source]
        write_geotiff(tmp_path / f"{name}.tif", array, nodata=nodata, block=64)
    root = DataRoot.at(tmp_path)
    results = {}
    for edge in (64, 4096):
        session, job = _job(server, session_name, root, f"out{edge}/c.tif", edge)
        operation = Operation(session.name, "CrossClassification", owner="anonymous")
        run_table_job(job, session, operation)
        assert operation.progress.tiles_done == 2 * job.plan.tile_count
        results[edge] = (
            _read(tmp_path / f"out{edge}" / "c.tif"),
            (tmp_path / f"out{edge}" / "c.csv").read_text(),
            job.plan.tile_count,
        )
    assert results[64][2] > 16 and results[4096][2] == 1
    np.testing.assert_array_equal(results[64][0], results[4096][0])
    assert results[64][1] == results[4096][1]
    (cls, cls_nodata), (ref, ref_nodata) = made["cls_u8"], made["ref_i16"]
    codes = pairs_reference(cls, ref, (cls_nodata, ref_nodata))[2]
    np.testing.assert_array_equal(results[64][0], codes)


@pytest.mark.parametrize("cancel_in", ["table pass", "raster pass"])
def test_cancel_leaves_neither_raster_nor_csv(server, session_name, tmp_path, cancel_in):
    rng = np.random.default_rng(9)
    for name in ("cls", "ref"):
        write_geotiff(
            tmp_path / f"{name}.tif", rng.integers(0, 20, (1536, 1536), dtype=np.uint8), block=64
        )
    root = DataRoot.at(tmp_path)
    session, job = _job(server, session_name, root, "out/c.tif", 64)
    assert_cancel_leaves_nothing(job, session, "CrossClassification", cancel_in, tmp_path / "out")


# --- refusals ---------------------------------------------------------------------------


def test_bad_requests_are_invalid_argument(server, session_name, raster_stub, rasters):
    running, _ = server
    root = running.data_root.root
    write_geotiff(root / "cc" / "float.tif", np.zeros((2, 3), np.float32))
    ok = ("cc/c.tif", "cc/r.tif")
    cases = {
        "a vector reference": (
            _request(session_name, "cc/c.tif", "cc/roi.gpkg", "bad/x.tif", vector_field="class"),
            "vector references are not supported yet",
        ),
        "no reference": (_request(session_name, "cc/c.tif", "", "bad/x.tif"), "reference path"),
        "two classifications": (
            _request(
                session_name,
                *ok,
                "bad/x.tif",
                inputs=[raster_pb2.RasterBand(path="cc/c.tif")] * 2,
            ),
            "one classification band in inputs, got 2",
        ),  # fmt: skip
        "a float reference": (
            _request(session_name, "cc/c.tif", "cc/float.tif", "bad/x.tif"),
            "integer bands only",
        ),
        "not a raster name": (_request(session_name, *ok, "bad/x.txt"), "must name a .tif"),
        "no output": (_request(session_name, *ok, ""), "output path is empty"),
    }
    for case, (request, fragment) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.CrossClassification(request)
            pytest.fail(f"{case} was not refused")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert fragment in caught.value.details(), (case, caught.value.details())
        assert str(root) not in caught.value.details()
    assert not (root / "bad").exists()


def test_too_many_classes_for_an_error_matrix_fail_and_write_nothing(
    server, session_name, raster_stub
):
    running, channel = server
    root = running.data_root.root
    classes = np.arange(1100, dtype=np.uint16).reshape(11, 100)
    write_geotiff(root / "cc" / "many.tif", classes)
    request = _request(
        session_name, "cc/many.tif", "cc/many.tif", "cc/many/x.tif", error_matrix=True
    )
    final = watch_operation(channel, raster_stub.CrossClassification(request))[-1]
    assert final.error.code == code_pb2.INVALID_ARGUMENT
    assert "1,100 classes; at most 1,024" in final.error.message
    assert not (root / "cc" / "many").exists() or not any((root / "cc" / "many").iterdir())


# --- the Python client and the command line ----------------------------------------------


def test_the_client_has_remotiors_signature():
    parameters = list(inspect.signature(Session.cross_classification).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == [
        ("classification_path", inspect.Parameter.empty),
        ("reference_path", inspect.Parameter.empty),
        ("output_path", None),
        ("overwrite", False),
        ("vector_field", None),
        ("nodata_value", None),
        ("cross_matrix", False),
        ("regression_raster", False),
        ("error_matrix", False),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("progress_message", True),
    ]


def test_the_client_returns_remotiors_output(server, rasters):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        # classification_path, reference_path, output_path, overwrite
        out = rs.cross_classification(
            "cc/cls_u8.tif", "cc/ref_i16.tif", "cc/client/cross", error_matrix=True
        )
        assert out.check, out.grpc
        assert out.paths == ["cc/client/cross.tif", "cc/client/cross.csv"]
        (cls, cls_nodata), (ref, ref_nodata) = rasters["cls_u8"], rasters["ref_i16"]
        pairs, counts, codes, _, _ = pairs_reference(cls, ref, (cls_nodata, ref_nodata))
        _assert_pairs(out.grpc.response, pairs, counts)
        np.testing.assert_array_equal(_read(root / "cc" / "client" / "cross.tif"), codes)
        assert out.extra == {
            "unique_values": np.unique(pairs).tolist(),
            "regression_raster_b0": None,
            "regression_raster_b1": None,
        }
        assert "ERROR MATRIX [pixel count]" in (root / "cc/client/cross.csv").read_text()

        existing = rs.cross_classification("cc/c.tif", "cc/r.tif", "cc/client/cross.tif")
        assert existing.check is False and existing.grpc.code == "ALREADY_EXISTS"
        vector = rs.cross_classification(
            "cc/c.tif", "cc/roi.shp", "cc/client/v.tif", vector_field="class"
        )
        assert vector.check is False and vector.grpc.code == "INVALID_ARGUMENT"
        assert "vector references are not supported yet" in vector.grpc.message
        bad = rs.cross_classification("cc/c.tif", "cc/r.tif", "cc/client/b.tif", nodata_value="x")
        assert bad.check is False and "nodata_value must be a number" in bad.grpc.message
        assert not (root / "cc" / "client" / "b.tif").exists()
    finally:
        rs.close()


def test_the_command_prints_the_pairs_and_writes_both(server, rasters):
    running, _ = server
    root = running.data_root.root
    result = subprocess.run(
        [
            sys.executable, "-m", "rsgrpc.cli", "cross-classification",
            "--target", f"127.0.0.1:{running.port}", "--processes", "1",
            "--input", "cc/c.tif", "--reference", "cc/r.tif", "--error-matrix",
            "--output", "cc/cli/x.tif",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "cc/cli/x.tif: raster",
        "cc/cli/x.csv: 3 rows",
        "raster_value\treference\tclassification\tpixel_count\tarea",
        "1\t1\t1\t1\t100",
        "2\t2\t1\t1\t100",
        "3\t2\t2\t2\t200",
    ]
    assert "ERROR MATRIX [pixel count]" in (root / "cc" / "cli" / "x.csv").read_text()
    np.testing.assert_array_equal(
        _read(root / "cc" / "cli" / "x.tif"), [[1, 2, 3], [3, NODATA, NODATA]]
    )
