"""BandPca (Remotior's band_pca) through a real gRPC channel, the Python client and the
command line: eigenvalues, eigenvectors and components against NumPy (np.cov and
np.linalg.eigh of the pixels valid in every band) and scikit-learn's PCA, for several
types, nodata and odd sizes, the correlation matrix with `normalize`, Remotior's CSV text
and file names, tiled equals untiled, cancellation in either pass, and requests refused.

Eigenvectors are compared after the sign rule the tool documents: each one's
largest-magnitude loading is positive."""

from __future__ import annotations

import inspect
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
from rsgrpc.tools.pca import BAND_PCA, PcaParameters
from rsgrpc.v1 import raster_pb2
from tests.conftest import operation_response, watch_operation, write_geotiff
from tests.table_job_checks import assert_cancel_leaves_nothing, retiled

NODATA = -32768.0
SHAPE = (203, 157)


def _valid(arrays, nodatas, nodata_value=None) -> np.ndarray:
    valid = np.ones(arrays[0].shape, bool)
    for array, nodata in zip(arrays, nodatas, strict=True):
        if array.dtype.kind == "f":
            valid &= ~np.isnan(array)
        for value in (nodata, nodata_value):
            if value is not None:
                valid &= array != value
    return valid


def reference(arrays, nodatas, *, nodata_value=None, normalize=False):
    """NumPy's analysis of the pixels valid in every band: the eigenvalues in decreasing
    order, the eigenvectors (a column each, largest-magnitude loading positive), the
    covariance, and the components (a raster each, NODATA where any band is nodata)."""
    valid = _valid(arrays, nodatas, nodata_value)
    values = np.stack([a[valid].astype(np.float64) for a in arrays], axis=1)
    covariance = np.cov(values, rowvar=False)
    mean = values.mean(axis=0)
    scale = np.sqrt(np.diag(covariance)) if normalize else np.ones(len(arrays))
    matrix = np.corrcoef(values, rowvar=False) if normalize else covariance
    eigenvalues, vectors = np.linalg.eigh(matrix)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, vectors = eigenvalues[order], vectors[:, order]
    for column in range(vectors.shape[1]):
        if vectors[np.argmax(np.abs(vectors[:, column])), column] < 0:
            vectors[:, column] *= -1
    projected = ((values - mean) / scale) @ vectors
    components = np.full((len(arrays), *valid.shape), NODATA, np.float32)
    components[:, valid] = projected.T
    return eigenvalues, vectors, covariance, components, values


def _bands() -> dict[str, tuple[np.ndarray, float | None]]:
    """Correlated bands of several types, odd-sized, with nodata, NaN and a region that
    is nodata in one band only."""
    rng = np.random.default_rng(5)
    latent = rng.normal(size=(3, *SHAPE))
    u8 = np.clip(120 + 40 * latent[0] + 5 * latent[1], 1, 254).astype(np.uint8)
    u8[rng.random(SHAPE) < 0.05] = 0
    i16 = (1000 - 300 * latent[0] + 200 * latent[2]).astype(np.int16)
    i16[10:20, 30:90] = -9999
    f32 = (0.5 * latent[1] + 0.2 * latent[2] + 0.1 * latent[0]).astype(np.float32)
    f32[rng.random(SHAPE) < 0.03] = np.nan
    u16 = (30000 + 5000 * latent[2] - 2000 * latent[1]).astype(np.uint16)
    return {"u8": (u8, 0), "i16": (i16, -9999), "f32": (f32, None), "u16": (u16, None)}


NAMES = ["u8", "i16", "f32", "u16"]


@pytest.fixture(scope="module")
def bands(server):
    running, _ = server
    root = running.data_root.root
    made = _bands()
    for name, (array, nodata) in made.items():
        write_geotiff(root / "pca" / f"{name}.tif", array, nodata=nodata, block=64)
    write_geotiff(root / "pca" / "a.tif", np.array([[1, 2, 7], [3, 4, 0]], np.uint8), nodata=0)
    write_geotiff(root / "pca" / "b.tif", np.array([[2, 1, 9], [5, 3, 1]], np.int16))
    return made


