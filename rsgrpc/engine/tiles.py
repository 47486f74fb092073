"""Tiles, halos and the tile planner that keeps a job inside its RAM budget."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from rsgrpc.engine.errors import ResourceExhaustedError

MIB = 1 << 20

# Largest tile edge the planner picks for local workers: bigger tiles gain nothing in
# speed and make progress coarse and the last tile long. On the band calc benchmark
# (DEFLATE, 2 workers) tiles of 1536 took 5.70 s at best and tiles of 2048
# 5.88 s, against an I/O floor of 4.60 to 4.96 s in the same runs.
LOCAL_TILE_EDGE = 1536
# The same on a Dask cluster, where each task costs its messages: the scheduler's, the
# server's and the worker's event loops spent about 25 ms of CPU a task between them on
# the 10980² NDVI of `benchmarks/bench_dask.py` (1.65 CPU s more than local workers for
# its 64 tiles of 1536). There, on 2 workers, tiles of 1536 took 3.65 s, of 2048 3.2 s,
# of 3072 3.0 s and of 4096 3.3 s (the last tiles long); the sieve 2.5 s with tiles of
# 1536 and 2.0 s with 3072.
CLUSTER_TILE_EDGE = 3072


@dataclass(frozen=True)
class Tile:
    """A rectangle of pixels: offsets and size, in raster rows and columns."""

    row: int
    col: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def slices(self) -> tuple[slice, slice]:
        """The tile as numpy slices of the raster."""
        return slice(self.row, self.row + self.height), slice(self.col, self.col + self.width)

    def with_halo(self, halo: int, shape: tuple[int, int]) -> tuple[Tile, tuple[slice, slice]]:
        """The block to read for a halo of `halo` pixels, clipped to a raster of
        `shape`, and where this tile lies inside that block."""
        if halo == 0:
            return self, (slice(0, self.height), slice(0, self.width))
        top = max(self.row - halo, 0)
        left = max(self.col - halo, 0)
        bottom = min(self.row + self.height + halo, shape[0])
        right = min(self.col + self.width + halo, shape[1])
        block = Tile(top, left, bottom - top, right - left)
        r, c = self.row - top, self.col - left
        return block, (slice(r, r + self.height), slice(c, c + self.width))


@dataclass(frozen=True)
class MemoryModel:
    """What one tile of a kernel costs, in bytes per pixel.

    `worker` covers what a worker holds while it computes a tile (input
    windows with their halo, masks, scratch, output); `result` is the output
    tile that travels back and waits in the coordinator to be written.
    """

    worker: float
    result: float
    halo: int = 0


@dataclass(frozen=True)
class TilePlan:
    """How a raster is cut, and what the job will hold at its peak."""

    shape: tuple[int, int]
    tile_height: int
    tile_width: int
    in_flight: int
    peak_bytes: int

    def tiles(self) -> Iterator[Tile]:
        rows, cols = self.shape
        for row in range(0, rows, self.tile_height):
            for col in range(0, cols, self.tile_width):
                yield Tile(
                    row, col, min(self.tile_height, rows - row), min(self.tile_width, cols - col)
                )

    @property
    def tile_count(self) -> int:
        rows, cols = self.shape
        return math.ceil(rows / self.tile_height) * math.ceil(cols / self.tile_width)


def _alignment(
    block_shapes: Sequence[tuple[int, int]],
    output_block: int,
    shape: tuple[int, int],
    max_tile_edge: int,
) -> tuple[int, int]:
    """The smallest tile edges aligned to the output's blocks, and to every source
    block where that keeps tiles small enough.

    Output blocks are encoded where their tile is computed, so tiles always
    cover whole output blocks; a source whose blocks do not fit in a tile of
    useful size (strips one row high, whole rows wide, or odd sizes) is read
    across its block edges instead.
    """
    unit = []
    for axis in (0, 1):
        step = output_block
        for block in block_shapes:
            aligned = math.lcm(step, max(1, block[axis]))
            if aligned <= max_tile_edge:
                step = aligned
        unit.append(min(step, shape[axis]))
    return unit[0], unit[1]


def plan_tiles(
    shape: tuple[int, int],
    block_shapes: Sequence[tuple[int, int]],
    model: MemoryModel,
    *,
    output_block: int,
    budget_bytes: int,
    workers: int,
    fixed_bytes: int = 0,
    held_bytes: int = 0,
    max_tile_edge: int = LOCAL_TILE_EDGE,
) -> TilePlan:
    """Choose the largest block-aligned tile whose job stays within `budget_bytes`:
    aligned to the output's square blocks of `output_block` pixels, and to the
    sources' `block_shapes` where it can be.

    The job holds, at its peak, `fixed_bytes` (the workers' own footprint and
    the writer's buffers), one tile with its halo in each worker, and up to
    `in_flight` finished tiles waiting for the writer: two per worker, or as
    few as one more than the workers (one queued while every worker computes)
    where that lets a larger tile fit, since fewer, larger tiles cost less
    per pixel. Tiles are no larger than needed to give every worker several
    tiles, so progress stays fine and the load balanced, and their edges no
    longer than `max_tile_edge` (the executor's: `LOCAL_TILE_EDGE` or
    `CLUSTER_TILE_EDGE`).

    `fixed_bytes` is what the memory model says the job holds whatever its
    tiles: whether the job fits at all, and the minimum budget named when it
    does not, depend on it and on the request alone, so the same request gets
    the same answer whatever ran before. `held_bytes`, what is measured held
    now, sizes the tiles instead where it is larger and a tile still fits
    beside it. A halo is counted only where it lies inside the raster.

    Raises ResourceExhaustedError naming the smallest budget that would work
    when even one block-aligned tile does not fit.
    """
    if held_bytes > fixed_bytes:
        try:
            return plan_tiles(
                shape,
                block_shapes,
                model,
                output_block=output_block,
                budget_bytes=budget_bytes,
                workers=workers,
                fixed_bytes=held_bytes,
                max_tile_edge=max_tile_edge,
            )
        except ResourceExhaustedError:
            pass  # the model decides, below
    rows, cols = shape
    unit_h, unit_w = _alignment(block_shapes, output_block, shape, max_tile_edge)
    fewest_in_flight = workers + 1

    def peak(tile_h: int, tile_w: int, in_flight: int) -> int:
        halo_h = min(tile_h + 2 * model.halo, rows)
        halo_w = min(tile_w + 2 * model.halo, cols)
        per_worker = model.worker * halo_h * halo_w
        waiting = model.result * tile_h * tile_w * in_flight
        return int(fixed_bytes + workers * per_worker + waiting)

    def most_in_flight(tile_h: int, tile_w: int) -> int | None:
        """The most tiles that may be in flight beside tiles of this size, or None."""
        for in_flight in range(2 * workers, fewest_in_flight - 1, -1):
            if peak(tile_h, tile_w, in_flight) <= budget_bytes:
                return in_flight
        return None

    # Enough tiles that each worker gets about four.
    target_tiles = 4 * workers
    best: tuple[int, int, int] | None = None
    k = 1
    while True:
        tile_h = min(unit_h * k, rows)
        tile_w = min(unit_w * k, cols)
        in_flight = most_in_flight(tile_h, tile_w)
        if best is not None and (
            in_flight is None
            or max(tile_h, tile_w) > max_tile_edge
            or math.ceil(rows / tile_h) * math.ceil(cols / tile_w) < target_tiles
        ):
            break
        if in_flight is None:
            need = peak(tile_h, tile_w, fewest_in_flight)
            raise ResourceExhaustedError(
                f"available_ram_mib {budget_bytes // MIB} is too small for one "
                f"{tile_h}x{tile_w} tile with {workers} workers; the minimum is "
                f"{math.ceil(need / MIB)} MiB",
                metadata={"minimum_ram_mib": str(math.ceil(need / MIB))},
            )
        best = (tile_h, tile_w, in_flight)
        if tile_h == rows and tile_w == cols:
            break
        k += 1
    tile_h, tile_w, in_flight = best
    return TilePlan(shape, tile_h, tile_w, in_flight, peak(tile_h, tile_w, in_flight))
