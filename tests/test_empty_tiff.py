"""An output's empty GeoTIFF, from GDAL the first time a layout is asked for and from the
kept bytes after: the same bytes either way, and a layout never seen goes to GDAL."""

from __future__ import annotations

import os

import numpy as np
import rasterio
from rasterio.transform import from_origin

from rsgrpc.engine import empty_tiff
from rsgrpc.engine.raster_io import DEFAULT_PROFILE


def _meta(width: int, height: int, dtype: str = "float32", nodata: float = -32768.0) -> dict:
    return {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": dtype,
        "nodata": nodata,
        "crs": "EPSG:32633",
        "transform": from_origin(300000, 5000000, 10, 10),
        "bigtiff": "NO",
        "sparse_ok": True,
        **DEFAULT_PROFILE.fitted_to(width, height).block_options(dtype),
    }


def _empty(path, meta) -> bytes:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        empty_tiff.write_empty(fd, meta)
    finally:
        os.close(fd)
    return path.read_bytes()


def test_a_kept_layout_gives_the_bytes_gdal_gives(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(empty_tiff, "_templates", type(empty_tiff._templates)())
    real = empty_tiff._create
    monkeypatch.setattr(empty_tiff, "_create", lambda p, m: (made.append(p), real(p, m)))
    meta = _meta(300, 257)
    first = _empty(tmp_path / "a.tif", meta)
    second = _empty(tmp_path / "b.tif", dict(meta))
    assert len(made) == 1, "the second file of a layout is written from the kept bytes"
    assert first == second
    with rasterio.open(tmp_path / "b.tif") as ds:
        assert (ds.width, ds.height, ds.nodata, ds.dtypes[0]) == (300, 257, -32768.0, "float32")
        assert ds.crs.to_string() == "EPSG:32633"
        assert ds.block_shapes == [(304, 304)]
    # GDAL itself, for the same layout in another file: the same bytes.
    real(str(tmp_path / "gdal.tif"), meta)
    assert (tmp_path / "gdal.tif").read_bytes() == second


def test_any_difference_of_layout_goes_to_gdal(tmp_path, monkeypatch):
    made = []
    monkeypatch.setattr(empty_tiff, "_templates", type(empty_tiff._templates)())
    real = empty_tiff._create
    monkeypatch.setattr(empty_tiff, "_create", lambda p, m: (made.append(p), real(p, m)))
    layouts = [
        _meta(300, 257),
        _meta(300, 258),
        _meta(300, 257, dtype="int16", nodata=-32768),
        _meta(300, 257, nodata=0.0),
        {**_meta(300, 257), "transform": from_origin(300010, 5000000, 10, 10)},
        {**_meta(300, 257), "crs": "EPSG:4326"},
    ]
    for i, meta in enumerate(layouts):
        _empty(tmp_path / f"{i}.tif", meta)
    assert len(made) == len(layouts)
    with rasterio.open(tmp_path / "4.tif") as ds:
        assert ds.transform.c == 300010
    with rasterio.open(tmp_path / "3.tif") as ds:
        assert ds.nodata == 0.0
        assert np.dtype(ds.dtypes[0]) == np.float32
