"""Sieve, dilation and erosion through rsgrpc, against GDAL, OpenCV and scipy.ndimage.

    python benchmarks/bench_sieve_morphology.py --workdir /some/scratch/dir

Input: one 10980 x 10980 uint8 class raster, tiled 512, DEFLATE at GDAL's
default level without a predictor, nodata 0, generated once into the workdir
and reused (with a raw .npy copy that the in-memory runs load). Classes 1 to 6
come from a smooth field quantised into 6 levels; about 12 % of the pixels are
speckle (single pixels, and 3 x 3 clumps, of a class drawn from an integer
hash of (row, col)); an orbit-edge swath and an elliptic hole are nodata.
Deterministic, no random generator.

Sieve, threshold 10, 4- and 8-connected:

- GDAL in memory   ``rasterio.features.sieve(a, 10, connectivity, mask=a != 0)``;
- ours in memory   ``rsgrpc_kernels.sieve.sieve`` with the same arguments
                   (arrays over 4096 x 4096: 1024 x 1024 tiles, one thread per core);
- GDAL file to file  read the band (GDAL's threads), sieve it as above, write
                   it with rsgrpc's DEFAULT_PROFILE creation options: what a
                   rasterio user does today;
- I/O floor        the same read and write, without the sieve;
- ours file to file  the rsgrpc server as a subprocess, a session of
                   --processes workers and --ram MiB, Sieve from the call to
                   the operation done, the server tree's memory sampled; after
                   the session's first run of each tool (loading the kernels and
                   growing the processes' heaps), which is printed beside it.

Dilation and erosion, radius 1 and 3, square (and with --circular the disk)
footprint, value list --values (default the one class 3):

- value-list dilation: ours ``morphology.dilate``; OpenCV: per listed value,
  ``cv2.dilate`` of its 0/1 mask, then the value is written on the reached
  pixels that are neither listed nor nodata (a later value wins); scipy: the
  same with ``ndimage.binary_dilation``. The same result as ours, pixel for
  pixel (checked).
- value-list erosion: ours ``morphology.erode`` does Remotior's whole rule
  (``size`` 3 x 3 steps; an eroded pixel takes the most frequent neighbouring
  value that is neither listed nor nodata, else nodata). OpenCV: per listed
  value, ``cv2.erode`` of its mask with the 3 x 3 step, ``size`` iterations;
  eroded pixels take the largest non-listed, non-nodata value within the same
  reach (``cv2.dilate`` of the raster with listed and nodata pixels set to 0,
  ``size`` iterations), 0 = nodata if none. scipy: ``binary_erosion(...,
  iterations=size, border_value=1)`` and ``maximum_filter``. The eroded pixels
  are the same as ours (checked); only their fill differs (agreement printed).
- grey dilation and erosion: ours ``morphology.grey_filter`` (nodata ignored
  and kept); OpenCV ``cv2.dilate`` / ``cv2.erode`` of the uint8 raster, scipy
  ``maximum_filter`` / ``minimum_filter`` (``size=`` for squares, the separable
  path; ``footprint=`` for disks), nodata set to the neutral value first and
  put back after. The same result as ours (checked).
- ours file to file: Dilate and Erode on the server, as for the sieve.

Every in-memory run and every baseline runs in a fresh interpreter (one per
run), after a warm-up on a small crop, so its peak RSS is its own; times are
the best of --repeats. Nothing is asserted: the script prints wall and CPU
seconds, ratios, peak memory against available_ram_mib, the machine and its
load. Outputs go under --workdir (a temporary directory by default).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MIB,
    OtherCpu,
    TreeRun,
    benchmark_parser,
    clean_workdir,
    clear_output,
    machine,
    machine_load,
    make_once,
    make_workdir,
    measure_tree,
    orbit_edge_mask,
    peak_rss_self,
    pixel_hash,
    rsgrpc_server,
    rss_self,
    run_in_child,
    scene_grid,
    settle,
    smooth_field,
    timed_call,
)

from rsgrpc.engine.raster_io import DEFAULT_PROFILE  # noqa: E402

BLOCK = 512
NODATA = 0  # the baselines rely on nodata being 0, the lowest uint8
CLASSES = 6
SIEVE_SIZE = 10
GDAL_CACHE_BYTES = 64 * MIB  # the baselines' block cache: room for GDAL's encoder threads
CRS = "EPSG:32633"
TRANSFORM = rasterio.Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000040.0)
INPUT_COMPRESSION = "DEFLATE (GDAL's default level 6), no predictor"
BASELINES = ("opencv", "scipy")


# --------------------------------------------------------------------------- data


def _strip(row0: int, rows: int, size: int) -> np.ndarray:
    """Classes of rows [row0, row0 + rows) of a size x size scene."""
    y, x, iy, ix = scene_grid(row0, rows, size)
    field = smooth_field(y, x)
    classes = np.clip(1 + (field * CLASSES).astype(np.int32), 1, CLASSES).astype(np.uint8)
    # Speckle: single pixels (about 11 %) and 3 x 3 clumps (about 1 %), each of a
    # class from the hash (the underlying class again one time in six).
    h = pixel_hash(iy, ix, 7)
    single = (h & np.uint32(0xFF)) < 28
    clump = pixel_hash(iy // 3, ix // 3, 11)
    clumped = (clump & np.uint32(0xFF)) < 3
    classes = np.where(single, 1 + (h >> np.uint32(8)) % CLASSES, classes)
    classes = np.where(clumped, 1 + (clump >> np.uint32(8)) % CLASSES, classes).astype(np.uint8)
    # Nodata: beyond an orbit edge, and an elliptic hole (a cloud mask).
    hole = ((x - 3000.0) / 900.0) ** 2 + ((y - 6500.0) / 600.0) ** 2 < 1.0
    classes[np.broadcast_to(orbit_edge_mask(y, x) | hole, classes.shape)] = NODATA
    return classes


def generate_input(folder: Path, size: int) -> tuple[Path, Path, float]:
    """The class raster of a size x size scene (GeoTIFF and .npy); made once, reused."""
    tif, npy = folder / f"classes_{size}.tif", folder / f"classes_{size}.npy"
    return tif, npy, make_once([tif, npy], lambda t, n: _write_input(t, n, size))


def _write_input(tif: Path, npy: Path, size: int) -> None:
    meta = {
        "driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8",
        "nodata": NODATA, "crs": CRS, "transform": TRANSFORM, "tiled": True,
        "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
        "num_threads": "ALL_CPUS",
    }  # fmt: skip
    array = np.empty((size, size), np.uint8)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(tif, "w", **meta) as dst:
        for row0 in range(0, size, BLOCK):
            rows = min(BLOCK, size - row0)
            array[row0 : row0 + rows] = _strip(row0, rows, size)
            dst.write(array[row0 : row0 + rows], 1, window=Window(0, row0, size, rows))
    np.save(npy, array)


# ------------------------------------------------------------------ the operations


@dataclass(frozen=True)
class Morph:
    """One dilation or erosion: value-list (Remotior's) or grey."""

    tool: str  # "dilate" or "erode"
    filter: str  # "value_list" or "grey"
    size: int
    circular: bool = False
    values: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        shape = "disk" if self.circular else "square"
        if self.filter == "grey":
            name = "grey dilation" if self.tool == "dilate" else "grey erosion"
        else:
            name = f"{self.tool} {list(self.values)}"
        return f"{name} {shape} r{self.size}"

    @property
    def key(self) -> str:
        values = "-".join(map(str, self.values)) if self.values else "grey"
        return f"{self.tool}_{values}_{'disk' if self.circular else 'square'}{self.size}"


def footprint(size: int, circular: bool) -> np.ndarray:
    """The uint8 footprint of radius ``size``: the square, or the disk
    ``dy*dy + dx*dx <= size*size`` (rsgrpc_kernels.morphology.footprint)."""
    d = np.arange(-size, size + 1)
    if not circular:
        return np.ones((2 * size + 1, 2 * size + 1), np.uint8)
    return (d[:, None] ** 2 + d[None, :] ** 2 <= size * size).astype(np.uint8)


def sieve_ours(a: np.ndarray, connectivity: int) -> np.ndarray:
    from rsgrpc_kernels.sieve import sieve

    return sieve(a, SIEVE_SIZE, connectivity=connectivity, mask=a != NODATA)


def sieve_gdal(a: np.ndarray, connectivity: int) -> np.ndarray:
    import rasterio.features

    return rasterio.features.sieve(a, SIEVE_SIZE, connectivity=connectivity, mask=a != NODATA)


def morph_ours(a: np.ndarray, m: Morph) -> np.ndarray:
    from rsgrpc_kernels import morphology

    if m.filter == "grey":
        operation = "dilation" if m.tool == "dilate" else "erosion"
        return morphology.grey_filter(
            a, operation=operation, size=m.size, circular=m.circular, nodata=NODATA
        )
    tool = morphology.dilate if m.tool == "dilate" else morphology.erode
    return tool(a, value_list=list(m.values), size=m.size, circular=m.circular, nodata=NODATA)


def _listed_masks(a: np.ndarray, values: tuple[int, ...]) -> tuple[list[np.ndarray], np.ndarray]:
    masks = [a == v for v in values]
    listed = masks[0].copy()
    for mask in masks[1:]:
        listed |= mask
    return masks, listed


def _value_dilate(a: np.ndarray, m: Morph, binary_dilate) -> np.ndarray:
    """Per listed value, its mask dilated; the value goes on reached pixels that are
    neither listed nor nodata, in list order (a later value wins)."""
    masks, listed = _listed_masks(a, m.values)
    free = ~listed
    free &= a != NODATA
    out = a.copy()
    for value, mask in zip(m.values, masks, strict=True):
        reached = binary_dilate(mask)
        reached &= free
        np.copyto(out, np.uint8(value), where=reached)
    return out


def _value_erode(a: np.ndarray, m: Morph, binary_erode, reach_max) -> np.ndarray:
    """Per listed value, its mask eroded ``size`` times by the radius-1 step; eroded
    pixels take the largest non-listed, non-nodata value within ``size`` steps
    (0, nodata, if none)."""
    masks, listed = _listed_masks(a, m.values)
    eroded = np.zeros(a.shape, np.bool_)
    for mask in masks:
        kept = binary_erode(mask)
        eroded |= mask & ~kept
    source = a.copy()
    source[listed] = 0  # nodata pixels are 0 already
    fill = reach_max(source)
    out = a.copy()
    np.copyto(out, fill, where=eroded)
    return out


def _grey(a: np.ndarray, m: Morph, grey_max, grey_min) -> np.ndarray:
    """Max or min over the footprint with nodata neutral, nodata put back after."""
    nodata = a == NODATA
    if m.tool == "dilate":
        out = grey_max(a)  # nodata 0 is the lowest value: it never wins a max
    else:
        work = a.copy()
        work[nodata] = 255
        out = grey_min(work)
    np.copyto(out, a, where=nodata)
    return out


def morph_opencv(a: np.ndarray, m: Morph) -> np.ndarray:
    import cv2

    kernel = footprint(m.size, m.circular)
    step = footprint(1, m.circular)
    if m.filter == "grey":
        return _grey(a, m, lambda w: cv2.dilate(w, kernel), lambda w: cv2.erode(w, kernel))
    if m.tool == "dilate":
        return _value_dilate(a, m, lambda b: cv2.dilate(b.view(np.uint8), kernel).view(np.bool_))
    return _value_erode(
        a,
        m,
        lambda b: cv2.erode(b.view(np.uint8), step, iterations=m.size).view(np.bool_),
        lambda s: cv2.dilate(s, step, iterations=m.size),
    )


def morph_scipy(a: np.ndarray, m: Morph) -> np.ndarray:
    from scipy import ndimage

    kernel = footprint(m.size, m.circular).astype(bool)
    step = footprint(1, m.circular).astype(bool)

    def window(fn, w):
        if m.circular:
            return fn(w, footprint=kernel)
        return fn(w, size=2 * m.size + 1)

    if m.filter == "grey":
        return _grey(
            a,
            m,
            lambda w: window(ndimage.maximum_filter, w),
            lambda w: window(ndimage.minimum_filter, w),
        )
    if m.tool == "dilate":
        return _value_dilate(a, m, lambda b: ndimage.binary_dilation(b, structure=kernel))

    def reach_max(source):
        if not m.circular:  # size steps of the 3 x 3 reach the square of side 2*size+1
            return ndimage.maximum_filter(source, size=2 * m.size + 1, mode="constant")
        for _ in range(m.size):
            source = ndimage.maximum_filter(source, footprint=step, mode="constant")
        return source

    return _value_erode(
        a,
        m,
        lambda b: ndimage.binary_erosion(b, structure=step, iterations=m.size, border_value=1),
        reach_max,
    )


MORPH_IMPLS = {"ours": morph_ours, "opencv": morph_opencv, "scipy": morph_scipy}
SIEVE_IMPLS = {"ours": sieve_ours, "gdal": sieve_gdal}


def compare(m: Morph | None, a: np.ndarray, ours: np.ndarray, other: np.ndarray) -> str:
    """How a baseline's output compares with ours, in words."""
    if m is None or m.filter == "grey" or m.tool == "dilate":
        differ = int(np.count_nonzero(ours != other))
        return "equal" if differ == 0 else f"DIFFERENT ({differ} pixels)"
    ours_changed, other_changed = ours != a, other != a
    differ = int(np.count_nonzero(ours_changed != other_changed))
    changed = int(np.count_nonzero(ours_changed))
    same_fill = int(np.count_nonzero(ours_changed & (ours == other)))
    agreement = 100.0 * same_fill / changed if changed else 100.0
    pixels = "same eroded pixels" if differ == 0 else f"eroded pixels DIFFER ({differ})"
    return f"{pixels}, fill agrees on {agreement:.1f}%"


# --------------------------------------------------------- runs in a fresh interpreter


def case_in_memory(
    impl: str, spec: Morph | int, npy: str, repeats: int, check: bool
) -> dict[str, object]:
    """One in-memory run, in its own process: load, warm up on a crop, time the best
    of ``repeats``, note the peak RSS; then, for a baseline, compare with ours."""
    a = np.load(npy)
    is_sieve = isinstance(spec, int)
    fn = SIEVE_IMPLS[impl] if is_sieve else MORPH_IMPLS[impl]
    crop = np.ascontiguousarray(a[:512, :512])
    fn(crop, spec)  # loads numba's cache, OpenCV's and scipy's code paths
    if is_sieve and impl == "ours":
        from rsgrpc_kernels.sieve import sieve_tiled

        sieve_tiled(crop, SIEVE_SIZE, tile_shape=(128, 128), connectivity=spec, mask=crop != 0)
    rss_before = rss_self()
    runs = []
    for _ in range(repeats):
        run = timed_call(fn, a, spec)
        out, run.value = run.value, None
        runs.append(run)
    best = min(runs, key=lambda r: r.seconds)
    result: dict[str, object] = {
        "seconds": best.seconds,
        "cpu": best.cpu,
        "first": runs[0].seconds,
        "peak_rss": peak_rss_self(),
        "rss_before": rss_before,
        "changed": int(np.count_nonzero(out != a)),
    }
    if check:
        ours = (sieve_ours if is_sieve else morph_ours)(a, spec)
        result["check"] = compare(None if is_sieve else spec, a, ours, out)
    return result


def case_gdal_file(tif: str, out: str, connectivity: int | None) -> dict[str, object]:
    """GDAL file to file, in its own process: read the band with GDAL's threads, sieve
    it with rasterio.features.sieve (or not, when ``connectivity`` is None: the I/O
    floor) and write it with rsgrpc's DEFAULT_PROFILE options."""
    import rasterio.features

    def run() -> None:
        env = rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_NUM_THREADS="ALL_CPUS")
        with env:
            with rasterio.open(tif) as src:
                a = src.read(1)
                meta = {
                    "driver": "GTiff", "width": src.width, "height": src.height, "count": 1,
                    "dtype": "uint8", "nodata": src.nodata, "crs": src.crs,
                    "transform": src.transform,
                    **DEFAULT_PROFILE.creation_options("uint8"),
                }  # fmt: skip
            if connectivity is not None:
                a = rasterio.features.sieve(
                    a, SIEVE_SIZE, connectivity=connectivity, mask=a != src.nodata
                )
            with rasterio.open(out, "w", **meta) as dst:
                dst.write(a, 1)

    rss_before = rss_self()
    clear_output(Path(out))
    timed = timed_call(run)
    return {
        "seconds": timed.seconds,
        "cpu": timed.cpu,
        "peak_rss": peak_rss_self(),
        "rss_before": rss_before,
        "size": Path(out).stat().st_size,
    }


