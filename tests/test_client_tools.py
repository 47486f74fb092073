"""The Python client's Remotior tools against a live server: band_calc, band_sieve,
band_dilation and band_erosion called as a Remotior script calls them."""

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
        assert sieved.check, sieved.grpc
        assert sieved.extra is None
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
        assert dilated.check, dilated.grpc
        with rasterio.open(root / dilated.path) as ds:
            expected = morphology.dilate(classes, value_list=[7], size=2, circular=True, nodata=0)
            np.testing.assert_array_equal(ds.read(1), expected)

        eroded = rs.band_erosion(
            input_bands="rs/lc.tif", value_list=[7], size=1, output_path="rs/eroded.tif"
        )
        assert eroded.check, eroded.grpc
        assert eroded.grpc.response.outputs[0].pixels_changed == np.count_nonzero(
            classes == 7
        ) - np.count_nonzero(morphology.erode(classes, value_list=[7], size=1, nodata=0) == 7)

        refused = rs.band_erosion(
            input_bands="rs/lc.tif", value_list=[], size=1, output_path="rs/never.tif"
        )
        assert not refused.check
        assert refused.grpc.code == "INVALID_ARGUMENT"
        assert "value_list is empty" in refused.extra["message"]
    finally:
        rs.close()


def test_band_calc_takes_path_name_pairs_and_gdal_type_names(server):
    running, channel = server
    root = running.data_root.root
    red = np.arange(60 * 80, dtype=np.uint16).reshape(60, 80) % 500 + 1
    nir = red[::-1].copy() * 2
    write_geotiff(root / "rs" / "red.tif", red, nodata=0)
    write_geotiff(root / "rs" / "nir.tif", nir, nodata=0)

    with Session(1, 1, channel=channel) as rs:
        out = rs.band_calc(
            '"nir" - "red"',
            "rs/diff.tif",
            [["rs/nir.tif", "nir"], ["rs/red.tif", "red"]],
            output_datatype="Int32",
            output_nodata=-99999,
        )
        assert out.check, out.grpc
        assert (out.path, out.paths, out.extra) == ("rs/diff.tif", ["rs/diff.tif"], None)
        assert out.grpc.response.statistics.valid_pixel_count == red.size
        with rasterio.open(root / "rs" / "diff.tif") as ds:
            assert ds.dtypes[0] == "int32"
            np.testing.assert_array_equal(ds.read(1), nir.astype(np.int32) - red)

        named = rs.band_calc(
            '"a" * 2',
            "rs/double.img",
            ["rs/red.tif"],
            ["a"],
            output_datatype="uint16",
        )
        assert named.check, named.grpc
        assert named.path == "rs/double.tif"
        with rasterio.open(root / named.path) as ds:
            assert ds.dtypes[0] == "uint16"

        unknown = rs.band_calc('"a"', "rs/x.tif", [["rs/red.tif", "a"]], output_datatype="CInt16")
        assert not unknown.check and "CInt16" in unknown.extra["message"]


def test_a_list_of_output_paths_gives_each_input_its_own(server):
    running, channel = server
    root = running.data_root.root
    classes = write_speckled_classes(
        root / "rs" / "list.tif", seed=3, grid=(6, 6), block=20, classes=3, speckle=5, density=0.1
    )
    write_geotiff(root / "rs" / "list2.tif", classes[::-1].copy(), nodata=0)
    with Session(1, 1, channel=channel) as rs:
        out = rs.band_sieve(
            ["rs/list.tif", "rs/list2.tif"], 3, ["rs/listed/first.tif", "rs/listed/second"]
        )
        assert out.check, out.grpc
        assert out.paths == ["rs/listed/first.tif", "rs/listed/second.tif"]
        assert [o.input.path for o in out.grpc.response.outputs] == ["rs/list.tif", "rs/list2.tif"]
        with rasterio.open(root / "rs" / "listed" / "second.tif") as ds:
            expected = rasterio.features.sieve(
                classes[::-1], 3, connectivity=4, mask=classes[::-1] != 0
            )
            np.testing.assert_array_equal(ds.read(1), expected)

        mismatched = rs.band_sieve(["rs/list.tif", "rs/list2.tif"], 3, ["rs/listed/one.tif"])
        assert not mismatched.check and "2 input bands" in mismatched.extra["message"]
