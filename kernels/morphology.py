"""Morphology on tiles read with a halo: value-list dilation and erosion, grey filters.

Four tools share one footprint model and one tiling contract:

- :func:`dilate` is Remotior Sensus' ``band_dilation``: pixels whose value is not
  in ``value_list`` take a listed value found in their window; where several
  listed values reach a pixel, the one later in the list wins.
- :func:`erode` is Remotior Sensus' ``band_erosion`` done exactly: ``size``
  iterations of a 3x3 step (a plus when circular) in which a listed pixel
  touching another value takes its most frequent neighbouring value that is
  neither listed nor nodata (ties to the lower value), or nodata if none.
  Counts are integers, so the result never depends on the tiling.
- :func:`grey_filter` is a max (dilation) or min (erosion) filter, and their
  compositions opening (erode then dilate) and closing (dilate then erode).

Footprints
    ``circular=False``: the square of side ``2*size+1``.
    ``circular=True``: the disk holding the pixels at offset ``(dy, dx)`` with
    ``dy*dy + dx*dx <= size*size``, exactly Remotior's circular structure;
    radius 1 is the plus (4-neighbours and the centre).
    Value-list erosion iterates the radius-1 footprint (3x3 or plus) ``size``
    times; every other operation uses the radius-``size`` footprint once.

Edges
    Pixels outside the raster do not exist: windows are clipped to the raster,
    never padded with a value that could count as a neighbour.

Nodata
    ``nodata`` is a value of the block's dtype or None. For float blocks NaN is
    always nodata (also when ``nodata`` is None or NaN). Nodata pixels are never
    changed, never spread by dilation and are ignored by the grey filters. In
    value-list erosion a nodata neighbour counts as "another value" (so listed
    pixels next to nodata erode) but is never a candidate fill value. A listed
    pixel with no candidate becomes ``nodata`` (NaN for floats when ``nodata``
    is None); an integer block with ``nodata=None`` has no nodata to become,
    so such a pixel keeps its value.

Tiling
    Each public function takes ``block``, the tile plus up to :func:`halo_width`
    pixels on each side as read from the raster (clipped at the raster's
    edges), and ``interior``, where the tile lies inside the block (None: the
    whole block). It returns exactly the tile's output, identical to the same
    pixels of a run on the whole raster. A block edge that is not a raster edge
    must therefore lie at least ``halo_width(operation, size)`` pixels from the
    tile.

Notes
    Memory grows with the block: erosion holds two value and two state
    buffers of the block's size, reused across its iterations; value-list
    dilation a code map of the block; the max and min filters, besides their
    output, only scratch for a band of 256 (or ``8*size``) rows, which also
    keeps it in the CPU's caches. Work is split over rows with
    ``numba.prange``; every output pixel is written by one thread from inputs
    no thread modifies, so results do not depend on the thread count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Literal, Protocol

import numpy as np
from numba import njit, prange, uintp

Operation = Literal["dilation", "erosion", "opening", "closing"]
OPERATIONS: Final[frozenset[str]] = frozenset({"dilation", "erosion", "opening", "closing"})


class _HasSlices(Protocol):
    def toslices(self) -> tuple[slice, slice]: ...


Interior = tuple[slice, slice] | _HasSlices


def halo_width(operation: Operation, size: int) -> int:
    """Return the halo, in pixels on each side, that ``operation`` of ``size`` needs.

    Dilation and erosion (value-list or grey) need ``size``; opening and closing
    need ``2*size``.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unsupported operation, got {operation!r}")
    size = _coerce_size(size)
    return 2 * size if operation in ("opening", "closing") else size


def footprint(size: int, *, circular: bool = False) -> np.ndarray:
    """Return the boolean ``(2*size+1, 2*size+1)`` footprint of radius ``size``.

    Square when not circular; else the disk ``dy*dy + dx*dx <= size*size``.
    """
    size = _coerce_size(size)
    widths = _row_half_widths(size, circular)
    dx = np.abs(np.arange(-size, size + 1))
    return dx[None, :] <= widths[:, None]