# ------------------------------------------------------------------------- the server


def call_tool(session, spec: Morph | int, src: str, out: str):
    """Sieve (``spec`` is the connectivity), Dilate or Erode through the client."""
    if isinstance(spec, int):
        return session.band_sieve(
            src, SIEVE_SIZE, output_path=out, connected=spec == 8, overwrite=True
        )
    call = session.band_dilation if spec.tool == "dilate" else session.band_erosion
    return call(
        src,
        list(spec.values) or None,
        spec.size,
        output_path=out,
        circular_structure=spec.circular,
        filter=spec.filter,
        overwrite=True,
    )


def ours_file(
    session, server_pid: int, spec: Morph | int, src: str, out: str, out_file: Path
) -> tuple[TreeRun, str]:
    """One Sieve, Dilate or Erode on the server, from the call to the operation done,
    and its timeline from the progress updates (seconds from the call)."""
    from rsgrpc.v1 import operation_pb2

    events: list[tuple[float, int, int, int]] = []
    started: list[float] = []  # of each call: the timed one, then the sampled one

    def progress(metadata) -> None:
        if len(started) == 1:  # the timeline of the timed call
            events.append(
                (time.perf_counter(), metadata.stage, metadata.tiles_done, metadata.tiles_total)
            )

    def run_call():
        started.append(time.perf_counter())
        return call_tool(session, spec, src, out)

    session.progress_callback = progress
    try:
        run = measure_tree(server_pid, run_call, prepare=lambda: clear_output(out_file))
    finally:
        session.progress_callback = None
    if not run.value.check:
        raise RuntimeError(f"{out}: {run.value.extra}")

    def first(test) -> str:
        return next((f"{t - started[0]:.2f}" for t, *rest in events if test(*rest)), "?")

    total = max((e[3] for e in events), default=0)
    marks = [f"first tile {first(lambda stage, done, n: done > 0)} s"]
    if isinstance(spec, int):  # each tile counts twice: pass 1, then pass 3
        marks.append(f"pass 1 done {first(lambda stage, done, n: n and done >= n // 2)} s")
        marks.append(f"first pass-3 tile {first(lambda stage, done, n: n and done > n // 2)} s")
    finalizing = operation_pb2.OperationMetadata.STAGE_FINALIZING
    marks.append(f"finalizing {first(lambda stage, done, n: stage == finalizing)} s")
    marks.append(f"done {run.seconds:.2f} s; {total} tile steps")
    return run, ", ".join(marks)


