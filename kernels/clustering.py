"""K-means and ISODATA over tiles: a tile's pixels as a matrix of band values, their band
ranges, a random sample of them, and each pass's per-cluster counts and sums (with
ISODATA's, also of squared and plain distances to the centre), merged exactly across
tiles; and each pixel's nearest centre, by minimum distance or spectral angle.

Sums are compensated (Neumaier) in float64 and kept as (high, low) pairs, merged with
`math.fsum`: for integer bands they are exact, for float bands they hold the sum to
about 106 bits, so the centres do not depend on the tiling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numba import njit

from .value_counts import valid_mask

# Each cluster's counts and sums over a tile: counts (k,) int64, high and low (k, bands).
ClusterSums = tuple[np.ndarray, np.ndarray, np.ndarray]
# A random sample: each pixel's priority (uint64, lowest first), row, column and values.
PixelSample = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def pixel_matrix(
    blocks: Sequence[np.ndarray], nodatas: Sequence[float | None], nodata_value: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """The pixels valid in every band (neither NaN, nor its band's nodata, nor
    `nodata_value`), as a C-contiguous (pixels, bands) float64 matrix in row order, and
    the (rows, cols) mask of where they are."""
    valid = np.ones(blocks[0].shape, bool)
    for block, nodata in zip(blocks, nodatas, strict=True):
        valid &= valid_mask(block, (nodata, nodata_value))
    values = np.empty((int(valid.sum()), len(blocks)), np.float64)
    for band, block in enumerate(blocks):
        values[:, band] = block[valid]
    return values, valid


def band_ranges(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each band's smallest and largest value (+inf and -inf without pixels)."""
    if len(values) == 0:
        bands = values.shape[1]
        return np.full(bands, math.inf), np.full(bands, -math.inf)
    return values.min(axis=0), values.max(axis=0)


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in wrapping uint64 arithmetic."""
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def pixel_priorities(seed: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Each pixel's random priority for `seed`, from its row and column in the grid alone,
    so that a sample of the lowest does not depend on the tiling."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + _GOLDEN)
        place = (rows.astype(np.uint64) << np.uint64(32)) | cols.astype(np.uint64)
        return _mix(key ^ _mix(place + _GOLDEN))


def sample_pixels(
    values: np.ndarray, valid: np.ndarray, row: int, col: int, seed: int, count: int
) -> PixelSample:
    """The `count` valid pixels of lowest priority (`pixel_priorities`) of a tile whose
    first pixel is at (`row`, `col`), ties to the earlier pixel."""
    rows, cols = np.nonzero(valid)
    rows, cols = rows + row, cols + col
    priorities = pixel_priorities(seed, rows, cols)
    order = np.lexsort((cols, rows, priorities))[:count]
    return priorities[order], rows[order], cols[order], values[order]


def merge_samples(parts: Sequence[PixelSample], count: int) -> PixelSample:
    """Samples of tiles merged into the sample of their union: the `count` of lowest
    priority, ties to the earlier pixel."""
    priorities, rows, cols, values = (np.concatenate(column) for column in zip(*parts, strict=True))
    order = np.lexsort((cols, rows, priorities))[:count]
    return priorities[order], rows[order], cols[order], values[order]


@njit(cache=True)
def _nearest(values: np.ndarray, centres: np.ndarray, angle: bool) -> np.ndarray:
    """Each pixel's nearest centre: least squared distance, or with `angle` the greatest
    cosine of the spectral angle (0 where a vector is all zeros); ties to the first."""
    n, bands = values.shape
    k = centres.shape[0]
    norms = np.empty(k)
    for c in range(k):
        total = 0.0
        for b in range(bands):
            total += centres[c, b] * centres[c, b]
        norms[c] = math.sqrt(total)
    labels = np.empty(n, np.int64)
    for i in range(n):
        norm = 0.0
        if angle:
            for b in range(bands):
                norm += values[i, b] * values[i, b]
            norm = math.sqrt(norm)
        best = 0
        best_score = math.inf
        for c in range(k):
            score = 0.0
            if angle:
                for b in range(bands):
                    score += values[i, b] * centres[c, b]
                denominator = norm * norms[c]
                score = -(score / denominator) if denominator > 0.0 else 0.0
            else:
                for b in range(bands):
                    d = values[i, b] - centres[c, b]
                    score += d * d
            if score < best_score:
                best, best_score = c, score
        labels[i] = best
    return labels


@njit(cache=True)
def _add(high: np.ndarray, low: np.ndarray, c: int, j: int, x: float) -> None:
    """Adds `x` to the compensated sum (high[c, j], low[c, j]) (Neumaier)."""
    s = high[c, j]
    t = s + x
    if abs(s) >= abs(x):
        low[c, j] += (s - t) + x
    else:
        low[c, j] += (x - t) + s
    high[c, j] = t


@njit(cache=True)
def _sums(values: np.ndarray, labels: np.ndarray, k: int):
    """Each cluster's pixels and, per band, its compensated sum as (high, low)."""
    n, bands = values.shape
    counts = np.zeros(k, np.int64)
    high = np.zeros((k, bands))
    low = np.zeros((k, bands))
    for i in range(n):
        c = labels[i]
        counts[c] += 1
        for b in range(bands):
            _add(high, low, c, b, values[i, b])
    return counts, high, low