def dilate(
    block: np.ndarray,
    *,
    value_list: Sequence[float],
    size: int,
    circular: bool = False,
    nodata: float | None = None,
    interior: Interior | None = None,
) -> np.ndarray:
    """Dilate the pixels whose value is in ``value_list`` (Remotior's ``band_dilation``).

    A pixel that is neither listed nor nodata becomes ``v`` when a non-nodata
    pixel of value ``v`` lies in its footprint of radius ``size``; where several
    listed values reach it, the one later in ``value_list`` wins (for a value
    listed twice, its last position counts). Listed values that the dtype
    cannot hold never match. Halo: ``size``.
    """
    block, tile, nd = _coerce_common(block, interior, nodata)
    size = _coerce_size(size)
    circular = _coerce_flag(circular, "circular")
    values, ranks = _coerce_value_list(value_list, block.dtype)
    t0, t1, u0, u1 = tile
    by_rank = np.empty(len(values) + 1, dtype=block.dtype)
    by_rank[0] = 0
    by_rank[ranks] = values
    rank_dtype = np.uint8 if len(values) < 255 else np.int32
    ranks_map = _code_pixels(block, values, ranks.astype(rank_dtype), nd, rank_dtype(0))
    reached = _footprint_filter(ranks_map, t0, t1, u0, u1, size, circular, True)
    out = np.empty((t1 - t0, u1 - u0), dtype=block.dtype)
    _dilate_finish(block, ranks_map, reached, by_rank, t0, u0, nd[0], nd[1], out)
    return out


def erode(
    block: np.ndarray,
    *,
    value_list: Sequence[float],
    size: int,
    circular: bool = False,
    nodata: float | None = None,
    interior: Interior | None = None,
) -> np.ndarray:
    """Erode the pixels whose value is in ``value_list`` (Remotior's ``band_erosion``).

    ``size`` iterations, each applied to every pixel at once: a listed pixel
    with an in-raster neighbour (3x3, or the plus when ``circular``) of another
    value, nodata included, takes the most frequent neighbouring value that is
    neither listed nor nodata, ties to the lower value; with none it becomes
    nodata (see the module notes for ``nodata=None``). Halo: ``size``.
    """
    block, tile, nd = _coerce_common(block, interior, nodata)
    size = _coerce_size(size)
    circular = _coerce_flag(circular, "circular")
    values, _ = _coerce_value_list(value_list, block.dtype)
    has_nd, nd_value, can_fill = nd
    top = _dtype_extremes(block.dtype)[1]
    t0, t1, u0, u1 = tile
    rows, cols = block.shape
    if circular:
        dys = np.array([-1, 0, 0, 1], dtype=np.int64)
        dxs = np.array([0, -1, 1, 0], dtype=np.int64)
    else:
        dys = np.array([-1, -1, -1, 0, 0, 1, 1, 1], dtype=np.int64)
        dxs = np.array([-1, 0, 1, -1, 1, -1, 0, 1], dtype=np.int64)
    cur_values = block.copy()
    # States: 0 unlisted, 1 listed, 2 nodata.
    listed = np.ones(len(values), dtype=np.uint8)
    cur_states = _code_pixels(block, values, listed, nd, np.uint8(2))
    next_values = np.empty_like(cur_values)
    next_states = np.empty_like(cur_states)
    for step in range(1, size + 1):
        # Only pixels within size - step of the tile still influence it.
        margin = size - step
        _erode_step(
            cur_values,
            cur_states,
            next_values,
            next_states,
            max(t0 - margin, 0),
            min(t1 + margin, rows),
            max(u0 - margin, 0),
            min(u1 + margin, cols),
            dys,
            dxs,
            top,
            nd_value,
            can_fill,
        )
        cur_values, next_values = next_values, cur_values
        cur_states, next_states = next_states, cur_states
    return cur_values[t0:t1, u0:u1].copy()


