"""Checks shared by the tests of table tools run as jobs on a live server's session:
a job re-planned on tiles of a given edge, and a job cancelled once some tiles are done,
in its table pass or its raster pass, leaving no file behind."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from rsgrpc.engine.errors import CancelledError
from rsgrpc.engine.operations import Operation
from rsgrpc.engine.session import Session
from rsgrpc.engine.table_job import TableJob, run_table_job
from rsgrpc.engine.tiles import TilePlan


def retiled(job: TableJob, edge: int) -> TableJob:
    """`job` planned on square tiles of `edge` pixels."""
    plan = job.plan
    return dataclasses.replace(
        job, plan=TilePlan(plan.shape, edge, edge, plan.in_flight, plan.peak_bytes)
    )


def cancel_after_tiles(job: TableJob, session: Session, operation: Operation, after: int) -> int:
    """Run `job`, cancel it once `after` tiles are done, and return the tiles done when it
    stopped; it must stop with CancelledError."""

    def cancel_after_some_tiles() -> None:
        while operation.progress.tiles_done < after:
            threading.Event().wait(0.001)
        operation.cancel_event.set()

    canceller = threading.Thread(target=cancel_after_some_tiles, daemon=True)
    canceller.start()
    with pytest.raises(CancelledError):
        run_table_job(job, session, operation)
    canceller.join(10)
    return operation.progress.tiles_done


def assert_cancel_leaves_nothing(
    job: TableJob, session: Session, rpc: str, cancel_in: str, output: Path
) -> None:
    """A job with a raster cancelled in its "table pass" or its "raster pass" stops there
    and leaves nothing in the folder `output`."""
    operation = Operation(session.name, rpc, owner="anonymous")
    tiles = job.plan.tile_count
    after = 2 if cancel_in == "table pass" else tiles + 2
    done = cancel_after_tiles(job, session, operation, after)
    assert done < tiles if cancel_in == "table pass" else tiles < done < 2 * tiles
    assert not output.exists() or not any(output.iterdir())
