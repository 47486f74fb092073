"""The output grid of a calculation over rasters, and each input read onto it by nearest
neighbour, as Remotior's band calc reads its inputs through a virtual raster.

`output_grid` decides the grid at the door from the inputs' descriptions and the options
(Remotior's `extent_intersection`, `extent_list`, `extent_raster`, `align_raster` and
`xy_resolution_list`), as Remotior's virtual raster of the inputs places it. `sample_onto`
says how one input's pixels fall on that grid, and `read_on_grid` reads a tile of the grid
from the input: the input's window that covers the tile, then, for each output pixel, the
input pixel under its centre (GDAL's nearest neighbour). An input on the output grid
itself is read as it is, with no copy.

`band_tool_grids` places the inputs of the band tools (sieve, dilation, ...) as Remotior
places them (`extent_list`, `multiple_resolution`): each input on a grid of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from rasterio.crs import CRS
from rasterio.errors import CRSError

from rsgrpc.engine.errors import InvalidArgumentError
from rsgrpc.engine.paths import DataPath
from rsgrpc.engine.raster_io import RasterInfo, read_window
from rsgrpc.engine.tiles import Tile

# Coordinates and pixel sizes within this fraction of a pixel of a rational number of
# small denominator are taken as that number, so aligned grids map by integers exactly.
_ALIGNED = 1e-9
_DENOMINATOR = 4096
# GDAL's nudge before flooring a source coordinate (GWKNearest, RasterIO's nearest): an
# output centre on an input pixel's edge takes the pixel after the edge.
_EPSILON = 1e-10


@dataclass(frozen=True)
class GridOptions:
    """How the output grid is chosen, as the client asked (Remotior's names in comments)."""

    extent_union: bool = False  # not extent_intersection
    extent: tuple[float, float, float, float] | None = None  # extent_list: left, top, right, bottom
    pixel_size: tuple[float | None, float | None] = (None, None)  # xy_resolution_list

    def __post_init__(self) -> None:
        if self.extent is not None:
            if len(self.extent) != 4 or not all(math.isfinite(v) for v in self.extent):
                raise InvalidArgumentError(
                    "extent must be four finite numbers: left, top, right, bottom",
                    metadata={"field": "extent"},
                )
            left, top, right, bottom = self.extent
            if not (left < right and bottom < top):
                raise InvalidArgumentError(
                    f"extent [left {left:g}, top {top:g}, right {right:g}, bottom {bottom:g}] "
                    "is empty or inverted: left must be less than right and bottom less than top",
                    metadata={"field": "extent"},
                )
        for axis, size in zip("xy", self.pixel_size, strict=True):
            if size is not None and not (math.isfinite(size) and size > 0):
                raise InvalidArgumentError(
                    f"pixel size {axis} must be a positive number, got {size:g}",
                    metadata={"field": f"pixel_size_{axis}"},
                )

    @property
    def is_default(self) -> bool:
        return self.extent is None and self.pixel_size == (None, None)


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform (rasterio's order) and size."""

    crs: str
    transform: tuple[float, ...]
    width: int
    height: int

    @classmethod
    def of(cls, info: RasterInfo) -> Grid:
        return cls(info.crs, tuple(info.transform), info.width, info.height)

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


def _bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    """Left, top, right, bottom of a north-up raster."""
    a, _, c, _, e, f = info.transform[:6]
    return c, f, c + a * info.width, f + e * info.height


def _pixel_size(info: RasterInfo) -> tuple[float, float]:
    return info.transform[0], -info.transform[4]


def _north_up(info: RasterInfo) -> bool:
    a, b, _, d, e, _ = info.transform[:6]
    return b == 0 and d == 0 and a > 0 and e < 0


def _same_crs(first: str, second: str) -> bool:
    if first == second:
        return True
    if not first or not second:
        return False
    try:
        return CRS.from_wkt(first) == CRS.from_wkt(second)
    except CRSError:
        return False


def _on_grid(info: RasterInfo, grid: Grid) -> bool:
    return (info.width, info.height) == (grid.width, grid.height) and np.allclose(
        info.transform[:6], grid.transform[:6], rtol=0, atol=1e-9
    )


def output_grid(
    infos: Sequence[RasterInfo],
    names: Sequence[str],
    options: GridOptions,
    *,
    extent_raster: RasterInfo | None = None,
    align_raster: RasterInfo | None = None,
) -> Grid:
    """The grid a calculation over `infos` (named `names` in errors) writes, as Remotior's
    band calc places its virtual raster of the inputs; InvalidArgumentError for inputs in
    different CRSs (nothing is reprojected) or options that leave no pixel."""
    first, first_name = infos[0], names[0]
    references = [(info, f"input {name!r}") for info, name in zip(infos, names, strict=True)]
    if extent_raster is not None:
        references.append((extent_raster, "the extent raster"))
    if align_raster is not None:
        references.append((align_raster, "the align raster"))
    for info, label in references[1:]:
        if not _same_crs(info.crs, first.crs):
            raise InvalidArgumentError(
                f"input {first_name!r} and {label} are in different CRSs; band calc does not "
                "reproject: warp the rasters into one CRS first"
            )
    grid = Grid.of(first)
    extent = options.extent
    if extent_raster is not None:  # Remotior: extent_list from the raster's bounds
        extent = _bounds(extent_raster)
    same = all(_on_grid(info, grid) for info in infos[1:])
    if same and extent is None and align_raster is None and options.pixel_size == (None, None):
        return grid  # Remotior reads the inputs themselves, with no virtual raster
    for info, label in references:
        if not _north_up(info):
            raise InvalidArgumentError(
                f"{label} has a rotated or south-up grid; band calc reads such a raster only "
                "on its own grid, with no extent, alignment or pixel size options"
            )
    bounds = [_bounds(i) for i in infos]
    sizes = [_pixel_size(i) for i in infos]
    covered = _union(bounds)
    if options.extent_union:
        box = covered
    else:
        box = (
            max(b[0] for b in bounds),
            min(b[1] for b in bounds),
            min(b[2] for b in bounds),
            max(b[3] for b in bounds),
        )
        if extent is None and not (box[0] < box[2] and box[3] < box[1]):
            raise InvalidArgumentError(
                "the inputs' extents do not intersect: there is no pixel to calculate "
                "(ask for the union of their extents instead)",
                metadata={"field": "extent_union"},
            )
    finest_x = min(s[0] for s in sizes)
    finest_y = min(s[1] for s in sizes)
    given_x, given_y = options.pixel_size
    size_x = finest_x if given_x is None else given_x
    size_y = finest_y if given_y is None else given_y
    if align_raster is not None:
        # Origin and pixel size of the align raster (Remotior: with an extent, its grid).
        size_x, size_y = _pixel_size(align_raster)
        origin = _bounds(align_raster)[:2]
        left, top, right, bottom = _snapped(extent or box, origin, size_x, size_y)
    elif extent is None:
        if given_x is None and given_y is None:
            # On the grid of the first input of the finest x pixel size.
            reference = infos[[s[0] for s in sizes].index(finest_x)]
            left, top, right, bottom = _snapped(box, _bounds(reference)[:2], size_x, size_y)
        else:
            left, top, right, bottom = box
    else:
        # On the grid of the first input of that x pixel size (or of the finest), within
        # that input's extent.
        xs = [s[0] for s in sizes]
        reference = infos[xs.index(size_x if size_x in xs else finest_x)]
        left, top, right, bottom = _kept_within(extent, _bounds(reference), size_x, size_y)
    if extent is not None and not (
        max(left, covered[0]) < min(right, covered[2])
        and max(bottom, covered[3]) < min(top, covered[1])
    ):
        raise InvalidArgumentError(
            "the extent does not overlap the inputs: there is no pixel to calculate",
            metadata={"field": "extent_raster_path" if extent_raster else "extent"},
        )
    if right < left or top < bottom:
        raise InvalidArgumentError(
            "the output extent is empty: there is no pixel to calculate",
            metadata={"field": "extent"},
        )
    # As Remotior: an extent narrower than half a pixel is one pixel.
    width = max(1, abs(round((right - left) / size_x)))
    height = max(1, abs(round((top - bottom) / size_y)))
    return Grid(first.crs, (size_x, 0.0, left, 0.0, -size_y, top), width, height)


def _union(
    bounds: Sequence[tuple[float, float, float, float]],
) -> tuple[float, float, float, float]:
    return (
        min(b[0] for b in bounds),
        max(b[1] for b in bounds),
        max(b[2] for b in bounds),
        min(b[3] for b in bounds),
    )


def _snapped(
    box: Sequence[float], origin: Sequence[float], size_x: float, size_y: float
) -> tuple[float, float, float, float]:
    """`box` moved to the nearest lines of the grid of `origin` and pixel size, as Remotior
    rounds (Python's round: halves to even)."""
    left = origin[0] + round((box[0] - origin[0]) / size_x) * size_x
    top = origin[1] + round((box[1] - origin[1]) / size_y) * size_y
    right = left + round((box[2] - left) / size_x) * size_x
    bottom = top + round((box[3] - top) / size_y) * size_y
    return left, top, right, bottom


def _kept_within(
    box: Sequence[float], bounds: Sequence[float], size_x: float, size_y: float
) -> tuple[float, float, float, float]:
    """`box` moved to the nearest pixel lines of a raster of `bounds` and pixel size, each
    edge kept inside the raster before the far edge is measured from it, as Remotior does."""
    r_left, r_top, r_right, r_bottom = bounds
    left = max(r_left + round((box[0] - r_left) / size_x) * size_x, r_left)
    top = min(r_top + round((box[1] - r_top) / size_y) * size_y, r_top)
    right = min(left + round((box[2] - left) / size_x) * size_x, r_right)
    bottom = max(top + round((box[3] - top) / size_y) * size_y, r_bottom)
    return left, top, right, bottom


def band_tool_grids(
    infos: Sequence[RasterInfo],
    names: Sequence[str],
    *,
    extent: tuple[float, float, float, float] | None = None,
    multiple_resolution: bool = True,
    reference: RasterInfo | None = None,
    reference_name: str | None = None,
) -> list[Grid]:
    """Each input's grid as Remotior's band tools place their inputs before they run
    (`shared_tools.prepare_process_files`, a virtual raster of each input alone made by
    `raster_vector.create_virtual_raster`), so that a tool sees only that grid.

    The box is `extent` (Remotior's `extent_list`) or, when the inputs' grids differ, the
    first input's bounds (`reference`, named `reference_name`: the call's first input,
    by default `infos[0]`). With `multiple_resolution`, each input keeps its pixel size
    and lines: the box's edges move to its nearest pixel lines, kept within the input.
    Without, each input is read onto the first input's pixel size and lines (the box's
    edges moved to the nearest of them, not kept within anything). An input already on
    the first input's grid, with no extent, is read as it is.

    Raises InvalidArgumentError, naming the input as `names` does, for an input in
    another CRS than the first (nothing is reprojected), a rotated grid that would have
    to move, or a box that leaves no pixel of an input.
    """
    reference = reference or infos[0]
    reference_name = reference_name or names[0]
    first = Grid.of(reference)
    box = extent or _bounds(reference)
    boxed = "the extent" if extent else f"the extent of the first input {reference_name!r}"
    grids = []
    for info, name in zip(infos, names, strict=True):
        if extent is None and _same_crs(info.crs, first.crs) and _on_grid(info, first):
            grids.append(Grid.of(info))  # Remotior reads inputs on one grid as they are
            continue
        if not _same_crs(info.crs, reference.crs):
            raise InvalidArgumentError(
                f"input {name!r} is not in the CRS of the first input {reference_name!r}; "
                "band tools do not reproject: warp the rasters into one CRS first"
            )
        for raster, label in ((info, f"input {name!r}"), (reference, "the first input")):
            if not _north_up(raster):
                raise InvalidArgumentError(
                    f"{label} has a rotated or south-up grid; it is read only on its own "
                    "grid, with no extent_list, multiple_resolution=False, or inputs on "
                    "other grids"
                )
        if multiple_resolution:
            size_x, size_y = _pixel_size(info)
            left, top, right, bottom = _kept_within(box, _bounds(info), size_x, size_y)
        else:
            size_x, size_y = _pixel_size(reference)
            left, top, right, bottom = _snapped(box, _bounds(reference)[:2], size_x, size_y)
        # Remotior's virtual raster of a box that rounds to no pixel: one pixel.
        if right == left:
            right = left + size_x
        if top == bottom:
            top = bottom + size_y
        i_left, i_top, i_right, i_bottom = _bounds(info)
        if not (
            left < right
            and bottom < top
            and max(left, i_left) < min(right, i_right)
            and max(bottom, i_bottom) < min(top, i_top)
        ):
            raise InvalidArgumentError(
                f"{boxed} does not overlap input {name!r}: there is no pixel to process",
                metadata={"field": "extent" if extent else "inputs"},
            )
        width = max(1, round((right - left) / size_x))
        height = max(1, round((top - bottom) / size_y))
        grids.append(Grid(info.crs, (size_x, 0.0, left, 0.0, -size_y, top), width, height))
    return grids


@dataclass(frozen=True)
class AxisSampling:
    """Which input row (or column) the output's row (or column) `i` reads: the one under
    its centre, ``floor(offset + (i + 0.5) * step)`` in input pixels, where `offset` is
    the output's edge in the input's pixels and `step` the output's pixel in the input's.

    When both are rational numbers of small denominator (aligned grids: 10 m and 20 m
    pixels, edges on pixel lines) the index is computed in integers, exactly:
    ``offset = offset_num / offset_den`` and ``step = step_num / step_den``.
    """

    size: int  # the input's pixels along this axis
    offset_num: int
    offset_den: int
    step_num: int
    step_den: int
    offset: float
    step: float
    exact: bool

    @classmethod
    def between(cls, offset: float, step: float, size: int) -> AxisSampling:
        o = Fraction(offset).limit_denominator(_DENOMINATOR)
        s = Fraction(step).limit_denominator(_DENOMINATOR)
        exact = abs(float(o) - offset) <= _ALIGNED and abs(float(s) - step) * 1e6 <= _ALIGNED
        return cls(
            size, o.numerator, o.denominator, s.numerator, s.denominator, offset, step, exact
        )

    @property
    def is_shift(self) -> bool:
        """Whether the output's pixels are the input's, shifted by whole pixels."""
        return self.exact and self.offset_den == 1 and self.step_num == self.step_den == 1

    def indices(self, start: int, count: int) -> np.ndarray:
        """The input indices of outputs `start` .. `start + count - 1` (possibly outside
        the input: below 0 or from `size` on)."""
        i = np.arange(start, start + count, dtype=np.int64)
        if self.exact:
            # floor(a/b + (2i + 1) * p / (2q)) = floor((2qa + b(2i + 1)p) / 2qb)
            a, b, p, q = self.offset_num, self.offset_den, self.step_num, self.step_den
            return (2 * q * a + b * (2 * i + 1) * p) // (2 * q * b)
        return np.floor(self.offset + (i + 0.5) * self.step + _EPSILON).astype(np.int64)


@dataclass(frozen=True)
class InputSampling:
    """How one input falls on the output grid; pixels of the grid outside the input read
    `fill` (the input's nodata, or 0 when it has none, as GDAL's virtual raster fills)."""

    rows: AxisSampling
    cols: AxisSampling
    dtype: str
    fill: float

    @property
    def ratio(self) -> float:
        """Input pixels read per output pixel, at most (for the memory model)."""
        return max(self.rows.step, 1.0) * max(self.cols.step, 1.0)


def sample_onto(info: RasterInfo, grid: Grid) -> InputSampling | None:
    """How `info` is read onto `grid`; None when it is on the grid itself."""
    if _on_grid(info, grid):
        return None
    in_left, in_top, _, _ = _bounds(info)
    in_x, in_y = _pixel_size(info)
    out_x, _, out_left, _, out_e, out_top = grid.transform[:6]
    out_y = -out_e
    cols = AxisSampling.between((out_left - in_left) / in_x, out_x / in_x, info.width)
    rows = AxisSampling.between((in_top - out_top) / in_y, out_y / in_y, info.height)
    fill = 0.0 if info.nodata is None else info.nodata
    return InputSampling(rows, cols, info.dtype, fill)


def sample_auxiliary(info: RasterInfo, grid: Grid, name: str) -> InputSampling | None:
    """How a raster read beside a band (a mask: `RasterTool.auxiliary`), named `name` in
    errors, is read onto the band's grid by nearest neighbour; None when on it.

    Raises InvalidArgumentError for a raster in another CRS (nothing is reprojected) or
    a rotated grid that would have to move."""
    if not _same_crs(info.crs, grid.crs):
        raise InvalidArgumentError(
            f"{name} is not in the CRS of the input bands; band tools do not reproject: "
            "warp the rasters into one CRS first"
        )
    if not _on_grid(info, grid) and not _north_up(info):
        raise InvalidArgumentError(
            f"{name} has a rotated or south-up grid; it is read only on the input's own grid"
        )
    return sample_onto(info, grid)


def _inside(indices: np.ndarray, size: int) -> tuple[int, int]:
    """The range of positions whose (non-decreasing) indices lie in 0 .. size - 1."""
    return int(np.searchsorted(indices, 0, "left")), int(np.searchsorted(indices, size, "left"))


def read_on_grid(
    source: DataPath, band: int, tile: Tile, sampling: InputSampling | None
) -> np.ndarray:
    """`tile` of the output grid read from band `band` of `source` by nearest neighbour;
    workers call this for their own tiles. An input on the grid is read by `read_window`
    and returned as it is."""
    if sampling is None:
        return read_window(source, band, tile)
    rows = sampling.rows.indices(tile.row, tile.height)
    cols = sampling.cols.indices(tile.col, tile.width)
    r0, r1 = _inside(rows, sampling.rows.size)
    c0, c1 = _inside(cols, sampling.cols.size)
    whole = (r0, r1, c0, c1) == (0, tile.height, 0, tile.width)
    if r0 >= r1 or c0 >= c1:
        return np.full((tile.height, tile.width), sampling.fill, dtype=sampling.dtype)
    top, left = int(rows[r0]), int(cols[c0])
    window = Tile(top, left, int(rows[r1 - 1]) - top + 1, int(cols[c1 - 1]) - left + 1)
    data = read_window(source, band, window)
    if not (sampling.rows.is_shift and sampling.cols.is_shift):
        data = data[np.ix_(rows[r0:r1] - top, cols[c0:c1] - left)]
    if whole:
        return data
    out = np.full((tile.height, tile.width), sampling.fill, dtype=data.dtype)
    out[r0:r1, c0:c1] = data
    return out