def grey_filter(
    block: np.ndarray,
    *,
    operation: Operation,
    size: int,
    circular: bool = False,
    nodata: float | None = None,
    interior: Interior | None = None,
) -> np.ndarray:
    """Grey dilation (max), erosion (min), opening or closing over the footprint.

    Opening is erosion then dilation, closing dilation then erosion, both of
    radius ``size``. Nodata pixels are ignored in every window and stay nodata
    in the output (also in the intermediate of opening and closing). Halo:
    :func:`halo_width` of ``operation``.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unsupported operation, got {operation!r}")
    block, tile, nd = _coerce_common(block, interior, nodata)
    size = _coerce_size(size)
    circular = _coerce_flag(circular, "circular")
    has_nd, nd_value, _ = nd
    lowest, highest = _dtype_extremes(block.dtype)
    t0, t1, u0, u1 = tile
    rows, cols = block.shape
    if operation in ("dilation", "erosion"):
        take_max = operation == "dilation"
        nodata_as = (has_nd, nd_value, lowest if take_max else highest)
        out = _footprint_filter(block, t0, t1, u0, u1, size, circular, take_max, nodata_as)
    else:
        first_max = operation == "closing"
        nodata_as = (has_nd, nd_value, lowest if first_max else highest)
        r0, r1 = max(t0 - size, 0), min(t1 + size, rows)
        c0, c1 = max(u0 - size, 0), min(u1 + size, cols)
        middle = _footprint_filter(block, r0, r1, c0, c1, size, circular, first_max, nodata_as)
        _mark_nodata(middle, block, r0, c0, has_nd, nd_value, highest if first_max else lowest)
        out = _footprint_filter(
            middle, t0 - r0, t1 - r0, u0 - c0, u1 - c0, size, circular, not first_max
        )
    _restore_nodata(out, block, t0, u0, has_nd, nd_value)
    return out


# --- argument normalisation -------------------------------------------------


def _coerce_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise ValueError(f"unsupported size, got {size!r}")
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size!r}")
    return int(size)


def _coerce_flag(flag: bool, name: str) -> bool:
    if not isinstance(flag, bool | np.bool_):
        raise ValueError(f"unsupported {name}, got {flag!r}")
    return bool(flag)


def _coerce_common(
    block: np.ndarray, interior: Interior | None, nodata: float | None
) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[bool, np.generic, bool]]:
    if not isinstance(block, np.ndarray) or block.ndim != 2:
        raise ValueError(f"block must be a 2-D ndarray, got {_describe(block)}")
    if block.dtype.kind not in "iuf":
        raise ValueError(f"unsupported dtype, got {block.dtype!r}")
    if not block.dtype.isnative:
        block = block.astype(block.dtype.newbyteorder("="))
    block = np.ascontiguousarray(block)
    tile = _coerce_interior(interior, block.shape)
    return block, tile, _coerce_nodata(nodata, block.dtype)


def _coerce_interior(
    interior: Interior | None, shape: tuple[int, ...]
) -> tuple[int, int, int, int]:
    rows, cols = shape
    if interior is None:
        slices: object = (slice(0, rows), slice(0, cols))
    elif hasattr(interior, "toslices"):
        slices = interior.toslices()
    else:
        slices = interior
    if (
        not isinstance(slices, tuple)
        or len(slices) != 2
        or not all(isinstance(s, slice) for s in slices)
    ):
        raise ValueError(f"unsupported interior, got {interior!r}")
    bounds = []
    for part, length in zip(slices, (rows, cols), strict=True):
        if part.step not in (None, 1):
            raise ValueError(f"unsupported interior step, got {interior!r}")
        start = 0 if part.start is None else int(part.start)
        stop = length if part.stop is None else int(part.stop)
        if not 0 <= start < stop <= length:
            raise ValueError(
                f"interior {interior!r} is empty or outside the block of shape {shape}"
            )
        bounds += [start, stop]
    return bounds[0], bounds[1], bounds[2], bounds[3]


def _coerce_nodata(nodata: float | None, dtype: np.dtype) -> tuple[bool, np.generic, bool]:
    """Return (pixels can equal a nodata value, that value, a nodata value can be written)."""
    is_float = dtype.kind == "f"
    if nodata is None or (isinstance(nodata, float | np.floating) and math.isnan(nodata)):
        if is_float:
            return False, dtype.type(np.nan), True
        if nodata is None:
            return False, dtype.type(0), False
        raise ValueError(f"nodata NaN is not a value of {dtype}, got {nodata!r}")
    if isinstance(nodata, bool) or not isinstance(nodata, int | float | np.integer | np.floating):
        raise ValueError(f"unsupported nodata, got {nodata!r}")
    cast = _exact_cast(nodata, dtype)
    if cast is None:
        raise ValueError(f"nodata is not a value of {dtype}, got {nodata!r}")
    return True, cast, True


def _exact_cast(value: float, dtype: np.dtype) -> np.generic | None:
    """Return ``value`` in ``dtype``, or None when no pixel of that dtype can equal it."""
    if dtype.kind == "f":
        if math.isnan(value):
            return None
        with np.errstate(over="ignore"):
            cast = dtype.type(value)
        if math.isinf(cast) and not math.isinf(value):
            return None
        return cast
    info = np.iinfo(dtype)
    if isinstance(value, float | np.floating) and not float(value).is_integer():
        return None
    if not info.min <= int(value) <= info.max:
        return None
    return dtype.type(int(value))


def _coerce_value_list(
    value_list: Sequence[float], dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct listed values the dtype can hold and their 1-based priority."""
    if isinstance(value_list, str | bytes) or not hasattr(value_list, "__len__"):
        raise ValueError(f"unsupported value_list, got {value_list!r}")
    items = list(np.asarray(value_list).ravel().tolist()) if len(value_list) else []
    if not items:
        raise ValueError(f"value_list must not be empty, got {value_list!r}")
    last: dict[object, int] = {}
    for position, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise ValueError(f"unsupported value in value_list, got {item!r}")
        cast = _exact_cast(item, dtype)
        if cast is not None:
            last.pop(cast.item(), None)
            last[cast.item()] = position
    values = np.array(list(last), dtype=dtype)
    ranks = np.arange(1, len(values) + 1, dtype=np.int64)
    return values, ranks


