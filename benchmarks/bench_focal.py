"""Focal statistics (band_neighbor_pixels' kernel) against scipy.ndimage, in memory.

    python benchmarks/bench_focal.py [--size 5000] [--radii 1 3 7] [--repeats 2]

Input: a --size x --size uint16 raster (5000 by default) of the harness' smooth scene
scaled to reflectance-like values 200..12000, plus per-pixel noise of +-255 from an
integer hash of (row, col), so that windows hold many distinct values; no nodata, so
that scipy, which knows none, computes the same thing away from the edges.
Deterministic, no random generator.

For each radius r (window side 2r+1, square), each statistic is timed with ours,
``rsgrpc_kernels.focal.focal_statistic`` on the whole raster as one tile, and with the
scipy.ndimage call a user would make:

- Mean: ours to float32; scipy ``uniform_filter`` of the float32 raster (separable
  running sums);
- Median: ours to uint16; scipy ``median_filter(size=2r+1)`` (Remotior's call);
- Percentile 90: ours; scipy ``percentile_filter`` (Remotior's call), and
  ``generic_filter(np.percentile)`` on a 200 x 200 crop, its time scaled to the raster
  (it calls Python for every pixel);
- Max: ours (morphology's grey filter); scipy ``maximum_filter``.

Each run is in a fresh interpreter (one a run) after a warm-up on a small crop; its peak
RSS is reset after the raster is made, so "above input" is what the run itself added at
its peak (its output included); times are the best of --repeats (runs longer than 20 s are not
repeated). Pixels are checked against scipy's inside the raster's edges (exact for the
median, percentile and max; within float32 rounding for the mean). Nothing is asserted:
the script prints seconds, peak memory above the loaded input, ratios, the machine and
its load.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MIB,
    benchmark_parser,
    machine,
    machine_load,
    peak_rss_self,
    pixel_hash,
    rss_self,
    run_in_child,
    scene_grid,
    smooth_field,
    timed_call,
)

STATISTICS = ("Mean", "Median", "Percentile", "Max")
PERCENTILE = 90
CROP = 200  # generic_filter's crop side
SLOW = 20.0  # seconds: a run longer than this is not repeated


def make_raster(size: int) -> np.ndarray:
    """Reflectance-like uint16 values with per-pixel noise (see the module notes)."""
    y, x, iy, ix = scene_grid(0, size, size)
    field = 200.0 + 11800.0 * smooth_field(y, x)
    noise = (pixel_hash(iy, ix, 3) & np.uint32(0x1FF)).astype(np.float32) - 255.0
    return np.clip(field + noise, 1, 65535).astype(np.uint16)


def ours(a: np.ndarray, statistic: str, radius: int) -> np.ndarray:
    from rsgrpc_kernels.focal import focal_statistic, focal_structure

    return focal_statistic(
        a,
        statistic=statistic,
        structure=focal_structure(radius, circular=False),
        percentile=PERCENTILE if statistic == "Percentile" else None,
        out_dtype=np.float32 if statistic == "Mean" else a.dtype,
        out_nodata=0,
    )


def scipy_filter(a: np.ndarray, statistic: str, radius: int) -> np.ndarray:
    import scipy.ndimage as ndi

    side = 2 * radius + 1
    if statistic == "Mean":
        return ndi.uniform_filter(a.astype(np.float32), size=side)
    if statistic == "Median":
        return ndi.median_filter(a, size=side)
    if statistic == "Percentile":
        return ndi.percentile_filter(a, PERCENTILE, size=side)
    return ndi.maximum_filter(a, size=side)


def scipy_generic(a: np.ndarray, statistic: str, radius: int) -> np.ndarray:
    import scipy.ndimage as ndi

    side = 2 * radius + 1
    return ndi.generic_filter(a.astype(np.float64), np.percentile, size=side,
                              extra_arguments=(PERCENTILE,))  # fmt: skip


IMPLS = {"ours": ours, "scipy": scipy_filter, "generic_filter": scipy_generic}


def reset_peak_rss() -> None:
    """Set this process's high-water mark of resident memory to what it holds now (Linux:
    ``5`` into /proc/self/clear_refs), so that the peak measured after is the run's own."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def case(impl: str, statistic: str, radius: int, size: int, repeats: int) -> dict[str, object]:
    """One implementation in its own process: make the raster, warm up on a crop, time the
    best of ``repeats``, note the peak RSS above the loaded raster, check against scipy."""
    a = make_raster(size)
    fn = IMPLS[impl]
    if impl == "generic_filter":
        a = np.ascontiguousarray(a[:CROP, :CROP])
    fn(np.ascontiguousarray(a[:64, :64]), statistic, radius)  # numba's cache, scipy's paths
    reset_peak_rss()  # the raster's making is not the run's
    rss_before = rss_self()
    runs = []
    for _ in range(repeats):
        run = timed_call(fn, a, statistic, radius)
        out, run.value = run.value, None
        runs.append(run)
        if run.seconds > SLOW:
            break
    best = min(runs, key=lambda r: r.seconds)
    peak = peak_rss_self()
    result: dict[str, object] = {
        "seconds": best.seconds * (size * size / a.size),  # generic_filter: scaled
        "cpu": best.cpu,
        "peak_rss": peak,
        "above_input": peak - rss_before,
    }
    if impl == "ours":
        inner = (slice(radius, -radius), slice(radius, -radius))
        crop = np.ascontiguousarray(a[: min(size, 600), : min(size, 600)])
        expected = scipy_filter(crop, statistic, radius)[inner]
        got = out[: crop.shape[0], : crop.shape[1]][inner]
        if statistic == "Mean":
            same = np.allclose(got, expected, rtol=2e-6)
        else:
            same = np.array_equal(got, expected)
        result["check"] = "same pixels as scipy" if same else "DIFFERS from scipy"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.set_defaults(size=5000)
    parser.add_argument("--radii", type=int, nargs="+", default=[1, 3, 7])
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    args = parser.parse_args(argv)

    import numba
    import scipy

    print("rsgrpc focal statistics benchmark (band_neighbor_pixels' kernel), in memory")
    print(f"machine:   {machine(scipy=scipy.__version__, numba=numba.__version__)}")
    print(f"machine load before: {machine_load()}")
    print(f"input:     {args.size}x{args.size} uint16, no nodata; square windows; one thread "
          f"each, but ours' Max (morphology's grey filter) runs on every core")  # fmt: skip
    started = time.perf_counter()
    print(f"\n{'statistic':<12} {'window':>6}  {'impl':<15} {'seconds':>8} {'CPU s':>7} "
          f"{'peak RSS':>9} {'above input':>12}  ratio (theirs / ours)")  # fmt: skip
    for radius in args.radii:
        for statistic in STATISTICS:
            impls = ["ours", "scipy"] + (["generic_filter"] if statistic == "Percentile" else [])
            runs = {}
            for impl in impls:
                runs[impl] = run_in_child(
                    case, impl, statistic, radius, args.size, args.repeats
                ).value
            for impl, run in runs.items():
                ratio = (
                    "" if impl == "ours" else f"{run['seconds'] / runs['ours']['seconds']:8.2f}x"
                )
                label = impl + (" (scaled)" if impl == "generic_filter" else "")
                print(f"{statistic:<12} {2 * radius + 1:>3}x{2 * radius + 1:<3} {label:<15} "
                      f"{run['seconds']:8.2f} {run['cpu']:7.2f} "
                      f"{run['peak_rss'] / MIB:6.0f} MiB {run['above_input'] / MIB:8.0f} MiB  "
                      f"{ratio}{'  ' + run['check'] if 'check' in run else ''}",
                      flush=True)  # fmt: skip
    print(f"\nmachine load after: {machine_load()}")
    print(f"total runtime {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
