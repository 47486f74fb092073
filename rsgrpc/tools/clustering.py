"""Band clustering, declared: k-means or ISODATA of a band set (Remotior's
`band_clustering`, `rsgrpc_kernels.clustering`), each iteration a pass of the table job
over the tiles, then a raster of each pixel's cluster and the table of centres.

A seeding pass finds the bands' ranges (seeds spread over them, Remotior's "band mean")
or a random sample of valid pixels (Remotior's "random pixel", drawn from `seed` by each
pixel's place in the grid, so the same for any tiling); given seeds skip it. Each
iteration then assigns every valid pixel to its nearest centre (least Euclidean
distance, or least spectral angle) and sums the clusters exactly over the tiles; the job
moves each centre to its cluster's mean (a cluster without pixels keeps its centre), and
stops after `max_iterations`, once no centre moves, or once none moves farther than
`threshold`. The raster pass classes each pixel by the final centres, from 1.

Remotior stops when the largest distance between two new centres exceeds `threshold`,
which does not measure convergence; it classes with `max_iter` sets of centres, so runs
one update fewer than it names, and saves the seeds rather than the final centres; its
"band mean" classes count from 0 and its "random pixel" ones from 1. Here `threshold`
bounds how far a centre moves, `max_iterations` counts updates (scikit-learn's
`max_iter`), classes count from 1 and the table holds the final centres.

ISODATA (`algorithm_name` "isodata"; Remotior 0.8 has none, so this is the ISODATA of
Remotior's predecessor, the Semi-Automatic Classification Plugin, after Ball and Hall
1965) assigns by Euclidean distance and also sums, per cluster, the squared distances to
its centre per band and the distances to it. After each iteration, clusters of fewer
than `min_class_size` pixels are dropped and the others move to their means. With more
than `class_number` clusters, the closest pairs of centres then merge (each cluster
once an iteration, into their pixel-weighted mean) until `class_number` remain. With at
most `class_number`, except after the last iteration, each cluster whose largest
band standard deviation exceeds `max_standard_deviation` splits in two along that band,
at its mean minus and plus that deviation, when its pixels lie farther from its centre
on average than all pixels from theirs and it holds more than 2 * (min_class_size + 1)
pixels, or when there are at most half `class_number` clusters. So ISODATA ends with at
most `class_number` clusters. Iterations stop early once one drops, splits and merges
nothing and no centre moves farther than `threshold`.

Where the plugin's ISODATA is wrong, this does what the method means: the plugin
compares a cluster's sum of distances (not their mean) with the average distance, loses
a cluster whose deviation allows a split that its size does not, clips a split centre
at 0, merges only pairs farther apart than its threshold, and may merge one cluster
into two others in one iteration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from rsgrpc.tools import spec
from rsgrpc.tools.table_spec import (
    TableGrid,
    TableRaster,
    TableTool,
    extent_flag,
    number_argument,
)
from rsgrpc.v1 import raster_pb2

MAX_CLASSES = 1024
MAX_INPUTS = 64
MAX_ITERATIONS = 1000
DEFAULT_CLASSES = 10
DEFAULT_ITERATIONS = 10
# Remotior's classification raster: UInt32, with its UInt32 nodata.
OUTPUT_DTYPE = "uint32"
OUTPUT_NODATA = 2**32 - 1
BAND_MEAN = "band mean"
RANDOM_PIXEL = "random pixel"
GIVEN = "given"
KMEANS = "k-means"
ISODATA = "isodata"
DEFAULT_MIN_CLASS_SIZE = 10
# Algorithm names: the method, and whether pixels go to the centre of least spectral angle.
_ALGORITHMS = {
    "": (KMEANS, False),
    "minimum distance": (KMEANS, False),
    "md": (KMEANS, False),
    "spectral angle mapping": (KMEANS, True),
    "sam": (KMEANS, True),
    ISODATA: (ISODATA, False),
}
_SEEDINGS = {
    raster_pb2.CLUSTERING_SEEDING_UNSPECIFIED: BAND_MEAN,
    raster_pb2.CLUSTERING_SEEDING_BAND_MEAN: BAND_MEAN,
    raster_pb2.CLUSTERING_SEEDING_RANDOM_PIXEL: RANDOM_PIXEL,
}
_SUPPORTED = (
    "k-means with 'minimum distance' ('md') or 'spectral angle mapping' ('sam'), or "
    "'isodata' (by minimum distance)"
)


@dataclass(frozen=True)
class ClusteringParameters:
    """A clustering's request (method, distance, clusters, seeding, stopping rule, extra
    nodata, ISODATA's cluster size and spread) and its state between passes: the centres
    of the next pass (None before seeding), each centre's seed (with ISODATA, the seed
    of the cluster it was split or merged from), the iterations run, the last
    iteration's largest shift (infinite when it dropped, split or merged clusters) and
    its pixels per centre."""

    method: str
    angle: bool
    class_number: int
    seeding: str
    seed: int
    max_iterations: int
    threshold: float | None
    nodata_value: float | None
    min_class_size: int = DEFAULT_MIN_CLASS_SIZE
    max_standard_deviation: float = 0.0
    centres: tuple[tuple[float, ...], ...] | None = None
    seeds: tuple[tuple[float, ...], ...] = ()
    iterations: int = 0
    shift: float = math.inf
    counts: tuple[int, ...] = ()

    @property
    def isodata(self) -> bool:
        return self.method == ISODATA

    @property
    def converged(self) -> bool:
        limit = 0.0 if self.threshold is None else self.threshold
        return self.shift <= limit


@dataclass(frozen=True)
class ClusteringTable:
    """The finished table: the final centres and seeds (a row per cluster, a column per
    band), the pixels of each cluster in the last iteration, the bands' names."""

    centres: np.ndarray
    seeds: np.ndarray
    counts: np.ndarray
    names: tuple[str, ...]
    parameters: ClusteringParameters


