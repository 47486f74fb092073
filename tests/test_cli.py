"""The command line against a running server: band calc with a progress bar, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import rasterio.features

from tests.conftest import make_config, serving, write_geotiff, write_speckled_classes
from tests.download.fake_sentinelhub import CLIENT_ID, CLIENT_SECRET, PROCESS_PATH, FakeSentinelHub


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
    classes = write_speckled_classes(
        root / "cli" / "lc.tif", seed=2, grid=(12, 10), block=50, classes=3, speckle=9, density=0.05
    )
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


@pytest.fixture(scope="module")
def download_server(tmp_path_factory):
    """A server with one deployment, a fake Sentinel Hub; yields it, the hub and a folder."""
    folder = tmp_path_factory.mktemp("cli-download")
    with FakeSentinelHub() as hub:
        deployments = folder / "deployments.json"
        deployments.write_text(
            json.dumps(
                {
                    "cache_dir": "cache",
                    "deployments": {
                        "cli-hub": {
                            "base_url": hub.base_url,
                            "token_url": hub.token_url,
                            "client_id": CLIENT_ID,
                            "client_secret": CLIENT_SECRET,
                            "retry": {"max_attempts": 1},
                        }
                    },
                }
            )
        )
        with serving(make_config(folder, deployments=str(deployments))) as (running, _):
            yield running, hub, folder


def _requests_file(folder, name: str, requests: list[dict]) -> str:
    path = folder / name
    path.write_text(json.dumps(requests))
    return str(path)


def test_download_command_saves_outputs_and_shows_progress(download_server):
    running, hub, folder = download_server
    requests = [
        {
            "uri": PROCESS_PATH,
            "body": {"id": f"cli-{i}", "format": "tiff"},
            "output_path": f"s2/{i}.tif",
        }
        for i in range(3)
    ]
    target = f"127.0.0.1:{running.port}"
    args = ["download", "--target", target, "--deployment", "cli-hub"]
    ok_file = _requests_file(folder, "ok.json", requests)
    result = _rsgrpc(*args, "--max-threads", "2", "--requests", ok_file)
    assert result.returncode == 0, result.stderr
    assert "[####" in result.stderr and "3/3" in result.stderr and "done" in result.stderr
    for i in range(3):
        saved = running.data_root.root / "s2" / f"{i}.tif"
        assert saved.read_bytes() == hub.sent[f"cli-{i}"]
        assert f"SUCCEEDED s2/{i}.tif: {saved.stat().st_size} bytes, 1 attempts" in result.stdout
    again = _rsgrpc(
        *args, "--overwrite", "--quiet", "--requests", _requests_file(folder, "ok.json", requests)
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("from the cache") == 3 and "[" not in again.stderr


def test_download_command_reports_failed_requests_and_bad_input(download_server):
    running, hub, folder = download_server
    hub.faults["cli-missing"] = ["404"]
    target = f"127.0.0.1:{running.port}"
    requests = [
        {
            "uri": PROCESS_PATH,
            "body": {"id": "cli-ok", "format": "tiff"},
            "output_path": "f/ok.tif",
        },
        {"uri": PROCESS_PATH, "body": {"id": "cli-missing"}, "output_path": "f/missing.tif"},
    ]
    args = ["download", "--target", target, "--quiet"]
    failed = _rsgrpc(
        *args, "--deployment", "cli-hub", "--requests", _requests_file(folder, "f.json", requests)
    )
    assert failed.returncode == 1
    assert "SUCCEEDED f/ok.tif" in failed.stdout
    assert "FAILED f/missing.tif: NOT_FOUND: the server answered 404: injected 404" in failed.stdout
    assert not (running.data_root.root / "f" / "missing.tif").exists()
    unknown = _rsgrpc(
        *args, "--deployment", "nope", "--requests", _requests_file(folder, "f.json", requests)
    )
    assert unknown.returncode == 1
    assert "download failed: NOT_FOUND: deployment 'nope' is not configured" in unknown.stderr
    outside = [{"uri": PROCESS_PATH, "output_path": "../x.tif"}]
    denied = _rsgrpc(
        *args, "--deployment", "cli-hub", "--requests", _requests_file(folder, "o.json", outside)
    )
    assert denied.returncode == 1 and "PERMISSION_DENIED" in denied.stderr
    (folder / "bad.json").write_text('{"uri": "not a list"}')
    bad = _rsgrpc(*args, "--deployment", "cli-hub", "--requests", str(folder / "bad.json"))
    assert bad.returncode != 0 and "must hold a JSON list" in bad.stderr


def test_the_module_workers_load_as_main_imports_neither_grpc_nor_the_client():
    # Spawned workers import the server's main module; it must stay light.
    code = (
        "import sys, rsgrpc.cli; "
        "heavy = [m for m in ('grpc', 'google.protobuf', 'rsgrpc.client', 'numba') "
        "if m in sys.modules]; print(heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
