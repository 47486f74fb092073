"""The Python client's Remotior-named tools: band_sieve, band_dilation, band_erosion."""

from __future__ import annotations

import numpy as np
import rasterio
import rasterio.features
from rsgrpc_kernels import morphology

from rsgrpc.client import Session
from tests.conftest import write_geotiff, write_speckled_classes


def test_remotior_style_script_runs_the_three_tools(server):
    running, channel = server
    root = running.data_root.root
    classes = write_speckled_classes(
        root / "rs" / "lc.tif", seed=8, grid=(10, 12), block=40, classes=4, speckle=7, density=0.08
    )
    write_geotiff(root / "rs" / "lc2.tif", classes[::-1].copy(), nodata=0)

    rs = Session(n_processes=2, available_ram=1024, channel=channel)
    try:
        sieved = rs.band_sieve(
            input_bands=["rs/lc.tif", "rs/lc2.tif"],
            size=6,
            output_path="rs/out",
            connected=True,
            prefix="sieve_",
        )
        assert sieved.check, sieved.extra
        assert sieved.paths == ["rs/out/sieve_lc.tif", "rs/out/sieve_lc2.tif"]
        assert sieved.path == sieved.paths[0]
        with rasterio.open(root / sieved.path) as ds:
            expected = rasterio.features.sieve(classes, 6, connectivity=8, mask=classes != 0)
            np.testing.assert_array_equal(ds.read(1), expected)

        dilated = rs.band_dilation(
            input_bands=["rs/lc.tif"],
            value_list=[7],
            size=2,
            output_path="rs/dilated.tif",
            circular_structure=True,
        )
        assert dilated.check, dilated.extra
        with rasterio.open(root / dilated.path) as ds:
            expected = morphology.dilate(classes, value_list=[7], size=2, circular=True, nodata=0)
            np.testing.assert_array_equal(ds.read(1), expected)

        eroded = rs.band_erosion(
            input_bands="rs/lc.tif", value_list=[7], size=1, output_path="rs/eroded.tif"
        )
        assert eroded.check, eroded.extra
        assert eroded.extra["response"].outputs[0].pixels_changed == np.count_nonzero(
            classes == 7
        ) - np.count_nonzero(morphology.erode(classes, value_list=[7], size=1, nodata=0) == 7)

        refused = rs.band_erosion(
            input_bands="rs/lc.tif", value_list=[], size=1, output_path="rs/never.tif"
        )
        assert not refused.check
        assert refused.extra["code"] == "INVALID_ARGUMENT"
        assert "value_list is empty" in refused.extra["error"]
    finally:
        rs.close()
