"""Raster I/O: describing inputs, reading windows, and the one output writer.

Every read of a window goes through `read_window`; every output goes through
`RasterWriter`, which writes under a temporary name and moves the file into
place only when it is complete.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.errors import RasterioError
from rasterio.windows import Window

from rsgrpc.engine.appender import FileAppender
from rsgrpc.engine.errors import (
    AlreadyExistsError,
    DataLossError,
    InvalidArgumentError,
    NotFoundError,
)
from rsgrpc.engine.tiff_tiles import BlockIndex, EncodedTile, blocks_across, encode_tile
from rsgrpc.engine.tiles import Tile

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

    path: str
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


def describe(path: Path, band: int, *, client_path: str) -> RasterInfo:
    """Open `path` and describe band `band`; errors name `client_path`."""
    if not path.exists():
        raise NotFoundError(f"input {client_path!r} does not exist", metadata={"path": client_path})
    try:
        with rasterio.open(path) as ds:
            if not 1 <= band <= ds.count:
                raise InvalidArgumentError(
                    f"input {client_path!r} has {ds.count} band(s); band {band} does not exist",
                    metadata={"path": client_path},
                )
            return RasterInfo(
                path=str(path),
                band=band,
                width=ds.width,
                height=ds.height,
                dtype=ds.dtypes[band - 1],
                nodata=ds.nodatavals[band - 1],
                crs=ds.crs.to_wkt() if ds.crs else "",
                transform=tuple(ds.transform)[:6],
                block_shape=tuple(ds.block_shapes[band - 1]),
            )
    except RasterioError as exc:
        raise InvalidArgumentError(
            f"input {client_path!r} is not a readable raster: {exc}",
            metadata={"path": client_path},
        ) from exc


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


def read_window(path: str, band: int, tile: Tile) -> np.ndarray:
    """Read one band's window; workers call this for their own tiles.

    Raises DataLossError, naming the file but not the server's folders, when the pixels
    cannot be decoded: the header was read when the job was checked, so the data is
    corrupt or truncated.
    """
    window = Window(tile.col, tile.row, tile.width, tile.height)
    kept = _open_inputs if threading.current_thread() is threading.main_thread() else None
    try:
        with rasterio.Env(GDAL_CACHEMAX=WORKER_GDAL_CACHE_BYTES):
            if kept is None:
                with rasterio.open(path) as ds:
                    return ds.read(band, window=window)
            return kept.get(path).read(band, window=window)
    except (RasterioError, OSError):  # OSError: the file is gone
        if kept is not None:
            kept.forget(path)
        raise DataLossError(
            f"{Path(path).name} band {band}: the pixels of rows {tile.row} to "
            f"{tile.row + tile.height - 1}, columns {tile.col} to {tile.col + tile.width - 1} "
            "cannot be read; the file is corrupt or truncated"
        ) from None


class _OpenInputs:
    """The inputs a worker's main thread keeps open between its tiles.

    Opening a GeoTIFF reads its header and tile index again; on the band calc
    benchmark (1024² tiles, two inputs) one worker spent 1.19 to 1.26 CPU-s on
    its reads when it opened both inputs for every tile, and 0.97 to 0.99 s
    with them kept open. A file is looked up by path and checked against its
    inode, size and modification time on every read, so a file replaced or
    rewritten between tiles is opened afresh. A dataset serves one thread at a
    time, so other threads (the sieve's tiles side by side) open their own.
    """

    def __init__(self) -> None:
        self._open: OrderedDict[str, tuple[tuple[int, ...], rasterio.DatasetReader]] = OrderedDict()

    def get(self, path: str) -> rasterio.DatasetReader:
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        kept = self._open.get(path)
        if kept is not None and kept[0] == identity:
            self._open.move_to_end(path)
            return kept[1]
        self.forget(path)
        ds = rasterio.open(path)
        self._open[path] = (identity, ds)
        while len(self._open) > MAX_OPEN_INPUTS:
            self._open.popitem(last=False)[1][1].close()
        return ds

    def forget(self, path: str) -> None:
        kept = self._open.pop(path, None)
        if kept is not None:
            kept[1].close()

    def close_all(self) -> None:
        while self._open:
            self._open.popitem()[1][1].close()


_open_inputs: _OpenInputs | None = None


def keep_inputs_open() -> Callable[[], None]:
    """Runs once in a pool worker: from now on `read_window` keeps its files open.

    Returns what closes them; the worker calls it between jobs, when no task runs.
    """
    global _open_inputs
    _open_inputs = _OpenInputs()
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

    def block_options(self, dtype: str) -> dict[str, object]:
        """The GTiff creation options that decide the bytes of each block."""
        options: dict[str, object] = {
            "tiled": True,
            "blockxsize": self.block_size,
            "blockysize": self.block_size,
        }
        if self.compression == "none":
            return options
        options["compress"] = self.compression
        if self.level:
            options["zstd_level" if self.compression == "zstd" else "zlevel"] = self.level
        predictor = self.predictor or (3 if np.dtype(dtype).kind == "f" else 2)
        options["predictor"] = predictor
        return options

    def creation_options(self, dtype: str) -> dict[str, object]:
        """The options for GDAL writing such a file itself, with its threads."""
        return {**self.block_options(dtype), "bigtiff": "IF_SAFER", "num_threads": "ALL_CPUS"}


# Chosen by benchmarks/bench_band_calc.py: see the README's "Output profile".
DEFAULT_PROFILE = OutputProfile("zstd", level=1)


def encode_output_tile(array: np.ndarray, tile: Tile, profile: OutputProfile) -> EncodedTile:
    """Encode a computed tile as its output blocks; workers call this for their own tiles."""
    return encode_tile(
        array, tile, profile.block_options(array.dtype.name), cache_bytes=WORKER_GDAL_CACHE_BYTES
    )


class RasterWriter:
    """The one writer of an output: encoded tiles in any order, published whole or not at all.

    The file is laid out by GDAL with no blocks (its header, georeferencing and an
    empty block index); each encoded tile is appended to it (`FileAppender`, past the
    page cache) and its blocks entered in the index, which is written when the file is
    committed. Use as a context manager; call `commit()` when every tile is written.
    Leaving the block without committing removes the temporary file.
    """

    def __init__(
        self,
        path: Path,
        *,
        width: int,
        height: int,
        dtype: str,
        nodata: float | None,
        crs: str,
        transform: Sequence[float],
        profile: OutputProfile,
        overwrite: bool,
    ) -> None:
        self.path = path
        self.overwrite = overwrite
        self.profile = profile
        self._tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial.tif")
        # Offsets in a classic TIFF are 32-bit. Compressed blocks can outgrow their
        # pixels (LZW by up to half again), so BigTIFF past half of that.
        raw_bytes = width * height * np.dtype(dtype).itemsize
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
        self._fd: int | None = None
        self._appender: FileAppender | None = None
        self._blocks_across = blocks_across(width, profile.block_size)
        self._index: BlockIndex | None = None
        self._offsets = self._sizes = np.zeros(0, np.uint64)
        self._end = 0
        self.bytes_written = 0

    def __enter__(self) -> RasterWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rasterio.open(self._tmp, "w", **self._meta).close()
        self._fd = os.open(self._tmp, os.O_RDWR | os.O_CLOEXEC)
        self._index = BlockIndex.locate(self._read)
        self._offsets = np.zeros(self._index.blocks, np.uint64)
        self._sizes = np.zeros(self._index.blocks, np.uint64)
        self._appender = FileAppender(self._tmp, os.fstat(self._fd).st_size)
        return self

    def _read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

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
        """Write the block index, close, and move the finished file to its path; returns
        its size in bytes."""
        missing = int(np.count_nonzero(self._sizes == 0))
        if missing:
            raise RuntimeError(f"{missing} of the output's blocks were never written")
        self._appender.close()
        self._appender = None
        for position, data in self._index.packed(self._offsets, self._sizes):
            os.pwrite(self._fd, data, position)
        os.close(self._fd)
        self._fd = None
        source = self._tmp
        if self.profile.cloud_optimized:
            cog = self._tmp.with_name(self._tmp.name + ".cog.tif")
            options = self.profile.creation_options(self._meta["dtype"])
            for key in ("tiled", "blockxsize", "blockysize"):
                options.pop(key)
            with rasterio.Env(GDAL_CACHEMAX=WRITER_GDAL_CACHE_BYTES):
                rasterio.shutil.copy(
                    self._tmp, cog, driver="COG", blocksize=self.profile.block_size, **options
                )
            self._tmp.unlink()
            self._tmp = source = cog
        if self.overwrite:
            os.replace(source, self.path)
        else:
            # link() refuses to replace, so an output created meanwhile is kept.
            try:
                os.link(source, self.path)
            except FileExistsError as exc:
                raise AlreadyExistsError(
                    f"output {self.path.name!r} appeared while the job ran; overwrite is off"
                ) from exc
            source.unlink()
        self.bytes_written = self.path.stat().st_size
        return self.bytes_written

    def __exit__(self, *exc_info: object) -> None:
        if self._appender is not None:
            self._appender.abandon()
            self._appender = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()
