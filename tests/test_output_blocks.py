"""An output's blocks fit it: a raster smaller than the profile's block gets blocks no
larger than itself (TIFF's multiple of 16), so a small job encodes its pixels rather than
a block of padding; a larger raster keeps the profile's blocks. Pixels are the same."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from rsgrpc.engine.raster_io import DEFAULT_PROFILE, OutputProfile
from rsgrpc.v1 import raster_pb2
from tests.conftest import watch_to_response, write_geotiff


@pytest.mark.parametrize(
    ("width", "height", "block"),
    [(1, 1, 16), (100, 70, 112), (256, 256, 256), (257, 3, 272), (512, 9, 512), (2000, 1, 512)],
)
def test_a_profile_fitted_to_an_output_takes_blocks_no_larger_than_it(width, height, block):
    assert DEFAULT_PROFILE.fitted_to(width, height).block_size == block
    assert DEFAULT_PROFILE.fitted_to(width, height).compression == DEFAULT_PROFILE.compression


def test_a_fitted_profile_never_grows_a_smaller_block():
    profile = OutputProfile("deflate", block_size=64)
    assert profile.fitted_to(1000, 1000) is profile
    assert profile.fitted_to(40, 20).block_size == 48


@pytest.mark.parametrize(("height", "width"), [(70, 100), (600, 530)])
def test_band_calc_and_sieve_outputs_have_fitted_blocks_and_the_same_pixels(
    server, session_name, raster_stub, height, width
):
    running, channel = server
    rng = np.random.default_rng(height)
    classes = rng.integers(1, 4, (height, width), dtype=np.uint8)
    root = running.data_root.root
    write_geotiff(root / "blocks" / f"c{height}.tif", classes)
    operation = raster_stub.BandCalc(
        raster_pb2.BandCalcRequest(
            session=session_name,
            expression='"c" * 2',
            inputs=[raster_pb2.RasterInput(name="c", path=f"blocks/c{height}.tif")],
            output_path=f"blocks/calc{height}.tif",
            output_data_type=raster_pb2.DATA_TYPE_INT16,
        )
    )
    watch_to_response(channel, operation, raster_pb2.BandCalcResponse)
    operation = raster_stub.Sieve(
        raster_pb2.SieveRequest(
            session=session_name,
            inputs=[raster_pb2.RasterBand(path=f"blocks/c{height}.tif", band=1)],
            size=1,
            output=raster_pb2.ToolOutput(path=f"blocks/sieve{height}.tif"),
        )
    )
    watch_to_response(channel, operation, raster_pb2.SieveResponse)
    expected_block = min(512, -(-max(height, width) // 16) * 16)
    with rasterio.open(root / "blocks" / f"calc{height}.tif") as ds:
        assert ds.block_shapes == [(expected_block, expected_block)]
        np.testing.assert_array_equal(ds.read(1), classes.astype(np.int16) * 2)
    with rasterio.open(root / "blocks" / f"sieve{height}.tif") as ds:
        assert ds.block_shapes == [(expected_block, expected_block)]
        np.testing.assert_array_equal(ds.read(1), classes)
