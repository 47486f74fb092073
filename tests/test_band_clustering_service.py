"""BandClustering (Remotior's band_clustering) through a real gRPC channel, the Python client
and the command line: classes and centres against k-means written here in NumPy from the
same seeds (Lloyd's iterations, sums exact) and against scikit-learn's KMeans, for minimum
distance and spectral angle, band-mean, random-pixel and given seeds, nodata, several
types and odd sizes; ISODATA against its definition written here in NumPy (clusters
dropped, split and merged); tiled equals untiled, cancellation, and requests refused at
the door."""

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
from rsgrpc_kernels.clustering import pixel_priorities

from rsgrpc.client import Session
from rsgrpc.engine.band_tool import BandInput
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.table_job import TableRequest, prepare_table_job, run_table_job
from rsgrpc.tools.clustering import BAND_CLUSTERING
from rsgrpc.v1 import raster_pb2
from tests.conftest import operation_metadata, operation_response, watch_operation, write_geotiff
from tests.table_job_checks import assert_cancel_leaves_nothing, retiled

NODATA = 2**32 - 1
SHAPE = (131, 97)  # odd, several 512-pixel tiles at most once; retiled jobs take 16
NAMES = ("u16", "i16", "f32")


def _bands() -> dict[str, tuple[np.ndarray, float | None]]:
    """Three bands of blobs around four centres, of several types, with nodata."""
    rng = np.random.default_rng(5)
    centres = np.array([[100, -50, 0.25], [400, 60, 0.5], [900, 10, 0.9], [250, 200, 0.1]])
    which = rng.integers(0, 4, SHAPE)
    noise = rng.normal(0, 1, (*SHAPE, 3)) * np.array([40, 15, 0.05])
    values = centres[which] + noise
    u16 = np.clip(values[..., 0], 0, 60000).astype(np.uint16)
    i16 = values[..., 1].round().astype(np.int16)
    f32 = values[..., 2].astype(np.float32)
    u16[:7, :5] = 65535
    i16[50, :] = -9999
    f32[rng.random(SHAPE) < 0.02] = np.nan
    return {"u16": (u16, 65535), "i16": (i16, -9999), "f32": (f32, None)}


def _valid(arrays, nodatas, nodata_value=None) -> np.ndarray:
    valid = np.ones(arrays[0].shape, bool)
    for array, nodata in zip(arrays, nodatas, strict=True):
        valid &= ~np.isnan(array.astype(np.float64))
        for value in (nodata, nodata_value):
            if value is not None:
                valid &= array != value
    return valid


def _nearest(x: np.ndarray, centres: np.ndarray, angle: bool) -> np.ndarray:
    """Band by band in float64, as a pixel's distance is defined; ties to the first."""
    score = np.zeros((len(x), len(centres)))
    if angle:
        for b in range(x.shape[1]):
            score += x[:, b, None] * centres[None, :, b]
        xn = np.sqrt(sum(x[:, b] ** 2 for b in range(x.shape[1])))
        cn = np.sqrt(sum(centres[:, b] ** 2 for b in range(x.shape[1])))
        score = -(score / (xn[:, None] * cn[None, :]))
    else:
        for b in range(x.shape[1]):
            score += (x[:, b, None] - centres[None, :, b]) ** 2
    return np.argmin(score, axis=1)


def kmeans(x: np.ndarray, seeds: np.ndarray, iterations: int, angle: bool = False):
    """Lloyd's k-means: assign, move each centre to its cluster's exact mean (kept when
    empty), stop after `iterations` or when no centre moves; the final labels, centres,
    the last assignment's counts and the iterations run."""
    centres = seeds.astype(np.float64)
    done = 0
    while done < iterations:
        done += 1
        labels = _nearest(x, centres, angle)
        counts = np.bincount(labels, minlength=len(centres))
        new = centres.copy()
        for c in range(len(centres)):
            if counts[c]:
                new[c] = [math.fsum(x[labels == c, b]) / counts[c] for b in range(x.shape[1])]
        moved = not np.array_equal(new, centres)
        centres = new
        if not moved:
            break
    return _nearest(x, centres, angle), centres, counts, done


