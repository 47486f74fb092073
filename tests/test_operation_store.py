"""The server's operations: running ones count against the limit, finished ones are kept
up to a bound and then forgotten oldest first; a running one is never forgotten."""

from __future__ import annotations

import pytest

from rsgrpc.engine.errors import NotFoundError, ResourceExhaustedError
from rsgrpc.engine.operations import OperationStore


def _add(store: OperationStore):
    return store.add("sessions/s", "BandCalc", owner="me")


def test_running_operations_count_against_the_limit_and_finished_ones_do_not():
    store = OperationStore(max_running=2, max_kept=10)
    first, second = _add(store), _add(store)
    with pytest.raises(ResourceExhaustedError, match="runs 2 operations, its limit"):
        _add(store)
    first.finish(result=1)
    third = _add(store)
    with pytest.raises(ResourceExhaustedError):
        _add(store)
    second.finish(result=2)
    third.finish(result=3)
    _add(store)
    _add(store)


def test_the_oldest_finished_are_forgotten_past_the_bound_and_running_ones_kept():
    store = OperationStore(max_running=100, max_kept=5)
    running = _add(store)
    finished = []
    for _ in range(8):
        op = _add(store)
        op.finish(result=None)
        finished.append(op)
    later = _add(store)
    # 10 made, 5 kept: the running one, the newest, and the three newest finished.
    assert store.get(running.name) is running
    assert store.get(later.name) is later
    for op in finished[-3:]:
        assert store.get(op.name) is op
    for op in finished[:-3]:
        with pytest.raises(NotFoundError):
            store.get(op.name)
