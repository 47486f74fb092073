"""Fused band-calc kernels compiled in the background, stored on disk, loaded by other processes."""

import json
import os
import subprocess
import sys

import pytest
from rsgrpc_kernels.fused_store import BackgroundCompiler

# Evaluates one expression in a new process on a given numba cache folder: twice with the
# background compiler on (compiling once an expression has run on two tiles of 40 x 50),
# waiting for the fused kernel if asked; reports what ran and whether numba compiled the
# fused kernel or loaded it.
_SCRIPT = """
import json, sys, time
import numpy as np
from rsgrpc_kernels import bandcalc
from rsgrpc_kernels.expression import parse_expression
text, wait = sys.argv[1], sys.argv[2] == "wait"
bandcalc.compile_in_background(after_pixels=2 * 40 * 50)
e = parse_expression(text, ["a", "b"])
a = np.arange(40 * 50, dtype=np.uint16).reshape(40, 50)
b = np.flipud(a).astype(np.float32)
first, _, _ = bandcalc.evaluate(e, [a, b], [0, None])
reference, _, _ = bandcalc.evaluate(e, [a, b], [0, None], method="program")
deadline = time.monotonic() + 120
while wait and bandcalc.kernel_cache_info()["size"] == 0 and time.monotonic() < deadline:
    bandcalc.evaluate(e, [a, b], [0, None])
    time.sleep(0.05)
fused = bandcalc._KERNELS.get(next(iter(bandcalc._KERNELS._data), None))
print(json.dumps({
    "fused": bandcalc.kernel_cache_info()["size"],
    "hits": sum(fused.run.stats.cache_hits.values()) if fused else 0,
    "misses": sum(fused.run.stats.cache_misses.values()) if fused else 0,
    "same": bool(np.array_equal(first, reference)),
}))
"""


def _run(cache, text: str, wait: bool) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, text, "wait" if wait else "once"],
        capture_output=True,
        text=True,
        env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.timeout(600)
def test_an_expression_seen_again_is_compiled_in_the_background_stored_and_loaded_elsewhere(
    tmp_path,
):
    text = "(a - b) / (a + b) * 3.25 + sqrt(a)"
    compiled = _run(tmp_path, text, wait=True)
    # Seen a second time, compiled by the background thread and stored. The kernel this
    # process keeps is that one (a miss: compiled), or, when a band calc looked on disk
    # between the store and the keep (a slow machine widens that moment), the same kernel
    # loaded from there (a hit): both are the one compile, nowhere else to load it from.
    assert compiled["fused"] == 1 and compiled["same"]
    assert compiled["hits"] + compiled["misses"] == 1
    # Another process finds it stored: its first call runs it, loaded, not compiled.
    loaded = _run(tmp_path, text, wait=False)
    assert loaded == {"fused": 1, "hits": 1, "misses": 0, "same": True}
    # Another expression is not stored: it runs as a program.
    other = _run(tmp_path, "a * 7 - b", wait=False)
    assert other["fused"] == 0 and other["same"]


def test_an_expression_is_compiled_only_once_it_has_run_again_on_enough_pixels():
    compiler = BackgroundCompiler()
    compiled = []
    compiler.start(idle=lambda: False, after_pixels=1000)  # idle never: nothing runs

    def seen(key, pixels):
        compiler.seen(key, pixels, lambda: compiled.append(key))
        return key in compiler._pending

    # Small tiles, again and again: queued only once 1000 pixels have run.
    assert [seen("small", 300) for _ in range(4)] == [False, False, False, True]
    # One large tile is not enough: an expression is compiled only when seen again.
    assert seen("large", 5000) is False
    assert seen("large", 1) is True
    assert compiled == []
