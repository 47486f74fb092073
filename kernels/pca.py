"""Principal components of a band set: each tile's pixel count, band means and co-moments
(sums of products of deviations from the means), merged over tiles with Chan's parallel
formula, and each pixel's components projected from the means and eigenvectors.

A tile's moments are computed in two passes over its valid pixels (means first, then
deviations), in float64; merging two sets of moments is exact up to float64 rounding, so
any tiling gives the moments of one pass over the whole bands to about 1e-15 relative.
A pixel counts only where every band is valid (not NaN, not its nodata, not the extra
nodata value).

NumPy only, nothing to compile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rsgrpc_kernels.value_counts import valid_mask


@dataclass(frozen=True)
class Moments:
    """The valid pixels counted, each band's mean and the co-moment matrix
    ``sum((x_i - mean_i) * (x_j - mean_j))`` over them, in float64."""

    count: int
    mean: np.ndarray
    comoment: np.ndarray


def all_valid(
    blocks: Sequence[np.ndarray], nodatas: Sequence[float | None], nodata_value: float | None
) -> np.ndarray:
    """Pixels valid in every band: neither NaN, nor the band's nodata, nor `nodata_value`."""
    valid = np.ones(blocks[0].shape, bool)
    for block, nodata in zip(blocks, nodatas, strict=True):
        valid &= valid_mask(block, (nodata, nodata_value))
    return valid


def _valid_values(blocks: Sequence[np.ndarray], valid: np.ndarray) -> np.ndarray:
    """The valid pixels' values, a row a pixel and a column a band, in float64."""
    values = np.empty((int(np.count_nonzero(valid)), len(blocks)), np.float64)
    for band, block in enumerate(blocks):
        values[:, band] = block[valid]
    return values


def band_moments(
    blocks: Sequence[np.ndarray], nodatas: Sequence[float | None], nodata_value: float | None
) -> Moments:
    """The moments of a tile's pixels valid in every band.

    Notes: besides the blocks, memory grows with a mask (one byte a pixel) and two float64
    copies of the valid values (16 bytes a band and a pixel).
    """
    bands = len(blocks)
    values = _valid_values(blocks, all_valid(blocks, nodatas, nodata_value))
    if len(values) == 0:
        return Moments(0, np.zeros(bands), np.zeros((bands, bands)))
    mean = values.mean(axis=0)
    values -= mean
    return Moments(len(values), mean, values.T @ values)


def merge_moments(partials: Sequence[Moments]) -> Moments:
    """Moments of the union of the partials' pixels (Chan, Golub and LeVeque's pairwise
    update): ``n = na + nb``, ``mean = ma + d * nb / n``, ``C = Ca + Cb + d d^T na nb / n``
    with ``d = mb - ma``."""
    merged = partials[0]
    for part in partials[1:]:
        if part.count == 0:
            continue
        if merged.count == 0:
            merged = part
            continue
        count = merged.count + part.count
        delta = part.mean - merged.mean
        mean = merged.mean + delta * (part.count / count)
        weight = merged.count * part.count / count
        comoment = merged.comoment + part.comoment + np.outer(delta, delta) * weight
        merged = Moments(count, mean, comoment)
    return merged


def project_components(
    blocks: Sequence[np.ndarray],
    nodatas: Sequence[float | None],
    nodata_value: float | None,
    mean: np.ndarray,
    scale: np.ndarray,
    vectors: np.ndarray,
    out_dtype: str,
    out_nodata: float,
) -> np.ndarray:
    """Each pixel's components, ``((x - mean) / scale) @ vectors`` (a column of `vectors` a
    component), stacked on a first axis in `out_dtype`; nodata where any band is.

    Notes: besides the blocks, memory grows with a mask, two float64 copies of the valid
    values and a float64 and an `out_dtype` value per component and pixel.
    """
    valid = all_valid(blocks, nodatas, nodata_value)
    values = _valid_values(blocks, valid)
    values -= mean
    values /= scale
    out = np.full((vectors.shape[1], *valid.shape), out_nodata, out_dtype)
    out[:, valid] = (values @ vectors).T
    return out
