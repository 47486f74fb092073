"""GDAL confined to the files rsgrpc opens itself: no VRT, no sidecar, no network.

Applied when `rsgrpc.engine.raster_io` is imported, so in the server and in
every worker process (local or Dask) before GDAL registers its drivers or
opens a file. The options go into the process environment, where GDAL reads a
configuration option that nothing has set otherwise, and where PROJ reads its
own.

Every file GDAL opens for rsgrpc is one rsgrpc opened first, named by its
descriptor (`rsgrpc.engine.paths.fd_path`), and inputs open with the GeoTIFF
driver only. These options close what is left: a format that names other
files, files that GDAL would look for beside a dataset (`.aux.xml`, world
files, `.prj`, the directory listing it takes to find them), and the network.
"""

from __future__ import annotations

import os
from typing import Final

GDAL_OPTIONS: Final[dict[str, str]] = {
    # Drivers that read other files or URLs named inside a file: never registered.
    "GDAL_SKIP": "VRT",
    # No directory listing beside a dataset to look for sidecars in.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    # No .aux.xml read or written.
    "GDAL_PAM_ENABLED": "NO",
    # Georeferencing from the GeoTIFF itself, never from a world file or .prj.
    "GDAL_GEOREF_SOURCES": "INTERNAL",
    # /vsicurl/ opens only names with these extensions: none has it.
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".rsgrpc-no-network",
    "GDAL_HTTP_MAX_RETRY": "0",
    # PROJ fetches no grids from its CDN.
    "PROJ_NETWORK": "OFF",
}


def confine_gdal() -> None:
    """Set `GDAL_OPTIONS` for this process and the processes it starts."""
    os.environ.update(GDAL_OPTIONS)


def gdal_options_in_force() -> dict[str, str | None]:
    """Each option as GDAL sees it in this process (a worker reports these in tests)."""
    import rasterio
    from rasterio.env import get_gdal_config

    with rasterio.Env():
        return {key: get_gdal_config(key, normalize=False) for key in GDAL_OPTIONS}