def _parameters(message: raster_pb2.BandClusteringParameters) -> ClusteringParameters:
    algorithm = message.algorithm_name.strip().lower()
    if algorithm not in _ALGORITHMS:
        raise spec.ParameterError(
            f"algorithm_name {message.algorithm_name!r} is not supported; supported: {_SUPPORTED}",
            metadata={"field": "algorithm_name"},
        )
    method, angle = _ALGORITHMS[algorithm]
    isodata = _isodata_parameters(message, method)
    seeds = tuple(tuple(c.values) for c in message.seed_centres)
    class_number = message.class_number
    if seeds:
        if message.seeding != raster_pb2.CLUSTERING_SEEDING_UNSPECIFIED:
            raise spec.ParameterError(
                "seed_centres are given: leave seeding unspecified",
                metadata={"field": "seeding"},
            )
        class_number = class_number or len(seeds)
        if class_number != len(seeds):
            raise spec.ParameterError(
                f"class_number is {class_number} but {len(seeds)} seed_centres are given",
                metadata={"field": "class_number"},
            )
        if not all(len(s) == len(seeds[0]) and all(map(math.isfinite, s)) for s in seeds):
            raise spec.ParameterError(
                "seed_centres must hold as many finite values each",
                metadata={"field": "seed_centres"},
            )
    elif message.seeding not in _SEEDINGS:
        raise spec.ParameterError(
            f"seeding {message.seeding} is not a ClusteringSeeding", metadata={"field": "seeding"}
        )
    # ISODATA's splits may double the clusters, which the table holds.
    most = MAX_CLASSES // 2 if method == ISODATA else MAX_CLASSES
    if not 1 <= class_number <= most:
        raise spec.ParameterError(
            f"class_number of {method} must be from 1 to {most}, got {class_number}",
            metadata={"field": "class_number"},
        )
    iterations = message.max_iterations or DEFAULT_ITERATIONS
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise spec.ParameterError(
            f"max_iterations must be from 1 to {MAX_ITERATIONS}, got {iterations}",
            metadata={"field": "max_iterations"},
        )
    threshold = message.threshold if message.HasField("threshold") else None
    if threshold is not None and not (math.isfinite(threshold) and threshold >= 0):
        raise spec.ParameterError(
            f"threshold must be a finite number of at least 0, got {threshold}",
            metadata={"field": "threshold"},
        )
    return ClusteringParameters(
        method=method,
        angle=angle,
        class_number=class_number,
        seeding=GIVEN if seeds else _SEEDINGS[message.seeding],
        seed=message.seed,
        max_iterations=iterations,
        threshold=threshold,
        nodata_value=message.nodata_value if message.HasField("nodata_value") else None,
        centres=seeds or None,
        seeds=seeds,
        **isodata,
    )