def _dtype_extremes(dtype: np.dtype) -> tuple[np.generic, np.generic]:
    if dtype.kind == "f":
        return dtype.type(-np.inf), dtype.type(np.inf)
    info = np.iinfo(dtype)
    return dtype.type(info.min), dtype.type(info.max)


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape}"
    return repr(type(value).__name__)


def _row_half_widths(size: int, circular: bool) -> np.ndarray:
    """Half-width of the footprint on each row offset -size..size."""
    if not circular:
        return np.full(2 * size + 1, size, dtype=np.int64)
    return np.array(
        [math.isqrt(size * size - dy * dy) for dy in range(-size, size + 1)], dtype=np.int64
    )


def _code_pixels(
    block: np.ndarray,
    values: np.ndarray,
    codes: np.ndarray,
    nd: tuple[bool, np.generic, bool],
    nd_code: np.generic,
) -> np.ndarray:
    """Map each pixel to ``codes[k]`` where it equals ``values[k]``, nodata to ``nd_code``, else 0."""
    dtype = block.dtype
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        offset = int(np.iinfo(dtype).min)
        table = np.zeros(1 << (8 * dtype.itemsize), dtype=codes.dtype)
        table[values.astype(np.int64) - offset] = codes
    else:
        offset = 0
        table = np.zeros(0, dtype=codes.dtype)
    out = np.empty(block.shape, dtype=codes.dtype)
    _lookup_pixels(block, table, offset, values, codes, nd[0], nd[1], nd_code, out)
    return out


# --- max / min filter over a footprint ---------------------------------------

# Output rows a band of _footprint_filter works on: scratch of a few MB.
_BAND_ROWS = 256


def _footprint_filter(
    work: np.ndarray,
    r0: int,
    r1: int,
    c0: int,
    c1: int,
    size: int,
    circular: bool,
    take_max: bool,
    nodata_as: tuple[bool, np.generic, np.generic] | None = None,
) -> np.ndarray:
    """Max or min of ``work`` over the footprint, for the pixels [r0:r1, c0:c1].

    ``work`` stands for the whole raster: windows are clipped to it. The
    footprint is a union of centred row segments; the running max over each
    distinct segment width is built by doubling (width a+b from width a with
    b <= a, two reads a pixel), then the rows of each width are combined.
    ``nodata_as`` (has nodata, nodata, sentinel) makes nodata and NaN pixels
    count as the sentinel. Output rows go a band at a time through scratch of
    a band's height, so scratch stays small and in the CPU's caches.
    """
    rows, cols = work.shape
    widths = _row_half_widths(size, circular)
    out = np.empty((r1 - r0, c1 - c0), dtype=work.dtype)
    band = max(_BAND_ROWS, 8 * size)
    scratch_rows = min(band, r1 - r0) + 2 * size
    buffers = [np.empty((scratch_rows, cols), dtype=work.dtype) for _ in range(3)]
    for s0 in range(r0, r1, band):
        s1 = min(s0 + band, r1)
        h0, h1 = max(s0 - size, 0), min(s1 + size, rows)
        source = work[h0:h1]
        if nodata_as is not None:
            _sanitise(source, *nodata_as, buffers[2][: h1 - h0])
            source = buffers[2][: h1 - h0]
        target = out[s0 - r0 : s1 - r0]
        target[:] = source[s0 - h0 : s1 - h0, c0:c1]
        current, current_width, spare = source, 0, 0
        for width in np.unique(widths).tolist():
            while current_width < width:
                widened = buffers[spare][: h1 - h0]
                step = 1 if current_width == 0 else min(width - current_width, current_width)
                _widen_rows(current, widened, current_width, step, take_max)
                current, current_width, spare = widened, current_width + step, 1 - spare
            offsets = np.flatnonzero(widths == width).astype(np.int64) - size
            _combine_rows(current, h0, target, s0, c0, offsets, take_max)
    return out


