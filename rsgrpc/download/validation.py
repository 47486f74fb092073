"""Checking an answer on disk before it is kept: its length, and that it decodes as its type.

Every answer is checked from the file it was streamed to, reading it in bounded pieces:
TIFF (its IFDs and every strip or tile within the file, then every pixel decoded a band
of rows at a time), PNG (every chunk and its CRC, up to IEND, then decoded), JPEG (from
SOI to EOI, then decoded), ZIP (every member's CRC), TAR (every member within the file),
GZIP (decompressed to its end), XML (parsed as a stream) and JSON (parsed). Text and raw
answers are only measured. An answer that fails is never cached nor written.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import Final
from xml.parsers import expat

from .errors import IncompleteAnswerError, UndecodableAnswerError
from .request import MimeType

_PIECE: Final = 1 << 20
# Pixels are decoded this many bytes of rows at a time; the dataset is reopened between
# bands of rows so that GDAL's block cache never holds more than one band.
_ROWS_BYTES: Final = 16 << 20


def check_length(received: int, content_length: str | None, *, url: str | None = None) -> None:
    """Raise `IncompleteAnswerError` unless ``received`` bytes is what ``content_length`` announced."""
    if content_length is None:
        return
    try:
        expected = int(content_length)
    except ValueError:
        raise IncompleteAnswerError(
            f"the answer's Content-Length {content_length[:40]!r} is not a number", url=url
        ) from None
    if received != expected:
        kind = "cut short" if received < expected else "longer than announced"
        raise IncompleteAnswerError(
            f"the answer was {kind}: {received} of {expected} bytes", url=url
        )


def check_file(path: str, data_type: MimeType, *, url: str | None = None) -> None:
    """Raise `UndecodableAnswerError` unless the file at ``path`` decodes as ``data_type``."""
    checker = _CHECKERS.get(data_type)
    if checker is None:
        return
    try:
        checker(path)
    except UndecodableAnswerError:
        raise
    except _Broken as error:
        raise UndecodableAnswerError(
            f"the answer is not a {_NAMES.get(data_type, data_type.name)} that decodes: {error}",
            url=url,
        ) from None
    except (
        ValueError,
        EOFError,
        OSError,
        RecursionError,
        struct.error,
        zlib.error,
        zipfile.BadZipFile,
        tarfile.TarError,
        expat.ExpatError,
        UnicodeDecodeError,
    ) as error:
        raise UndecodableAnswerError(
            f"the answer is not a {_NAMES.get(data_type, data_type.name)} that decodes: "
            f"{type(error).__name__}: {str(error)[:200]}",
            url=url,
        ) from None


class _Broken(Exception):
    """A structural fault found by one of the checks below."""


def _pieces(path: str, start: int = 0) -> Iterator[bytes]:
    with open(path, "rb") as file:
        file.seek(start)
        while piece := file.read(_PIECE):
            yield piece


def _head(path: str, count: int) -> bytes:
    with open(path, "rb") as file:
        return file.read(count)


# -- TIFF ---------------------------------------------------------------------------------

_TIFF_TYPES: Final = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TIFF_TYPES_BIG: Final = {**_TIFF_TYPES, 16: 8, 17: 8, 18: 8}
_OFFSET_TAGS: Final = {273: 279, 324: 325}  # StripOffsets -> StripByteCounts, Tile...
_MAX_IFDS: Final = 10_000


def _check_tiff(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        header = file.read(16)
        if header[:2] not in (b"II", b"MM"):
            raise _Broken(f"it starts with {header[:8]!r}, not a TIFF signature")
        order = "<" if header[:2] == b"II" else ">"
        version = struct.unpack(order + "H", header[2:4])[0]
        if version == 42:
            big, offset = False, struct.unpack(order + "I", header[4:8])[0]
        elif version == 43:
            big, offset = True, struct.unpack(order + "Q", header[8:16])[0]
        else:
            raise _Broken(f"unknown TIFF version {version}")
        seen: set[int] = set()
        while offset:
            if offset in seen or len(seen) >= _MAX_IFDS:
                raise _Broken("its IFDs form a loop")
            seen.add(offset)
            offset = _check_ifd(file, order, big, offset, size)
    _decode_raster(path)


def _check_ifd(file, order: str, big: bool, offset: int, size: int) -> int:
    count_format, entry_size, next_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size = struct.calcsize(count_format)
    if offset + count_size > size:
        raise _Broken(f"an IFD at byte {offset} lies beyond the end of the file ({size} bytes)")
    file.seek(offset)
    (count,) = struct.unpack(order + count_format, file.read(count_size))
    table = file.read(count * entry_size + struct.calcsize(next_format))
    if len(table) < count * entry_size + struct.calcsize(next_format):
        raise _Broken(f"the IFD at byte {offset} is cut short")
    types = _TIFF_TYPES_BIG if big else _TIFF_TYPES
    entries: dict[int, list[int]] = {}
    for index in range(count):
        entry = table[index * entry_size : (index + 1) * entry_size]
        if big:
            tag, kind, number = struct.unpack(order + "HHQ", entry[:12])
            inline, value = 8, entry[12:20]
        else:
            tag, kind, number = struct.unpack(order + "HHI", entry[:8])
            inline, value = 4, entry[8:12]
        width = types.get(kind)
        if width is None:
            continue
        length = width * number
        if length > inline:
            (where,) = struct.unpack(order + ("Q" if big else "I"), value)
            if where + length > size:
                raise _Broken(f"tag {tag} lies beyond the end of the file ({size} bytes)")
            if tag in _OFFSET_TAGS or tag in _OFFSET_TAGS.values():
                file.seek(where)
                value = file.read(length)
        if tag in _OFFSET_TAGS or tag in _OFFSET_TAGS.values():
            item = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if item is None:
                raise _Broken(f"tag {tag} has type {kind}")
            entries[tag] = list(struct.unpack(f"{order}{number}{item}", value[:length]))
    for offsets_tag, counts_tag in _OFFSET_TAGS.items():
        offsets, counts = entries.get(offsets_tag), entries.get(counts_tag)
        if offsets is None:
            continue
        if counts is None or len(counts) != len(offsets):
            raise _Broken("its strip or tile byte counts are missing")
        for start, length in zip(offsets, counts, strict=True):
            if length and start + length > size:
                raise _Broken(
                    f"a strip or tile ends at byte {start + length}, beyond the end of the "
                    f"file ({size} bytes): the file is cut short"
                )
    (following,) = struct.unpack(order + next_format, table[count * entry_size :])
    return following


def _decode_raster(path: str) -> None:
    """Decode every pixel of the image at ``path``, a band of rows at a time."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.windows import Window

    def opened():
        return rasterio.open(path, sharing=False)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with opened() as dataset:
                width, height = dataset.width, dataset.height
                row_bytes = max(
                    1, width * dataset.count * max(t.itemsize for t in _dtypes(dataset))
                )
                block_rows = max(1, dataset.block_shapes[0][0]) if dataset.block_shapes else 1
                rows = max(block_rows, (_ROWS_BYTES // row_bytes) // block_rows * block_rows)
                dataset.read(window=Window(0, 0, width, min(rows, height)))
            for top in range(rows, height, rows):
                with opened() as dataset:
                    dataset.read(window=Window(0, top, width, min(rows, height - top)))
    except RasterioError as error:
        raise _Broken(str(error)[:200]) from None


def _dtypes(dataset) -> list:
    import numpy as np

    return [np.dtype(name) for name in dataset.dtypes]


# -- PNG and JPEG -------------------------------------------------------------------------

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _check_png(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        if file.read(8) != _PNG_SIGNATURE:
            raise _Broken("it does not start with the PNG signature")
        while True:
            head = file.read(8)
            if len(head) < 8:
                raise _Broken("it ends before its IEND chunk: the file is cut short")
            length, kind = struct.unpack(">I4s", head)
            if file.tell() + length + 4 > size:
                raise _Broken(f"its {kind!r} chunk runs past the end: the file is cut short")
            crc = zlib.crc32(kind)
            remaining = length
            while remaining:
                piece = file.read(min(remaining, _PIECE))
                crc = zlib.crc32(piece, crc)
                remaining -= len(piece)
            (stored,) = struct.unpack(">I", file.read(4))
            if stored != crc:
                raise _Broken(f"its {kind!r} chunk fails its CRC")
            if kind == b"IEND":
                break
    _decode_raster(path)


def _check_jpeg(path: str) -> None:
    size = os.path.getsize(path)
    if size < 4 or _head(path, 3) != b"\xff\xd8\xff":
        raise _Broken("it does not start with a JPEG SOI marker")
    with open(path, "rb") as file:
        # Trailing padding after EOI is allowed; the EOI must be among the last bytes.
        file.seek(max(0, size - 4096))
        tail = file.read().rstrip(b"\x00\r\n ")
    if not tail.endswith(b"\xff\xd9"):
        raise _Broken("it does not end with a JPEG EOI marker: the file is cut short")
    _decode_raster(path)


# -- archives and text --------------------------------------------------------------------


def _check_zip(path: str) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                while member.read(_PIECE):
                    pass  # reading to the end checks the member's CRC


def _check_tar(path: str) -> None:
    size = os.path.getsize(path)
    with tarfile.open(path, mode="r:") as archive:
        members = 0
        for member in archive:
            members += 1
            if member.isfile() and member.offset_data + member.size > size:
                raise _Broken(f"member {member.name!r} runs past the end: the file is cut short")
        if not members:
            raise _Broken("it holds no member")


def _check_gzip(path: str) -> None:
    with gzip.open(path, "rb") as file:
        while file.read(_PIECE):
            pass


def _check_json(path: str) -> None:
    with open(path, "rb") as file:
        text = file.read().decode("utf-8")
    if text:
        json.loads(text)


def _check_xml(path: str) -> None:
    parser = expat.ParserCreate()
    for piece in _pieces(path):
        parser.Parse(piece, False)
    parser.Parse(b"", True)


def _check_jp2(path: str) -> None:
    head = _head(path, 12)
    if not (head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n") or head.startswith(b"\xff\x4f")):
        raise _Broken(f"it starts with {head!r}, not a JPEG 2000 signature")
    _decode_raster(path)


_CHECKERS: Final[dict[MimeType, Callable[[str], None]]] = {
    MimeType.TIFF: _check_tiff,
    MimeType.PNG: _check_png,
    MimeType.JPG: _check_jpeg,
    MimeType.JP2: _check_jp2,
    MimeType.ZIP: _check_zip,
    MimeType.TAR: _check_tar,
    MimeType.GZIP: _check_gzip,
    MimeType.JSON: _check_json,
    MimeType.GEOJSON: _check_json,
    MimeType.XML: _check_xml,
    MimeType.GML: _check_xml,
}
_NAMES: Final = {MimeType.JPG: "JPEG", MimeType.GEOJSON: "GeoJSON", MimeType.JP2: "JPEG 2000"}