def isodata(x, seeds, k, iterations, min_size=10, max_std=0.0, threshold=None):
    """ISODATA as the README defines it, cluster by cluster with NumPy's standard
    deviation: the final labels, centres, pixels per cluster, iterations run, each
    centre's seed, and the (event, iteration) of every drop, split and merge."""
    centres = np.array(seeds, np.float64)
    seed_of = [tuple(s) for s in centres.tolist()]
    events, counts, done = [], [], 0
    while done < iterations:
        done += 1
        labels = _nearest(x, centres, False)
        kept = []
        for c in range(len(centres)):
            members = x[labels == c]
            if len(members) < min_size:
                events.append(("drop", done))
                continue
            mean = [math.fsum(members[:, b]) / len(members) for b in range(x.shape[1])]
            distance = np.sqrt(((members - centres[c]) ** 2).sum(axis=1)).mean()
            kept.append([np.array(mean), members.std(axis=0), distance, len(members), seed_of[c]])
        out = [[*c, False] for c in kept]
        if len(kept) > k:
            pairs = sorted(
                (np.sqrt(((kept[i][0] - kept[j][0]) ** 2).sum()), i, j)
                for i in range(len(kept))
                for j in range(i + 1, len(kept))
            )
            merged, gone = {}, set()
            for _, i, j in pairs:
                if len(kept) - len(gone) == k:
                    break
                if {i, j} & (set(merged) | gone):
                    continue
                (a, _, _, na, seed), (b, _, _, nb, _) = kept[i], kept[j]
                merged[i] = [(a * na + b * nb) / (na + nb), None, None, na + nb, seed, True]
                gone.add(j)
                events.append(("merge", done))
            out = [merged.get(i, c) for i, c in enumerate(out) if i not in gone]
        elif done < iterations:
            average = sum(c[2] * c[3] for c in kept) / sum(c[3] for c in kept)
            out = []
            for mean, std, distance, n, seed in kept:
                band = int(np.argmax(std))
                wide = distance > average and n > 2 * (min_size + 1)
                if std[band] > max_std and (wide or 2 * len(kept) <= k):
                    events.append(("split", done))
                    for sign in (-1, 1):
                        half = mean.copy()
                        half[band] += sign * std[band]
                        out.append([half, None, None, 0, seed, True])
                else:
                    out.append([mean, std, distance, n, seed, False])
        new = np.array([c[0] for c in out])
        changed = len(out) != len(centres) or any(c[5] for c in out)
        shift = math.inf if changed else np.sqrt(((new - centres) ** 2).sum(axis=1)).max()
        centres, seed_of, counts = new, [c[4] for c in out], [c[3] for c in out]
        if shift <= (threshold or 0.0):
            break
    return _nearest(x, centres, False), centres, counts, done, seed_of, events


def _classes(shape, valid, labels) -> np.ndarray:
    out = np.full(shape, NODATA, np.uint32)
    out[valid] = labels + 1
    return out


def _request(session: str, output: str, names=NAMES, **kw) -> raster_pb2.BandClusteringRequest:
    seeds = kw.pop("seed_centres", [])
    parameters = raster_pb2.BandClusteringParameters(
        seed_centres=[raster_pb2.ClusterCentre(values=s) for s in seeds], **kw
    )
    return raster_pb2.BandClusteringRequest(
        session=session,
        inputs=[raster_pb2.RasterBand(path=f"cl/{n}.tif") for n in names],
        parameters=parameters,
        output=raster_pb2.RasterTableOutput(path=output, overwrite=True),
    )


def _run(server, stub, request) -> raster_pb2.BandClusteringResponse:
    _, channel = server
    final = watch_operation(channel, stub.BandClustering(request))[-1]
    assert not final.HasField("error"), final.error
    assert operation_metadata(final).tiles_done >= 2
    return operation_response(final, raster_pb2.BandClusteringResponse)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        assert ds.dtypes[0] == "uint32" and ds.nodata == NODATA
        return ds.read(1)


def _centres(response) -> np.ndarray:
    return np.array([list(r.centre) for r in response.rows])


@pytest.fixture(scope="module")
def bands(server):
    running, _ = server
    made = _bands()
    for name, (array, nodata) in made.items():
        write_geotiff(running.data_root.root / "cl" / f"{name}.tif", array, nodata=nodata, block=16)
    return made


def _pixels(bands, names=NAMES, nodata_value=None):
    arrays = [bands[n][0] for n in names]
    valid = _valid(arrays, [bands[n][1] for n in names], nodata_value)
    return np.stack([a[valid].astype(np.float64) for a in arrays], axis=1), valid


def _band_mean_seeds(x: np.ndarray, k: int) -> np.ndarray:
    low, high = x.min(axis=0), x.max(axis=0)
    return np.array([low + ((high - low) / k) * (c + 0.5) for c in range(k)])


