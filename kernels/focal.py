"""Focal statistics on tiles read with a halo: Remotior Sensus' ``band_neighbor_pixels``.

:func:`focal_statistic` gives each pixel a statistic of the valid pixels in its window:
Count, Max, Mean, Median, Min, Percentile, StandardDeviation or Sum.

Windows
    A 0/1 ``structure`` placed with its element ``(rows // 2, cols // 2)`` on the pixel, as
    ``scipy.ndimage`` places a footprint: pixel ``(y + e - rows // 2, x + d - cols // 2)`` is
    in the window of ``(y, x)`` where ``structure[e, d]`` is 1. :func:`focal_structure` makes
    Remotior's: the square of side ``2*size+1`` (``create_base_structure``) or the disk
    ``dy*dy + dx*dx <= size*size`` (``create_circular_structure``). A structure read from a
    file is used as it is, for every statistic (Remotior convolves it, so flips it, for
    Count, Mean and Sum, but not for the others; for symmetric structures that is the same).

Edges and nodata
    Pixels outside the raster do not exist and nodata pixels (and NaN, for floats, always)
    are ignored: each statistic is taken over the window's valid pixels, as the ``np.nan*``
    functions that Remotior names for these statistics (``configurations.statistics_list``)
    take it over non-NaN values. The output is nodata where the pixel itself is nodata (the
    nodata mask Remotior's ``raster_neighbor`` returns). A window without a valid pixel (a
    structure without its centre) gives Count 0, Sum 0 and nodata for the others.

    Remotior differs, and is wrong, in three ways this module does not copy: its
    ``raster_neighbor`` (core/processor_functions.py) gets the raw pixel values, so a nodata
    value (0, -32768, ...) takes part in its neighbours' statistics; its Max, Min, Median,
    Percentile and StandardDeviation pad the raster with NaN (``mode='constant', cval=nan``)
    and do not skip NaN, so pixels near the edges get NaN or an arbitrary value; and its
    Count, Mean and Sum come from FFT convolutions (``signal.oaconvolve``) in float32,
    rounded to 6 decimals, so they carry round-off. Here every statistic is computed as
    stated below, and a tile's result never depends on the tiling.

Statistics
    - Count: the number of valid pixels. Sum: their sum. Mean: sum / count.
      StandardDeviation: the population deviation (``np.nanstd``, ``ddof=0``).
    - Integer inputs: sums are exact (int64); the mean is ``sum / count`` rounded once; the
      deviation of 8- and 16-bit inputs is ``sqrt((n*sum(x*x) - sum(x)**2) / n**2)`` with the
      numerator exact, so the variance is rounded once.
    - Float inputs (and the deviation of 32-bit integers): values are widened to float64 and
      summed in the structure's row-major order with Neumaier's compensated summation (the
      mean divides that sum by the count); the deviation is ``sqrt(sum((x - mean)**2) / n)``
      with the squares summed plainly in the same order. Each window is summed afresh, so
      no error carries from one pixel to the next.
    - Median and Percentile are Remotior's rank filters (``scipy.ndimage.median_filter`` and
      ``percentile_filter``), taken over the valid values: of the ``n`` valid values sorted,
      the median is the one at index ``n // 2`` (the upper middle one when ``n`` is even) and
      percentile ``p`` the one at ``int(n * p / 100)`` (``n - 1`` for 100). Not numpy's
      interpolated ``nanpercentile``: every result is a value of the window.
    - Max and Min: the largest and smallest valid value.

Output
    ``out_dtype`` (by default the input's, as Remotior writes) and ``out_nodata`` (by default
    the input's nodata; NaN for float outputs without one). As band calc writes: integer
    outputs are rounded to the nearest integer, halves away from zero, and a result outside
    the dtype's range is nodata (never wrapped or clipped); float32 outputs round to nearest;
    a result that is not finite, or overflows, is nodata.

Tiling
    ``block`` is the tile plus up to :func:`halo_width` pixels on each side as read from the
    raster (clipped at the raster's edges), and ``interior`` is where the tile lies in the
    block (None: the whole block), as in ``morphology``. The result is exactly the tile's
    pixels of a run on the whole raster.

Notes
    Integer Count, Sum, Mean and deviation come from prefix sums of each row, kept in a
    ring of the structure's height: two reads per run of the structure's rows and pixel,
    whatever the window's width; when every row of the structure is the same (a square),
    the ring is also kept summed down its rows, so two reads per pixel whatever the size. Median, Percentile (and Max and Min for structures other
    than a square or disk) slide one window in a snake over the tile, adding the pixels that
    enter and removing those that leave each step (the ends of the structure's runs), in a
    histogram of 16-way levels over the values' codes (the values themselves for 8- and
    16-bit integers, their ranks among the tile's distinct values otherwise), so a step
    costs a few counter updates per run and one descent of the levels, not a sort of the
    window. Max and Min over a square or disk are ``morphology.grey_filter``. Float sums
    are computed afresh for each window, one vectorised pass per structure element.
    Memory: a float64 result of the tile's size, and for ranks an int32 code of the tile
    with its halo; scratch of a few rows.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numba import njit

from .morphology import Interior, _coerce_common, _exact_cast, footprint, grey_filter

STATISTICS: Final = (
    "Count",
    "Max",
    "Mean",
    "Median",
    "Min",
    "Percentile",
    "StandardDeviation",
    "Sum",
)
FOCAL_DTYPES: Final = (
    "uint8",
    "int8",
    "uint16",
    "int16",
    "uint32",
    "int32",
    "float32",
    "float64",
)

_COUNT, _SUM, _MEAN, _STD, _MEDIAN, _PERCENTILE, _MIN, _MAX = range(8)
_CODES: Final = {
    "count": _COUNT,
    "sum": _SUM,
    "mean": _MEAN,
    "standarddeviation": _STD,
    "median": _MEDIAN,
    "percentile": _PERCENTILE,
    "min": _MIN,
    "max": _MAX,
}
# n * sum(x*x) - sum(x)**2 of 16-bit values fits in int64 for windows below this many pixels.
_EXACT_STD_PIXELS: Final = 46_000
_LEVEL_BITS: Final = 4  # each level of the rank histogram counts 16 bins of the one below


def focal_structure(size: int, *, circular: bool = True) -> np.ndarray:
    """Remotior's structure of ``size``: the disk of radius ``size`` (its default) or the
    square of side ``2*size+1``; boolean."""
    return footprint(size, circular=circular)


def halo_width(structure: np.ndarray) -> int:
    """The halo, in pixels on each side, that a window of ``structure`` needs."""
    s = _coerce_structure(structure)
    return max(s.shape[0] // 2, s.shape[1] // 2)


def focal_statistic(
    block: np.ndarray,
    *,
    statistic: str,
    structure: np.ndarray,
    percentile: float | None = None,
    nodata: float | None = None,
    interior: Interior | None = None,
    out_dtype: np.dtype | str | type | None = None,
    out_nodata: float | None = None,
) -> np.ndarray:
    """Each pixel's ``statistic`` over the valid pixels of its window (see the module notes).

    ``statistic`` is one of :data:`STATISTICS` (any case, as Remotior's ``stat_name``);
    ``percentile`` (0 to 100; Remotior passes ``int(stat_percentile)``) is required by
    Percentile and refused by the others. Returns
    the tile's pixels in ``out_dtype``, ``out_nodata`` where the pixel is nodata or the
    result is undefined or unrepresentable. Halo: :func:`halo_width` of ``structure``.
    """
    code = _coerce_statistic(statistic)
    p = _coerce_percentile(percentile, code)
    block, tile, nd = _coerce_common(block, interior, nodata)
    if block.dtype.name not in FOCAL_DTYPES:
        raise ValueError(f"unsupported dtype, got {block.dtype!r}")
    s = _coerce_structure(structure)
    out_type, out_nd = _coerce_output(out_dtype, out_nodata, block.dtype, nodata)
    has_nd, nd_value, _ = nd
    t0, t1, u0, u1 = tile
    result = np.empty((t1 - t0, u1 - u0), dtype=np.float64)
    if code in (_COUNT, _SUM, _MEAN, _STD):
        _window_sums(block, has_nd, nd_value, tile, s, code, result)
    elif code in (_MIN, _MAX) and _square_or_disk(s) is not None:
        size, circular = _square_or_disk(s)
        operation = "dilation" if code == _MAX else "erosion"
        extreme = grey_filter(
            block,
            operation=operation,
            size=size,
            circular=circular,
            nodata=nodata,
            interior=(slice(t0, t1), slice(u0, u1)),
        )
        result[...] = extreme
        result[_nodata_pixels(block[t0:t1, u0:u1], has_nd, nd_value)] = np.nan
    else:
        _rank_statistic(block, has_nd, nd_value, tile, s, code, p, result)
    out = np.empty(result.shape, dtype=out_type)
    below, above = _integer_bounds(out_type)
    _store(result, out, out_type.type(out_nd), out_type.kind != "f", below, above)
    return out


# --- argument normalisation -------------------------------------------------


def _coerce_statistic(statistic: str) -> int:
    if not isinstance(statistic, str) or statistic.lower() not in _CODES:
        raise ValueError(f"unsupported statistic, got {statistic!r}")
    return _CODES[statistic.lower()]


def _coerce_percentile(percentile: float | None, code: int) -> float:
    if code != _PERCENTILE:
        if percentile is not None:
            raise ValueError(f"percentile is only for Percentile, got {percentile!r}")
        return 0.0
    if isinstance(percentile, bool) or not isinstance(percentile, int | float | np.number):
        raise ValueError(f"unsupported percentile, got {percentile!r}")
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be within 0 and 100, got {percentile!r}")
    return float(percentile)


def _coerce_structure(structure: np.ndarray) -> np.ndarray:
    s = np.asarray(structure)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"structure must be a non-empty 2-D array, got shape {s.shape}")
    if s.dtype.kind not in "biuf" or not np.isin(s, (0, 1)).all():
        raise ValueError("structure must hold only 0 and 1")
    s = np.ascontiguousarray(s.astype(bool))
    if not s.any():
        raise ValueError("structure must hold at least one 1")
    return s


def _coerce_output(
    out_dtype: object, out_nodata: float | None, in_dtype: np.dtype, nodata: float | None
) -> tuple[np.dtype, float]:
    try:
        out_type = np.dtype(in_dtype if out_dtype is None else out_dtype)
    except TypeError:
        raise ValueError(f"unsupported out_dtype, got {out_dtype!r}") from None
    if out_type.name not in FOCAL_DTYPES:
        raise ValueError(f"unsupported out_dtype, got {out_dtype!r}")
    floating = out_type.kind == "f"
    if out_nodata is None:
        if nodata is not None and not (isinstance(nodata, float) and math.isnan(nodata)):
            cast = _exact_cast(nodata, out_type)
            if cast is not None:
                return out_type, cast.item()
        if floating:
            return out_type, math.nan
        raise ValueError(
            f"out_nodata is needed: the input's nodata {nodata!r} is not a value of {out_type}"
        )
    if isinstance(out_nodata, bool) or not isinstance(out_nodata, int | float | np.number):
        raise ValueError(f"unsupported out_nodata, got {out_nodata!r}")
    if floating and math.isnan(out_nodata):
        return out_type, math.nan
    cast = _exact_cast(out_nodata, out_type)
    if cast is None:
        raise ValueError(f"out_nodata is not a value of {out_type}, got {out_nodata!r}")
    return out_type, cast.item()


def _integer_bounds(dtype: np.dtype) -> tuple[float, float]:
    """A result moved half away from zero, then truncated, fits when strictly inside these."""
    if dtype.kind == "f":
        return -math.inf, math.inf
    info = np.iinfo(dtype)
    return float(info.min) - 1.0, float(info.max) + 1.0


def _square_or_disk(s: np.ndarray) -> tuple[int, bool] | None:
    """(size, circular) when ``s`` is Remotior's square or disk of a size of at least 1."""
    rows, cols = s.shape
    if rows != cols or rows % 2 == 0 or rows < 3:
        return None
    size = rows // 2
    for circular in (False, True):
        if np.array_equal(s, footprint(size, circular=circular)):
            return size, circular
    return None


def _nodata_pixels(pixels: np.ndarray, has_nd: bool, nd_value: np.generic) -> np.ndarray:
    mask = pixels == nd_value if has_nd else np.zeros(pixels.shape, dtype=bool)
    if pixels.dtype.kind == "f":
        mask |= np.isnan(pixels)
    return mask


def _runs(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The structure's row runs: row, first column, column after the last."""
    rows, starts, stops = [], [], []
    for e in range(s.shape[0]):
        padded = np.concatenate(([False], s[e], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        rows += [e] * (len(edges) // 2)
        starts += edges[0::2].tolist()
        stops += edges[1::2].tolist()
    as_array = lambda v: np.array(v, dtype=np.int64)  # noqa: E731
    return as_array(rows), as_array(starts), as_array(stops)


# --- count, sum, mean, deviation ------------------------------------------------


def _window_sums(
    block: np.ndarray,
    has_nd: bool,
    nd_value: np.generic,
    tile: tuple[int, int, int, int],
    s: np.ndarray,
    code: int,
    result: np.ndarray,
) -> None:
    t0, _, u0, _ = tile
    cy, cx = s.shape[0] // 2, s.shape[1] // 2
    integer = block.dtype.kind in "iu"
    small = block.dtype.itemsize <= 2 and int(s.sum()) < _EXACT_STD_PIXELS
    if integer and (code != _STD or small):
        stacked = bool((s == s[:1]).all())
        rows, starts, stops = _runs(s[:1] if stacked else s)
        _run_sums(
            block, has_nd, nd_value, t0 - cy, u0 - cx, cy, cx, s.shape[0], s.shape[1],
            rows, starts, stops, stacked, code, result,
        )  # fmt: skip
    else:
        cell_rows, cell_cols = (index.astype(np.int64) for index in np.nonzero(s))
        _cell_sums(
            block, has_nd, nd_value, t0 - cy, u0 - cx, cy, cx, cell_rows, cell_cols, code, result
        )


@njit(cache=True, nogil=True, inline="always")
def _valid(v, has_nd, nd):  # pragma: no cover - compiled
    return not ((has_nd and v == nd) or v != v)


@njit(cache=True, nogil=True)
def _prefix_row(block, has_nd, nd, row, c0, sums, counts, squares, square):  # pragma: no cover
    """Prefix sums of the valid values (and counts, and with ``square`` of the squares) of
    block ``row`` over the columns ``c0 ..``; columns and rows outside the block count
    nothing."""
    rows, cols = block.shape
    inside = 0 <= row < rows
    sums[0] = 0
    counts[0] = 0
    squares[0] = 0
    for q in range(sums.shape[0] - 1):
        c = c0 + q
        v = np.int64(0)
        ok = np.int64(0)
        if inside and 0 <= c < cols:
            x = block[row, c]
            if _valid(x, has_nd, nd):
                v = np.int64(x)
                ok = np.int64(1)
        sums[q + 1] = sums[q] + v
        counts[q + 1] = counts[q] + ok
        if square:
            squares[q + 1] = squares[q] + v * v


@njit(cache=True, nogil=True)
def _run_sums(
    block, has_nd, nd, r0, c0, cy, cx, height, width, run_rows, run_starts, run_stops, stacked,
    code, result,
):  # pragma: no cover - compiled  # fmt: skip
    """Count, sum, mean or deviation of integer pixels from prefix sums of the window's rows.

    Output pixel (i, j) has its structure's top-left corner on block pixel (r0 + i, c0 + j).
    The prefix sums of the ``height`` block rows a row of output needs are kept in a ring,
    each row summed once. When every row of the structure is the same (``stacked``, the
    runs given are those of one row), the ring's rows are also kept summed, so that a
    window costs two reads per run of one row, whatever its height.
    """
    out_rows, out_cols = result.shape
    span = out_cols + width - 1
    square = code == 3  # _STD
    ring_sums = np.zeros((height, span + 1), dtype=np.int64)
    ring_counts = np.zeros((height, span + 1), dtype=np.int64)
    ring_squares = np.zeros((height if square else 1, span + 1), dtype=np.int64)
    stack_sums = np.zeros(span + 1, dtype=np.int64)
    stack_counts = np.zeros(span + 1, dtype=np.int64)
    stack_squares = np.zeros(span + 1, dtype=np.int64)
    total = np.empty(out_cols, dtype=np.int64)
    count = np.empty(out_cols, dtype=np.int64)
    squared = np.empty(out_cols, dtype=np.int64)
    for p in range(height + out_rows - 1):
        slot = p % height
        i = p - height + 1  # the output row that the rows up to p complete
        if stacked and i > 0:  # row p - height leaves the stack
            stack_sums -= ring_sums[slot]
            stack_counts -= ring_counts[slot]
            if square:
                stack_squares -= ring_squares[slot]
        _prefix_row(
            block, has_nd, nd, r0 + p, c0, ring_sums[slot], ring_counts[slot],
            ring_squares[slot if square else 0], square,
        )  # fmt: skip
        if stacked:
            stack_sums += ring_sums[slot]
            stack_counts += ring_counts[slot]
            if square:
                stack_squares += ring_squares[slot]
        if i < 0:
            continue
        total[:] = 0
        count[:] = 0
        squared[:] = 0
        for k in range(run_rows.shape[0]):
            slot = (i + run_rows[k]) % height
            a = run_starts[k]
            b = run_stops[k]
            sums = stack_sums if stacked else ring_sums[slot]
            counts = stack_counts if stacked else ring_counts[slot]
            for j in range(out_cols):
                total[j] += sums[j + b] - sums[j + a]
            for j in range(out_cols):
                count[j] += counts[j + b] - counts[j + a]
            if square:
                squares = stack_squares if stacked else ring_squares[slot]
                for j in range(out_cols):
                    squared[j] += squares[j + b] - squares[j + a]
        centre = block[r0 + i + cy]
        row = result[i]
        for j in range(out_cols):
            n = count[j]
            if not _valid(centre[c0 + j + cx], has_nd, nd):
                row[j] = np.nan
            elif code == 0:  # _COUNT
                row[j] = n
            elif code == 1:  # _SUM
                row[j] = total[j]
            elif n == 0:
                row[j] = np.nan
            elif code == 2:  # _MEAN
                row[j] = np.float64(total[j]) / np.float64(n)
            else:
                spread = n * squared[j] - total[j] * total[j]
                row[j] = np.sqrt(np.float64(spread) / np.float64(n * n))


@njit(cache=True, nogil=True)
def _cell_sums(
    block, has_nd, nd, r0, c0, cy, cx, cell_rows, cell_cols, code, result
):  # pragma: no cover - compiled
    """Count, sum, mean or deviation in float64, each window summed afresh: one pass over the
    output row per structure element, in the structure's row-major order (Neumaier's
    compensated sum; the squared deviations plainly)."""
    rows, cols = block.shape
    out_rows, out_cols = result.shape
    total = np.empty(out_cols, dtype=np.float64)
    carry = np.empty(out_cols, dtype=np.float64)
    count = np.empty(out_cols, dtype=np.int64)
    mean = np.empty(out_cols, dtype=np.float64)
    spread = np.empty(out_cols, dtype=np.float64)
    cells = cell_rows.shape[0]
    for i in range(out_rows):
        total[:] = 0.0
        carry[:] = 0.0
        count[:] = 0
        for k in range(cells):
            y = r0 + i + cell_rows[k]
            if y < 0 or y >= rows:
                continue
            shift = c0 + cell_cols[k]
            j0 = max(0, -shift)
            j1 = min(out_cols, cols - shift)
            source = block[y]
            for j in range(j0, j1):
                x = source[shift + j]
                ok = _valid(x, has_nd, nd)
                v = np.float64(x) if ok else 0.0
                t = total[j] + v
                if abs(total[j]) >= abs(v):
                    carry[j] += (total[j] - t) + v
                else:
                    carry[j] += (v - t) + total[j]
                total[j] = t
                count[j] += np.int64(ok)
        for j in range(out_cols):
            mean[j] = (total[j] + carry[j]) / count[j] if count[j] else np.nan
        if code == 3:  # _STD: a second pass, about each window's mean
            spread[:] = 0.0
            for k in range(cells):
                y = r0 + i + cell_rows[k]
                if y < 0 or y >= rows:
                    continue
                shift = c0 + cell_cols[k]
                j0 = max(0, -shift)
                j1 = min(out_cols, cols - shift)
                source = block[y]
                for j in range(j0, j1):
                    x = source[shift + j]
                    d = np.float64(x) - mean[j] if _valid(x, has_nd, nd) else 0.0
                    spread[j] += d * d
        centre = block[r0 + i + cy]
        row = result[i]
        for j in range(out_cols):
            n = count[j]
            if not _valid(centre[c0 + j + cx], has_nd, nd):
                row[j] = np.nan
            elif code == 0:  # _COUNT
                row[j] = n
            elif code == 1:  # _SUM
                row[j] = total[j] + carry[j]
            elif n == 0:
                row[j] = np.nan
            elif code == 2:  # _MEAN
                row[j] = mean[j]
            else:
                row[j] = np.sqrt(spread[j] / n)


# --- median, percentile, and min and max over any structure --------------------


def _rank_statistic(
    block: np.ndarray,
    has_nd: bool,
    nd_value: np.generic,
    tile: tuple[int, int, int, int],
    s: np.ndarray,
    code: int,
    percentile: float,
    result: np.ndarray,
) -> None:
    t0, t1, u0, u1 = tile
    height, width = s.shape
    cy, cx = height // 2, width // 2
    rows, cols = block.shape
    # Codes of the tile with its halo, -1 where invalid or outside the raster.
    r0, c0 = t0 - cy, u0 - cx
    codes = np.full((t1 - t0 + height - 1, u1 - u0 + width - 1), -1, dtype=np.int32)
    y0, y1 = max(r0, 0), min(r0 + codes.shape[0], rows)
    x0, x1 = max(c0, 0), min(c0 + codes.shape[1], cols)
    pixels = block[y0:y1, x0:x1]
    valid = ~_nodata_pixels(pixels, has_nd, nd_value)
    if not valid.any():
        result[...] = np.nan
        return
    if block.dtype.kind in "iu" and block.dtype.itemsize <= 2:
        low = int(pixels[valid].min())
        values = np.arange(low, int(pixels[valid].max()) + 1, dtype=np.float64)
        mapped = pixels.astype(np.int32) - np.int32(low)
    else:
        values = np.unique(pixels[valid]).astype(np.float64)
        mapped = np.searchsorted(values, pixels.astype(np.float64)).astype(np.int32)
    codes[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] = np.where(valid, mapped, np.int32(-1))
    steps = _steps(s)
    _rank_filter(codes, *steps, cy, cx, _levels(len(values)), code, percentile, values, result)


def _steps(s: np.ndarray) -> tuple[np.ndarray, ...]:
    """Offsets (row, col) of the pixels a window's step adds and removes, and of the whole
    window: right step entering and leaving, down step entering and leaving, all. The right
    step from (i, j) adds codes[i + e, j + d] for the entering offsets; a left step from
    (i, j + 1) adds codes[i + e, j + d] for the leaving ones."""
    height, width = s.shape
    padded = np.zeros((height + 2, width + 2), dtype=bool)
    padded[1:-1, 1:-1] = s
    here = padded[1:, 1:]  # here[e, d] = s[e, d], False beyond
    left = padded[1:, :-1]  # left[e, d] = s[e, d - 1]
    up = padded[:-1, 1:]  # up[e, d] = s[e - 1, d]
    found = []
    for mask in (left & ~here, here & ~left, up & ~here, here & ~up, here):
        e, d = np.nonzero(mask)
        found += [e.astype(np.int64), d.astype(np.int64)]
    return tuple(found)


def _levels(distinct: int) -> int:
    """How many 16-way levels count ``distinct`` codes with at most 16 bins at the top."""
    levels = 1
    while (distinct - 1) >> (_LEVEL_BITS * (levels - 1)) >= 16:
        levels += 1
    return levels


@njit(cache=True, nogil=True, inline="always")
def _count(counts, offsets, levels, code, delta):  # pragma: no cover - compiled
    for level in range(levels):
        counts[offsets[level] + (code >> (4 * level))] += delta


@njit(cache=True, nogil=True, inline="always")
def _move(codes, rows_, cols_, i, j, counts, offsets, levels, delta):  # pragma: no cover
    """Add (``delta`` 1) or remove (-1) the valid codes at (i + rows_, j + cols_); how many."""
    moved = 0
    for k in range(rows_.shape[0]):
        code = codes[i + rows_[k], j + cols_[k]]
        if code >= 0:
            _count(counts, offsets, levels, code, delta)
            moved += 1
    return moved * delta


@njit(cache=True, nogil=True, inline="always")
def _kth(counts, offsets, levels, rank):  # pragma: no cover - compiled
    """The code of the ``rank``-th smallest counted value (from 0), descending the levels."""
    index = 0
    for level in range(levels - 1, -1, -1):
        base = offsets[level]
        while rank >= counts[base + index]:
            rank -= counts[base + index]
            index += 1
        if level:
            index <<= 4
    return index


@njit(cache=True, nogil=True)
def _rank_filter(
    codes,
    right_in_rows,
    right_in_cols,
    right_out_rows,
    right_out_cols,
    down_in_rows,
    down_in_cols,
    down_out_rows,
    down_out_cols,
    all_rows,
    all_cols,
    cy,
    cx,
    levels,
    code,
    percentile,
    values,
    result,
):  # pragma: no cover - compiled
    """Median, percentile, min or max: one window slides in a snake over the output, a
    histogram of levels counting the valid codes in it."""
    out_rows, out_cols = result.shape
    offsets = np.zeros(levels + 1, dtype=np.int64)
    for level in range(levels):
        offsets[level + 1] = offsets[level] + ((values.shape[0] - 1) >> (4 * level)) + 1
    # Every level has room for a whole last group of 16, so a descent never reads past it.
    counts = np.zeros(offsets[levels] + 16, dtype=np.int64)
    n = _move(codes, all_rows, all_cols, 0, 0, counts, offsets, levels, 1)
    j = 0
    for i in range(out_rows):
        if i > 0:
            n += _move(codes, down_in_rows, down_in_cols, i - 1, j, counts, offsets, levels, 1)
            n += _move(codes, down_out_rows, down_out_cols, i - 1, j, counts, offsets, levels, -1)
        forward = i % 2 == 0
        for step in range(out_cols):
            if step > 0:
                if forward:
                    n += _move(
                        codes, right_in_rows, right_in_cols, i, j, counts, offsets, levels, 1
                    )
                    n += _move(
                        codes, right_out_rows, right_out_cols, i, j, counts, offsets, levels, -1
                    )
                    j += 1
                else:
                    j -= 1
                    n += _move(
                        codes, right_out_rows, right_out_cols, i, j, counts, offsets, levels, 1
                    )
                    n += _move(
                        codes, right_in_rows, right_in_cols, i, j, counts, offsets, levels, -1
                    )
            if codes[i + cy, j + cx] < 0 or n == 0:
                result[i, j] = np.nan
                continue
            if code == 6:  # _MIN
                rank = 0
            elif code == 7:  # _MAX
                rank = n - 1
            elif code == 4:  # _MEDIAN
                rank = n // 2
            elif percentile >= 100.0:
                rank = n - 1
            else:
                rank = int(np.float64(n) * percentile / 100.0)
            result[i, j] = values[_kth(counts, offsets, levels, rank)]


# --- the output ----------------------------------------------------------------------


@njit(cache=True, nogil=True)
def _store(result, out, nodata, integer, below, above):  # pragma: no cover - compiled
    """out = result in out's dtype, as band calc writes (see the module notes); NaN and every
    result the dtype cannot hold become ``nodata``."""
    rows, cols = result.shape
    for i in range(rows):
        source = result[i]
        target = out[i]
        if integer:
            for j in range(cols):
                v = source[j]
                v = v + 0.5 if v >= 0.0 else v - 0.5
                if v > below and v < above:
                    target[j] = v  # truncated: the rounded value
                else:
                    target[j] = nodata
        else:
            for j in range(cols):
                target[j] = source[j]
            for j in range(cols):
                if not np.isfinite(target[j]):
                    target[j] = nodata
