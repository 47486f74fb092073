"""Connected-component labelling (Remotior's ``raster_label``), for whole arrays and tiles.

A patch is a 4- or 8-connected set of valid non-zero pixels, whatever their values
(Remotior's rule: 0 and nodata are background, any other value is foreground). Patches
are numbered 1, 2, ... in raster order of their first pixel, as ``scipy.ndimage.label``
numbers them, so the labels depend on the raster alone, never on its tiling.

Tiled use runs in three phases with the sieve's machinery (`rsgrpc_kernels.sieve`:
its labelling scan, its union-find across seams and its tile grid):

1. ``label_tile`` (worker): label one tile; keep the labels, and summarise each
   patch of the tile by the raster index of its first pixel and its size, with the
   labels along the tile's four edges.
2. ``number_tiles`` (coordinator): merge patches facing each other across seams,
   take each merged patch's first pixel and size, and give every patch of every
   tile its final label (or pixel count).
3. ``numbered_tile``: look each pixel's tile label up in its tile's numbering.

Memory bound. Phase 1 holds the tile, its mask and about 9 bytes per pixel of
scratch, and returns 4 bytes per pixel of labels; a summary holds 16 bytes per patch
of the tile and one int32 per edge pixel; the coordinator holds every summary and
about 40 bytes per patch of the raster. So phase 2 grows with the number of patches
(at most half the pixels with 4-connectivity), not with their area.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from numba import njit
from rsgrpc_kernels.sieve import (
    TilePlacement,
    _label,
    _roots,
    _seam_union,
    seam_strips,
    tile_nodes,
)

__all__ = [
    "LABEL_CONNECTIVITIES",
    "LabelSummary",
    "LabelledTile",
    "TileNumbering",
    "label",
    "label_tile",
    "number_tiles",
    "numbered_tile",
]

LABEL_CONNECTIVITIES: Final = frozenset({4, 8})
# The largest label or pixel count a UInt32 output holds (0 is background).
MAX_LABEL: Final = int(np.iinfo(np.uint32).max)


@dataclass(frozen=True, eq=False)
class LabelSummary:
    """Phase-1 result for one tile: per patch of the tile (in the order of its tile
    label), ``first`` (int64, the raster index ``row * raster_width + column`` of its
    first pixel) and ``size`` (int64); the tile labels along its edges (int32, -1 for
    background): ``top``/``bottom`` (length width), ``left``/``right`` (length height)."""

    placement: TilePlacement
    height: int
    width: int
    first: np.ndarray
    size: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray

    @property
    def nbytes(self) -> int:
        arrays = (self.first, self.size, self.top, self.bottom, self.left, self.right)
        return sum(a.nbytes for a in arrays)


@dataclass(frozen=True, eq=False)
class LabelledTile:
    """A labelled tile: its labels (int32, 0-based in the tile, -1 for background) and
    its summary."""

    labels: np.ndarray
    summary: LabelSummary


@dataclass(frozen=True, eq=False)
class TileNumbering:
    """Phase-2 result for one tile: ``values[k]`` is what the pixels of tile label ``k``
    become (uint32)."""

    placement: TilePlacement
    values: np.ndarray


def _check_connectivity(connectivity: int) -> bool:
    if connectivity not in LABEL_CONNECTIVITIES:
        raise ValueError(f"unsupported connectivity, got {connectivity!r}")
    return connectivity == 8


def _foreground(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Valid non-zero pixels; NaN is background too."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"array must be 2-D, got shape {array.shape}")
    foreground = array != 0
    if array.dtype.kind == "f":
        foreground &= ~np.isnan(array)
    if mask is not None:
        if mask.shape != array.shape:
            raise ValueError(f"mask shape {mask.shape} does not match array shape {array.shape}")
        foreground &= mask.astype(np.bool_, copy=False)
    return foreground


@njit(cache=True, nogil=True)
def _first_pixels(labels, n, row_off, col_off, raster_w):
    """The raster index of each tile label's first pixel: labels are dense in order of
    first pixel, so label k first appears when k labels have been seen."""
    first = np.empty(n, np.int64)
    seen = 0
    h, w = labels.shape
    for y in range(h):
        if seen == n:
            break
        for x in range(w):
            if labels[y, x] == seen:
                first[seen] = (row_off + y) * raster_w + col_off + x
                seen += 1
                if seen == n:
                    break
    return first


def label_tile(
    array: np.ndarray,
    placement: TilePlacement,
    *,
    connectivity: int = 4,
    mask: np.ndarray | None = None,
) -> LabelledTile:
    """Phase 1: label a tile's patches of valid (``mask`` True) non-zero pixels."""
    conn8 = _check_connectivity(connectivity)
    foreground = _foreground(array, mask)
    labels, n, _, size = _label(foreground.view(np.uint8), foreground, conn8)
    first = _first_pixels(labels, n, placement.row_off, placement.col_off, placement.raster_width)
    h, w = labels.shape
    summary = LabelSummary(
        placement,
        h,
        w,
        first,
        size,
        labels[0].copy(),
        labels[h - 1].copy(),
        labels[:, 0].copy(),
        labels[:, w - 1].copy(),
    )
    return LabelledTile(labels, summary)


