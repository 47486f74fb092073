"""The empty GeoTIFF an output starts as: GDAL's header, georeferencing and an empty block
index, with no blocks (`RasterWriter` appends them).

GDAL lays the file out the first time a layout (size, type, nodata, CRS, transform,
encoding, the band's scale and offset) is asked for; its bytes are kept, and a later output of the same layout is
those bytes, written without asking GDAL again. Many small jobs on one grid then cost
a write, not a GDAL dataset's creation on the server's GDAL threads.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Final

import rasterio

from rsgrpc.engine.gdal_threads import keep_gdal_env, on_gdal_thread
from rsgrpc.engine.paths import fd_path

# Layouts kept; an empty file is a few kilobytes (its block index grows with its blocks).
_KEPT: Final = 64
# A larger empty file (a huge raster's block index) is made by GDAL each time.
_MAX_TEMPLATE_BYTES: Final = 1 << 20
_templates: OrderedDict[tuple, bytes] = OrderedDict()
_lock = threading.Lock()


def _layout(meta: dict[str, Any]) -> tuple:
    """What decides the empty file's bytes, as a key."""
    return tuple(sorted((key, repr(value)) for key, value in meta.items()))


def _create(path: str, meta: dict[str, Any]) -> None:
    """GDAL's file for ``meta``: rasterio's creation arguments, and the band's ``scale``
    and ``offset`` (GDAL metadata of the band) when given."""
    keep_gdal_env()
    meta = dict(meta)
    scale, offset = meta.pop("scale", None), meta.pop("offset", None)
    with rasterio.open(path, "w", **meta) as dataset:
        if scale is not None or offset is not None:
            dataset.scales = (1.0 if scale is None else scale,)
            dataset.offsets = (0.0 if offset is None else offset,)


def write_empty(fd: int, meta: dict[str, Any]) -> None:
    """Make the empty file open at ``fd`` (new, empty) what GDAL creates for ``meta``."""
    key = _layout(meta)
    with _lock:
        template = _templates.get(key)
        if template is not None:
            _templates.move_to_end(key)
    if template is not None:
        try:
            if os.pwrite(fd, template, 0) == len(template):
                return
        except OSError:
            pass
        os.ftruncate(fd, 0)  # not written whole (a full disk): GDAL tries, and says why
    on_gdal_thread(_create, fd_path(fd), meta)
    size = os.fstat(fd).st_size
    if size > _MAX_TEMPLATE_BYTES:
        return
    made = os.pread(fd, size, 0)
    if len(made) != size:
        return
    with _lock:
        _templates[key] = made
        while len(_templates) > _KEPT:
            _templates.popitem(last=False)
