"""rsgrpc: a gRPC service for remote-sensing raster tools and imagery download."""

__version__ = "0.1.0"
