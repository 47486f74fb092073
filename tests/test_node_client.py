"""A Node.js client (@grpc/grpc-js, protos loaded at run time) runs NDVI through the server.

Needs `node` and the client's packages: `npm ci --prefix tests/node`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import write_geotiff

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "band_calc.mjs"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
    pytest.mark.skipif(
        not (NODE_DIR / "node_modules").is_dir(),
        reason="tests/node/node_modules is missing; run `npm ci --prefix tests/node`",
    ),
]


def _run_client(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NODE, str(SCRIPT), "--target", f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=NODE_DIR,
    )


@pytest.fixture(scope="module")
def red_nir(server):
    running, _ = server
    rng = np.random.default_rng(11)
    shape = (600, 700)  # more than one 256-pixel block each way
    red = rng.integers(0, 3000, shape, dtype=np.uint16)
    nir = rng.integers(0, 6000, shape, dtype=np.uint16)
    red[:20, :] = 0
    nir[300:340, 200:260] = 0
    red[500:505, 10:15] = nir[500:505, 10:15] = 0
    root = running.data_root.root
    write_geotiff(root / "node" / "red.tif", red, nodata=0)
    write_geotiff(root / "node" / "nir.tif", nir, nodata=0)
    return red, nir


def test_node_client_ndvi_equals_numpy_reference(server, red_nir):
    running, _ = server
    red, nir = red_nir
    result = _run_client(
        running.port,
        "--nir",
        "node/nir.tif",
        "--red",
        "node/red.tif",
        "--output",
        "node/ndvi.tif",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["done"] is True
    assert summary["error"] is None
    assert summary["stage"] == "STAGE_DONE"
    assert summary["tiles_total"] >= 1
    assert summary["tiles_done"] == summary["tiles_total"]
    assert summary["updates"] >= 1
    assert summary["output_path"] == "node/ndvi.tif"
    assert summary["operation"].startswith("operations/")
    # The client closed its session.
    assert summary["session"] not in [s.name for s in running.registry.list()]

    r = red.astype(np.float64)
    n = nir.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ndvi = (n - r) / (n + r)
    masked = (red == 0) | (nir == 0) | ~np.isfinite(ndvi)
    expected = np.where(masked, -32768, ndvi.astype(np.float32)).astype(np.float32)
    with rasterio.open(running.data_root.root / "node" / "ndvi.tif") as ds:
        assert ds.dtypes[0] == "float32"
        assert ds.nodata == -32768
        got = ds.read(1)
    np.testing.assert_array_equal(got, expected)
    assert summary["statistics"]["valid_pixel_count"] == int((~masked).sum())
    assert summary["statistics"]["nodata_pixel_count"] == int(masked.sum())


def test_node_client_exits_non_zero_on_a_failed_call(server, red_nir):
    running, _ = server
    result = _run_client(
        running.port,
        "--nir",
        "node/missing.tif",
        "--red",
        "node/red.tif",
        "--output",
        "node/never.tif",
    )
    assert result.returncode != 0
    assert "BandCalc: NOT_FOUND" in result.stderr, result.stderr
    assert not (running.data_root.root / "node" / "never.tif").exists()
    # The session it opened is closed even though the band calc was refused.
    assert running.registry.list() == []