def _isodata_parameters(
    message: raster_pb2.BandClusteringParameters, method: str
) -> dict[str, Any]:
    """ISODATA's minimum cluster size and largest standard deviation, refused with
    k-means."""
    given = [f for f in ("min_class_size", "max_standard_deviation") if message.HasField(f)]
    if method != ISODATA:
        if given:
            raise spec.ParameterError(
                f"{given[0]} is ISODATA's: give algorithm_name 'isodata' or leave it unset",
                metadata={"field": given[0]},
            )
        return {}
    size = message.min_class_size if "min_class_size" in given else DEFAULT_MIN_CLASS_SIZE
    if size < 1:
        raise spec.ParameterError(
            f"min_class_size must be at least 1, got {size}",
            metadata={"field": "min_class_size"},
        )
    deviation = message.max_standard_deviation
    if not (math.isfinite(deviation) and deviation >= 0):
        raise spec.ParameterError(
            f"max_standard_deviation must be a finite number of at least 0, got {deviation}",
            metadata={"field": "max_standard_deviation"},
        )
    return {"min_class_size": size, "max_standard_deviation": deviation}


def _check_band(p: ClusteringParameters, dtype: np.dtype, nodata: float | None, where: str):
    spec.check_pixel_type(dtype, nodata, where, "iuf")


def _pixel_bytes(dtypes: Sequence[np.dtype]) -> float:
    """A worker holds the blocks, a mask, the valid pixels' float64 matrix and a label
    (or, for a sample, each pixel's row, column, priority, its sort's keys and order)
    per pixel."""
    return sum(d.itemsize for d in dtypes) + 2 + 8 * len(dtypes) + 56


def _memory(p: ClusteringParameters, dtypes: Sequence[np.dtype]) -> tuple[float, float, float]:
    """Per pixel, the kernel (`_pixel_bytes`) and nothing that grows with the tile in
    its partial table; per row (a cluster), its count and sums (with ISODATA, of 2 *
    bands + 1 columns), merged with as many."""
    columns = 2 * len(dtypes) + 1 if p.isodata else len(dtypes)
    return _pixel_bytes(dtypes), 0.0, 4 * (16 * columns + 8)


def _request_bands(request: raster_pb2.BandClusteringRequest) -> Sequence[Any]:
    """The inputs, as many as each given seed's values."""
    for centre in request.parameters.seed_centres:
        if len(centre.values) != len(request.inputs):
            raise spec.ParameterError(
                f"a seed centre holds {len(centre.values)} values for {len(request.inputs)} "
                "input bands",
                metadata={"field": "seed_centres"},
            )
    return request.inputs


def clustering_block(
    blocks: Sequence[np.ndarray],
    p: ClusteringParameters,
    nodatas: Sequence[float | None],
    *,
    tile: Any,
) -> tuple[str, Any]:
    """Runs in a worker: the tile's part of the pass, tagged by its kind: the clusters'
    counts and sums, or, to seed from, the bands' ranges or a sample of pixels (with
    the sample's size)."""
    from rsgrpc_kernels import clustering

    values, valid = clustering.pixel_matrix(blocks, nodatas, p.nodata_value)
    if p.centres is not None:
        if p.isodata:
            return "sums", clustering.cluster_spread_sums(values, np.array(p.centres))
        return "sums", clustering.cluster_sums(values, np.array(p.centres), p.angle)
    if p.seeding == RANDOM_PIXEL:
        sample = clustering.sample_pixels(values, valid, tile.row, tile.col, p.seed, p.class_number)
        return "sample", (p.class_number, sample)
    return "ranges", clustering.band_ranges(values)


