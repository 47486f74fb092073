"""Turning downloaded bytes into Python data: images to numpy, JSON, text, XML or the bytes themselves.

Images are decoded with rasterio (imported on first use) into the shape sentinelhub-py
gives: ``(rows, cols)`` for one band, ``(rows, cols, bands)`` for more.
"""

from __future__ import annotations

import json
import warnings
from typing import Any
from xml.etree import ElementTree

import numpy as np

from .errors import DecodingError
from .request import MimeType

_IMAGE_TYPES = frozenset({MimeType.TIFF, MimeType.PNG, MimeType.JPG, MimeType.JP2})


def decode_data(content: bytes, data_type: MimeType) -> Any:
    """Decode ``content`` as ``data_type``; raises `DecodingError` if it is not that.

    TIFF, PNG, JPEG, JPEG2000 -> numpy array; JSON -> parsed JSON ("" stays "");
    TXT, CSV, GeoJSON text -> str (JSON for GeoJSON); XML/GML -> ElementTree element;
    anything else -> the bytes unchanged.
    """
    try:
        if data_type in _IMAGE_TYPES:
            return decode_image(content)
        if data_type in (MimeType.JSON, MimeType.GEOJSON):
            text = content.decode("utf-8")
            return json.loads(text) if text else text
        if data_type in (MimeType.TXT, MimeType.CSV):
            return content.decode("utf-8")
        if data_type in (MimeType.XML, MimeType.GML):
            return ElementTree.fromstring(content)
    except DecodingError:
        raise
    except (ValueError, ElementTree.ParseError) as error:
        raise DecodingError(f"the answer is not valid {data_type.value}: {error}") from None
    return content


def decode_image(content: bytes) -> np.ndarray:
    """Decode an image file held in memory into a numpy array."""
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
