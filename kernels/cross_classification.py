"""Cross classification of a classification band against a reference band: the distinct
(reference, classification) pairs of a tile with their pixel counts, the map's pixel
counts per class, their exact merge over tiles, and each pixel's pair code.

The pairs are `rsgrpc_kernels.combination`'s two-band combinations, the reference
first, so codes follow the order of `np.unique` over (reference, classification) rows
and never depend on the tiling. The map's counts are the classification's valid pixels
whatever the reference holds: they are the strata of an area-based assessment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rsgrpc_kernels.combination import (
    CombinationIndex,
    combination_codes,
    combination_counts,
    combination_index,
    merge_combination_counts,
)


@dataclass(frozen=True)
class CrossCounts:
    """Pairs as int64 rows (reference, classification) in increasing order with their
    pixels, and the map's classes (a column of int64 values) with their pixels."""

    pairs: np.ndarray
    pair_counts: np.ndarray
    classes: np.ndarray
    class_counts: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.pair_counts) + len(self.class_counts)


def cross_counts(
    classification: np.ndarray,
    reference: np.ndarray,
    nodatas: tuple[float | None, float | None],
    nodata_value: float | None = None,
) -> CrossCounts:
    """The pairs of the pixels valid in both bands (neither band's nodata nor
    `nodata_value`) and the classes of the pixels valid in the classification.

    Notes: memory grows as `combination_counts` of two bands, then of one.
    """
    classification_nodata, reference_nodata = nodatas
    pairs, pair_counts = combination_counts(
        (reference, classification), (reference_nodata, classification_nodata), nodata_value
    )
    classes, class_counts = combination_counts(
        (classification,), (classification_nodata,), nodata_value
    )
    return CrossCounts(pairs, pair_counts, classes, class_counts)


def merge_cross_counts(parts: Sequence[CrossCounts]) -> CrossCounts:
    """Counts of `cross_counts` merged exactly, in any order."""
    pairs, pair_counts = merge_combination_counts([(p.pairs, p.pair_counts) for p in parts])
    classes, class_counts = merge_combination_counts([(p.classes, p.class_counts) for p in parts])
    return CrossCounts(pairs, pair_counts, classes, class_counts)


def cross_index(counts: CrossCounts) -> CombinationIndex:
    """What the workers need to code a tile's pairs."""
    return combination_index(counts.pairs)


def cross_codes(
    classification: np.ndarray,
    reference: np.ndarray,
    nodatas: tuple[float | None, float | None],
    nodata_value: float | None,
    index: CombinationIndex,
    out_nodata: int,
    out_dtype: str = "int32",
) -> np.ndarray:
    """Each pixel's code, its pair's row in the merged pairs plus one; `out_nodata` where
    either band is nodata. A pair missing from the index is a RuntimeError."""
    classification_nodata, reference_nodata = nodatas
    return combination_codes(
        (reference, classification),
        (reference_nodata, classification_nodata),
        nodata_value,
        index,
        out_nodata,
        out_dtype,
    )