@pytest.mark.parametrize("angle", [False, True])
def test_band_mean_seeds_and_lloyd_iterations_are_the_numpy_reference(
    server, session_name, raster_stub, bands, angle
):
    running, _ = server
    algorithm = "sam" if angle else "minimum distance"
    request = _request(
        session_name, f"cl/out/bm{angle}.tif", algorithm_name=algorithm, class_number=4
    )
    response = _run(server, raster_stub, request)
    x, valid = _pixels(bands)
    seeds = _band_mean_seeds(x, 4)
    labels, centres, counts, done = kmeans(x, seeds, 10, angle)
    np.testing.assert_array_equal([list(r.seed) for r in response.rows], seeds)
    np.testing.assert_array_equal(_centres(response), centres)
    assert [r.pixel_count for r in response.rows] == counts.tolist()
    assert [r.class_value for r in response.rows] == [1, 2, 3, 4]
    assert response.iterations == done and response.converged == (done < 10)
    written = _read(running.data_root.root / "cl" / "out" / f"bm{angle}.tif")
    np.testing.assert_array_equal(written, _classes(SHAPE, valid, labels))
    assert response.output_path == f"cl/out/bm{angle}.csv"
    lines = (running.data_root.root / response.output_path).read_text().splitlines()
    assert lines[0] == "ClassValue\tPixelSum\tu16\ti16\tf32"
    assert [float(v) for v in lines[1].split("\t")[2:]] == centres[0].tolist()


def test_given_seeds_match_scikit_learn(server, session_name, raster_stub, bands):
    from sklearn.cluster import KMeans

    running, _ = server
    x, valid = _pixels(bands)
    seeds = x[[0, 1, 2, 3]] + 0.5
    request = _request(
        session_name,
        "cl/out/given.tif",
        seed_centres=seeds.tolist(),
        max_iterations=3,
    )
    response = _run(server, raster_stub, request)
    labels, centres, _, done = kmeans(x, seeds, 3)
    assert done == response.iterations == 3
    np.testing.assert_array_equal(_centres(response), centres)
    fitted = KMeans(4, init=seeds, n_init=1, max_iter=3, tol=0.0, algorithm="lloyd").fit(x)
    written = _read(running.data_root.root / "cl" / "out" / "given.tif")
    np.testing.assert_array_equal(written, _classes(SHAPE, valid, fitted.labels_))
    np.testing.assert_array_equal(written, _classes(SHAPE, valid, labels))
    np.testing.assert_allclose(_centres(response), fitted.cluster_centers_, rtol=1e-12)


def test_threshold_stops_once_no_centre_moves_farther(server, session_name, raster_stub, bands):
    x, _ = _pixels(bands)
    seeds = _band_mean_seeds(x, 4)
    request = _request(session_name, "cl/out/thr.tif", class_number=4, threshold=5.0)
    response = _run(server, raster_stub, request)
    shifts = []
    centres = seeds
    for _ in range(response.iterations):
        _, moved, _, _ = kmeans(x, centres, 1)
        shifts.append(np.sqrt(((moved - centres) ** 2).sum(axis=1)).max())
        centres = moved
    assert response.converged and shifts[-1] <= 5.0 < min(shifts[:-1], default=6.0)
    assert response.shift == pytest.approx(shifts[-1], rel=1e-12)
    np.testing.assert_array_equal(_centres(response), centres)


def test_random_pixel_seeds_are_valid_pixels_drawn_from_the_seed(
    server, session_name, raster_stub, bands
):
    x, valid = _pixels(bands)
    rows, cols = np.nonzero(valid)
    draws = {}
    for seed in (7, 7, 8):
        request = _request(
            session_name,
            f"cl/out/rp{seed}.tif",
            class_number=5,
            seeding=raster_pb2.CLUSTERING_SEEDING_RANDOM_PIXEL,
            seed=seed,
            max_iterations=2,
        )
        response = _run(server, raster_stub, request)
        got = np.array([list(r.seed) for r in response.rows])
        if seed in draws:
            np.testing.assert_array_equal(got, draws[seed])
        draws[seed] = got
        first = np.lexsort((cols, rows, pixel_priorities(seed, rows, cols)))[:5]
        np.testing.assert_array_equal(got, x[first])
        np.testing.assert_array_equal(_centres(response), kmeans(x, x[first], 2)[1])
    assert not np.array_equal(draws[7], draws[8])


