"""The raster tools declared once (`rsgrpc.tools.spec.RasterTool`): the servicer registers
an RPC, the client a method and the CLI a command for each, in this order."""

from __future__ import annotations

from rsgrpc.tools.clustering import BAND_CLUSTERING
from rsgrpc.tools.combination import BAND_COMBINATION
from rsgrpc.tools.cross_classification import CROSS_CLASSIFICATION
from rsgrpc.tools.mask import BAND_MASK
from rsgrpc.tools.morphology import DILATION, EROSION
from rsgrpc.tools.neighbor_pixels import NEIGHBOR_PIXELS
from rsgrpc.tools.pca import BAND_PCA
from rsgrpc.tools.raster_label import RASTER_LABEL
from rsgrpc.tools.reclassification import RECLASSIFICATION
from rsgrpc.tools.report import RASTER_REPORT
from rsgrpc.tools.spec import RasterTool
from rsgrpc.tools.table_spec import TableTool
from rsgrpc.tools.zonal_stats import RASTER_ZONAL_STATS

RASTER_TOOLS: tuple[RasterTool, ...] = (
    DILATION,
    EROSION,
    NEIGHBOR_PIXELS,
    RECLASSIFICATION,
    BAND_MASK,
    RASTER_LABEL,
)


def raster_tool(name: str) -> RasterTool:
    """The declaration of Remotior's method `name`."""
    for tool in RASTER_TOOLS:
        if tool.name == name:
            return tool
    raise KeyError(name)


# The table tools (`rsgrpc.tools.table_spec.TableTool`), registered the same way.
TABLE_TOOLS: tuple[TableTool, ...] = (
    RASTER_REPORT,
    BAND_COMBINATION,
    RASTER_ZONAL_STATS,
    CROSS_CLASSIFICATION,
    BAND_CLUSTERING,
    BAND_PCA,
)


def table_tool(name: str) -> TableTool:
    """The declaration of Remotior's table method `name`."""
    for tool in TABLE_TOOLS:
        if tool.name == name:
            return tool
    raise KeyError(name)
