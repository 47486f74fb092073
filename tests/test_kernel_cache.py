"""Kernels compiled ahead: `rsgrpc warm` fills a cache that a new process loads without
compiling; an empty cache still gives the same pixels; the server's workers use its cache.

Warming every signature takes minutes, so these tests warm one signature of each tool (the
`--only` selection of `rsgrpc warm`), enough to show each tool's kernels load from the cache.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsgrpc.engine.kernel_cache import MANIFEST_NAME, stale_reason, write_manifest
from rsgrpc.v1 import session_pb2, session_pb2_grpc
from tests.conftest import make_config, serving

# One signature of each tool: the sieve's three phases, dilation, erosion, a grey filter that
# runs both the max and the min filter, and band calc with every scalar operation and aggregation
# (as a block program, and through the fused kernel's fixed operations).
SUBSET = (
    "sieve uint8 connectivity 4 masked",
    "dilation uint8 square nodata 3 2 values",
    "erosion uint8 square nodata 3",
    "grey uint8 closing square nodata 3",
    "band-calc float32 every operation, program",
    "band-calc float32 every operation, fused",
)

# Runs the subset's cases in a new process and reports each kernel's cache statistics and a
# digest of each case's output pixels.
_RUN_CASES = """
import hashlib, json, sys
from rsgrpc_kernels.warm import fixed_kernels, warm_cases
names = json.loads(sys.argv[1])
digests = {}
for case in warm_cases():
    if case.name in names:
        out = case.run()
        digests[case.name] = [out.dtype.str, out.shape, hashlib.sha256(out.tobytes()).hexdigest()]
stats = {
    name: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values()), len(k.overloads)]
    for name, k in fixed_kernels().items()
}
print(json.dumps({"digests": digests, "stats": stats}))
"""


# Evaluates expressions no warm case uses, on inputs of several dtypes, as a job does; reports
# what numba compiled (its compile counter) and how many fused kernels were built.
_NEW_EXPRESSIONS = """
import json
import numpy as np
from rsgrpc_kernels import bandcalc
from rsgrpc_kernels.expression import parse_expression
from rsgrpc_kernels.warm import fixed_kernels
a = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
b = np.flipud(a).astype(np.float64)
for text in ["(a - b) / (a + b)", "where(a > 100, sqrt(a * b), median(a, b, 7)) * 2.5"]:
    e = parse_expression(text, ["a", "b"])
    bandcalc.evaluate(e, [a, b], [0, None], output_dtype="float32")
