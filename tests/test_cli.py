"""The command line against a running server: band calc with a progress bar, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import rasterio
import rasterio.features

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


def test_sieve_dilate_and_erode_commands_write_their_outputs(server):
    running, _ = server
    root = running.data_root.root
    rng = np.random.default_rng(2)
    classes = np.kron(rng.integers(1, 4, (12, 10), dtype=np.uint8), np.ones((50, 50), np.uint8))
    classes[rng.random(classes.shape) < 0.05] = 9
    write_geotiff(root / "cli" / "lc.tif", classes, nodata=0)
    target = ["--target", f"127.0.0.1:{running.port}", "--processes", "1"]
    sieve = _rsgrpc("sieve", *target, "--input", "cli/lc.tif", "--size", "4", "--output", "cli/s")
    assert sieve.returncode == 0, sieve.stderr
    assert "cli/s/lc.tif:" in sieve.stdout and "regions" in sieve.stdout
    assert "[####" in sieve.stderr
    with rasterio.open(root / "cli" / "s" / "lc.tif") as ds:
        expected = rasterio.features.sieve(classes, 4, connectivity=4, mask=classes != 0)
        np.testing.assert_array_equal(ds.read(1), expected)
    for command in ("dilate", "erode"):
        result = _rsgrpc(
            command,
            *target,
            "--input",
            "cli/lc.tif:1",
            "--value",
            "9",
            "--size",
            "1",
            "--circular",
            "--output",
            f"cli/{command}.tif",
        )
        assert result.returncode == 0, result.stderr
        assert f"cli/{command}.tif:" in result.stdout and "pixels changed" in result.stdout
    with rasterio.open(root / "cli" / "erode.tif") as ds:
        assert np.count_nonzero(ds.read(1) == 9) < np.count_nonzero(classes == 9)


def test_tool_command_reports_bad_parameters(server):
    running, _ = server
    result = _rsgrpc(
        "dilate",
        "--target",
        f"127.0.0.1:{running.port}",
        "--quiet",
        "--input",
        "cli/lc.tif",
        "--size",
        "2",
        "--output",
        "cli/never.tif",
    )
    assert result.returncode == 1
    assert "dilate failed: INVALID_ARGUMENT: value_list is empty" in result.stderr
    assert not (running.data_root.root / "cli" / "never.tif").exists()