def _merge(partials: list[tuple[str, Any]]) -> tuple[str, Any]:
    from rsgrpc_kernels import clustering

    kind = partials[0][0]
    parts = [part for _, part in partials]
    if kind == "sums":
        return kind, clustering.merge_cluster_sums(parts)
    if kind == "sample":
        count = parts[0][0]
        return kind, (count, clustering.merge_samples([s for _, s in parts], count))
    lows, highs = zip(*parts, strict=True)
    return kind, (np.min(lows, axis=0), np.max(highs, axis=0))


def _rows(partial: tuple[str, Any]) -> int:
    kind, part = partial
    if kind == "sums":
        return len(part[0])
    return len(part[1][0]) if kind == "sample" else 1


def _no_pixels() -> spec.ParameterError:
    return spec.ParameterError("no pixel is valid in every input band: nothing to cluster")


def _seeds(p: ClusteringParameters, kind: str, part: Any) -> tuple[tuple[float, ...], ...]:
    """The seeds from the seeding pass: spread over the bands' ranges as Remotior spreads
    them, or the sampled pixels' values (fewer where fewer pixels are valid)."""
    if kind == "sample":
        values = part[1][3]
        if len(values) == 0:
            raise _no_pixels()
        return tuple(tuple(row) for row in values.tolist())
    low, high = part
    if not np.all(np.isfinite(low)):
        raise _no_pixels()
    k = p.class_number
    return tuple(
        tuple(float(a + ((b - a) / k) * (c + 0.5)) for a, b in zip(low, high, strict=True))
        for c in range(k)
    )


def _shift(old: np.ndarray, new: np.ndarray, angle: bool) -> float:
    """How far the centres moved, at most: Euclidean distance, or spectral angle in
    degrees; 0 for a centre that did not move (its angle's cosine may round below 1)."""
    if not angle:
        return float(np.sqrt(((new - old) ** 2).sum(axis=1)).max())
    norms = np.linalg.norm(old, axis=1) * np.linalg.norm(new, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.where(norms > 0, (old * new).sum(axis=1) / norms, 1.0)
    angles = np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0)))
    return float(np.where((old == new).all(axis=1), 0.0, angles).max())


def _next_pass(
    p: ClusteringParameters, merged: tuple[str, Any]
) -> tuple[ClusteringParameters, bool]:
    """After the seeding pass, the seeds; after an iteration, each centre moved to its
    cluster's mean (kept without pixels), and whether another iteration runs."""
    from rsgrpc_kernels.clustering import cluster_means

    kind, part = merged
    if kind != "sums":
        seeds = _seeds(p, kind, part)
        return dataclasses.replace(p, centres=seeds, seeds=seeds, class_number=len(seeds)), True
    if p.isodata:
        moved = _isodata_step(p, part)
    else:
        old = np.array(p.centres, np.float64)
        means = cluster_means(part)
        new = np.where(np.isnan(means), old, means)
        moved = dataclasses.replace(
            p,
            centres=_rows_of(new),
            iterations=p.iterations + 1,
            shift=_shift(old, new, p.angle),
            counts=tuple(part[0].tolist()),
        )
    return moved, moved.iterations < p.max_iterations and not moved.converged


def _rows_of(array: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(row) for row in array.tolist())


def _isodata_step(p: ClusteringParameters, sums: Any) -> ClusteringParameters:
    """An ISODATA iteration's end: small clusters dropped, the others moved to their
    means, then merged while more than `class_number`, or else split (never after the
    last iteration, so that ISODATA ends with at most `class_number` clusters)."""
    from rsgrpc_kernels.clustering import cluster_spread

    old = np.array(p.centres, np.float64)
    counts = sums[0]
    means, deviations, distances = cluster_spread(sums, old)
    kept = np.flatnonzero(counts >= p.min_class_size)
    if len(kept) == 0:
        raise spec.ParameterError(
            f"no cluster holds min_class_size ({p.min_class_size:,}) pixels: the largest "
            f"holds {int(counts.max()):,}",
            metadata={"field": "min_class_size"},
        )
    clusters = [
        _Cluster(means[j], deviations[j], float(distances[j]), int(counts[j]), p.seeds[j], False)
        for j in kept
    ]
    iterations = p.iterations + 1
    if len(clusters) > p.class_number:
        clusters = _merge_closest(clusters, p.class_number)
    elif iterations < p.max_iterations:
        clusters = _split(clusters, p)
    changed = len(clusters) != len(old) or any(c.fresh for c in clusters)
    centres = np.array([c.mean for c in clusters], np.float64)
    return dataclasses.replace(
        p,
        centres=_rows_of(centres),
        seeds=tuple(c.seed for c in clusters),
        iterations=iterations,
        shift=math.inf if changed else _shift(old, centres, False),
        counts=tuple(c.pixels for c in clusters),
    )


