"""Sieve, dilation and erosion through the engine: any tiling, any process count,
the same output as the kernel run once on the whole raster (and, for sieve, GDAL's)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import rasterio
import rasterio.features
from rsgrpc_kernels import morphology
from rsgrpc_kernels.sieve import SIEVE_DTYPES, sieve_with_stats

from rsgrpc.engine.band_tool import BandInput, OutputTarget
from rsgrpc.engine.halo_job import HaloRequest, prepare_halo_job, run_halo_job
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.paths import DataRoot
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.session import ServerLimits, SessionRegistry, SessionSettings
from rsgrpc.engine.sieve import SIEVE_DTYPES as ENGINE_SIEVE_DTYPES
from rsgrpc.engine.sieve import SieveRequest, prepare_sieve, run_sieve
from rsgrpc.engine.tiles import TilePlan
from rsgrpc.tools.morphology import DILATION, EROSION, MorphologyParameters, check_parameters
from tests.conftest import write_geotiff

SHAPE = (1100, 700)  # tiles of 1024 still cut it in two
# Tiles cover whole output blocks: with blocks of 64, tiles of any multiple of 64.
PROFILE = OutputProfile("zstd", level=1, block_size=64)
TILE_EDGES = (64, 320, 1024)
NODATA = 255
MORPHOLOGY_TOOLS = {"dilation": DILATION, "erosion": EROSION}


def _classes(seed: int) -> np.ndarray:
    """Blobs of four classes with speckle, and a nodata area crossing tile seams."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 4, (SHAPE[0] // 50 + 1, SHAPE[1] // 50 + 1), dtype=np.uint8)
    classes = np.kron(coarse, np.ones((50, 50), np.uint8))[: SHAPE[0], : SHAPE[1]]
    speckle = rng.random(SHAPE) < 0.12
    classes[speckle] = rng.integers(0, 6, int(speckle.sum()), dtype=np.uint8)
    classes[230:300, 40:420] = NODATA
    return classes


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> DataRoot:
    root = DataRoot.at(tmp_path_factory.mktemp("data"))
    write_geotiff(root.root / "classes.tif", _classes(3), nodata=NODATA)
    surface = np.random.default_rng(4).normal(100, 20, SHAPE).astype(np.float32)
    surface[500:540, 600:700] = np.nan
    write_geotiff(root.root / "surface.tif", surface, nodata=np.nan)
    return root


@pytest.fixture(scope="module", params=[1, 2], ids=["1-process", "2-processes"])
def session(request, tmp_path_factory):
    registry = SessionRegistry(
        ServerLimits(process_count=2, ram_mib=4096, max_sessions=1, max_idle_timeout_s=3600),
        temp_root=tmp_path_factory.mktemp("temp"),
    )
    session = registry.create(
        SessionSettings(
            process_count=request.param, available_ram_mib=2048, log_level=logging.WARNING
        ),
        owner="anonymous",
    )
    yield session
    registry.close_all()


def _read(root: DataRoot, path: str) -> np.ndarray:
    with rasterio.open(root.root / path) as ds:
        return ds.read(1)


def _with_tiles(job, edge: int):
    plans = tuple(
        TilePlan(plan.shape, edge, edge, plan.in_flight, plan.peak_bytes) for plan in job.plans
    )
    return dataclasses.replace(job, plans=plans)


def test_engine_and_kernel_sieve_the_same_dtypes():
    assert {np.dtype(d) for d in ENGINE_SIEVE_DTYPES} == set(SIEVE_DTYPES)


def test_engine_halo_is_the_kernels(data_root):
    for tool, filters in (
        ("dilation", ("value_list", "grey", "closing")),
        ("erosion", ("opening",)),
    ):
        for name in filters:
            for size in (1, 3, 12):
                parameters = MorphologyParameters(tool, name, (), size, False)
                operation = "dilation" if name in ("value_list", "grey") else name
                assert parameters.halo == morphology.halo_width(operation, size)


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("edge", TILE_EDGES)
def test_sieve_any_tiling_equals_gdal(session, data_root, connectivity, edge):
    output = f"sieve/{session.executor.workers}-{connectivity}-{edge}.tif"
    request = SieveRequest(
        (BandInput("classes.tif"),), 12, connectivity, OutputTarget(output, overwrite=True)
    )
    job = _with_tiles(prepare_sieve(request, data_root, session, PROFILE), edge)
    operation = Operation(session.name, "Sieve", owner=session.owner)
    [result] = run_sieve(job, session, operation)

    classes = _read(data_root, "classes.tif")
    mask = classes != NODATA
    expected = rasterio.features.sieve(classes, 12, connectivity=connectivity, mask=mask)
    got = _read(data_root, output)
    np.testing.assert_array_equal(got, expected)
    _, stats = sieve_with_stats(classes, 12, connectivity=connectivity, mask=mask)
    assert (result.regions_changed, result.pixels_changed) == (
        stats.regions_changed,
        stats.pixels_changed,
    )
    assert result.pixels_changed == int(np.count_nonzero(got != classes)) > 0
    assert (
        operation.progress.tiles_done
        == operation.progress.tiles_total
        == 2 * job.plans[0].tile_count
    )


MORPHOLOGY_CASES = {
    "dilate-square-3": ("dilation", "value_list", (1, 3), 3, False, "classes.tif"),
    "dilate-circle-12": ("dilation", "value_list", (3, 1, 2), 12, True, "classes.tif"),
    "erode-square-3": ("erosion", "value_list", (0, 2), 3, False, "classes.tif"),
    "erode-plus-2": ("erosion", "value_list", (1,), 2, True, "classes.tif"),
    "grey-dilation": ("dilation", "grey", (), 2, True, "surface.tif"),
    "grey-closing": ("dilation", "closing", (), 3, False, "classes.tif"),
    "grey-opening": ("erosion", "opening", (), 2, True, "surface.tif"),
}


def _untiled(tool, name, values, size, circular, array, nodata):
    common = {"size": size, "circular": circular, "nodata": nodata}
    if name == "value_list":
        function = morphology.dilate if tool == "dilation" else morphology.erode
        return function(array, value_list=values, **common)
    operation = tool if name == "grey" else name
    return morphology.grey_filter(array, operation=operation, **common)


@pytest.mark.parametrize("case", list(MORPHOLOGY_CASES))
@pytest.mark.parametrize("edge", TILE_EDGES)
def test_morphology_any_tiling_equals_the_whole_raster(session, data_root, case, edge):
    tool, name, values, size, circular, source = MORPHOLOGY_CASES[case]
    output = f"morphology/{session.executor.workers}-{case}-{edge}.tif"
    request = HaloRequest(
        MORPHOLOGY_TOOLS[tool],
        check_parameters(MorphologyParameters(tool, name, values, size, circular)),
        (BandInput(source),),
        OutputTarget(output, overwrite=True),
    )
    job = _with_tiles(prepare_halo_job(request, data_root, session, PROFILE), edge)
    [result] = run_halo_job(job, session, Operation(session.name, tool, owner=session.owner))

    array = _read(data_root, source)
    nodata = None if array.dtype.kind == "f" else NODATA
    expected = _untiled(tool, name, values, size, circular, array, nodata)
    got = _read(data_root, output)
    np.testing.assert_array_equal(got, expected)
    changed = (got != array) & ~(
        np.isnan(got) & np.isnan(array) if got.dtype.kind == "f" else False
    )
    assert result.pixels_changed == int(np.count_nonzero(changed)) > 0