def read_band(path: Path) -> np.ndarray:
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(path) as ds:
        return ds.read(1)


# ---------------------------------------------------------------------------- report


def _cell(run: dict | None) -> str:
    if run is None:
        return f"{'-':>20}"
    return f"{run['seconds']:7.2f} {run['cpu']:6.2f} {run['peak_rss'] / MIB:5.0f}"


def _held(run: TreeRun) -> float:
    """What the tree held at its peak, in MiB: PSS (shared pages counted once), or RSS
    where PSS is not available."""
    return run.peak.rss_mib if run.peak.pss_mib is None else run.peak.pss_mib


def _budget(run: TreeRun, ram: int) -> str:
    """Peak RSS and PSS (MiB), and the peak PSS as a share of the budget."""
    pss = run.peak.pss_mib
    pss_text = "   n/a" if pss is None else f"{pss:6.0f}"
    verdict = "under" if _held(run) <= ram else "OVER"
    return f"{run.peak.rss_mib:6.0f} {pss_text} {100 * _held(run) / ram:5.0f}% {verdict}"


def _aim(ratio: float, aim: float) -> str:
    return "met" if ratio >= aim else f"MISSED by {aim / ratio:.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--ram", type=int, default=1024, help="available_ram_mib of the session")
    parser.add_argument("--processes", type=int, default=2, help="session process count")
    parser.add_argument("--repeats", type=int, default=3, help="in-memory runs: best of this many")
    parser.add_argument("--connectivity", type=int, nargs="+", default=[4, 8], choices=[4, 8])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 3], help="dilation and erosion radii"
    )
    parser.add_argument(
        "--values", default="3", help="value list of the value-list runs, comma-separated classes"
    )
    parser.add_argument(
        "--circular", action="store_true", help="disk footprints as well as squares"
    )
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args(argv)  # fmt: skip

    import cv2
    import scipy

    workdir, outputs = make_workdir(args.workdir)
    total_started = time.perf_counter()
    values = tuple(int(v) for v in args.values.split(","))
    shapes = [False, True] if args.circular else [False]
    morphs = [
        Morph(tool, filter_, size, circular, values if filter_ == "value_list" else ())
        for filter_ in ("value_list", "grey")
        for tool in ("dilate", "erode")
        for circular in shapes
        for size in args.sizes
    ]

    about = machine(opencv=cv2.__version__, scipy=scipy.__version__)
    print("rsgrpc sieve and morphology benchmark")
    print(f"machine:   {about}")
    print(f"workdir:   {workdir}")
    load_before = machine_load()
    others = OtherCpu()
    print(f"machine load before: {load_before}")
    tif, npy, made = generate_input(workdir / "inputs", args.size)
    a = np.load(npy)
    nodata_share = 100.0 * np.count_nonzero(a == NODATA) / a.size
    counts = np.bincount(a.ravel(), minlength=CLASSES + 1)
    del a
    print(f"input:     {args.size}x{args.size} uint8, classes 1-{CLASSES}, nodata {NODATA} "
          f"({nodata_share:.1f}% of pixels), tiled {BLOCK}, {INPUT_COMPRESSION}, "
          f"{tif.stat().st_size / MIB:.1f} MiB; "
          + (f"generated in {made:.1f} s" if made else "reused"))  # fmt: skip
    print("           pixels per class: " + ", ".join(
        f"{v}: {100.0 * counts[v] / counts.sum():.1f}%" for v in range(1, CLASSES + 1)))  # fmt: skip
    settle()

    def child(label: str, fn, *fn_args) -> dict:
        run = run_in_child(fn, *fn_args).value
        settle()
        extra = f"  {run['check']}" if "check" in run else ""
        first = f" (first {run['first']:.2f} s)" if "first" in run else ""
        print(f"  {label:<40} {run['seconds']:7.2f} s{first}  CPU {run['cpu']:6.2f} s  "
              f"peak RSS {run['peak_rss'] / MIB:5.0f} MiB{extra}", flush=True)  # fmt: skip
        return run

    # In memory and GDAL file to file: each run in its own interpreter.
    print(f"\nIn this process's children (one fresh interpreter a run), best of {args.repeats}:")
    sieves: dict[tuple[str, int], dict] = {}
    for conn in args.connectivity:
        for impl in ("gdal", "ours"):
            sieves[impl, conn] = child(f"sieve {conn}-conn, {impl} in memory", case_in_memory,
                                       impl, conn, str(npy), args.repeats, impl != "ours")  # fmt: skip
        out = outputs / f"gdal_sieve{conn}.tif"
        sieves["gdal file", conn] = child(f"sieve {conn}-conn, GDAL file to file",
                                          case_gdal_file, str(tif), str(out), conn)  # fmt: skip
    floor_out = outputs / "floor.tif"
    floor = child("I/O floor, file to file (read, write)", case_gdal_file, str(tif),
                  str(floor_out), None)  # fmt: skip
    floor_out.unlink()
    memory: dict[tuple[str, Morph], dict] = {}
    for m in morphs:
        for impl in ("ours", *BASELINES):
            memory[impl, m] = child(f"{m.label}, {impl}", case_in_memory, impl, m, str(npy),
                                    args.repeats, impl != "ours")  # fmt: skip

    # Ours file to file: one server, one session.
    from rsgrpc.client import Session

    print(f"\nOurs file to file: rsgrpc server, {args.processes} processes, "
          f"available_ram_mib {args.ram}")  # fmt: skip
    src = str(tif.relative_to(workdir))
    files: dict[Morph | int, TreeRun] = {}
    firsts: dict[Morph | int, float] = {}
    checks: dict[Morph | int, str] = {}
    seam_logs: dict[int, str] = {}
    timelines: dict[Morph | int, str] = {}
    with rsgrpc_server(workdir, outputs / "server.log") as (address, server):
        session = Session(n_processes=args.processes, available_ram=args.ram, target=address)
        try:
            # The session's first run of each tool loads its kernels in each worker
            # and grows the processes' heaps: timed, reported, not the measured run.
            for spec in [*args.connectivity, *morphs]:
                first = timed_call(call_tool, session, spec, src, "outputs/warm.tif")
                if not first.value.check:
                    raise RuntimeError(f"warm-up: {first.value.extra}")
                firsts[spec] = first.seconds
            settle()
            print("  warm-up: every tool once on the input, the session's first runs: "
                  + ", ".join(f"{f:.2f} s" for f in firsts.values()))  # fmt: skip
            for spec in [*args.connectivity, *morphs]:
                name = f"sieve{spec}" if isinstance(spec, int) else spec.key
                out = outputs / f"ours_{name}.tif"
                run, timelines[spec] = ours_file(
                    session, server.pid, spec, src, str(out.relative_to(workdir)), out
                )
                files[spec] = run
                settle()
                if isinstance(spec, int):
                    seam_logs[spec] = next(
                        (x for x in reversed(session.log()) if "seam summaries" in x), ""
                    )
                    reference = read_band(outputs / f"gdal_sieve{spec}.tif")
                    label = f"sieve {spec}-conn"
                else:
                    reference = morph_ours(np.load(npy), spec)
                    label = spec.label
                checks[spec] = compare(None, reference, reference, read_band(out))
                del reference
                if not args.keep:
                    out.unlink()
                print(f"  {label:<44} {run.seconds:8.2f} s (first {firsts[spec]:.2f} s)  CPU {run.cpu:7.2f} s  "
                      f"peak RSS {run.peak.rss_mib:5.0f} MiB  PSS "
                      f"{'n/a' if run.peak.pss_mib is None else f'{run.peak.pss_mib:.0f} MiB'}"
                      f"  {checks[spec]}\n    {timelines[spec]}", flush=True)  # fmt: skip
        finally:
            session.close()
    load_after = machine_load()
    others_text = others.report()

    # The report.
    print("\n" + "=" * 100)
    print(f"Sieve and morphology on {args.size}x{args.size} uint8 classes; machine: {about}")
    print(f"machine load before: {load_before}")
    print(f"machine load after:  {load_after} (our own run counts in the load average)")
    print(f"machine during the run: {others_text}")
    print(f"ours file to file: {args.processes} processes, available_ram_mib {args.ram}, "
          f"outputs {DEFAULT_PROFILE.compression} level {DEFAULT_PROFILE.level} predictor 2, "
          f"tiled {BLOCK}; CPU = user + system seconds of all threads (ours file to file: "
          "the server's process tree); peak RSS in MiB (in memory and GDAL: the child "
          "process's high-water mark; ours file to file: the server tree, sampled every "
          "50 ms, with PSS)")  # fmt: skip
    for conn in args.connectivity:
        gdal, ours = sieves["gdal", conn], sieves["ours", conn]
        gdal_file, run = sieves["gdal file", conn], files[conn]
        print(f"\nSieve, threshold {SIEVE_SIZE}, {conn}-connected: "
              f"{ours['changed']} pixels changed "
              f"({100.0 * ours['changed'] / args.size ** 2:.1f}%)")  # fmt: skip
        print(f"  {'run':<46} {'seconds':>8} {'CPU s':>8} {'RSS':>6} {'PSS':>6} "
              f"{'of ' + str(args.ram) + ' MiB':>12}")  # fmt: skip
        rows = [
            ("GDAL in memory (rasterio.features.sieve)", gdal),
            ("ours in memory (rsgrpc_kernels.sieve)", ours),
            ("GDAL file to file (read, sieve, write)", gdal_file),
            ("I/O floor file to file (read, write)", floor),
        ]
        for label, r in rows:
            print(f"  {label:<46} {r['seconds']:8.2f} {r['cpu']:8.2f} "
                  f"{r['peak_rss'] / MIB:6.0f}")  # fmt: skip
        print(f"  {'ours file to file (rsgrpc Sieve)':<46} {run.seconds:8.2f} {run.cpu:8.2f} "
              f"{_budget(run, args.ram)}")  # fmt: skip
        print(f"  {'  the same, the session first Sieve':<46} {firsts[conn]:8.2f}")
        file_ratio = gdal_file["seconds"] / run.seconds
        print(f"  GDAL/ours: in memory {gdal['seconds'] / ours['seconds']:.2f}x "
              f"(CPU {gdal['cpu'] / ours['cpu']:.2f}x); file to file {file_ratio:.2f}x "
              f"(aim >= 3x: {_aim(file_ratio, 3.0)}; CPU {gdal_file['cpu'] / run.cpu:.2f}x; "
              f"the session's first run {gdal_file['seconds'] / firsts[conn]:.2f}x); "
              f"ours file to file / I/O floor {run.seconds / floor['seconds']:.2f}x")  # fmt: skip
        print(f"  ours == GDAL: in memory {gdal['check']}; file to file {checks[conn]}")
        if seam_logs.get(conn):
            print(f"  server: {seam_logs[conn].split(': ', 1)[-1]}")
        print(f"  server timeline: {timelines[conn]}")

    print("\nDilation and erosion in memory: seconds, CPU seconds, peak RSS (MiB) of each run")
    print(f"  {'operation':<28} {'ours':>20} {'OpenCV':>20} {'scipy':>20} "
          f"{'cv/ours':>8} {'sp/ours':>8}  aims: ours <= 2x OpenCV, >= 5x faster than scipy")  # fmt: skip
    for m in morphs:
        ours = memory["ours", m]
        cv, sp = memory["opencv", m], memory["scipy", m]
        cv_ratio, sp_ratio = cv["seconds"] / ours["seconds"], sp["seconds"] / ours["seconds"]
        print(f"  {m.label:<28} {_cell(ours)} {_cell(cv)} {_cell(sp)} {cv_ratio:7.2f}x "
              f"{sp_ratio:7.2f}x  OpenCV {_aim(cv_ratio, 0.5)}, scipy {_aim(sp_ratio, 5.0)}")  # fmt: skip
    print("\nDilation and erosion file to file (ours), and the checks")
    print(f"  {'operation':<28} {'seconds':>8} {'CPU s':>7} {'RSS':>6} {'PSS':>6} "
          f"{'of ' + str(args.ram) + ' MiB':>12}  checks (ours in memory vs OpenCV; vs scipy; file vs in memory)")  # fmt: skip
    for m in morphs:
        run = files[m]
        print(f"  {m.label:<28} {run.seconds:8.2f} {run.cpu:7.2f} {_budget(run, args.ram)}  "
              f"{memory['opencv', m]['check']}; {memory['scipy', m]['check']}; "
              f"{checks[m]}")  # fmt: skip
    print(f"  I/O floor file to file (read, write the band): {floor['seconds']:.2f} s")
    every = list(files.values())
    held = max(_held(r) for r in every)
    rss = max(r.peak.rss_mib for r in every)
    idle = every[0].idle
    print(f"\nEvery ours file-to-file case under available_ram_mib {args.ram}: "
          f"{'yes' if held <= args.ram else 'NO'} (largest peak PSS {held:.0f} MiB, "
          f"largest peak RSS {rss:.0f} MiB, shared pages counted once per process); "
          f"the idle server tree before the first timed run: RSS {idle.rss_mib:.0f} MiB, "
          f"PSS {'n/a' if idle.pss_mib is None else f'{idle.pss_mib:.0f} MiB'}, "
          f"{idle.processes} processes")  # fmt: skip
    print(f"total runtime {time.perf_counter() - total_started:.0f} s")

    clean_workdir(workdir, outputs, keep=args.keep, temporary=args.workdir is None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