def test_nodata_value_is_nodata_in_every_band(server, session_name, raster_stub, bands):
    running, _ = server
    names = ("u16", "i16")
    request = _request(
        session_name, "cl/out/nd.tif", names, class_number=3, nodata_value=10, max_iterations=4
    )
    response = _run(server, raster_stub, request)
    x, valid = _pixels(bands, names, nodata_value=10)
    assert (bands["i16"][0] == 10).any()
    labels, centres, _, _ = kmeans(x, _band_mean_seeds(x, 3), 4)
    np.testing.assert_array_equal(_centres(response), centres)
    written = _read(running.data_root.root / "cl" / "out" / "nd.tif")
    np.testing.assert_array_equal(written, _classes(SHAPE, valid, labels))


@pytest.mark.parametrize(
    ("k", "min_size", "max_std", "events"),
    [
        (4, 300, 20.0, {"drop", "split", "merge"}),
        (4, 300, 45.0, {"drop", "split"}),
        # Three of five clusters dropped: the others split whatever their width.
        (5, 2500, 45.0, {"drop", "split"}),
    ],
)
def test_isodata_drops_splits_and_merges_as_its_definition(
    server, session_name, raster_stub, bands, k, min_size, max_std, events
):
    running, _ = server
    name = f"cl/out/iso{k}_{min_size}_{max_std:g}.tif"
    request = _request(
        session_name,
        name,
        algorithm_name="ISODATA",
        class_number=k,
        min_class_size=min_size,
        max_standard_deviation=max_std,
    )
    response = _run(server, raster_stub, request)
    x, valid = _pixels(bands)
    seeds = _band_mean_seeds(x, k)
    labels, centres, counts, done, seed_of, seen = isodata(x, seeds, k, 10, min_size, max_std)
    assert {event for event, _ in seen} == events
    assert response.iterations == done and response.converged == (done < 10)
    # Means are exact sums rounded once in both; a split's step is a standard deviation,
    # here NumPy's two-pass one, there from sums of squares around the centre.
    np.testing.assert_allclose(_centres(response), centres, rtol=1e-12)
    assert [r.pixel_count for r in response.rows] == counts
    assert [tuple(r.seed) for r in response.rows] == seed_of
    assert [r.class_value for r in response.rows] == list(range(1, len(centres) + 1))
    written = _read(running.data_root.root / name)
    np.testing.assert_array_equal(written, _classes(SHAPE, valid, labels))


# --- tiling and cancellation, on the live server's session ---------------------------------


def _job(server, session_name, root: DataRoot, output: str, edge: int, message):
    running, _ = server
    session = running.registry.get(session_name)
    request = TableRequest(
        BAND_CLUSTERING,
        BAND_CLUSTERING.parameters(message),
        tuple(BandInput(f"{n}.tif") for n in NAMES),
        output,
        overwrite=True,
        profile=OutputProfile("zstd", level=1, block_size=16),
    )
    return session, retiled(prepare_table_job(request, root, session), edge)


@pytest.mark.parametrize("seeding", ["band mean", "random pixel", "isodata"])
def test_many_tiles_equal_one_tile(server, session_name, tmp_path, bands, seeding):
    for name, (array, nodata) in bands.items():
        write_geotiff(tmp_path / f"{name}.tif", array, nodata=nodata, block=16)
    root = DataRoot.at(tmp_path)
    random = seeding == "random pixel"
    message = raster_pb2.BandClusteringParameters(
        class_number=6,
        seed=3,
        seeding=raster_pb2.CLUSTERING_SEEDING_RANDOM_PIXEL if random else 0,
        algorithm_name={"random pixel": "sam", "isodata": "isodata"}.get(seeding, ""),
        max_standard_deviation=20.0 if seeding == "isodata" else None,
    )
    results = {}
    for edge in (16, 4096):
        session, job = _job(server, session_name, root, f"out{edge}/c.tif", edge, message)
        assert (job.plan.tile_count > 40) == (edge == 16)
        operation = Operation(session.name, "BandClustering", owner="anonymous")
        result = run_table_job(job, session, operation)
        results[edge] = (
            result.table.centres,
            _read(tmp_path / f"out{edge}" / "c.tif"),
            (tmp_path / f"out{edge}" / "c.csv").read_text(),
        )
    (tiled, tiled_classes, tiled_csv), (whole, whole_classes, whole_csv) = results.values()
    np.testing.assert_array_equal(tiled, whole)
    np.testing.assert_array_equal(tiled_classes, whole_classes)
    assert tiled_csv == whole_csv
    x, valid = _pixels(bands)
    if random:
        rows, cols = np.nonzero(valid)
        seeds = x[np.lexsort((cols, rows, pixel_priorities(3, rows, cols)))[:6]]
    else:
        seeds = _band_mean_seeds(x, 6)
    if seeding == "isodata":
        labels, centres, _, _, _, seen = isodata(x, seeds, 6, 10, max_std=20.0)
        assert {event for event, _ in seen} == {"drop", "split", "merge"}
        np.testing.assert_allclose(tiled, centres, rtol=1e-12)
    else:
        labels, centres, _, _ = kmeans(x, seeds, 10, angle=random)
        np.testing.assert_array_equal(tiled, centres)
    np.testing.assert_array_equal(tiled_classes, _classes(SHAPE, valid, labels))