@dataclass(frozen=True)
class _Cluster:
    """An ISODATA cluster after an iteration: its mean, standard deviation per band and
    mean distance to its centre, its pixels, the seed it descends from, and whether it
    was just split or merged (its pixels then those of the clusters merged, or 0 for a
    half of a split; its spread unknown)."""

    mean: np.ndarray
    deviation: np.ndarray | None
    distance: float
    pixels: int
    seed: tuple[float, ...]
    fresh: bool


def _split(clusters: list[_Cluster], p: ClusteringParameters) -> list[_Cluster]:
    """Each cluster whose largest band deviation exceeds `max_standard_deviation`, and
    that is wider than the average (distance to its centre) and holds more than 2 *
    (min_class_size + 1) pixels, or any such cluster while there are at most half
    `class_number`, in two along that band: mean minus and plus the deviation, in its
    place."""
    total = sum(c.pixels for c in clusters)
    average = math.fsum(c.distance * c.pixels for c in clusters) / total
    few = 2 * len(clusters) <= p.class_number
    split = []
    for c in clusters:
        band = int(np.argmax(c.deviation))
        deviation = float(c.deviation[band])
        wide = c.distance > average and c.pixels > 2 * (p.min_class_size + 1)
        if deviation > p.max_standard_deviation and (wide or few):
            step = np.zeros_like(c.mean)
            step[band] = deviation
            split += [
                _Cluster(c.mean - step, None, math.nan, 0, c.seed, True),
                _Cluster(c.mean + step, None, math.nan, 0, c.seed, True),
            ]
        else:
            split.append(c)
    return split


def _merge_closest(clusters: list[_Cluster], class_number: int) -> list[_Cluster]:
    """The closest pairs of centres (Euclidean; ties to the lower pair of indices), each
    cluster merged once, until `class_number` remain: into their pixel-weighted mean,
    in the place of the first."""
    means = np.array([c.mean for c in clusters])
    first, second = np.triu_indices(len(clusters), 1)
    gaps = np.sqrt(((means[first] - means[second]) ** 2).sum(axis=1))
    merged: dict[int, _Cluster] = {}
    gone: set[int] = set()
    for pair in np.lexsort((second, first, gaps)):
        if len(clusters) - len(gone) == class_number:
            break
        i, j = int(first[pair]), int(second[pair])
        if i in merged or i in gone or j in merged or j in gone:
            continue
        a, b = clusters[i], clusters[j]
        mean = (a.mean * a.pixels + b.mean * b.pixels) / (a.pixels + b.pixels)
        merged[i] = _Cluster(mean, None, math.nan, a.pixels + b.pixels, a.seed, True)
        gone.add(j)
    return [merged.get(i, c) for i, c in enumerate(clusters) if i not in gone]


def _passes(p: ClusteringParameters) -> int:
    return p.max_iterations + (p.centres is None)


def _table(p: ClusteringParameters, merged: tuple[str, Any], grid: TableGrid) -> ClusteringTable:
    names = tuple(PurePosixPath(path).stem for path in grid.paths)
    return ClusteringTable(
        np.array(p.centres, np.float64),
        np.array(p.seeds, np.float64),
        np.array(p.counts, np.int64),
        names,
        p,
    )


def clustering_csv(table: ClusteringTable) -> str:
    """A line per cluster: its class value, its pixels in the last iteration and its
    centre's value in each band (shortest exact decimals), tab-separated."""
    header = ["ClassValue", "PixelSum", *table.names]
    lines = [
        "\t".join([str(c), str(n), *(repr(v) for v in centre)])
        for c, n, centre in zip(
            range(1, len(table.counts) + 1),
            table.counts.tolist(),
            table.centres.tolist(),
            strict=True,
        )
    ]
    return "\n".join(["\t".join(header), *lines]) + "\n"