@njit(parallel=True, cache=True, nogil=True)
def _widen_rows(src, dst, width, step, take_max):  # pragma: no cover - compiled
    """dst = running max/min of half-width ``width + step`` along rows, from ``src`` of ``width``.

    Inner loops index with unsigned integers: numba then emits no test for
    negative indices and LLVM vectorises them.
    """
    rows, cols = src.shape
    lo = min(step, cols)
    hi = max(cols - step, lo)
    # From single pixels (width 0) the segment needs its centre as well.
    centre = width == 0
    span = uintp(hi - lo)
    first = uintp(lo - step)
    k = uintp(step)
    for y in prange(rows):
        s = src[y]
        d = dst[y]
        # Clamped reads at the edges are exact: max/min is idempotent and the
        # clamped segment lies inside the wanted one.
        for x in range(lo):
            v = _pick(s[0], s[min(x + step, cols - 1)], take_max)
            d[x] = _pick(v, s[x], take_max) if centre else v
        if centre and take_max:
            for i in range(span):
                d[first + k + i] = max(max(s[first + i], s[first + k + i]), s[first + k + k + i])
        elif centre:
            for i in range(span):
                d[first + k + i] = min(min(s[first + i], s[first + k + i]), s[first + k + k + i])
        elif take_max:
            for i in range(span):
                d[first + k + i] = max(s[first + i], s[first + k + k + i])
        else:
            for i in range(span):
                d[first + k + i] = min(s[first + i], s[first + k + k + i])
        for x in range(hi, cols):
            v = _pick(s[max(x - step, 0)], s[cols - 1], take_max)
            d[x] = _pick(v, s[x], take_max) if centre else v


@njit(parallel=True, cache=True, nogil=True)
def _combine_rows(src, src_row0, out, r0, c0, offsets, take_max):  # pragma: no cover
    """out[y] = max/min(out[y], src rows y+dy for dy in offsets), rows inside ``src``."""
    rows, cols = out.shape
    src_rows = src.shape[0]
    first = uintp(c0)
    width = uintp(cols)
    for i in prange(rows):
        o = out[i]
        for k in range(offsets.shape[0]):
            yy = r0 + i + offsets[k] - src_row0
            if yy < 0 or yy >= src_rows:
                continue
            s = src[yy]
            if take_max:
                for x in range(width):
                    o[x] = max(o[x], s[first + x])
            else:
                for x in range(width):
                    o[x] = min(o[x], s[first + x])


@njit(cache=True, nogil=True, inline="always")
def _pick(a, b, take_max):  # pragma: no cover - compiled
    if take_max:
        return a if a > b else b
    return a if a < b else b


# --- pixel passes --------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _is_nodata(v, has_nd, nd):  # pragma: no cover - compiled
    # Bitwise, not short-circuit, operators: branch-free loops vectorise.
    return (has_nd & (v == nd)) | (v != v)


@njit(parallel=True, cache=True, nogil=True)
def _sanitise(block, has_nd, nd, sentinel, out):  # pragma: no cover - compiled
    """out = block with nodata (and NaN) pixels replaced by ``sentinel``."""
    rows, cols = block.shape
    for y in prange(rows):
        for x in range(uintp(cols)):
            v = block[y, x]
            out[y, x] = sentinel if _is_nodata(v, has_nd, nd) else v


@njit(parallel=True, cache=True, nogil=True)
def _mark_nodata(out, block, r0, c0, has_nd, nd, fill):  # pragma: no cover - compiled
    """Set ``out`` to ``fill`` where ``block[r0:, c0:]`` is nodata or NaN."""
    rows, cols = out.shape
    for y in prange(rows):
        for x in range(uintp(cols)):
            v = block[r0 + y, uintp(c0) + x]
            out[y, x] = fill if _is_nodata(v, has_nd, nd) else out[y, x]


@njit(parallel=True, cache=True, nogil=True)
def _restore_nodata(out, block, r0, c0, has_nd, nd):  # pragma: no cover - compiled
    """Nodata (and NaN) pixels of ``block[r0:, c0:]`` keep their value in ``out``."""
    rows, cols = out.shape
    for y in prange(rows):
        for x in range(uintp(cols)):
            v = block[r0 + y, uintp(c0) + x]
            out[y, x] = v if _is_nodata(v, has_nd, nd) else out[y, x]


