"""Tiles encoded apart and placed by the writer: the file reads back as the pixels given,
each block encoded as TIFF says, in every codec, predictor, layout and tile order."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio

from rsgrpc.engine.appender import STAGE_BYTES
from rsgrpc.engine.paths import DataPath, DataRoot
from rsgrpc.engine.raster_io import OutputProfile, RasterWriter, encode_output_tile
from rsgrpc.engine.tiff_tiles import BlockIndex
from rsgrpc.engine.tiles import Tile

TRANSFORM = (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0)
CRS = "EPSG:32633"


def _pixels(shape, dtype) -> np.ndarray:
    rng = np.random.default_rng(7)
    smooth = np.cumsum(rng.normal(0, 1, shape), axis=1)
    return (smooth * 10).astype(dtype) if np.dtype(dtype).kind != "f" else smooth.astype(dtype)


def _tiles(shape, edge) -> list[Tile]:
    rows, cols = shape
    return [
        Tile(r, c, min(edge, rows - r), min(edge, cols - c))
        for r in range(0, rows, edge)
        for c in range(0, cols, edge)
    ]


def _output(path) -> DataPath:
    """`path` as a writer's output: a file in a data root that is its folder."""
    return DataRoot.at(path.parent).path(path.name, field="output")


def _write(path, pixels, profile, edge, *, nodata=None, order=1) -> None:
    with RasterWriter(
        _output(path),
        width=pixels.shape[1],
        height=pixels.shape[0],
        dtype=pixels.dtype.name,
        nodata=nodata,
        crs=CRS,
        transform=TRANSFORM,
        profile=profile,
        overwrite=False,
        scratch_directory=path.parent,
    ) as writer:
        for tile in _tiles(pixels.shape, edge)[::order]:
            writer.write(encode_output_tile(pixels[tile.slices()], tile, profile))
        writer.commit()


def _write_with_gdal(path, pixels, **options) -> None:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=pixels.shape[1],
        height=pixels.shape[0],
        count=1,
        dtype=pixels.dtype.name,
        **options,
    ) as ds:
        ds.write(pixels, 1)


@pytest.mark.parametrize(
    "profile",
    [
        OutputProfile("zstd", level=1),
        OutputProfile("deflate"),
        OutputProfile("lzw", predictor=1),
        OutputProfile("none"),
        OutputProfile("deflate", cloud_optimized=True),
    ],
    ids=lambda p: f"{p.compression}{'-cog' if p.cloud_optimized else ''}",
)
@pytest.mark.parametrize("dtype", ["float32", "int16", "uint8"])
def test_encoded_tiles_read_back_as_written(tmp_path, profile, dtype):
    profile = OutputProfile(
        profile.compression, profile.level, profile.predictor, profile.cloud_optimized, 64
    )
    pixels = _pixels((300, 211), dtype)  # partial blocks at the right and bottom
    path = tmp_path / "out.tif"
    _write(path, pixels, profile, 128, nodata=0, order=-1)  # tiles in reverse order
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), pixels)
        assert ds.crs.to_string() == CRS
        assert tuple(ds.transform)[:6] == TRANSFORM
        assert ds.nodata == 0
        assert ds.block_shapes == [(64, 64)]
        assert ds.compression is None if profile.compression == "none" else ds.compression
    assert [p.name for p in tmp_path.iterdir()] == ["out.tif"]


def test_a_tile_larger_than_one_write_is_written_whole(tmp_path):
    pixels = _pixels((1536, 1536), "float32")  # 9 MiB, no compression: several writes
    assert pixels.nbytes > 2 * STAGE_BYTES
    path = tmp_path / "big.tif"
    _write(path, pixels, OutputProfile("none"), 1536)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), pixels)


_DTYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"]
# Each codec with each predictor a profile takes, for each data type.
_ENCODINGS = [
    (compression, predictor, dtype)
    for compression in OutputProfile.CODECS
    for predictor in ([1] if compression == "none" else [1, 2, 3])
    for dtype in _DTYPES
    if predictor < 3 or np.dtype(dtype).kind == "f"
]


@pytest.mark.parametrize(("compression", "predictor", "dtype"), _ENCODINGS)
def test_gdal_decodes_every_codec_predictor_and_dtype_to_the_pixels(
    tmp_path, compression, predictor, dtype
):
    """GDAL, which every reader of the output uses, reads back each block as encoded:
    every codec and level, TIFF's three predictors, each data type, whole and partial
    blocks, the extremes of each type."""
    pixels = _pixels((150, 97), dtype)
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    pixels[0, :4] = [info.min, info.max, 0, info.max]
    if np.dtype(dtype).kind == "f":
        pixels[1, :5] = [np.nan, np.inf, -np.inf, -0.0, info.tiny]
    level = {"deflate": 9, "zstd": 3}.get(compression, 0)
    profile = OutputProfile(compression, level, predictor, block_size=64)
    path = tmp_path / "out.tif"
    _write(path, pixels, profile, 64, order=-1)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), pixels)


@pytest.mark.parametrize("layout", ["classic", "bigtiff", "big-endian"])
def test_block_index_is_found_in_every_tiff_layout(tmp_path, layout):
    path = tmp_path / "index.tif"
    options = {"bigtiff": "YES"} if layout == "bigtiff" else {}
    if layout == "big-endian":
        options["endianness"] = "BIG"
    pixels = _pixels((100, 40), "uint16")
    _write_with_gdal(
        path, pixels, tiled=True, blockxsize=16, blockysize=32, compress="deflate", **options
    )
    data = path.read_bytes()
    index = BlockIndex.locate(lambda o, n: data[o : o + n])
    offsets, sizes = index.read(lambda o, n: data[o : o + n])
    assert index.blocks == 4 * 3
    with rasterio.open(path) as ds:
        for i, (offset, size) in enumerate(zip(offsets.tolist(), sizes.tolist(), strict=True)):
            row, col = divmod(i, 3)
            assert offset == int(ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
            assert size == int(ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))


def test_one_block_raster_keeps_its_index_in_the_directory(tmp_path):
    """One block's offset and size fit in their directory entries: written there."""
    pixels = _pixels((30, 20), "float32")
    path = tmp_path / "one.tif"
    _write(path, pixels, OutputProfile("zstd", block_size=64), 64)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), pixels)


def _writer(path, profile) -> RasterWriter:
    """A writer of a 128 x 128 uint8 output."""
    return RasterWriter(
        _output(path),
        width=128,
        height=128,
        dtype="uint8",
        nodata=None,
        crs=CRS,
        transform=TRANSFORM,
        profile=profile,
        overwrite=False,
        scratch_directory=path.parent,
    )


def test_unaligned_tile_is_refused_and_nothing_is_left(tmp_path):
    profile = OutputProfile("zstd", block_size=64)
    pixels = _pixels((128, 128), "uint8")
    path = tmp_path / "out.tif"
    with pytest.raises(ValueError, match="not aligned"), _writer(path, profile) as writer:
        tile = Tile(32, 0, 64, 64)
        writer.write(encode_output_tile(pixels[tile.slices()], tile, profile))
    assert os.listdir(tmp_path) == []


def test_commit_refuses_an_output_with_blocks_missing(tmp_path):
    profile = OutputProfile("zstd", block_size=64)
    pixels = _pixels((128, 128), "uint8")
    with (
        pytest.raises(RuntimeError, match="1 of the output's blocks"),
        _writer(tmp_path / "out.tif", profile) as writer,
    ):
        for tile in _tiles((128, 128), 64)[:3]:
            writer.write(encode_output_tile(pixels[tile.slices()], tile, profile))
        writer.commit()
    assert os.listdir(tmp_path) == []
