"""Raster I/O: describing inputs, reading windows, and the one output writer.

Every read of a window goes through `read_window`; every output goes through
`RasterWriter`, which writes under a temporary name and moves the file into
place only when it is complete. Files are opened through `rsgrpc.engine.paths`
at the moment of use, and GDAL gets the opened file (`fd_path`), inputs with
the GeoTIFF driver only (`open_geotiff`), under the options of `gdal_env`. A VRT
input (`.vrt`) is parsed and checked by `rsgrpc.engine.virtual_raster` and read here
from its sources, each opened as any GeoTIFF input is; GDAL never reads the VRT.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rsgrpc.engine.appender import STAGE_BYTES, FileAppender
from rsgrpc.engine.empty_tiff import write_empty
from rsgrpc.engine.errors import (
    DataLossError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RsgrpcError,
)
from rsgrpc.engine.gdal_env import confine_gdal
from rsgrpc.engine.gdal_threads import keep_gdal_env, on_gdal_thread
from rsgrpc.engine.partial_output import PartialOutput, partial_output
from rsgrpc.engine.paths import DataPath, DataRoot, OpenedInput, fd_path
from rsgrpc.engine.tiff_tiles import (
    BlockEncoding,
    BlockIndex,
    EncodedTile,
    blocks_across,
    encode_tile,
)
from rsgrpc.engine.tiles import Tile
from rsgrpc.engine.virtual_raster import (
    MAX_VRT_BYTES,
    VirtualRaster,
    VirtualSource,
    check_source_rect,
    check_source_type,
    is_vrt_path,
    output_files,
    parsed,
    virtual_part,
    virtual_raster_xml,
)

# Before GDAL registers its drivers or opens anything, in whatever process imports this.
confine_gdal()

MIB = 1 << 20
# GDAL's block cache in a worker: a tile's blocks are read and encoded once each,
# so a small cache loses nothing and keeps each worker's footprint predictable. Reading and encoding 1536² NDVI tiles in one process
# took the same time with 2 MiB as with 16, and 11 to 15 MiB less memory.
WORKER_GDAL_CACHE_BYTES = 4 * MIB
# GDAL's block cache in the writer: it serves only the copy to a cloud-optimized
# GeoTIFF at the end; tiles come encoded and are appended to the file as they are.
WRITER_GDAL_CACHE_BYTES = 16 * MIB
OUTPUT_BLOCK = 512
# How many input files a worker keeps open between tiles: a band calc reads up to 64.
MAX_OPEN_INPUTS = 64


@dataclass(frozen=True)
class RasterInfo:
    """What the engine needs to know of one band of an input raster."""

    path: DataPath
    band: int
    width: int
    height: int
    dtype: str
    nodata: float | None
    crs: str
    transform: tuple[float, ...]
    block_shape: tuple[int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width


@contextlib.contextmanager
def open_geotiff(source: DataPath) -> Iterator[rasterio.DatasetReader]:
    """Open `source` with the GeoTIFF driver, and no other, as it is now under the root.

    Raises InvalidArgumentError, naming the path as the client does, for a file that is
    not a GeoTIFF (a VRT, a PNG named .tif, text, a broken header).
    """
    with source.open_input() as opened:
        keep_gdal_env()
        with _geotiff_at(opened) as ds:
            yield ds


def _geotiff_at(opened: OpenedInput) -> rasterio.DatasetReader:
    """The GeoTIFF `opened`, read by GDAL by its name for it (a file through `fd_path`,
    an object through GDAL's S3 driver), with the GeoTIFF driver only."""
    source = opened.path
    options = opened.gdal_options()
    try:
        with rasterio.Env(**options) if options else contextlib.nullcontext():
            return rasterio.open(opened.gdal_name, driver="GTiff")
    except RasterioError:
        raise InvalidArgumentError(
            f"{source.field} {source.path!r} is not a readable raster: only GeoTIFF files are read",
            metadata={"path": source.path},
        ) from None


@dataclass(frozen=True)
class _Description:
    """What GDAL says of a file, every band: kept by the file's identity."""

    width: int
    height: int
    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    crs: str
    transform: tuple[float, ...]
    block_shapes: tuple[tuple[int, int], ...]


# Descriptions of files read before, by (device, inode, size, modification and change
# times): a file named again, unchanged, is described without GDAL opening it. Its path
# is still walked and opened first, as for any read.
_DESCRIPTIONS: OrderedDict[tuple[int, ...], _Description] = OrderedDict()
_DESCRIPTIONS_LOCK = threading.Lock()
_DESCRIPTIONS_KEPT = 256


def _read_description(opened: OpenedInput) -> _Description:
    keep_gdal_env()
    with _geotiff_at(opened) as ds:
        return _Description(
            width=ds.width,
            height=ds.height,
            dtypes=tuple(ds.dtypes),
            nodata=tuple(ds.nodatavals),
            crs=ds.crs.to_wkt() if ds.crs else "",
            transform=tuple(ds.transform)[:6],
            block_shapes=tuple(tuple(b) for b in ds.block_shapes),
        )


def describe(source: DataPath, band: int) -> RasterInfo:
    """Open `source` and describe band `band`; a VRT is described from its text, once
    every source has been opened and described as a GeoTIFF input."""
    if is_vrt_path(source.name):
        return _describe_vrt(source, band)
    with source.open_input() as opened:
        identity = opened.identity
        with _DESCRIPTIONS_LOCK:
            described = _DESCRIPTIONS.get(identity)
        if described is None:
            described = on_gdal_thread(_read_description, opened)
        with _DESCRIPTIONS_LOCK:
            _DESCRIPTIONS[identity] = described
            _DESCRIPTIONS.move_to_end(identity)
            while len(_DESCRIPTIONS) > _DESCRIPTIONS_KEPT:
                _DESCRIPTIONS.popitem(last=False)
    if not 1 <= band <= len(described.dtypes):
        raise InvalidArgumentError(
            f"{source.field} {source.path!r} has {len(described.dtypes)} band(s); "
            f"band {band} does not exist",
            metadata={"path": source.path},
        )
    return RasterInfo(
        path=source,
        band=band,
        width=described.width,
        height=described.height,
        dtype=described.dtypes[band - 1],
        nodata=described.nodata[band - 1],
        crs=described.crs,
        transform=described.transform,
        block_shape=described.block_shapes[band - 1],
    )


def load_vrt(source: DataPath) -> VirtualRaster:
    """The VRT at `source`, opened under its root now, parsed and checked
    (`rsgrpc.engine.virtual_raster.parse_vrt`); its sources are not opened."""
    with source.open_input() as opened:
        if opened.size > MAX_VRT_BYTES:
            raise InvalidArgumentError(
                f"{source.field} {source.path!r} is not a VRT that rsgrpc reads: it is over "
                f"{MAX_VRT_BYTES >> 10} KiB",
                metadata={"path": source.path},
            )
        return parsed(source, opened.identity, lambda: opened.read_prefix(MAX_VRT_BYTES + 1))


def _source_error(vrt: DataPath, source: VirtualSource, error: RsgrpcError) -> RsgrpcError:
    """A VRT source's failure as the client hears it: INVALID_ARGUMENT naming the VRT and
    the source's number (the source's own name is the file's text, which may spell a
    server folder)."""
    if isinstance(error, NotFoundError):
        reason = "does not exist"
    elif isinstance(error, PermissionDeniedError):
        reason = "passes through a symbolic link or may not be opened"
    elif isinstance(error, InvalidArgumentError):
        reason = "is not a GeoTIFF band under the data roots"
    else:
        return error
    return InvalidArgumentError(
        f"{vrt.field} {vrt.path!r}: source {source.index} (band {source.band} of its file) "
        f"{reason}; a VRT input reads GeoTIFFs under the data roots only",
        metadata={"path": vrt.path},
    )


def _describe_vrt(source: DataPath, band: int) -> RasterInfo:
    vrt = load_vrt(source)
    if not 1 <= band <= len(vrt.bands):
        raise InvalidArgumentError(
            f"{source.field} {source.path!r} has {len(vrt.bands)} band(s); "
            f"band {band} does not exist",
            metadata={"path": source.path},
        )
    # Every source of every band is checked, whichever band is asked for; a band of a
    # file that several sources read is opened once.
    described: dict[VirtualSource, RasterInfo] = {}
    by_band: dict[tuple[DataPath, int], RasterInfo] = {}
    for vrt_band in vrt.bands:
        for item in vrt_band.sources:
            info = by_band.get((item.path, item.band))
            if info is None:
                try:
                    info = by_band[item.path, item.band] = describe(item.path, item.band)
                except RsgrpcError as error:
                    raise _source_error(source, item, error) from None
            check_source_type(source, item, info.dtype, vrt_band.dtype)
            check_source_rect(source, item, info.width, info.height)
            described[item] = info
    chosen = vrt.bands[band - 1]
    block_shape = (128, 128)  # GDAL's blocks for a VRT band
    if len(chosen.sources) == 1:
        only = chosen.sources[0]
        whole = (0, 0, vrt.width, vrt.height)
        if (
            only.destination.col,
            only.destination.row,
            only.destination.width,
            only.destination.height,
        ) == whole and (only.source.col, only.source.row) == (0, 0):
            block_shape = described[only].block_shape
    return RasterInfo(
        path=source,
        band=band,
        width=vrt.width,
        height=vrt.height,
        dtype=chosen.dtype,
        nodata=chosen.nodata,
        crs=vrt.crs,
        transform=vrt.transform,
        block_shape=block_shape,
    )


def check_same_grid(infos: Sequence[RasterInfo], names: Sequence[str]) -> None:
    """Raise InvalidArgumentError naming the first difference between the inputs' grids."""
    first, first_name = infos[0], names[0]
    for info, name in zip(infos[1:], names[1:], strict=True):
        if info.shape != first.shape:
            raise InvalidArgumentError(
                f"inputs {first_name!r} and {name!r} differ in size: "
                f"{first.width}x{first.height} and {info.width}x{info.height}"
            )
        if not np.allclose(info.transform, first.transform, rtol=0, atol=1e-9):
            raise InvalidArgumentError(
                f"inputs {first_name!r} and {name!r} differ in transform: "
                f"{first.transform} and {info.transform}"
            )
        if info.crs != first.crs:
            raise InvalidArgumentError(f"inputs {first_name!r} and {name!r} differ in CRS")


def read_window(source: DataPath, band: int, tile: Tile) -> np.ndarray:
    """Read one band's window; workers call this for their own tiles, opening `source`
    (and a VRT's sources) under its root themselves.

    Raises DataLossError, naming the file as the client does, when the pixels cannot be
    decoded: the header was read when the job was checked, so the data is corrupt or
    truncated. A file that is gone, swapped for a link or for something else than a
    GeoTIFF (or a VRT rsgrpc reads) fails with the error its check at the door would
    have given.
    """
    with rasterio.Env(GDAL_CACHEMAX=WORKER_GDAL_CACHE_BYTES):
        if is_vrt_path(source.name):
            return _read_vrt_window(source, band, tile)
        return _read_geotiff_window(source, band, tile, source)


def _read_geotiff_window(source: DataPath, band: int, tile: Tile, shown: DataPath) -> np.ndarray:
    """`tile` of band `band` of the GeoTIFF `source`; `shown` names it in errors."""
    window = Window(tile.col, tile.row, tile.width, tile.height)
    kept = _open_inputs if threading.get_ident() == _open_inputs_thread else None
    try:
        if kept is None:
            with open_geotiff(source) as ds:
                return ds.read(band, window=window)
        return kept.get(source).read(band, window=window)
    except RasterioError:
        if kept is not None:
            kept.forget(source)
        raise DataLossError(
            f"{shown.path} band {band}: the pixels of rows {tile.row} to "
            f"{tile.row + tile.height - 1}, columns {tile.col} to {tile.col + tile.width - 1} "
            "cannot be read; the file is corrupt or truncated"
        ) from None


def _source_shape(source: DataPath, band: int) -> tuple[int, int, str]:
    """Height, width and data type of band `band` of the GeoTIFF `source`, opened now."""
    info = describe(source, band)
    return info.height, info.width, info.dtype


def _read_vrt_window(source: DataPath, band: int, tile: Tile) -> np.ndarray:
    """`tile` of band `band` of the VRT `source`, composed as GDAL composes it from simple
    and complex sources without resampling: the band's nodata (or 0) where no source
    lies, then each source in the file's order, a complex source's NODATA pixels left
    transparent."""
    vrt = load_vrt(source)
    if not 1 <= band <= len(vrt.bands):
        raise InvalidArgumentError(
            f"{source.field} {source.path!r} has {len(vrt.bands)} band(s); "
            f"band {band} does not exist",
            metadata={"path": source.path},
        )
    chosen = vrt.bands[band - 1]
    out = np.full((tile.height, tile.width), chosen.nodata or 0, dtype=chosen.dtype)
    for item in chosen.sources:
        dst, src = item.destination, item.source
        col0, col1 = max(dst.col, tile.col), min(dst.col + dst.width, tile.col + tile.width)
        row0, row1 = max(dst.row, tile.row), min(dst.row + dst.height, tile.row + tile.height)
        if col0 >= col1 or row0 >= row1:
            continue
        try:
            height, width, dtype = _source_shape(item.path, item.band)
        except RsgrpcError as error:
            raise _source_error(source, item, error) from None
        check_source_type(source, item, dtype, chosen.dtype)
        check_source_rect(source, item, width, height)
        # The same window in the source, clipped to the source's extent.
        src_col0 = src.col + col0 - dst.col
        src_row0 = src.row + row0 - dst.row
        read_col0, read_row0 = max(src_col0, 0), max(src_row0, 0)
        read_col1 = min(src_col0 + col1 - col0, width)
        read_row1 = min(src_row0 + row1 - row0, height)
        if read_col0 >= read_col1 or read_row0 >= read_row1:
            continue
        window = Tile(read_row0, read_col0, read_row1 - read_row0, read_col1 - read_col0)
        try:
            data = _read_geotiff_window(item.path, item.band, window, source)
        except RsgrpcError as error:
            raise _source_error(source, item, error) from None
        top = row0 - tile.row + read_row0 - src_row0
        left = col0 - tile.col + read_col0 - src_col0
        check_source_type(source, item, data.dtype.name, chosen.dtype)  # replaced meanwhile
        target = out[top : top + data.shape[0], left : left + data.shape[1]]
        if item.nodata is None:
            target[...] = data
        elif np.isnan(item.nodata):
            np.copyto(target, data, where=~np.isnan(data))
        else:
            np.copyto(target, data, where=data != item.nodata)
    return out


@dataclass(frozen=True)
class _KeptInput:
    opened: OpenedInput
    dataset: rasterio.DatasetReader

    def close(self) -> None:
        self.dataset.close()
        self.opened.close()


class _OpenInputs:
    """The inputs a worker's main thread keeps open between its tiles.

    Opening a GeoTIFF reads its header and tile index again; on the band calc
    benchmark (1024² tiles, two inputs) one worker spent 1.19 to 1.26 CPU-s on
    its reads when it opened both inputs for every tile, and 0.97 to 0.99 s
    with them kept open. Each read opens the path again under the root (a few
    system calls) and compares the file's inode, size and modification time
    with the kept one's, so a file replaced, rewritten or swapped between tiles
    is opened afresh, or refused. An object's version is asked of the storage
    at each read the same way. A dataset serves one thread at a time: the
    thread that called `keep_inputs_open` uses them, and other threads (the
    sieve's tiles side by side) open their own.
    """

    def __init__(self) -> None:
        self._open: OrderedDict[DataPath, _KeptInput] = OrderedDict()

    def get(self, source: DataPath) -> rasterio.DatasetReader:
        opened = source.open_input()
        kept = self._open.get(source)
        if kept is not None and kept.opened.identity == opened.identity:
            opened.close()
            self._open.move_to_end(source)
            return kept.dataset
        self.forget(source)
        try:
            dataset = _geotiff_at(opened)
        except BaseException:
            opened.close()
            raise
        self._open[source] = _KeptInput(opened, dataset)
        while len(self._open) > MAX_OPEN_INPUTS:
            self._open.popitem(last=False)[1].close()
        return dataset

    def forget(self, source: DataPath) -> None:
        kept = self._open.pop(source, None)
        if kept is not None:
            kept.close()

    def close_all(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


_open_inputs: _OpenInputs | None = None
_open_inputs_thread: int | None = None


def keep_inputs_open() -> Callable[[], None]:
    """Runs once in a worker, in the thread that runs its tiles (a pool worker's main
    thread, a Dask worker's task thread): from now on `read_window` keeps the files it
    opens in that thread open.

    Returns what closes them; the worker calls it between jobs, when no task runs.
    """
    global _open_inputs, _open_inputs_thread
    _open_inputs = _OpenInputs()
    _open_inputs_thread = threading.get_ident()
    return _open_inputs.close_all


@dataclass(frozen=True)
class OutputProfile:
    """How an output GeoTIFF is encoded."""

    compression: str  # "none", "deflate", "zstd" or "lzw"
    level: int = 0  # 0: the codec's default
    predictor: int = 0  # 0: the profile's default for the dtype
    cloud_optimized: bool = False
    block_size: int = OUTPUT_BLOCK  # edge of the output's square blocks, a multiple of 16

    CODECS = ("none", "deflate", "zstd", "lzw")
    # The levels a codec takes (0 is its default; LZW and no compression take none):
    # GDAL clamps or ignores others without a word.
    LEVELS = {"deflate": range(1, 10), "zstd": range(1, 23)}
    PREDICTORS = {1: "none", 2: "horizontal", 3: "floating point"}

    def __post_init__(self) -> None:
        """Refuse a codec, level or predictor GDAL would refuse or silently ignore."""
        if self.compression not in self.CODECS:
            raise InvalidArgumentError(
                f"compression {self.compression!r} is not one of {', '.join(self.CODECS)}",
                metadata={"field": "compression"},
            )
        levels = self.LEVELS.get(self.compression)
        if self.level and (levels is None or self.level not in levels):
            allowed = (
                f"use {levels.start} to {levels.stop - 1}, or 0 for its default"
                if levels
                else "it takes no level; leave level 0"
            )
            raise InvalidArgumentError(
                f"level {self.level} is not valid for {self.compression}: {allowed}",
                metadata={"field": "level"},
            )
        if self.predictor and self.predictor not in self.PREDICTORS:
            raise InvalidArgumentError(
                f"predictor must be 0 (the default for the data type), 1 (none), "
                f"2 (horizontal) or 3 (floating point), got {self.predictor}",
                metadata={"field": "predictor"},
            )
        if self.predictor > 1 and self.compression == "none":
            raise InvalidArgumentError(
                f"predictor {self.predictor} ({self.PREDICTORS[self.predictor]}) works "
                "only with compression; with none, leave predictor 0",
                metadata={"field": "predictor"},
            )
        if self.block_size < 16 or self.block_size % 16:
            raise InvalidArgumentError(
                f"block size must be a positive multiple of 16, got {self.block_size}"
            )

    def check_dtype(self, dtype: str, *, output: str) -> None:
        """Refuse a predictor that `output`'s data type cannot take: GDAL's floating-point
        predictor is for float32 and float64 only."""
        if self.predictor == 3 and np.dtype(dtype).kind != "f":
            raise InvalidArgumentError(
                f"predictor 3 (floating point) is for float32 and float64 outputs; output "
                f"{output!r} is {dtype}: use 2 (horizontal), 1 (none) or 0 (the default)",
                metadata={"field": "predictor", "path": output},
            )

    def fitted_to(self, width: int, height: int) -> OutputProfile:
        """This profile for an output of at most ``width`` x ``height`` pixels: blocks no
        larger than the output, rounded up to TIFF's multiple of 16. A small output then
        encodes its pixels, not a block of padding four times their size."""
        fit = -(-max(width, height, 1) // 16) * 16
        if fit >= self.block_size:
            return self
        return replace(self, block_size=fit)

    # GDAL's levels for a codec's level 0.
    DEFAULT_LEVELS = {"deflate": 6, "zstd": 9}

    def block_encoding(self, dtype: str) -> BlockEncoding:
        """How each block of an output of `dtype` is encoded."""
        if self.compression == "none":
            return BlockEncoding(self.block_size, "none", 0, 1)
        return BlockEncoding(
            self.block_size,
            self.compression,
            self.level or self.DEFAULT_LEVELS.get(self.compression, 0),
            self.predictor or (3 if np.dtype(dtype).kind == "f" else 2),
        )

    def block_options(self, dtype: str) -> dict[str, object]:
        """The GTiff creation options of such a file: the tags that tell how its blocks
        are encoded."""
        encoding = self.block_encoding(dtype)
        options: dict[str, object] = {
            "tiled": True,
            "blockxsize": self.block_size,
            "blockysize": self.block_size,
        }
        if self.compression == "none":
            return options
        options["compress"] = self.compression
        if encoding.level:
            options["zstd_level" if self.compression == "zstd" else "zlevel"] = encoding.level
        options["predictor"] = encoding.predictor
        return options

    def creation_options(self, dtype: str) -> dict[str, object]:
        """The options for GDAL writing such a file itself, with its threads."""
        return {**self.block_options(dtype), "bigtiff": "IF_SAFER", "num_threads": "ALL_CPUS"}


# Chosen by benchmarks/bench_band_calc.py: see the README's "Output profile".
DEFAULT_PROFILE = OutputProfile("zstd", level=1)


def encode_output_tile(array: np.ndarray, tile: Tile, profile: OutputProfile) -> EncodedTile:
    """Encode a computed tile as its output blocks; workers call this for their own tiles."""
    return encode_tile(array, tile, profile.block_encoding(array.dtype.name))


def raster_output(
    data_root: DataRoot, client_path: str, *, field: str, overwrite: bool
) -> DataPath:
    """A raster output's path, once it and, for a VRT, the GeoTIFF beside it are checked
    writable (`check_raster_output`)."""
    output = data_root.path(client_path, field=field)
    check_raster_output(output, overwrite=overwrite)
    return output


def check_raster_output(output: DataPath, *, overwrite: bool) -> None:
    """`DataPath.check_output` for every file an output makes (`output_files`): a virtual
    output is refused when its VRT or its GeoTIFF exists and `overwrite` is off."""
    for path in output_files(output):
        path.check_output(overwrite=overwrite)


class RasterWriter:
    """The one writer of an output: encoded tiles in any order, published whole or not at all.

    The file is laid out by GDAL with no blocks (its header, georeferencing and an
    empty block index); each encoded tile is appended to it (`FileAppender`, past the
    page cache) and its blocks entered in the index, which is written when the file is
    committed. It is written as a `PartialOutput` of `output`: opened under the data
    root when the writer is entered, moved into place by `commit()`, removed if the
    block is left without committing. A cloud-optimized copy takes its overviews'
    temporary files in `scratch_directory`, a folder of the server's own.

    An output named `.vrt` is a virtual output: the GeoTIFF is written as the
    `PartialOutput` of its name beside the VRT (`virtual_part`), the VRT as another,
    and `commit()` publishes the GeoTIFF, then the VRT; if the VRT cannot be put in
    place, the GeoTIFF just published is removed again.
    """

    def __init__(
        self,
        output: DataPath,
        *,
        width: int,
        height: int,
        dtype: str,
        nodata: float | None,
        crs: str,
        transform: Sequence[float],
        profile: OutputProfile,
        overwrite: bool,
        scratch_directory: Path,
        scale: float | None = None,
        offset: float | None = None,
    ) -> None:
        self.output = output
        self.profile = profile
        self._scratch = scratch_directory
        self._virtual: PartialOutput | None = None
        geotiff = output
        if is_vrt_path(output.name):
            geotiff = virtual_part(output)
            self._virtual = partial_output(output, overwrite=overwrite)
        self._partial = partial_output(geotiff, overwrite=overwrite)
        # Offsets in a classic TIFF are 32-bit. Compressed blocks can outgrow their
        # pixels (LZW by up to half again), so BigTIFF past half of that.
        raw_bytes = self._raw_bytes = width * height * np.dtype(dtype).itemsize
        self._meta = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": 1,
            "dtype": dtype,
            "nodata": nodata,
            "crs": crs or None,
            "transform": rasterio.Affine(*transform),
            "bigtiff": "YES" if 2 * raw_bytes >= 1 << 32 else "NO",
            "sparse_ok": True,
            **profile.block_options(dtype),
        }
        if scale is not None or offset is not None:  # the band's GDAL scale and offset
            self._meta["scale"] = 1.0 if scale is None else scale
            self._meta["offset"] = 0.0 if offset is None else offset
        self._appender: FileAppender | None = None
        self._blocks_across = blocks_across(width, profile.block_size)
        self._index: BlockIndex | None = None
        self._offsets = self._sizes = np.zeros(0, np.uint64)
        self.bytes_written = 0

    def __enter__(self) -> RasterWriter:
        keep_gdal_env()
        self._partial.__enter__()
        try:
            if self._virtual is not None:
                self._virtual.__enter__()
            fd = self._partial.fd
            write_empty(fd, self._meta)
            self._index = BlockIndex.locate(self._read)
            self._offsets = np.zeros(self._index.blocks, np.uint64)
            self._sizes = np.zeros(self._index.blocks, np.uint64)
            self._appender = FileAppender(
                fd_path(fd), os.fstat(fd).st_size, direct=self._raw_bytes >= STAGE_BYTES
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    def _read(self, offset: int, size: int) -> bytes:
        return os.pread(self._partial.fd, size, offset)

    def write(self, encoded: EncodedTile) -> None:
        """Append a tile's encoded blocks and enter them in the index."""
        tile, block = encoded.tile, self.profile.block_size
        height, width = self._meta["height"], self._meta["width"]
        if (
            tile.row % block
            or tile.col % block
            or (tile.height % block and tile.row + tile.height != height)
            or (tile.width % block and tile.col + tile.width != width)
        ):
            raise ValueError(f"{tile} is not aligned to the output's {block}-pixel blocks")
        first_row, first_col = tile.row // block, tile.col // block
        rows, cols = blocks_across(tile.height, block), blocks_across(tile.width, block)
        if len(encoded.sizes) != rows * cols:
            raise ValueError(f"{len(encoded.sizes)} encoded blocks for a tile of {rows * cols}")
        offset = self._appender.append(encoded.data)
        starts = offset + np.cumsum((0, *encoded.sizes[:-1]), dtype=np.uint64)
        for i, (start, size) in enumerate(zip(starts.tolist(), encoded.sizes, strict=True)):
            index = (first_row + i // cols) * self._blocks_across + first_col + i % cols
            self._offsets[index], self._sizes[index] = start, size

    def commit(self) -> int:
        """Write the block index and move the finished file to its path; returns its size
        in bytes."""
        missing = int(np.count_nonzero(self._sizes == 0))
        if missing:
            raise RuntimeError(f"{missing} of the output's blocks were never written")
        self._appender.close()
        self._appender = None
        for position, data in self._index.packed(self._offsets, self._sizes):
            os.pwrite(self._partial.fd, data, position)
        if self.profile.cloud_optimized:
            self._copy_cloud_optimized()
        if self._virtual is None:
            self.bytes_written = self._partial.publish()
            return self.bytes_written
        meta = self._meta
        text = virtual_raster_xml(
            part=self._partial.target.name,
            width=meta["width"],
            height=meta["height"],
            dtype=meta["dtype"],
            nodata=meta["nodata"],
            crs=meta["crs"] or "",
            transform=tuple(meta["transform"])[:6],
            block_shape=(self.profile.block_size, self.profile.block_size),
        )
        os.pwrite(self._virtual.fd, text, 0)
        size = self._partial.publish()
        try:
            size += self._virtual.publish()
        except BaseException:
            self._partial.unpublish()
            raise
        self.bytes_written = size
        return size

    def unpublish(self) -> None:
        """Remove what `commit()` published: used when an output of several rasters
        cannot be published whole."""
        if self._virtual is not None:
            self._virtual.unpublish()
        self._partial.unpublish()

    def _copy_cloud_optimized(self) -> None:
        """Rewrite the file as a cloud-optimized GeoTIFF, in a new temporary file."""
        options = self.profile.creation_options(self._meta["dtype"])
        for key in ("tiled", "blockxsize", "blockysize"):
            options.pop(key)
        tiled = self._partial.restart()
        try:
            # GDAL makes the overviews' temporary files in CPL_TMPDIR, not beside the output.
            with rasterio.Env(GDAL_CACHEMAX=WRITER_GDAL_CACHE_BYTES, CPL_TMPDIR=str(self._scratch)):
                rasterio.shutil.copy(
                    fd_path(tiled),
                    fd_path(self._partial.fd),
                    driver="COG",
                    blocksize=self.profile.block_size,
                    **options,
                )
        finally:
            os.close(tiled)

    def __exit__(self, *exc_info: object) -> None:
        if self._appender is not None:
            self._appender.abandon()
            self._appender = None
        if self._virtual is not None:
            self._virtual.__exit__()
        self._partial.__exit__()