def _request(session: str, paths: list[str], output: str, **kw) -> raster_pb2.BandPcaRequest:
    parameters = raster_pb2.BandPcaParameters(normalize=kw.pop("normalize", False))
    for field in ("number_components", "nodata_value"):
        if kw.get(field) is not None:
            setattr(parameters, field, kw.pop(field))
    return raster_pb2.BandPcaRequest(
        session=session,
        inputs=[raster_pb2.RasterBand(path=p) for p in paths],
        parameters=parameters,
        output=raster_pb2.RasterTableOutput(path=output, overwrite=kw.pop("overwrite", True)),
    )


def _run(server, stub, request) -> raster_pb2.BandPcaResponse:
    _, channel = server
    final = watch_operation(channel, stub.BandPca(request))[-1]
    return operation_response(final, raster_pb2.BandPcaResponse)


def _read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile


def _eigen(response) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([row.eigenvalue for row in response.rows])
    vectors = np.array([list(row.eigenvector) for row in response.rows]).T
    return values, vectors


def _close(actual, desired, relative: float) -> None:
    """Equal to `relative` of the largest magnitude: a matrix's eigenvalues and entries are
    accurate relative to its norm, not each to itself."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(
        actual, desired, rtol=relative, atol=relative * np.abs(desired).max()
    )


def _assert_components(root: Path, paths, expected: np.ndarray) -> None:
    for path, component in zip(paths, expected, strict=True):
        written, profile = _read(root / path)
        assert profile["dtype"] == "float32" and profile["nodata"] == NODATA
        np.testing.assert_array_equal(written == NODATA, component == NODATA)
        np.testing.assert_allclose(written, component, rtol=1e-5, atol=1e-3)


def test_eigenvalues_and_components_are_numpy_and_sklearn(server, session_name, raster_stub, bands):
    running, _ = server
    root = running.data_root.root
    request = _request(session_name, [f"pca/{n}.tif" for n in NAMES], "pca/out/all.tif")
    response = _run(server, raster_stub, request)
    arrays, nodatas = [bands[n][0] for n in NAMES], [bands[n][1] for n in NAMES]
    eigenvalues, vectors, covariance, components, values = reference(arrays, nodatas)
    assert response.pixel_count == len(values) < SHAPE[0] * SHAPE[1]
    got_values, got_vectors = _eigen(response)
    _close(got_values, eigenvalues, 1e-10)
    np.testing.assert_allclose(got_vectors, vectors, atol=1e-10)
    _close(np.reshape(response.covariance, (4, 4)), covariance, 1e-10)
    np.testing.assert_allclose(response.means, values.mean(axis=0), rtol=1e-12)
    explained = eigenvalues / eigenvalues.sum() * 100
    np.testing.assert_allclose([r.explained_variance for r in response.rows], explained)
    np.testing.assert_allclose([r.cumulative_variance for r in response.rows], explained.cumsum())
    assert [r.component for r in response.rows] == [1, 2, 3, 4]
    paths = [f"pca/out/all_pc{n}.tif" for n in range(1, 5)]
    assert list(response.raster_paths) == paths and response.output_path == "pca/out/all.csv"
    _assert_components(root, paths, components)
    sklearn = pytest.importorskip("sklearn.decomposition")
    fitted = sklearn.PCA().fit(values)
    _close(got_values, fitted.explained_variance_, 1e-10)
    np.testing.assert_allclose(np.abs(got_vectors), np.abs(fitted.components_.T), atol=1e-8)
    projected = fitted.transform(values) * np.sign(fitted.components_ @ got_vectors).diagonal()
    valid = components[0] != NODATA
    np.testing.assert_allclose(components[:, valid].T, projected, rtol=1e-4, atol=1e-2)


def test_normalize_decomposes_the_correlation_matrix(server, session_name, raster_stub, bands):
    running, _ = server
    names = ["u8", "i16", "u16"]
    request = _request(
        session_name,
        [f"pca/{n}.tif" for n in names],
        "pca/out/norm.tif",
        normalize=True,
        number_components=2,
    )
    response = _run(server, raster_stub, request)
    arrays, nodatas = [bands[n][0] for n in names], [bands[n][1] for n in names]
    eigenvalues, vectors, _, components, values = reference(arrays, nodatas, normalize=True)
    got_values, got_vectors = _eigen(response)
    _close(got_values, eigenvalues, 1e-10)
    np.testing.assert_allclose(got_vectors, vectors, atol=1e-10)
    assert got_values.sum() == pytest.approx(3.0)
    np.testing.assert_allclose(
        np.reshape(response.correlation, (3, 3)), np.corrcoef(values, rowvar=False), atol=1e-12
    )
    assert list(response.raster_paths) == ["pca/out/norm_pc1.tif", "pca/out/norm_pc2.tif"]
    assert len(response.rows) == 3
    assert not (running.data_root.root / "pca/out/norm_pc3.tif").exists()
    _assert_components(running.data_root.root, response.raster_paths, components[:2])


def test_nodata_value_is_nodata_in_every_band(server, session_name, raster_stub, bands):
    running, _ = server
    names = ["u8", "i16"]
    request = _request(
        session_name, [f"pca/{n}.tif" for n in names], "pca/out/nv.tif", nodata_value=120
    )
    response = _run(server, raster_stub, request)
    arrays, nodatas = [bands[n][0] for n in names], [bands[n][1] for n in names]
    assert (arrays[0] == 120).any()
    eigenvalues, _, _, components, values = reference(arrays, nodatas, nodata_value=120)
    assert response.pixel_count == len(values)
    _close(_eigen(response)[0], eigenvalues, 1e-10)
    _assert_components(running.data_root.root, response.raster_paths, components)
    assert (components[:, arrays[0] == 120] == NODATA).all()


def test_the_csv_is_remotiors_text(server, session_name, raster_stub, bands):
    running, _ = server
    request = _request(session_name, ["pca/a.tif", "pca/b.tif"], "pca/out/small.tif")
    response = _run(server, raster_stub, request)
    # a's valid pixels 1 2 7 3 4 and b's 2 1 9 5 3: means 3.4 and 4, co-moments 21.2,
    # 26 and 40 over 4 degrees of freedom.
    assert response.pixel_count == 5
    assert (running.data_root.root / "pca/out/small.csv").read_text() == (
        "Principal Components Analysis\n\n"
        "Covariance matrix\nBands,1,2\n1,5.3000,6.5000\n2,6.5000,10\n\n"
        "Correlation matrix\nBands,1,2\n1,1,0.8928\n2,0.8928,1\n\n"
        "Eigenvectors\nBands,Vector_1,Vector_2\n1,0.5745,0.8185\n2,0.8185,-0.5745\n\n"
        "Eigenvalues,Accounted variance,Cumulative variance\n"
        "14.5618,95.1749,95.1749\n0.7382,4.8251,100\n"
    )
    first, _ = _read(running.data_root.root / "pca/out/small_pc1.tif")
    assert first[1, 2] == NODATA
    np.testing.assert_allclose(first[0, 0], (1 - 3.4) * 0.5745 + (2 - 4) * 0.8185, atol=1e-3)


# --- tiling and cancellation, on the live server's session ---------------------------------


def _job(server, session_name, root: DataRoot, paths, output: str, edge: int, **kw):
    running, _ = server
    session = running.registry.get(session_name)
    request = TableRequest(
        BAND_PCA,
        PcaParameters(kw.get("normalize", False), None, None),
        tuple(BandInput(p) for p in paths),
        output,
        overwrite=True,
        profile=OutputProfile("zstd", level=1, block_size=64),
    )
    return session, retiled(prepare_table_job(request, root, session), edge)


@pytest.mark.parametrize("normalize", [False, True])
def test_many_tiles_equal_one_tile(server, session_name, tmp_path, normalize):
    made = _bands()
    for name in NAMES:
        array, nodata = made[name]
        write_geotiff(tmp_path / f"{name}.tif", array, nodata=nodata, block=64)
    root = DataRoot.at(tmp_path)
    paths = [f"{n}.tif" for n in NAMES]
    results = {}
    for edge in (64, 4096):
        session, job = _job(
            server, session_name, root, paths, f"o{edge}/p.tif", edge, normalize=normalize
        )
        operation = Operation(session.name, "BandPca", owner="anonymous")
        result = run_table_job(job, session, operation)
        assert operation.progress.tiles_done == 2 * job.plan.tile_count
        assert job.plan.tile_count == (12 if edge == 64 else 1)
        rasters = np.stack([_read(tmp_path / p)[0] for p in result.raster_paths])
        results[edge] = (result.table, rasters)
    (tiled, tiled_rasters), (whole, whole_rasters) = results[64], results[4096]
    assert tiled.count == whole.count
    for field in ("mean", "covariance", "eigenvalues"):
        _close(getattr(tiled, field), getattr(whole, field), 1e-12)
    # An eigenvector moves by the covariance's rounding over the gap to the next
    # eigenvalue: a thousand times its entries' rounding here (1.5e-12 seen in one run,
    # the tiles' partial sums merged in the order they came).
    _close(tiled.eigenvectors, whole.eigenvectors, 1e-10)
    valid = whole_rasters[0] != NODATA
    assert ((tiled_rasters == NODATA) == ~valid).all()
    for tiled_component, whole_component in zip(tiled_rasters, whole_rasters, strict=True):
        _close(tiled_component[valid], whole_component[valid], 1e-6)
    arrays, nodatas = [made[n][0] for n in NAMES], [made[n][1] for n in NAMES]
    eigenvalues, _, _, components, _ = reference(arrays, nodatas, normalize=normalize)
    _close(whole.eigenvalues, eigenvalues, 1e-10)
    np.testing.assert_allclose(whole_rasters, components, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("cancel_in", ["table pass", "raster pass"])
def test_cancel_leaves_no_component_nor_csv(server, session_name, tmp_path, cancel_in):
    rng = np.random.default_rng(9)
    for name in ("x", "y", "z"):
        write_geotiff(
            tmp_path / "in" / f"{name}.tif", rng.integers(0, 200, (768, 768), np.uint8), block=64
        )
    root = DataRoot.at(tmp_path)
    paths = ["in/x.tif", "in/y.tif", "in/z.tif"]
    session, job = _job(server, session_name, root, paths, "out/p.tif", 64)
    assert_cancel_leaves_nothing(job, session, "BandPca", cancel_in, tmp_path / "out")


# --- refusals ---------------------------------------------------------------------------


def test_bad_requests_are_invalid_argument(server, session_name, raster_stub, bands):
    running, _ = server
    root = running.data_root.root
    coarse = from_origin(500000.0, 4600000.0, 20.0, 20.0)
    write_geotiff(root / "pca" / "coarse.tif", np.zeros((2, 2), np.uint8), transform=coarse)
    pair = ["pca/a.tif", "pca/b.tif"]
    cases = {
        "no input": (_request(session_name, [], "bad/p.tif"), "got 0"),
        "65 inputs": (_request(session_name, ["pca/a.tif"] * 65, "bad/p.tif"), "got 65"),
        "no component": (
            _request(session_name, pair, "bad/p.tif", number_components=0),
            "at least 1",
        ),
        "negative": (_request(session_name, pair, "bad/p.tif", number_components=-2), "got -2"),
        "another grid": (
            _request(session_name, ["pca/a.tif", "pca/coarse.tif"], "bad/p.tif"),
            "not on one grid",
        ),
        "not a raster name": (_request(session_name, pair, "bad/p.txt"), "must name a .tif"),
        "no output": (_request(session_name, pair, ""), "output path is empty"),
    }
    for case, (request, fragment) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.BandPca(request)
            pytest.fail(f"{case} was not refused")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert fragment in caught.value.details(), (case, caught.value.details())
        assert str(root) not in caught.value.details()
    assert not (root / "bad").exists()


def test_too_few_valid_pixels_fail_and_write_nothing(server, session_name, raster_stub, bands):
    running, channel = server
    root = running.data_root.root
    write_geotiff(root / "pca" / "one.tif", np.array([[5, 0], [0, 0]], np.uint8), nodata=0)
    request = _request(session_name, ["pca/one.tif", "pca/b.tif"], "pca/few/p.tif")
    final = watch_operation(channel, raster_stub.BandPca(request))[-1]
    assert final.error.code == code_pb2.INVALID_ARGUMENT
    assert "1 pixel(s) are valid in every band" in final.error.message
    assert not (root / "pca" / "few").exists() or not any((root / "pca" / "few").iterdir())


def test_an_existing_component_without_overwrite_is_already_exists(
    server, session_name, raster_stub, bands
):
    root = server[0].data_root.root
    kept = root / "pca" / "kept_pc2.tif"
    kept.write_bytes(b"kept")
    with pytest.raises(grpc.RpcError) as caught:
        raster_stub.BandPca(
            _request(session_name, ["pca/a.tif", "pca/b.tif"], "pca/kept.tif", overwrite=False)
        )
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert kept.read_bytes() == b"kept"
    assert not (root / "pca" / "kept_pc1.tif").exists()
    assert not (root / "pca" / "kept.csv").exists()


# --- the Python client and the command line ----------------------------------------------


def test_the_client_has_remotiors_signature():
    assert str(inspect.signature(Session.band_pca)) == (
        "(self, input_bands, normalize=False, output_path=None, overwrite=False, "
        "nodata_value=None, extent_list=None, n_processes=None, available_ram=None, "
        "bandset_catalog=None, number_components=None, progress_message=True)"
    )


def test_the_client_returns_remotiors_output(server, bands):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        out = rs.band_pca(
            ["pca/u8.tif", "pca/i16.tif"], output_path="pca/client/p", number_components=-1
        )
        assert out.check, out.grpc
        assert out.paths == ["pca/client/p_pc1.tif", "pca/client/p_pc2.tif"]
        assert out.extra == {"table": "pca/client/p.csv"}
        arrays, nodatas = [bands["u8"][0], bands["i16"][0]], [0, -9999]
        eigenvalues, _, _, components, _ = reference(arrays, nodatas)
        _close(_eigen(out.grpc.response)[0], eigenvalues, 1e-10)
        _assert_components(root, out.paths, components)
        assert (root / "pca/client/p.csv").read_text().startswith("Principal Components")

        one = rs.band_pca(
            ["pca/u8.tif", "pca/i16.tif"], output_path="pca/client/q.tif", number_components=1
        )
        assert one.check and one.paths == ["pca/client/q_pc1.tif"]
        refused = rs.band_pca(["pca/u8.tif"], output_path="pca/client/r", number_components=0)
        assert refused.check is False
        assert not (root / "pca/client/r.csv").exists()
    finally:
        rs.close()


def test_the_command_prints_the_components_and_writes_them(server, bands):
    running, _ = server
    root = running.data_root.root
    command = "band-pca --processes 1 --input pca/a.tif --input pca/b.tif "
    command += "--number-components 1 --output pca/cli/p.tif"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            *command.split(),
            "--target",
            f"127.0.0.1:{running.port}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "pca/cli/p_pc1.tif: raster",
        "pca/cli/p.csv: 2 rows",
        "component\teigenvalue\texplained_variance\tcumulative_variance\teigenvector",
    ]
    rows = [[float(x) for x in line.replace(",", "\t").split("\t")] for line in lines[3:]]
    np.testing.assert_allclose(
        rows,
        [
            [1, 14.56176533, 95.17493681, 95.17493681, 0.5744562781, 0.8185352678],
            [2, 0.7382346717, 4.825063189, 100, 0.8185352678, -0.5744562781],
        ],
        rtol=1e-8,
    )
    assert sorted(p.name for p in (root / "pca" / "cli").iterdir()) == ["p.csv", "p_pc1.tif"]
