"""What Remotior Sensus' tools mean, computed here with NumPy, SciPy and rasterio, apart
from rsgrpc's kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
from scipy import ndimage

NODATA = -32768.0  # Remotior's output nodata when none is given


def read(path: str | Path) -> tuple[np.ndarray, float | None, str]:
    """Band 1 of a raster, its nodata value and its data type."""
    with rasterio.open(path) as ds:
        return ds.read(1), ds.nodata, ds.dtypes[0]


def f32(*arrays: np.ndarray) -> list[np.ndarray]:
    """Inputs as Remotior's default calc_datatype reads them: float32."""
    return [np.asarray(a).astype(np.float32) for a in arrays]


def masked_result(
    values: np.ndarray, masked: np.ndarray, nodata: float = NODATA, dtype=np.float32
) -> np.ndarray:
    """Remotior's band calc output: the values cast to ``dtype``, ``nodata`` where an input
    the expression reads is nodata or the result is not finite (NumPy's masked arrays
    mask what a domain error gives)."""
    with np.errstate(invalid="ignore"):
        bad = masked | ~np.isfinite(values)
        return np.where(bad, nodata, values).astype(dtype)


def sieve(array: np.ndarray, size: int, *, connected: bool, nodata: float | None) -> np.ndarray:
    """GDAL's sieve filter as rasterio runs it; nodata is never changed nor a neighbour."""
    mask = None if nodata is None else array != nodata
    return rasterio.features.sieve(array, size, connectivity=8 if connected else 4, mask=mask)


def structure(size: int, circular: bool) -> np.ndarray:
    """Remotior's window: a square of side 2 * size + 1, or the disk of radius ``size``."""
    r = np.arange(-size, size + 1)
    if circular:
        return (r[:, None] ** 2 + r[None, :] ** 2) <= size**2
    return np.ones((2 * size + 1, 2 * size + 1), bool)


def dilation(
    array: np.ndarray, value_list: list[int], size: int, *, circular: bool, nodata: float
) -> np.ndarray:
    """Pixels not in ``value_list`` take ``v`` when a pixel of value ``v`` lies in their
    window, the later value in the list winning; nodata stays nodata and does not spread."""
    window = structure(size, circular)
    out = array.copy()
    core = ~np.isin(array, value_list)
    for v in value_list:
        reached = ndimage.binary_dilation(array == v, structure=window, border_value=0)
        out[core & reached] = v
    out[array == nodata] = nodata
    return out


def erosion(
    array: np.ndarray, value_list: list[int], size: int, *, circular: bool, nodata: float
) -> np.ndarray:
    """``size`` steps of a 3x3 window (a plus when circular): a listed pixel with a pixel
    of another value in its window (nodata included, outside the raster not) takes the most
    frequent value of its window that is neither listed nor nodata, the lower on ties;
    with none, nodata. Counted in integers."""
    window = structure(1, circular).astype(np.int32)
    a = array.astype(np.int64)
    valid = a != nodata
    values = [int(v) for v in np.unique(a[valid])]
    for _ in range(size):
        inside = ndimage.convolve(np.ones(a.shape, np.int32), window, mode="constant", cval=0)
        counts = {
            v: ndimage.convolve((a == v).astype(np.int32), window, mode="constant", cval=0)
            for v in values
        }
        best = np.zeros(a.shape, np.int32)
        fill = np.full(a.shape, nodata, np.int64)
        for v in values:  # ascending: a tie keeps the lower value
            if v in value_list:
                continue
            more = counts[v] > best
            fill[more] = v
            best[more] = counts[v][more]
        eroded = np.zeros(a.shape, bool)
        for v in value_list:
            if v in counts:
                eroded |= (a == v) & (inside - counts[v] > 0)
        a = np.where(eroded, fill, a)
    return a.astype(array.dtype)