def number_tiles(
    summaries: Sequence[LabelSummary], *, connectivity: int = 4, pixel_count: bool = False
) -> tuple[list[TileNumbering], int]:
    """Phase 2: merge patches across seams and number them in raster order of their first
    pixel, from 1; with ``pixel_count``, each patch's value is its size instead. Returns
    each tile's numbering, in the order of ``summaries``, and the number of patches.

    ``summaries`` must cover the raster with a grid of tiles, in any order. Raises
    OverflowError when a label or count would not fit a UInt32.
    """
    conn8 = _check_connectivity(connectivity)
    rows, cols, by_pos, offsets, (first, size) = tile_nodes(summaries, "first", "size")
    total = int(offsets[-1])
    parent = np.arange(total, dtype=np.int64)
    same = np.zeros(total, np.int64)  # every foreground pixel joins its neighbours
    for near, far, _, _ in seam_strips(summaries, rows, cols, by_pos, offsets):
        _seam_union(near, far, same, parent, conn8)
    root = _roots(parent)
    roots = np.flatnonzero(root == np.arange(total))
    root_first = np.full(total, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(root_first, root, first)
    regions = int(roots.shape[0])
    if pixel_count:
        merged = np.zeros(total, np.int64)
        np.add.at(merged, root, size)
        value = merged[root]
        largest = int(value.max(initial=0))
    else:
        rank = np.zeros(total, np.int64)
        rank[roots[np.argsort(root_first[roots], kind="stable")]] = np.arange(1, regions + 1)
        value = rank[root]
        largest = regions
    if largest > MAX_LABEL:
        raise OverflowError(f"{largest} patches or pixels do not fit a UInt32 output")
    value = value.astype(np.uint32)
    numbering = [
        TileNumbering(s.placement, value[offsets[i] : offsets[i + 1]])
        for i, s in enumerate(summaries)
    ]
    return numbering, regions


def numbered_tile(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Phase 3: a tile's output (uint32, 0 for background) from its labels and numbering."""
    lookup = np.concatenate([np.zeros(1, np.uint32), values.astype(np.uint32, copy=False)])
    return lookup[labels + 1]


def label(
    array: np.ndarray,
    *,
    connectivity: int = 4,
    mask: np.ndarray | None = None,
    pixel_count: bool = False,
) -> tuple[np.ndarray, int]:
    """Label a whole array (uint32, 0 for background) and count its patches."""
    array = np.asarray(array)
    h, w = array.shape if array.ndim == 2 else (0, 0)
    tile = label_tile(array, TilePlacement(0, 0, h, w), connectivity=connectivity, mask=mask)
    numbering, regions = number_tiles(
        [tile.summary], connectivity=connectivity, pixel_count=pixel_count
    )
    return numbered_tile(tile.labels, numbering[0].values), regions
