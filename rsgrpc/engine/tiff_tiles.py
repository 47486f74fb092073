"""Output tiles encoded where they are computed, and placed in their GeoTIFF by one writer.

Encoding dominates a tool's output: DEFLATE at GDAL's default level writes
float32 at about 80 MB/s a core. So each worker encodes the output blocks of
the tile it computed (`encode_tile`), and the job's one writer only appends
those bytes to the file and records where each block lies (`BlockIndex`).
Encoding then runs in every worker process at once with no encoder threads
competing with them, and results travel compressed.

A block is encoded as TIFF says, with the codecs GDAL's own GTiff driver
uses (libdeflate, zstd, LZW; through `imagecodecs`, the codec library of
`tifffile`) after TIFF's predictors: a partial block at the raster's right
or bottom edge is padded to the full block, its padding repeating the last
row and column. Blocks are not built through a GTiff dataset in memory, as
they once were: creating one took 1 to 2 ms a tile, more than encoding a
256 x 256 tile's pixels.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import imagecodecs
import numpy as np

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


@dataclass(frozen=True)
class BlockEncoding:
    """How each block of an output is encoded: TIFF's compression and predictor."""

    block_size: int  # edge of the square blocks
    compression: str  # "none", "deflate", "zstd" or "lzw"
    level: int  # the codec's level; deflate and zstd only
    predictor: int  # 1 (none), 2 (horizontal) or 3 (floating point)


# TIFF's compressions, as GDAL's GTiff driver writes them: DEFLATE as a zlib stream.
_CODECS: dict[str, Callable[[np.ndarray, int], bytes]] = {
    "none": lambda data, _level: data.tobytes(),
    "deflate": lambda data, level: imagecodecs.deflate_encode(data, level),
    "zstd": lambda data, level: imagecodecs.zstd_encode(data, level),
    "lzw": lambda data, _level: imagecodecs.lzw_encode(data),
}


def _predicted(block: np.ndarray, predictor: int) -> np.ndarray:
    """A block's rows after TIFF's predictor, as the bytes to compress (little-endian)."""
    block = block.astype(block.dtype.newbyteorder("<"), copy=False)
    if predictor == 1:
        return block
    if predictor == 2:  # each sample less the one on its left, as unsigned integers
        samples = block.view(f"<u{block.dtype.itemsize}")
    else:  # 3: each row's bytes in planes, most significant first, then as for 2
        rows, width = block.shape
        size = block.dtype.itemsize
        planes = block.view(np.uint8).reshape(rows, width, size)[:, :, ::-1]
        samples = np.ascontiguousarray(planes.transpose(0, 2, 1)).reshape(rows, width * size)
    out = np.empty_like(samples)
    out[:, 0] = samples[:, 0]
    np.subtract(samples[:, 1:], samples[:, :-1], out=out[:, 1:])
    return out


def encode_tile(array: np.ndarray, tile: Tile, encoding: BlockEncoding) -> EncodedTile:
    """Encode `array`, the pixels of `tile`, as the output blocks it covers."""
    edge, compress = encoding.block_size, _CODECS[encoding.compression]
    rows, cols = blocks_across(tile.height, edge), blocks_across(tile.width, edge)
    if (rows * edge, cols * edge) != array.shape:  # partial blocks at the raster's edges
        array = np.pad(
            array, ((0, rows * edge - array.shape[0]), (0, cols * edge - array.shape[1])), "edge"
        )
    blocks = [
        compress(
            _predicted(
                array[r * edge : (r + 1) * edge, c * edge : (c + 1) * edge], encoding.predictor
            ),
            encoding.level,
        )
        for r in range(rows)
        for c in range(cols)
    ]
    data = np.frombuffer(b"".join(blocks), np.uint8)
    return EncodedTile(tile, data, tuple(len(block) for block in blocks))


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