@njit(parallel=True, cache=True, nogil=True)
def _lookup_pixels(
    block, table, table_offset, values, codes, has_nd, nd, nd_code, out
):  # pragma: no cover - compiled
    """out = code of each pixel's value: ``codes[k]`` for ``values[k]``, else 0.

    Nodata pixels get ``nd_code``. With a non-empty ``table`` (integer dtypes of
    up to 16 bits) the code is ``table[value - table_offset]``; else the list
    of ``values`` is scanned without branches.
    """
    rows, cols = block.shape
    use_table = table.shape[0] > 0
    for y in prange(rows):
        for x in range(uintp(cols)):
            v = block[y, x]
            if use_table:
                code = table[uintp(np.int64(v) - table_offset)]
            else:
                code = codes[0] if v == values[0] else 0
                for k in range(1, values.shape[0]):
                    code = codes[k] if v == values[k] else code
            out[y, x] = nd_code if _is_nodata(v, has_nd, nd) else code


@njit(parallel=True, cache=True, nogil=True)
def _dilate_finish(block, ranks_map, reached, by_rank, t0, u0, has_nd, nd, out):  # pragma: no cover
    rows, cols = out.shape
    for y in prange(rows):
        for x in range(uintp(cols)):
            v = block[t0 + y, uintp(u0) + x]
            r = reached[y, x]
            # Gathered unconditionally, so the loop has no branch to mispredict.
            reaching = by_rank[uintp(r)]
            keep = (r == 0) | (ranks_map[t0 + y, uintp(u0) + x] != 0) | _is_nodata(v, has_nd, nd)
            out[y, x] = v if keep else reaching


# --- value-list erosion step --------------------------------------------------


@njit(parallel=True, cache=True, nogil=True)
def _erode_step(
    values, states, new_values, new_states, r0, r1, c0, c1, dys, dxs, top, nd_fill, can_fill
):  # pragma: no cover - compiled
    """One erosion iteration for the pixels [r0:r1, c0:c1]; neighbours clipped to the block.

    States: 0 unlisted, 1 listed, 2 nodata. Inner pixels, whose neighbours
    all lie in the block, go through :func:`_erode_inner`; the block's border
    pixels through :func:`_erode_border`. ``top`` is the dtype's largest value.
    """
    rows, cols = values.shape
    plus = dys.shape[0] == 4
    for y in prange(r0, r1):
        border_row = y == 0 or y == rows - 1
        lo = c1 if border_row else min(max(c0, 1), c1)
        hi = c1 if border_row else max(min(c1, cols - 1), lo)
        if hi > lo:
            _erode_inner(
                values, states, new_values, new_states, y, lo, hi, plus, top, nd_fill, can_fill
            )
        for x in range(c0, lo):
            _erode_border(values, states, new_values, new_states, y, x, dys, dxs, nd_fill, can_fill)
        for x in range(hi, c1):
            _erode_border(values, states, new_values, new_states, y, x, dys, dxs, nd_fill, can_fill)


@njit(cache=True, nogil=True)
def _erode_inner(
    values, states, new_values, new_states, y, lo, hi, plus, top, nd_fill, can_fill
):  # pragma: no cover - compiled
    """Erode the inner pixels [lo:hi] of row ``y`` without a branch.

    A pixel's state follows from its value, so a listed pixel touches another
    value exactly where a neighbour's value differs from its own. Whether each
    pixel touches, its fill and whether it has one are computed for every pixel
    of the row, each in its own loop over contiguous slices with every load
    unconditional: LLVM turns each loop into vector code (32 uint8 pixels at a
    time with AVX2), which costs less than visiting only the touching pixels.
    """
    n = hi - lo
    touching = np.empty(n, dtype=np.uint8)
    fills = np.empty(n, dtype=values.dtype)
    found = np.empty(n, dtype=np.uint8)
    _touching_row(values, states, y, lo, hi, plus, touching)
    _fill_row(values, states, y, lo, hi, plus, top, fills)
    _found_row(states, y, lo, hi, plus, found)
    v_in, v_out = values[y, lo:hi], new_values[y, lo:hi]
    s_in, s_out = states[y, lo:hi], new_states[y, lo:hi]
    # Values and states in two loops: few arrays a loop, so it vectorises.
    for i in range(uintp(n)):
        fill, has_fill, touches, value = fills[i], found[i], touching[i], v_in[i]
        fill = fill if has_fill else nd_fill
        v_out[i] = fill if touches & (has_fill | can_fill) else value
    for i in range(uintp(n)):
        has_fill, touches, state = found[i], touching[i], s_in[i]
        fill_state = np.uint8(0) if has_fill else np.uint8(2)
        s_out[i] = fill_state if touches & (has_fill | can_fill) else state