@njit(cache=True)
def _spread_sums(values: np.ndarray, labels: np.ndarray, centres: np.ndarray):
    """Each cluster's pixels and compensated sums of, per band, the values and their
    squared distances to the cluster's centre, then of the pixels' Euclidean distances
    to it: 2 * bands + 1 columns."""
    n, bands = values.shape
    k = centres.shape[0]
    counts = np.zeros(k, np.int64)
    high = np.zeros((k, 2 * bands + 1))
    low = np.zeros((k, 2 * bands + 1))
    for i in range(n):
        c = labels[i]
        counts[c] += 1
        squared = 0.0
        for b in range(bands):
            x = values[i, b]
            d = x - centres[c, b]
            _add(high, low, c, b, x)
            _add(high, low, c, bands + b, d * d)
            squared += d * d
        _add(high, low, c, 2 * bands, math.sqrt(squared))
    return counts, high, low


def nearest_centres(values: np.ndarray, centres: np.ndarray, angle: bool) -> np.ndarray:
    """Each pixel's nearest centre's index (int64), by minimum distance or, with
    `angle`, spectral angle; ties to the lower index."""
    return _nearest(values, np.ascontiguousarray(centres, np.float64), angle)


def cluster_sums(values: np.ndarray, centres: np.ndarray, angle: bool) -> ClusterSums:
    """A tile's pixels assigned to their nearest centres: each cluster's pixels and sums."""
    labels = nearest_centres(values, centres, angle)
    return _sums(values, labels, len(centres))


def cluster_spread_sums(values: np.ndarray, centres: np.ndarray) -> ClusterSums:
    """A tile's pixels assigned to their nearest centres by Euclidean distance: each
    cluster's pixels and sums of values, of squared distances to the centre per band,
    and of distances to the centre (`cluster_spread`)."""
    centres = np.ascontiguousarray(centres, np.float64)
    labels = _nearest(values, centres, False)
    return _spread_sums(values, labels, centres)


def merge_cluster_sums(parts: Sequence[ClusterSums]) -> ClusterSums:
    """Cluster sums of tiles merged: counts added, sums added exactly and split again
    into (high, low)."""
    counts = np.sum([p[0] for p in parts], axis=0, dtype=np.int64)
    terms = np.stack([part for p in parts for part in p[1:]])
    high = np.empty(terms.shape[1:])
    low = np.empty(terms.shape[1:])
    for index in np.ndindex(*high.shape):
        column = terms[(slice(None), *index)].tolist()
        high[index] = math.fsum(column)
        low[index] = math.fsum([*column, -high[index]])
    return counts, high, low


def cluster_means(sums: ClusterSums) -> np.ndarray:
    """Each cluster's mean per column, its exact sum rounded once then divided (NaN for a
    cluster without pixels)."""
    counts, high, _ = sums
    with np.errstate(invalid="ignore", divide="ignore"):
        return high / counts[:, None]


def cluster_spread(
    sums: ClusterSums, centres: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From `cluster_spread_sums` over the pixels assigned to `centres`: each cluster's
    mean, its standard deviation per band around that mean (population), and the mean
    Euclidean distance of its pixels to the centre they were assigned to (NaN for a
    cluster without pixels)."""
    bands = centres.shape[1]
    averages = cluster_means(sums)
    means = averages[:, :bands]
    # E[(x - mean)^2] = E[(x - centre)^2] - (mean - centre)^2, each term exact to a rounding.
    variances = averages[:, bands : 2 * bands] - (means - centres) ** 2
    return means, np.sqrt(np.maximum(variances, 0.0)), averages[:, 2 * bands]
