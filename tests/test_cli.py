"""The command line against a running server: band calc with a progress bar, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import rasterio

from tests.conftest import write_geotiff


def _rsgrpc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rsgrpc.cli", *args], capture_output=True, text=True, timeout=180
    )


def test_band_calc_command_writes_output_and_shows_progress(server):
    running, _ = server
    root = running.data_root.root
    data = np.arange(700 * 600, dtype=np.int32).reshape(700, 600) % 1000
    write_geotiff(root / "cli" / "x.tif", data, nodata=0)
    result = _rsgrpc(
        "band-calc",
        "--target",
        f"127.0.0.1:{running.port}",
        "--processes",
        "1",
        "--expression",
        '"x" * 2 + 1',
        "--input",
        "x=cli/x.tif",
        "--output",
        "cli/y.tif",
        "--dtype",
        "int32",
        "--nodata",
        "-1",
    )
    assert result.returncode == 0, result.stderr
    assert "cli/y.tif" in result.stdout
    assert "done" in result.stderr and "[####" in result.stderr
    with rasterio.open(root / "cli" / "y.tif") as ds:
        expected = np.where(data == 0, -1, data * 2 + 1)
        np.testing.assert_array_equal(ds.read(1), expected)


def test_band_calc_command_reports_a_bad_expression(server):
    running, _ = server
    result = _rsgrpc(
        "band-calc",
        "--target",
        f"127.0.0.1:{running.port}",
        "--processes",
        "1",
        "--expression",
        "x.real",
        "--input",
        "x=cli/x.tif",
        "--output",
        "cli/z.tif",
    )
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "attribute" in result.stderr


def test_health_command_exits_zero_when_serving(server):
    result = _rsgrpc("health", "--target", f"127.0.0.1:{server[0].port}")
    assert result.returncode == 0 and result.stdout.strip() == "SERVING"


def test_health_command_exits_one_when_nothing_listens():
    result = _rsgrpc("health", "--target", "127.0.0.1:9", "--timeout", "1")
    assert result.returncode == 1