def _response(
    table: ClusteringTable, output_path: str, inputs: Sequence[Any], raster_path: str
) -> raster_pb2.BandClusteringResponse:
    p = table.parameters
    rows = [
        raster_pb2.BandClusteringRow(class_value=c, centre=centre, seed=seed, pixel_count=count)
        for c, centre, seed, count in zip(
            range(1, len(table.counts) + 1),
            table.centres.tolist(),
            table.seeds.tolist(),
            table.counts.tolist(),
            strict=True,
        )
    ]
    return raster_pb2.BandClusteringResponse(
        inputs=[raster_pb2.RasterBand(path=b.path, band=b.band) for b in inputs],
        output_path=output_path,
        raster_path=raster_path,
        rows=rows,
        iterations=p.iterations,
        converged=p.converged,
        shift=p.shift,
        data_type=raster_pb2.DATA_TYPE_UINT32,
        nodata=OUTPUT_NODATA,
    )


def clustering_classes_block(
    blocks: Sequence[np.ndarray],
    p: ClusteringParameters,
    index: np.ndarray,
    nodatas: Sequence[float | None],
    out_dtype: str,
    out_nodata: float | None,
) -> np.ndarray:
    """Runs in a worker: each valid pixel's class, its nearest centre's number from 1."""
    from rsgrpc_kernels.clustering import nearest_centres, pixel_matrix

    values, valid = pixel_matrix(blocks, nodatas, p.nodata_value)
    out = np.full(valid.shape, out_nodata, out_dtype)
    out[valid] = nearest_centres(values, index, p.angle) + 1
    return out


def _describe(p: ClusteringParameters) -> str:
    distance = "spectral angle" if p.angle else "minimum distance"
    stop = "" if p.threshold is None else f", stopping under a shift of {p.threshold:g}"
    spread = (
        f", clusters of at least {p.min_class_size} pixels, split above a deviation of "
        f"{p.max_standard_deviation:g}"
        if p.isodata
        else ""
    )
    return (
        f"{p.method} of {p.class_number} clusters by {distance}, seeded by {p.seeding}, "
        f"at most {p.max_iterations} iterations{stop}{spread}"
    )


def request_parameters(arguments: dict[str, Any]) -> raster_pb2.BandClusteringParameters:
    """Remotior's `algorithm_name`, `class_number`, `seed_signatures` ("band mean",
    "random pixel", or seeds as a list of value lists), `threshold`, `max_iter` and
    `nodata_value`, and rsgrpc's `seed` and ISODATA's `min_class_size` and
    `max_standard_deviation`."""
    message = raster_pb2.BandClusteringParameters(
        algorithm_name=str(arguments["algorithm_name"] or ""),
        seed=int(arguments["seed"] or 0),
    )
    classes = arguments["class_number"]
    if not isinstance(classes, int) or isinstance(classes, bool):
        raise spec.ParameterError(f"class_number must be an integer, got {classes!r}")
    message.class_number = classes
    seeds = arguments["seed_signatures"]
    if seeds is None or seeds == BAND_MEAN:
        message.seeding = raster_pb2.CLUSTERING_SEEDING_BAND_MEAN
    elif seeds == RANDOM_PIXEL:
        message.seeding = raster_pb2.CLUSTERING_SEEDING_RANDOM_PIXEL
    elif isinstance(seeds, Sequence) and not isinstance(seeds, str):
        try:
            message.seed_centres.extend(
                raster_pb2.ClusterCentre(values=[float(v) for v in centre]) for centre in seeds
            )
        except (TypeError, ValueError):
            raise spec.ParameterError(
                f"seed_signatures as seeds must be a list of value lists, got {seeds!r}"
            ) from None
    else:
        raise spec.ParameterError(
            f"seed_signatures {seeds!r} is not supported: give 'band mean', 'random pixel' "
            "or the seeds as a list of value lists (one value per band)"
        )
    iterations = arguments["max_iter"]
    if iterations is not None:
        if not isinstance(iterations, int) or iterations < 1:
            raise spec.ParameterError(
                f"max_iter must be an integer of at least 1, got {iterations!r}"
            )
        message.max_iterations = iterations
    size = arguments["min_class_size"]
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise spec.ParameterError(f"min_class_size must be an integer, got {size!r}")
        message.min_class_size = size
    for name in ("threshold", "nodata_value", "max_standard_deviation"):
        value = number_argument(arguments, name)
        if value is not None:
            setattr(message, name, value)
    return message


