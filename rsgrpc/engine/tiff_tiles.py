"""Output tiles encoded where they are computed, and placed in their GeoTIFF by one writer.

Encoding dominates a tool's output: DEFLATE at GDAL's default level writes
float32 at about 80 MB/s a core. So each worker encodes the output blocks of
the tile it computed, with GDAL's own GTiff encoder in memory (`encode_tile`),
and the job's one writer only appends those bytes to the file and records
where each block lies (`BlockIndex`). Encoding then runs in every worker
process at once with no encoder threads competing with them, and results
travel compressed.

A tile is encoded as a GeoTIFF of its own size with the output's block size,
codec, level and predictor; its blocks are the output's blocks, byte for byte,
because tiles are aligned to output blocks (a tile at the raster's right or
bottom edge ends with the same partial blocks as the raster).
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from rsgrpc.engine.tiles import Tile

# TIFF tags of a tiled image: where each block starts, and how many bytes it has.
_TILE_OFFSETS = 324
_TILE_BYTE_COUNTS = 325
# TIFF field types that these tags use: SHORT, LONG and (BigTIFF) LONG8.
_FIELD_TYPES = {3: "H", 4: "I", 16: "Q"}


@dataclass(frozen=True)
class EncodedTile:
    """A tile's output blocks, encoded: their bytes back to back, in row-major block order."""

    tile: Tile
    data: np.ndarray  # uint8
    sizes: tuple[int, ...]  # bytes of each block


def blocks_across(extent: int, block: int) -> int:
    return -(-extent // block)


def encode_tile(
    array: np.ndarray, tile: Tile, options: dict[str, object], *, cache_bytes: int
) -> EncodedTile:
    """Encode `array`, the pixels of `tile`, as the output blocks it covers.

    `options` are the output's GTiff creation options that decide a block's bytes
    (tiling, block size, codec, level, predictor); GDAL's block cache is held to
    `cache_bytes` while it encodes.
    """
    with (
        rasterio.Env(GDAL_CACHEMAX=cache_bytes),
        MemoryFile() as memory,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memory.open(
            driver="GTiff",
            width=tile.width,
            height=tile.height,
            count=1,
            dtype=array.dtype.name,
            **options,
        ) as ds:
            ds.write(array[np.newaxis], [1])
        # A view of the memory file, dropped before the file closes.
        data, sizes = _blocks_of(np.frombuffer(memory.getbuffer(), np.uint8))
    return EncodedTile(tile, data, sizes)


def _blocks_of(tiff: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """A tiled TIFF's blocks, copied back to back, and their sizes."""

    def read(offset: int, size: int) -> bytes:
        return tiff[offset : offset + size].tobytes()

    offsets, sizes = BlockIndex.locate(read).read(read)
    spans = list(zip(offsets.tolist(), sizes.tolist(), strict=True))
    return np.concatenate([tiff[o : o + s] for o, s in spans]), tuple(sizes.tolist())


@dataclass(frozen=True)
class _IndexArray:
    """One of the two arrays of a tiled TIFF's block index: where it lies, and its type."""

    position: int
    count: int
    dtype: np.dtype


@dataclass(frozen=True)
class BlockIndex:
    """Where a tiled TIFF (classic or BigTIFF, either byte order) keeps its blocks'
    offsets and byte counts: the arrays of tags 324 and 325 of its first directory."""

    offsets: _IndexArray
    byte_counts: _IndexArray

    @property
    def blocks(self) -> int:
        return self.offsets.count

    @classmethod
    def locate(cls, read: Callable[[int, int], bytes]) -> BlockIndex:
        """Parse the header and first directory, read through `read(offset, size)`."""
        header = read(0, 16)
        order = {b"II": "<", b"MM": ">"}.get(header[:2])
        if order is None or len(header) < 8:
            raise ValueError("not a TIFF file")
        (version,) = struct.unpack_from(order + "H", header, 2)
        if version == 42:
            (directory,) = struct.unpack_from(order + "I", header, 4)
            count_format, entry_format, inline = "H", "HHII", 4
        elif version == 43:
            (directory,) = struct.unpack_from(order + "Q", header, 8)
            count_format, entry_format, inline = "Q", "HHQQ", 8
        else:
            raise ValueError(f"not a TIFF file (version {version})")
        count_size = struct.calcsize(order + count_format)
        (entries,) = struct.unpack(order + count_format, read(directory, count_size))
        entry_size = struct.calcsize(order + entry_format)
        table = read(directory + count_size, entries * entry_size)
        found: dict[int, _IndexArray] = {}
        for i in range(entries):
            tag, kind, count, value = struct.unpack_from(
                order + entry_format, table, i * entry_size
            )
            if tag in (_TILE_OFFSETS, _TILE_BYTE_COUNTS):
                if kind not in _FIELD_TYPES:
                    raise ValueError(f"TIFF tag {tag} has field type {kind}")
                dtype = np.dtype(order + _FIELD_TYPES[kind])
                entry = directory + count_size + i * entry_size
                # Values that fit in the entry are stored in it, after tag, type and count.
                position = entry + 4 + inline if count * dtype.itemsize <= inline else value
                found[tag] = _IndexArray(position, count, dtype)
        if len(found) != 2:
            raise ValueError("not a tiled TIFF: it has no tile offsets or byte counts")
        return cls(found[_TILE_OFFSETS], found[_TILE_BYTE_COUNTS])

    def read(self, read: Callable[[int, int], bytes]) -> tuple[np.ndarray, np.ndarray]:
        """The blocks' offsets and byte counts, as uint64."""
        return tuple(
            np.frombuffer(read(a.position, a.count * a.dtype.itemsize), a.dtype).astype(np.uint64)
            for a in (self.offsets, self.byte_counts)
        )

    def packed(self, offsets: np.ndarray, sizes: np.ndarray) -> list[tuple[int, bytes]]:
        """The two arrays as the file stores them: (position, bytes) to write."""
        packed = []
        for array, values in ((self.offsets, offsets), (self.byte_counts, sizes)):
            if len(values) != array.count:
                raise ValueError(f"{len(values)} values for {array.count} blocks")
            if len(values) and int(values.max()) > np.iinfo(array.dtype).max:
                raise ValueError(f"a block offset or size does not fit TIFF type {array.dtype}")
            packed.append((array.position, values.astype(array.dtype).tobytes()))
        return packed
