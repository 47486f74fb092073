"""Python client of rsgrpc, with Remotior Sensus' signatures for what the service does.

A Remotior script runs against the service with its import changed::

    from rsgrpc.client import Session
    rs = Session(2, 2, target="localhost:50051")  # two processes, 2 GB, as in Remotior
    out = rs.band_calc(
        '("nir" - "red") / ("nir" + "red")', "ndvi.tif",
        [["s2/b08.tif", "nir"], ["s2/b04.tif", "red"]],
    )
    assert out.check, out.grpc.message
    rs.close()

Paths are under the server's data roots. Where a Remotior parameter cannot mean on a
server what it means locally, `rsgrpc.client.signatures` says what it does instead.
"""

from __future__ import annotations

from rsgrpc.client.bandsets import Band, BandSet, BandSetCatalog
from rsgrpc.client.connection import connect
from rsgrpc.client.downloads import download_item
from rsgrpc.client.output import GrpcResult, OutputManager
from rsgrpc.client.session import Configurations, Session

__all__ = [
    "Band",
    "BandSet",
    "BandSetCatalog",
    "Configurations",
    "GrpcResult",
    "OutputManager",
    "Session",
    "connect",
    "download_item",
]