@pytest.mark.parametrize("cancel_in", ["table pass", "raster pass"])
def test_cancel_leaves_neither_raster_nor_csv(server, session_name, tmp_path, bands, cancel_in):
    for name, (array, nodata) in bands.items():
        write_geotiff(tmp_path / f"{name}.tif", array, nodata=nodata, block=16)
    message = raster_pb2.BandClusteringParameters(
        seed_centres=[raster_pb2.ClusterCentre(values=[1, 2, 3])], max_iterations=1
    )
    session, job = _job(server, session_name, DataRoot.at(tmp_path), "out/c.tif", 16, message)
    assert_cancel_leaves_nothing(job, session, "BandClustering", cancel_in, tmp_path / "out")


# --- refusals ---------------------------------------------------------------------------


def test_bad_requests_are_invalid_argument(server, session_name, raster_stub, bands):
    running, _ = server
    root = running.data_root.root
    cases = {
        "algorithm": (_request(session_name, "bad/c.tif", algorithm_name="kmedoids"), "isodata"),
        "isodata by angle": (
            _request(session_name, "bad/c.tif", algorithm_name="isodata sam", class_number=2),
            "not supported",
        ),
        "min size with k-means": (
            _request(session_name, "bad/c.tif", class_number=2, min_class_size=5),
            "min_class_size is ISODATA's",
        ),
        "deviation with k-means": (
            _request(session_name, "bad/c.tif", class_number=2, max_standard_deviation=1),
            "max_standard_deviation is ISODATA's",
        ),
        "no min size": (
            _request(
                session_name,
                "bad/c.tif",
                algorithm_name="isodata",
                class_number=2,
                min_class_size=0,
            ),
            "min_class_size must be at least 1",
        ),
        "negative deviation": (
            _request(
                session_name,
                "bad/c.tif",
                algorithm_name="isodata",
                class_number=2,
                max_standard_deviation=-1,
            ),
            "max_standard_deviation",
        ),
        "too many isodata classes": (
            _request(session_name, "bad/c.tif", algorithm_name="isodata", class_number=513),
            "512",
        ),
        "no class": (_request(session_name, "bad/c.tif", class_number=0), "class_number"),
        "too many classes": (_request(session_name, "bad/c.tif", class_number=1025), "1024"),
        "iterations": (
            _request(session_name, "bad/c.tif", class_number=2, max_iterations=-1),
            "max_iterations",
        ),
        "threshold": (
            _request(session_name, "bad/c.tif", class_number=2, threshold=-1),
            "threshold",
        ),
        "seed size": (
            _request(session_name, "bad/c.tif", seed_centres=[[1.0, 2.0]]),
            "holds 2 values for 3 input bands",
        ),
        "seeds and seeding": (
            _request(
                session_name,
                "bad/c.tif",
                seed_centres=[[1.0, 2.0, 3.0]],
                seeding=raster_pb2.CLUSTERING_SEEDING_RANDOM_PIXEL,
            ),
            "seeding",
        ),
        "not a raster name": (_request(session_name, "bad/c.txt", class_number=2), ".tif"),
    }
    for case, (request, fragment) in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            raster_stub.BandClustering(request)
            pytest.fail(f"{case} was not refused")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert fragment in caught.value.details(), (case, caught.value.details())
    assert not (root / "bad").exists()