@njit(cache=True, nogil=True)
def _touching_row(values, states, y, lo, hi, plus, touching):  # pragma: no cover - compiled
    """touching[i] = inner pixel (y, lo + i) is listed and a neighbour's value differs."""
    north, middle, south = _rows_around(values, y, lo, hi)
    listed = states[y, lo:hi]
    one, two = uintp(1), uintp(2)
    if plus:
        for i in range(uintp(hi - lo)):
            v = middle[i + one]
            differs = (north[i + one] != v) | (middle[i] != v)
            differs |= (middle[i + two] != v) | (south[i + one] != v)
            touching[i] = differs & (listed[i] == 1)
        return
    for i in range(uintp(hi - lo)):
        v = middle[i + one]
        differs = (north[i] != v) | (north[i + one] != v) | (north[i + two] != v)
        differs |= (middle[i] != v) | (middle[i + two] != v)
        differs |= (south[i] != v) | (south[i + one] != v) | (south[i + two] != v)
        touching[i] = differs & (listed[i] == 1)


@njit(cache=True, nogil=True)
def _found_row(states, y, lo, hi, plus, found):  # pragma: no cover - compiled
    """found[i] = inner pixel (y, lo + i) has an unlisted neighbour."""
    north, middle, south = _rows_around(states, y, lo, hi)
    one, two = uintp(1), uintp(2)
    if plus:
        for i in range(uintp(hi - lo)):
            found[i] = (north[i + one] == 0) | (middle[i] == 0)
            found[i] |= (middle[i + two] == 0) | (south[i + one] == 0)
        return
    for i in range(uintp(hi - lo)):
        some = (north[i] == 0) | (north[i + one] == 0) | (north[i + two] == 0)
        some |= (middle[i] == 0) | (middle[i + two] == 0)
        some |= (south[i] == 0) | (south[i + one] == 0) | (south[i + two] == 0)
        found[i] = some


@njit(cache=True, nogil=True)
def _fill_row(values, states, y, lo, hi, plus, top, fills):  # pragma: no cover - compiled
    """fills[i] = most frequent unlisted neighbour of inner pixel (y, lo + i), ties to the lowest.

    Meaningless where the pixel has none (see :func:`_found_row`). Listed and
    nodata neighbours become ``top`` and are counted out; a sorting network
    orders the neighbours and one pass over them finds the longest run.
    """
    v_north, v_middle, v_south = _rows_around(values, y, lo, hi)
    s_north, s_middle, s_south = _rows_around(states, y, lo, hi)
    one, two = uintp(1), uintp(2)
    if plus:
        for i in range(uintp(hi - lo)):
            a, va = _candidate(v_north, s_north, i + one, top)
            b, vb = _candidate(v_middle, s_middle, i, top)
            c, vc = _candidate(v_middle, s_middle, i + two, top)
            d, vd = _candidate(v_south, s_south, i + one, top)
            fills[i] = _most_frequent_4(a, b, c, d, np.uint8(va + vb + vc + vd))
        return
    for i in range(uintp(hi - lo)):
        a, va = _candidate(v_north, s_north, i, top)
        b, vb = _candidate(v_north, s_north, i + one, top)
        c, vc = _candidate(v_north, s_north, i + two, top)
        d, vd = _candidate(v_middle, s_middle, i, top)
        e, ve = _candidate(v_middle, s_middle, i + two, top)
        f, vf = _candidate(v_south, s_south, i, top)
        g, vg = _candidate(v_south, s_south, i + one, top)
        h, vh = _candidate(v_south, s_south, i + two, top)
        valid = np.uint8(va + vb + vc + vd + ve + vf + vg + vh)
        fills[i] = _most_frequent_8(a, b, c, d, e, f, g, h, valid)


@njit(cache=True, nogil=True, inline="always")
def _rows_around(array, y, lo, hi):  # pragma: no cover - compiled
    """Rows y-1, y and y+1 of ``array`` over the columns lo-1 .. hi."""
    return array[y - 1, lo - 1 : hi + 1], array[y, lo - 1 : hi + 1], array[y + 1, lo - 1 : hi + 1]


@njit(cache=True, nogil=True, inline="always")
def _candidate(values, states, i, top):  # pragma: no cover - compiled
    """(value, 1) for an unlisted neighbour, (top, 0) for another; both loads unconditional."""
    value = values[i]
    unlisted = states[i] == 0
    return (value if unlisted else top), np.uint8(unlisted)


