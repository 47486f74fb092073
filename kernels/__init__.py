"""Numba kernels for rsgrpc's raster tools: numpy in, numpy out, no I/O."""
