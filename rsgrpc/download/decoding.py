"""Turning downloaded bytes into Python data of the types and shapes sentinelhub-py gives.

- TIFF -> numpy array as tifffile reads it: ``(rows, cols)`` for one band, ``(rows, cols,
  bands)`` when the bands are pixel-interleaved, ``(bands, rows, cols)`` when they are stored
  as separate planes. Decoded with rasterio, which also reads compressions tifffile needs
  extra codecs for.
- PNG, JPEG, JPEG 2000 -> numpy array as Pillow decodes it (sentinelhub-py's decoder), so
  pixel values match; without Pillow, rasterio decodes them into the same shapes.
- JSON -> parsed JSON ("" stays ""); XML, GML, SAFE -> ``ElementTree.Element``;
  TXT and RAW -> the bytes; ZIP -> ``io.BytesIO``; TAR -> dict of member name -> that
  member decoded by its extension.
- Formats sentinelhub-py refuses to decode: GeoJSON -> parsed JSON, the others -> the bytes.

Anything that does not decode as its type raises `DecodingError`.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import warnings
from typing import Any
from xml.etree import ElementTree

import numpy as np

from .errors import DecodingError
from .request import MimeType

_XML_TYPES = frozenset({MimeType.XML, MimeType.GML, MimeType.SAFE})
_PILLOW_TYPES = frozenset({MimeType.PNG, MimeType.JPG, MimeType.JP2})


def decode_data(content: bytes, data_type: MimeType) -> Any:
    """Decode ``content`` as ``data_type``; raises `DecodingError` if it is not that."""
    try:
        if data_type in (MimeType.JSON, MimeType.GEOJSON):
            text = content.decode("utf-8")
            return json.loads(text) if text else text
        if data_type is MimeType.TAR:
            return decode_tar(content)
        if data_type is MimeType.TIFF:
            return decode_tiff(content)
        if data_type in _PILLOW_TYPES:
            return decode_image(content, data_type)
        if data_type in _XML_TYPES:
            return ElementTree.fromstring(content)
    except DecodingError:
        raise
    except (ValueError, ElementTree.ParseError, RecursionError) as error:
        raise DecodingError(f"the answer is not valid {data_type.value}: {error}") from None
    if data_type is MimeType.ZIP:
        return io.BytesIO(content)
    return content


def decode_tar(content: bytes) -> dict[str, Any]:
    """The files of a tar archive, each decoded by the format its extension names."""
    try:
        with tarfile.open(fileobj=io.BytesIO(content)) as archive:
            decoded: dict[str, Any] = {}
            for member in archive.getmembers():
                file = archive.extractfile(member)
                if file is not None:
                    extension = member.name.split(".")[-1]
                    decoded[member.name] = decode_data(file.read(), MimeType.from_string(extension))
            return decoded
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DecodingError(f"the answer is not a readable tar archive: {error}") from None


def decode_tiff(content: bytes) -> np.ndarray:
    """A TIFF held in memory as a numpy array, its axes in tifffile's order."""
    import rasterio
    from rasterio.enums import Interleaving
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.MemoryFile(content) as memory_file, memory_file.open() as dataset:
                array = dataset.read()
                planar = dataset.interleaving is Interleaving.band
    except RasterioError as error:
        raise DecodingError(f"the answer is not a readable image: {error}") from None
    if array.shape[0] == 1:
        return array[0]
    if planar:
        return array
    return np.ascontiguousarray(np.moveaxis(array, 0, -1))


def decode_image(content: bytes, image_type: MimeType) -> np.ndarray:
    """A PNG, JPEG or JPEG 2000 held in memory as a numpy array ``(rows, cols[, bands])``."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return _decode_with_rasterio(content)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(content)) as image:
                array = np.array(image)
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
    ) as error:
        raise DecodingError(f"the answer is not a readable image: {error}") from None
    if image_type is MimeType.JP2:
        return _fix_jp2_depth(array, _jp2_bit_depth(content))
    return array


def _decode_with_rasterio(content: bytes) -> np.ndarray:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.MemoryFile(content) as memory_file, memory_file.open() as dataset:
                array = dataset.read()
    except RasterioError as error:
        raise DecodingError(f"the answer is not a readable image: {error}") from None
    if array.shape[0] == 1:
        return array[0]
    return np.ascontiguousarray(np.moveaxis(array, 0, -1))


def _jp2_bit_depth(content: bytes) -> int:
    """The bit depth in a JPEG 2000 file's image header box."""
    position = 0
    while position + 8 <= len(content):
        length, box_type = struct.unpack_from(">I4s", content, position)
        if box_type == b"ihdr":
            if position + 22 > len(content):
                break
            return (content[position + 8 + 10] & 0x7F) + 1
        if box_type == b"jp2h":
            # A super box: its children follow its header.
            position += 8
            continue
        if length < 8:
            break
        position += length
    raise DecodingError("the JPEG 2000 answer has no image header box")


def _fix_jp2_depth(array: np.ndarray, bit_depth: int) -> np.ndarray:
    """Pillow reads 15-bit JPEG 2000 values doubled; sentinelhub-py halves them back."""
    if bit_depth in (8, 16):
        return array
    if bit_depth == 15:
        return array >> 1
    raise DecodingError(f"JPEG 2000 images of bit depth {bit_depth} are not supported")