def test_bands_without_a_valid_pixel_fail_and_write_nothing(server, session_name, raster_stub):
    running, channel = server
    write_geotiff(
        running.data_root.root / "cl" / "empty.tif", np.full((40, 40), 7, np.uint8), nodata=7
    )
    request = _request(session_name, "cl/none/c.tif", ("empty",), class_number=2)
    final = watch_operation(channel, raster_stub.BandClustering(request))[-1]
    assert final.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "no pixel is valid" in final.error.message
    folder = running.data_root.root / "cl" / "none"
    assert not folder.exists() or not any(folder.iterdir())


# --- the Python client and the command line ----------------------------------------------


def test_the_client_has_remotiors_signature():
    parameters = list(inspect.signature(Session.band_clustering).parameters.values())[1:]
    assert [(p.name, p.default) for p in parameters] == [
        ("input_bands", inspect.Parameter.empty),
        ("output_raster_path", inspect.Parameter.empty),
        ("algorithm_name", inspect.Parameter.empty),
        ("class_number", inspect.Parameter.empty),
        ("seed_signatures", None),
        ("threshold", None),
        ("max_iter", None),
        ("overwrite", False),
        ("nodata_value", None),
        ("extent_list", None),
        ("n_processes", None),
        ("available_ram", None),
        ("bandset_catalog", None),
        ("progress_message", True),
        ("seed", 0),
        ("min_class_size", None),
        ("max_standard_deviation", None),
    ]


def test_the_client_returns_remotiors_output(server, bands):
    running, channel = server
    root = running.data_root.root
    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        paths = [f"cl/{n}.tif" for n in NAMES]
        out = rs.band_clustering(paths, "cl/client/k", "minimum distance", 4, max_iter=5)
        assert out.check, out.grpc
        assert out.paths == ["cl/client/k.tif"]
        assert out.extra["signature_path"] == "cl/client/k.csv"
        x, valid = _pixels(bands)
        labels, centres, _, _ = kmeans(x, _band_mean_seeds(x, 4), 5)
        np.testing.assert_array_equal(out.extra["centres"], centres)
        np.testing.assert_array_equal(
            _read(root / "cl/client/k.tif"), _classes(SHAPE, valid, labels)
        )
        seeded = rs.band_clustering(
            paths, "cl/client/s.tif", "md", 2, seed_signatures=[[100, -50, 0.2], [900, 10, 1]]
        )
        assert seeded.check, seeded.grpc
        assert [list(r.seed) for r in seeded.grpc.response.rows] == [[100, -50, 0.2], [900, 10, 1]]
        iso = rs.band_clustering(
            paths, "cl/client/i", "isodata", 4, min_class_size=300, max_standard_deviation=45
        )
        assert iso.check, iso.grpc
        labels, centres, _, _, _, _ = isodata(x, _band_mean_seeds(x, 4), 4, 10, 300, 45.0)
        np.testing.assert_allclose(iso.extra["centres"], centres, rtol=1e-12)
        np.testing.assert_array_equal(
            _read(root / "cl/client/i.tif"), _classes(SHAPE, valid, labels)
        )
        for kw, message in (
            ({"seed_signatures": "sigs.scpx"}, "seed_signatures"),
            ({"max_iter": 0}, "max_iter"),
            ({"min_class_size": 5}, "ISODATA's"),
            ({"algorithm_name": "isodata", "min_class_size": 2.5}, "min_class_size"),
        ):
            arguments = {"algorithm_name": "md", **kw}
            bad = rs.band_clustering(paths, "cl/client/bad.tif", class_number=2, **arguments)
            assert bad.check is False and message in bad.grpc.message, bad.grpc
        assert not (root / "cl" / "client" / "bad.tif").exists()
    finally:
        rs.close()


def test_the_command_prints_the_centres_and_writes_both(server, bands):
    running, _ = server
    root = running.data_root.root
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rsgrpc.cli",
            "band-clustering",
            "--target",
            f"127.0.0.1:{running.port}",
            "--processes",
            "1",
            *("--input", "cl/u16.tif", "--input", "cl/i16.tif"),
            *("--class-number", "3", "--max-iter", "4", "--output", "cl/cli/c.tif"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    x, valid = _pixels(bands, ("u16", "i16"))
    labels, centres, counts, _ = kmeans(x, _band_mean_seeds(x, 3), 4)
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "cl/cli/c.tif: raster",
        "cl/cli/c.csv: 3 rows",
        "class_value\tcentre\tseed\tpixel_count",
    ]
    assert [line.split("\t")[3] for line in lines[3:]] == [str(n) for n in counts]
    np.testing.assert_array_equal(_read(root / "cl/cli/c.tif"), _classes(SHAPE, valid, labels))