@njit(cache=True, nogil=True, inline="always")
def _order(a, b):  # pragma: no cover - compiled
    return min(a, b), max(a, b)


@njit(cache=True, nogil=True, inline="always")
def _most_frequent_8(a, b, c, d, e, f, g, h, valid):  # pragma: no cover - compiled
    """Most frequent of the ``valid`` candidates, ties to the lowest; the others are ``top``."""
    # Batcher's odd-even merge sort for 8 inputs: 19 comparators.
    a, b = _order(a, b)
    c, d = _order(c, d)
    e, f = _order(e, f)
    g, h = _order(g, h)
    a, c = _order(a, c)
    b, d = _order(b, d)
    e, g = _order(e, g)
    f, h = _order(f, h)
    b, c = _order(b, c)
    f, g = _order(f, g)
    a, e = _order(a, e)
    d, h = _order(d, h)
    b, f = _order(b, f)
    c, g = _order(c, g)
    b, e = _order(b, e)
    d, g = _order(d, g)
    c, e = _order(c, e)
    d, f = _order(d, f)
    d, e = _order(d, e)
    run, best, best_run = np.uint8(1), a, np.uint8(1)
    run, best, best_run = _longer_run(a, b, 1, valid, run, best, best_run)
    run, best, best_run = _longer_run(b, c, 2, valid, run, best, best_run)
    run, best, best_run = _longer_run(c, d, 3, valid, run, best, best_run)
    run, best, best_run = _longer_run(d, e, 4, valid, run, best, best_run)
    run, best, best_run = _longer_run(e, f, 5, valid, run, best, best_run)
    run, best, best_run = _longer_run(f, g, 6, valid, run, best, best_run)
    run, best, best_run = _longer_run(g, h, 7, valid, run, best, best_run)
    return best


@njit(cache=True, nogil=True, inline="always")
def _most_frequent_4(a, b, c, d, valid):  # pragma: no cover - compiled
    """:func:`_most_frequent_8` for the 4 neighbours of the plus."""
    a, b = _order(a, b)
    c, d = _order(c, d)
    a, c = _order(a, c)
    b, d = _order(b, d)
    b, c = _order(b, c)
    run, best, best_run = np.uint8(1), a, np.uint8(1)
    run, best, best_run = _longer_run(a, b, 1, valid, run, best, best_run)
    run, best, best_run = _longer_run(b, c, 2, valid, run, best, best_run)
    run, best, best_run = _longer_run(c, d, 3, valid, run, best, best_run)
    return best


@njit(cache=True, nogil=True, inline="always")
def _longer_run(previous, current, position, valid, run, best, best_run):  # pragma: no cover
    """One step along sorted candidates: a strictly longer run of a valid value wins.

    Ascending order makes the first longest run the lowest value's. Counters
    stay uint8 so the vector code keeps 32 lanes.
    """
    run = np.uint8(run + 1) if current == previous else np.uint8(1)
    longer = (np.uint8(position) < valid) & (run > best_run)
    return run, (current if longer else best), (run if longer else best_run)


@njit(cache=True, nogil=True)
def _erode_border(
    values, states, new_values, new_states, y, x, dys, dxs, nd_fill, can_fill
):  # pragma: no cover - compiled
    """Erode pixel (y, x) on the block's border: neighbours outside the block do not exist."""
    rows, cols = values.shape
    value = values[y, x]
    new_values[y, x] = value
    new_states[y, x] = states[y, x]
    if states[y, x] != 1:
        return
    touches = False
    best = value
    best_count = 0
    for k in range(dys.shape[0]):
        yy, xx = y + dys[k], x + dxs[k]
        if not (0 <= yy < rows and 0 <= xx < cols):
            continue
        touches |= values[yy, xx] != value
        if states[yy, xx] != 0:
            continue
        candidate = values[yy, xx]
        count = 0
        for j in range(dys.shape[0]):
            y2, x2 = y + dys[j], x + dxs[j]
            if 0 <= y2 < rows and 0 <= x2 < cols and states[y2, x2] == 0:
                count += values[y2, x2] == candidate
        if count > best_count or (count == best_count and candidate < best):
            best_count = count
            best = candidate
    if not touches:
        return
    if best_count > 0:
        new_values[y, x] = best
        new_states[y, x] = 0
    elif can_fill:
        new_values[y, x] = nd_fill
        new_states[y, x] = 2