misses = {n: sum(k.stats.cache_misses.values()) for n, k in fixed_kernels().items()}
print(json.dumps({"misses": misses, "fused": bandcalc.kernel_cache_info()["size"]}))
"""


def _warm(cache: Path, *only: str) -> str:
    selection = [arg for name in only for arg in ("--only", name)]
    result = subprocess.run(
        [sys.executable, "-m", "rsgrpc.cli", "warm", "--kernel-cache-dir", str(cache), *selection],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _run_cases(cache: Path, names: tuple[str, ...] = SUBSET) -> dict:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", _RUN_CASES, json.dumps(names)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def warmed(tmp_path_factory) -> tuple[Path, str]:
    cache = tmp_path_factory.mktemp("kernels")
    return cache, _warm(cache, *SUBSET)


def test_warm_compiles_each_selected_tool_into_the_cache(warmed):
    cache, printed = warmed
    tools = {line.split()[0]: line for line in printed.splitlines()[:-1]}
    assert set(tools) == {"sieve", "dilation", "erosion", "grey", "band-calc"}
    assert all(" 0 kernels compiled" not in line for line in tools.values()), printed
    assert list(cache.rglob("*.nbi")) and list(cache.rglob("*.nbc"))
    # A selection is not a full warm: the server would still call the cache stale.
    assert not (cache / MANIFEST_NAME).exists()


def test_a_second_warm_loads_and_compiles_nothing(warmed):
    cache, _ = warmed
    printed = _warm(cache, *SUBSET)
    lines = printed.splitlines()[:-1]
    assert len(lines) == 5
    assert all(" 0 kernels compiled" in line for line in lines), printed


def test_a_new_process_loads_every_kernel_from_a_warmed_cache(warmed):
    cache, _ = warmed
    report = _run_cases(cache)
    assert set(report["digests"]) == set(SUBSET)
    stats = report["stats"]
    misses = {name: s for name, s in stats.items() if s[1]}
    assert misses == {}, f"compiled instead of loaded: {misses}"
    # Every kernel the cases ran came from the cache, one load per signature.
    assert sum(hits for hits, _, _ in stats.values()) > 0
    assert {name: s for name, s in stats.items() if s[0] != s[2]} == {}


def test_a_new_expression_compiles_nothing_in_a_process_started_after_warm(warmed):
    cache, _ = warmed
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [sys.executable, "-c", _NEW_EXPRESSIONS],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {name: m for name, m in report["misses"].items() if m} == {}
    assert report["fused"] == 0


# Compiling takes most of a minute a case: two cases of kinds apart (a labelling and a
# neighbourhood kernel) stand for the subset.
EMPTY_CACHE_CASES = SUBSET[:1] + SUBSET[2:3]


def test_an_empty_cache_compiles_and_gives_the_same_pixels(warmed, tmp_path):
    cache, _ = warmed
    loaded = _run_cases(cache, EMPTY_CACHE_CASES)
    compiled = _run_cases(tmp_path / "empty", EMPTY_CACHE_CASES)
    assert set(compiled["digests"]) == set(EMPTY_CACHE_CASES)
    assert sum(misses for _, misses, _ in compiled["stats"].values()) > 0
    assert compiled["digests"] == loaded["digests"]


def test_a_cache_is_stale_unless_warmed_for_this_numba_python_cpu_and_kernels(tmp_path):
    assert stale_reason(tmp_path) == "`rsgrpc warm` has not filled it"
    write_manifest(tmp_path, cases=1)
    assert stale_reason(tmp_path) is None
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    manifest["fingerprint"]["numba"] = "0.1"
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert stale_reason(tmp_path) == "it was warmed for another numba"


def _worker_cache_dir() -> tuple[str, str]:
    import numba

    return os.environ["NUMBA_CACHE_DIR"], numba.config.CACHE_DIR


def test_the_servers_workers_use_its_kernel_cache_dir(tmp_path, caplog):
    cache = tmp_path / "kernels"
    config = make_config(tmp_path, kernel_cache_dir=cache)
    with (
        caplog.at_level(logging.INFO, "rsgrpc.engine.kernel_cache"),
        serving(config) as (running, channel),
    ):
        session = session_pb2_grpc.SessionServiceStub(channel).CreateSession(
            session_pb2.CreateSessionRequest(
                session=session_pb2.Session(process_count=1, available_ram_mib=512)
            ),
            timeout=60,
        )
        executor = running.registry.get(session.name).executor
        reported = executor.submit(_worker_cache_dir).result(timeout=60)
    assert reported == (str(cache.resolve()), str(cache.resolve()))
    stale = [r for r in caplog.records if "empty or stale" in r.getMessage()]
    assert len(stale) == 1 and str(cache.resolve()) in stale[0].getMessage()


def _loaded_at_start() -> dict:
    """Runs in a new worker, before any task of a tool: what each fixed kernel holds."""
    from rsgrpc_kernels.warm import fixed_kernels

    return {
        name: [len(k.overloads), sum(k.stats.cache_misses.values())]
        for name, k in fixed_kernels().items()
    }


def _held_by_a_new_worker(cache: Path, monkeypatch) -> dict:
    from rsgrpc.engine.executors import LocalProcessExecutor

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))  # what the server sets for its workers
    executor = LocalProcessExecutor(1, threads_per_process=1)
    try:
        return executor.submit(_loaded_at_start).result(timeout=120)
    finally:
        executor.shutdown()


def test_a_worker_loads_every_cached_kernel_as_it_starts_and_compiles_none(
    warmed, tmp_path, monkeypatch
):
    cache, _ = warmed
    full = tmp_path / "kernels"
    shutil.copytree(cache, full)
    write_manifest(full, len(SUBSET))  # as a full `rsgrpc warm` records it
    held = _held_by_a_new_worker(full, monkeypatch)
    assert {name: s for name, s in held.items() if s[1]} == {}
    # Each tool of the warmed subset has kernels loaded before its first call.
    loaded = {name.split(".")[0] for name, (overloads, _) in held.items() if overloads}
    assert {"sieve", "morphology", "block_program", "scalar_ops", "row_statistics"} <= loaded


def test_a_worker_on_a_cache_not_warmed_for_this_machine_loads_nothing_ahead(warmed, monkeypatch):
    cache, _ = warmed  # a selection: not a full warm, so stale for the server
    held = _held_by_a_new_worker(cache, monkeypatch)
    assert {name: s for name, s in held.items() if s[0] or s[1]} == {}