def outcome(response: raster_pb2.BandClusteringResponse, arguments: dict[str, Any]):
    """Remotior's path, the raster, and its `extra`: `signature_path`, here the CSV file
    of centres; and the centres (a row per class, from 1)."""
    centres = np.array([list(row.centre) for row in response.rows], np.float64)
    return [response.raster_path], {
        "signature_path": response.output_path,
        "centres": centres.reshape(len(response.rows), len(response.inputs)),
    }


BAND_CLUSTERING = TableTool[ClusteringParameters](
    name="band_clustering",
    rpc="BandClustering",
    command="band-clustering",
    summary="k-means or ISODATA clustering of a band set, as a raster of classes and a table "
    "of centres",
    request_type=raster_pb2.BandClusteringRequest,
    response_type=raster_pb2.BandClusteringResponse,
    parameters=_parameters,
    check_band=_check_band,
    memory=_memory,
    kernel=clustering_block,
    merge=_merge,
    rows=_rows,
    max_rows=MAX_CLASSES,
    table=_table,
    csv=clustering_csv,
    response=_response,
    describe=_describe,
    request_parameters=request_parameters,
    input_argument="input_bands",
    output_argument="output_raster_path",
    inputs=(1, MAX_INPUTS),
    request_bands=_request_bands,
    raster=TableRaster[ClusteringParameters](
        wanted=lambda p: True,
        output=lambda p: (OUTPUT_DTYPE, OUTPUT_NODATA),
        memory=lambda p, dtypes: _pixel_bytes(dtypes),
        index=lambda p, merged: np.array(p.centres, np.float64),
        kernel=clustering_classes_block,
    ),
    next_pass=_next_pass,
    passes=_passes,
    kernel_tile=True,
    warm=("clustering",),
    outcome=outcome,
    cli_flags=(
        spec.CliFlag(
            "--algorithm-name",
            "algorithm_name",
            {
                "default": "minimum distance",
                "help": "k-means by 'minimum distance' ('md', the default) or 'spectral angle "
                "mapping' ('sam'), or 'isodata'",
            },
        ),
        spec.CliFlag(
            "--class-number",
            "class_number",
            {"type": int, "default": DEFAULT_CLASSES, "help": "clusters (default: 10)"},
        ),
        spec.CliFlag(
            "--seed-signatures",
            "seed_signatures",
            {"choices": (BAND_MEAN, RANDOM_PIXEL), "help": "how centres are seeded"},
        ),
        spec.CliFlag(
            "--seed", "seed", {"type": int, "default": 0, "help": "the random pixels' seed"}
        ),
        spec.CliFlag(
            "--threshold",
            "threshold",
            {"type": float, "help": "stop once no centre moves farther than this"},
        ),
        spec.CliFlag(
            "--max-iter", "max_iter", {"type": int, "help": "the most iterations (default: 10)"}
        ),
        spec.CliFlag(
            "--nodata-value",
            "nodata_value",
            {"type": float, "help": "a value that makes a pixel nodata in any input"},
        ),
        spec.CliFlag(
            "--min-class-size",
            "min_class_size",
            {"type": int, "help": "ISODATA: drop clusters of fewer pixels (default: 10)"},
        ),
        spec.CliFlag(
            "--max-standard-deviation",
            "max_standard_deviation",
            {
                "type": float,
                "help": "ISODATA: split only clusters of a larger deviation in a band (default: 0)",
            },
        ),
        spec.CliFlag("--overwrite", "overwrite", {"action": "store_true"}),
        extent_flag("cluster"),
    ),
)
