"""A script's own folders mapped to the server's: paths go out in the server's terms and
come back in the script's."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from rsgrpc.client import Session
from rsgrpc.client.path_map import PathMap
from tests.conftest import write_geotiff


def test_folders_match_by_whole_components_the_longest_first():
    paths = PathMap({"/mnt/gis": "/data", "/mnt/gis/s2": "/sentinel", "/": "/srv/all"})
    assert paths.to_server("/mnt/gis/a.tif") == "/data/a.tif"
    assert paths.to_server("/mnt/gis") == "/data"
    assert paths.to_server("/mnt/gis/s2/B04.tif") == "/sentinel/B04.tif"
    assert paths.to_server("/mnt/gis2/a.tif") == "/srv/all/mnt/gis2/a.tif"
    assert paths.to_client("/sentinel/B04.tif") == "/mnt/gis/s2/B04.tif"
    assert paths.to_client("/elsewhere/x.tif") == "/elsewhere/x.tif"
    relative = PathMap({"/home/me/project": "project"})
    assert relative.to_server("/home/me/project/ndvi.tif") == "project/ndvi.tif"
    assert relative.to_client("project/ndvi.tif") == "/home/me/project/ndvi.tif"
    assert relative.to_server("ndvi.tif") == "ndvi.tif"
    assert relative.paths_to_server([["/home/me/project/b8.tif", "nir"], ("/x.tif", 2)]) == [
        ["project/b8.tif", "nir"],
        ("/x.tif", 2),
    ]
    bucket = PathMap({"/mnt/gis/": "s3://bucket/team//gis/"})  # a root in object storage
    assert bucket.to_server("/mnt/gis/s2/B04.tif") == "s3://bucket/team/gis/s2/B04.tif"
    assert bucket.to_client("s3://bucket/team/gis/ndvi.tif") == "/mnt/gis/ndvi.tif"
    assert not PathMap()
    for bad in ({"relative": "/data"}, {"/mnt": ""}):
        with pytest.raises(ValueError):
            PathMap(bad)


def test_the_environment_gives_the_map(monkeypatch):
    monkeypatch.setenv("RSGRPC_PATH_MAP", " /mnt/gis=/data ; /home/me=/scratch;")
    paths = PathMap.from_environment()
    assert paths.to_server("/home/me/x.tif") == "/scratch/x.tif"
    assert paths.to_server("/mnt/gis/y.tif") == "/data/y.tif"
    monkeypatch.setenv("RSGRPC_PATH_MAP", "/mnt/gis:/data")
    with pytest.raises(ValueError, match="client=server pairs"):
        PathMap.from_environment()


@pytest.mark.parametrize("given", ["argument", "environment"])
def test_a_script_with_its_own_absolute_paths_runs_against_the_server(server, given, monkeypatch):
    running, channel = server
    root = running.data_root.root
    nir = np.arange(64, dtype=np.uint16).reshape(8, 8) + 10
    red = np.full((8, 8), 7, np.uint16)
    write_geotiff(root / "mapped" / "b8.tif", nir)
    write_geotiff(root / "mapped" / "b4.tif", red)
    client_folder = "/home/analyst/project"
    options = {}
    if given == "argument":
        options["path_map"] = {client_folder: str(root / "mapped")}
    else:
        monkeypatch.setenv("RSGRPC_PATH_MAP", f"{client_folder}={root / 'mapped'}")
    rs = Session(1, 1024, channel=channel, **options)
    try:
        out = rs.band_calc(
            '"nir" - "red"',
            f"{client_folder}/out/diff_{given}.tif",
            [[f"{client_folder}/b8.tif", "nir"], [f"{client_folder}/b4.tif", "red"]],
        )
        assert out.check, out.grpc
        assert out.path == f"{client_folder}/out/diff_{given}.tif"
        with rasterio.open(root / "mapped" / "out" / f"diff_{given}.tif") as ds:
            np.testing.assert_array_equal(ds.read(1), (nir - red).astype(np.float32))
        sieved = rs.band_sieve([f"{client_folder}/b8.tif"], 2, f"{client_folder}/sieved")
        assert sieved.check, sieved.grpc
        assert sieved.paths == [f"{client_folder}/sieved/b8.tif"]
        assert (root / "mapped" / "sieved" / "b8.tif").is_file()
    finally:
        rs.close()
