"""The tile planner: tiles cover whole output blocks whatever the sources' blocks."""

from __future__ import annotations

import pytest

from rsgrpc.engine.errors import ResourceExhaustedError
from rsgrpc.engine.executors import DaskExecutor, LocalProcessExecutor
from rsgrpc.engine.tiles import MemoryModel, plan_tiles

SHAPE = (10980, 10980)
MODEL = MemoryModel(worker=12, result=4)


def _plan(source_blocks, output_block=512, budget_mib=512, **options):
    return plan_tiles(
        SHAPE,
        source_blocks,
        MODEL,
        output_block=output_block,
        budget_bytes=budget_mib << 20,
        workers=2,
        fixed_bytes=300 << 20,
        **options,
    )


@pytest.mark.parametrize(
    "source_blocks",
    [[(512, 512)], [(256, 256)], [(1, 10980)], [(700, 700)], [(1024, 1024), (128, 10980)]],
    ids=["512", "256", "strips", "odd-700", "mixed"],
)
def test_tiles_cover_whole_output_blocks(source_blocks):
    plan = _plan(source_blocks)
    for tile in plan.tiles():
        assert tile.row % 512 == 0 and tile.col % 512 == 0
        assert tile.height % 512 == 0 or tile.row + tile.height == SHAPE[0]
        assert tile.width % 512 == 0 or tile.col + tile.width == SHAPE[1]


def test_tiles_follow_source_blocks_where_they_can():
    plan = _plan([(1024, 1024)], budget_mib=4096)
    assert plan.tile_height % 1024 == 0 and plan.tile_width % 1024 == 0


def test_a_smaller_output_block_gives_finer_tiles():
    plan = _plan([(64, 64)], output_block=64, budget_mib=305)
    assert plan.tile_height % 64 == 0 and plan.tile_height < 512


def test_fewer_tiles_wait_where_that_lets_a_larger_tile_fit():
    # 1536-pixel tiles: 300 MiB fixed, 2 x 27 MiB in the workers and 9 MiB for each
    # tile in flight: 390 MiB with four in flight, 381 MiB with three.
    roomy = _plan([(512, 512)], budget_mib=390)
    tight = _plan([(512, 512)], budget_mib=385)
    assert (roomy.tile_height, roomy.in_flight) == (1536, 4)
    assert (tight.tile_height, tight.in_flight) == (1536, 3)
    assert tight.peak_bytes <= 385 << 20


def test_the_minimum_named_is_a_budget_that_plans():
    with pytest.raises(ResourceExhaustedError) as raised:
        _plan([(512, 512)], budget_mib=305)
    minimum = int(raised.value.metadata["minimum_ram_mib"])
    plan = _plan([(512, 512)], budget_mib=minimum)
    assert plan.peak_bytes <= minimum << 20


def test_memory_held_beyond_the_model_shrinks_tiles_but_never_refuses():
    def plan(held_mib: int):
        return plan_tiles(
            SHAPE,
            [(512, 512)],
            MODEL,
            output_block=512,
            budget_bytes=390 << 20,
            workers=2,
            fixed_bytes=300 << 20,
            held_bytes=held_mib << 20,
        )

    assert plan(0).tile_height == 1536
    # 60 MiB more held than the model counts: smaller tiles fit beside it.
    shrunk = plan(360)
    assert shrunk.tile_height < 1536
    assert shrunk.peak_bytes <= 390 << 20
    # More held than the budget: the model alone decides, and the job still plans.
    assert plan(400) == plan(0)


def test_a_cluster_takes_larger_tiles_where_the_budget_allows():
    # A Dask task costs its messages on the scheduler, the server and the worker: fewer,
    # larger tiles; the budget still decides first.
    local = _plan([(512, 512)], budget_mib=4096, max_tile_edge=LocalProcessExecutor.max_tile_edge)
    cluster = _plan([(512, 512)], budget_mib=4096, max_tile_edge=DaskExecutor.max_tile_edge)
    assert (local.tile_height, local.tile_count) == (1536, 64)
    assert (cluster.tile_height, cluster.tile_count) == (3072, 16)
    tight = _plan([(512, 512)], budget_mib=390, max_tile_edge=DaskExecutor.max_tile_edge)
    assert tight.tile_height == 1536 and tight.peak_bytes <= 390 << 20
