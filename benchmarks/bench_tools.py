"""rsgrpc's newer raster tools against Remotior Sensus and plain libraries, end to end.

    python benchmarks/bench_tools.py --workdir /scratch/rsgrpc-bench \\
        --remotior-python /path/to/remotior/env/bin/python

Each tool runs three ways on the same files, in the same run:

- rsgrpc: the call a Remotior user writes, with ``import rsgrpc.client as
  remotior_sensus``, in this interpreter, against ``rsgrpc serve`` started as a
  subprocess (one session of --processes workers and --ram MB for all tools). Each tool
  first runs twice on 256 x 256 inputs off the clock (its kernels loaded in the
  workers); then the best of --repeats timed calls, and one more with the server tree's
  memory sampled every 50 ms (``harness.measure_tree``).
- Remotior: the same call text, run by Remotior Sensus in the interpreter given by
  --remotior-python (or the RSGRPC_BENCH_REMOTIOR_PYTHON environment variable), a new
  interpreter per tool with a session of the same processes and RAM, created off the
  clock; the call runs once, timed inside the script, its process tree's memory sampled
  every 50 ms during the call and its CPU seconds read when the call starts and ends. A
  tool's interpreter still running --remotior-timeout seconds after it started is stopped
  with its workers ("timed out").
- library: the closest plain library call, with this interpreter's packages, block-free
  on whole arrays, timed from reading the inputs with rasterio to the output GeoTIFF
  written with rsgrpc's default output profile (and the CSV table, for table tools), in
  a fresh interpreter per tool (best of --repeats; its peak RSS is that process's
  high-water mark): numpy bincount for combination, cross classification, report and zonal
  statistics (min, max and median per zone with numpy), numpy lookups for
  reclassification and mask, scipy.ndimage ``uniform_filter`` (sum over the pixels in
  the raster) and ``median_filter`` for neighbor pixels, ``scipy.ndimage.label`` and a
  bincount of the labels for label, scikit-learn ``PCA`` (covariance eigh, float64) and
  ``KMeans`` (Lloyd from the "band mean" seeds) for PCA and clustering, numpy for the
  spectral distance.

Inputs (made once into the workdir, --size x --size, 5000 by default): four
reflectance-like uint16 bands of a first date (B02, B03, B04, B08) and four of a second
(changed where a smooth field is high), nodata 0 tagged but never present; a uint8
classification of 6 classes (a smooth field in six levels, with 16 x 16 patches of other
classes); a reference classification that disagrees with it in 8 x 8 patches (about a
fifth of the pixels); and the classification's classes 2 and 5 on a background of 0, for
the label. Deterministic, no random generator.

Printed per tool: wall seconds of each side, Remotior/rsgrpc and rsgrpc/library, and the
pixels where rsgrpc's output differs from the library's and from Remotior's (and the
largest absolute difference) where both compute the same raster (for report and zonal
statistics, the cells of the CSV tables that differ); then each side's CPU
seconds and peak memory (rsgrpc: the server's tree, RSS and PSS; Remotior: its
interpreter and workers; library: the process's peak RSS); the machine and its load.
Nothing is asserted.
"""

from __future__ import annotations

import ast
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_remotior import (  # noqa: E402
    ENVIRONMENT_VARIABLE,
    remotior_environment,
    remotior_usable,
)
from harness import (  # noqa: E402
    MIB,
    OtherCpu,
    benchmark_parser,
    clean_workdir,
    machine,
    machine_load,
    make_once,
    make_workdir,
    measure_tree,
    peak_rss_self,
    pixel_hash,
    rsgrpc_server,
    run_in_child,
    scene_grid,
    settle,
    smooth_field,
    timed_call,
)
from process_tree import TreeMemorySampler, tree_cpu_seconds  # noqa: E402

from rsgrpc.engine.raster_io import DEFAULT_PROFILE  # noqa: E402

DEFAULT_SIZE = 5000
WARM_SIZE = 256
BANDS = ("B02", "B03", "B04", "B08")
CLUSTERS = 5
MAX_ITER = 5
ZONAL_STATISTICS = ["Count", "Mean", "Median", "Min", "Max", "StandardDeviation", "Sum"]
RECLASSIFICATION = [[1, 10], [2, 10], [3, 20], [4, 20], [5, 30], [6, 30]]
MASK_VALUES = [1, 2]
NEIGHBOR_SIZE = 2  # a radius: 5 x 5 windows

# The band sets of the tools that take them, made before the clock starts (both sides).
SETUP = """\
catalog = rs.bandset_catalog()
catalog.create_bandset([inputs + "/" + b + ".tif" for b in BANDS], bandset_number=1)
catalog.create_bandset([inputs + "/" + b + "_2.tif" for b in BANDS], bandset_number=2)
"""

# Each tool's call, the same text on both sides, as Remotior's documentation writes it.
CALLS: dict[str, str] = {
    "combination": """rs.band_combination(
    input_bands=[inputs + "/classes.tif", inputs + "/reference.tif"],
    output_path=output_directory + "/combination.tif",
)""",
    "cross": """rs.cross_classification(
    classification_path=inputs + "/classes.tif",
    reference_path=inputs + "/reference.tif",
    output_path=output_directory + "/cross.tif",
    error_matrix=True,
)""",
    "reclassification": f"""rs.raster_reclassification(
    raster_path=inputs + "/classes.tif",
    output_path=output_directory + "/reclassification.tif",
    reclassification_table={RECLASSIFICATION},
)""",
    "mask": f"""rs.band_mask(
    input_bands=[inputs + "/" + b + ".tif" for b in BANDS],
    input_mask=inputs + "/classes.tif",
    mask_values={MASK_VALUES},
    output_path=output_directory,
    prefix="mask_",
)""",
    "neighbor Mean": f"""rs.band_neighbor_pixels(
    input_bands=[inputs + "/B08.tif"],
    size={NEIGHBOR_SIZE},
    output_path=output_directory,
    stat_name="Mean",
    circular_structure=False,
    output_data_type="Float32",
    prefix="mean_",
)""",
    "neighbor Median": f"""rs.band_neighbor_pixels(
    input_bands=[inputs + "/B08.tif"],
    size={NEIGHBOR_SIZE},
    output_path=output_directory,
    stat_name="Median",
    circular_structure=False,
    prefix="median_",
)""",
    "label": """rs.raster_label(
    raster_path=inputs + "/patches.tif",
    output_path=output_directory + "/label.tif",
)""",
    "report": """rs.raster_report(
    raster_path=inputs + "/classes.tif",
    output_path=output_directory + "/report.csv",
)""",
    "zonal stats": f"""rs.raster_zonal_stats(
    raster_path=inputs + "/B08.tif",
    reference_path=inputs + "/classes.tif",
    output_path=output_directory + "/zonal_stats.csv",
    stat_names={ZONAL_STATISTICS},
)""",
    "pca": """rs.band_pca(
    input_bands=catalog.get_bandset(1),
    output_path=output_directory + "/pca.tif",
)""",
    "clustering": f"""rs.band_clustering(
    input_bands=catalog.get_bandset(1),
    output_raster_path=output_directory + "/clustering.tif",
    algorithm_name="minimum distance",
    class_number={CLUSTERS},
    seed_signatures="band mean",
    max_iter={MAX_ITER},
)""",
    "spectral distance": """rs.band_spectral_distance(
    input_bandsets=[catalog.get_bandset(1), catalog.get_bandset(2)],
    output_path=output_directory + "/spectral_distance.tif",
    algorithm_name="minimum distance",
)""",
}
TOOLS = tuple(CALLS)

# Which outputs compute the same pixels as rsgrpc's (and the border left out, in
# pixels: scipy's median pads the raster where rsgrpc and Remotior take the pixels
# inside). Remotior's codes of combinations and pairs come from a weighted sum, and its
# clusters count from 0 after one update fewer: nothing to compare there. Report and
# zonal statistics write a table, compared cell by cell.
SAME_AS_REMOTIOR = {tool: tool not in ("combination", "cross", "clustering") for tool in TOOLS}
TABLES = {"report", "zonal stats"}
MARGIN = {"neighbor Median": NEIGHBOR_SIZE}
SIGN_FREE = {"pca"}  # Remotior's eigenvectors' signs are eigh's (rsgrpc fixes them)

# Remotior's side: a script per tool; $INPUTS, $OUTPUT, $PROCESSES, $RAM, $SETUP and
# $CALL are filled in. It prints ("start",) before the call and ("done", seconds,
# check, paths) after it, for the benchmark to read.
REMOTIOR_SCRIPT = """\
import time

import remotior_sensus

BANDS = $BANDS


def main():
    inputs = "$INPUTS"
    output_directory = "$OUTPUT"
    rs = remotior_sensus.Session(n_processes=$PROCESSES, available_ram=$RAM)
$SETUP
    print(repr(("start",)), flush=True)
    started = time.perf_counter()
    output = $CALL
    seconds = time.perf_counter() - started
    paths = output.paths or ([output.path] if output.path else [])
    print(repr(("done", seconds, bool(output.check), list(paths))), flush=True)
    rs.close()


# Remotior's processes start with "spawn": the script runs only as the main module
if __name__ == "__main__":
    main()
"""


# ------------------------------------------------------------------------- the inputs


def _profile(size: int, dtype: str, nodata: float | None) -> dict[str, Any]:
    return dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype=dtype,
        nodata=nodata,
        crs="EPSG:32633",
        transform=rasterio.transform.from_origin(300000.0, 5000000.0, 10.0, 10.0),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )


def _classes(y: np.ndarray, x: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """Six classes: a smooth field in six levels, with 16 x 16 patches of other classes
    (one block in eight)."""
    field = smooth_field(y + 2000.0, x + 3000.0)
    classes = np.clip(((field - 0.1) / 0.8 * 6).astype(np.int32), 0, 5) + 1
    block = pixel_hash(iy // 16, ix // 16, 21)
    patch = (block % 8) == 0
    return np.where(patch, (block >> 8) % 6 + 1, classes).astype(np.uint8)


def write_inputs(size: int, *paths: Path) -> None:
    """The bands of two dates, the classification, the reference and the patches, in
    strips (see the module's notes); ``paths`` in the order of ``input_names()``."""
    names = input_names()
    profiles = {name: _profile(size, "uint16", 0) for name in names if name.startswith("B")}
    profiles["classes"] = _profile(size, "uint8", 0)
    profiles["reference"] = _profile(size, "uint8", 0)
    profiles["patches"] = _profile(size, "uint8", None)
    files = {
        name: rasterio.open(path, "w", **profiles[name])
        for name, path in zip(names, paths, strict=True)
    }
    try:
        for row0 in range(0, size, 512):
            rows = min(512, size - row0)
            y, x, iy, ix = scene_grid(row0, rows, size)
            vegetation = smooth_field(y, x)
            change = smooth_field(y + 5000.0, x - 4000.0) > 0.72
            window = Window(0, row0, size, rows)
            for k, band in enumerate(BANDS):
                base = [900, 1100, 1300, 1200][k]
                slope = [-500, -300, -1100, 3800][k]
                for date in (1, 2):
                    noise = (pixel_hash(iy, ix, 10 * k + date) % 401).astype(np.float32) - 200
                    value = base + slope * vegetation + noise
                    if date == 2:
                        value = np.where(change, value * 0.6 + 400 * (k + 1), value)
                    pixels = np.clip(value, 1, 10000).astype(np.uint16)
                    name = band if date == 1 else band + "_2"
                    files[name].write(pixels, 1, window=window)
            classes = _classes(y, x, iy, ix)
            swap = pixel_hash(iy // 8, ix // 8, 33)
            reference = np.where(swap % 5 == 0, (swap >> 8) % 6 + 1, classes).astype(np.uint8)
            patches = np.where((classes == 2) | (classes == 5), classes, 0).astype(np.uint8)
            files["classes"].write(classes, 1, window=window)
            files["reference"].write(reference, 1, window=window)
            files["patches"].write(patches, 1, window=window)
    finally:
        for f in files.values():
            f.close()


def input_names() -> list[str]:
    return [*BANDS, *(b + "_2" for b in BANDS), "classes", "reference", "patches"]


def make_inputs(folder: Path, size: int) -> float:
    paths = [folder / f"{name}.tif" for name in input_names()]
    return make_once(paths, lambda *partials: write_inputs(size, *partials))


# ------------------------------------------------------------------ the library side


def _read(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(path) as src:
        grid = {"crs": src.crs, "transform": src.transform, "nodata": src.nodata,
                "shape": (src.height, src.width)}  # fmt: skip
        return src.read(1), grid


def _write(path: Path, array: np.ndarray, grid: dict[str, Any], nodata: float | None) -> None:
    dtype = array.dtype.name
    meta = {
        "driver": "GTiff", "width": array.shape[1], "height": array.shape[0], "count": 1,
        "dtype": dtype, "nodata": nodata, "crs": grid["crs"], "transform": grid["transform"],
        **DEFAULT_PROFILE.creation_options(dtype),
    }  # fmt: skip
    with rasterio.open(path, "w", **meta) as dst:
        dst.write(array, 1)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _coded(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes from 1 of the (first, second) pairs present, in increasing order of first,
    then second (a bincount over the pair's index); the counts and the pair indices."""
    pair = first.astype(np.int32) * 256 + second
    counts = np.bincount(pair.ravel(), minlength=256 * 256)
    present = np.flatnonzero(counts)
    lookup = np.zeros(counts.size, np.int32)
    lookup[present] = np.arange(1, present.size + 1, dtype=np.int32)
    return lookup[pair], counts[present], present


def _stack(inputs: Path, names: list[str], dtype: type) -> tuple[np.ndarray, dict[str, Any]]:
    """The bands as the columns of a (pixels, bands) matrix."""
    first, grid = _read(inputs / f"{names[0]}.tif")
    matrix = np.empty((first.size, len(names)), dtype)
    matrix[:, 0] = first.ravel()
    for k, name in enumerate(names[1:], 1):
        matrix[:, k] = _read(inputs / f"{name}.tif")[0].ravel()
    return matrix, grid


def library_tool(tool: str, inputs: Path, out: Path) -> list[Path]:
    """The library's version of ``tool``: read, compute, write; returns its rasters."""
    import scipy.ndimage as ndi

    if tool in ("combination", "cross"):
        classes, grid = _read(inputs / "classes.tif")
        reference, _ = _read(inputs / "reference.tif")
        first, second = (classes, reference) if tool == "combination" else (reference, classes)
        codes, counts, present = _coded(first, second)
        path = out / f"{tool}.tif"
        _write(path, codes, grid, 2147483647)
        area = abs(grid["transform"].a * grid["transform"].e)
        rows = [
            [code, p // 256, p % 256, n, n * area]
            for code, (p, n) in enumerate(zip(present.tolist(), counts.tolist(), strict=True), 1)
        ]
        if tool == "cross":  # the error matrix: reference in rows, classification in columns
            matrix = np.zeros((256, 256), np.int64)
            matrix.ravel()[present] = counts
            rows += [["matrix", *row] for row in matrix[1:7, 1:7].tolist()]
        _write_csv(out / f"{tool}.csv", ["code", "first", "second", "pixels", "area"], rows)
        return [path]
    if tool == "reclassification":
        classes, grid = _read(inputs / "classes.tif")
        lookup = np.arange(256, dtype=np.uint8)
        for old, new in RECLASSIFICATION:
            lookup[old] = new
        path = out / "reclassification.tif"
        _write(path, lookup[classes], grid, grid["nodata"])
        return [path]
    if tool == "mask":
        mask, _ = _read(inputs / "classes.tif")
        masked = np.zeros(256, bool)
        masked[MASK_VALUES] = True
        hit = masked[mask]
        paths = []
        for band in BANDS:
            pixels, grid = _read(inputs / f"{band}.tif")
            pixels[hit] = grid["nodata"]
            paths.append(out / f"mask_{band}.tif")
            _write(paths[-1], pixels, grid, grid["nodata"])
        return paths
    if tool == "neighbor Mean":
        pixels, grid = _read(inputs / "B08.tif")
        side = 2 * NEIGHBOR_SIZE + 1
        # the mean over the window's pixels inside the raster: the constant-padded sum
        # over the share of the window inside (separable, as the window is)
        total = ndi.uniform_filter(pixels.astype(np.float64), side, mode="constant")
        rows = ndi.uniform_filter1d(np.ones(pixels.shape[0]), side, mode="constant")
        cols = ndi.uniform_filter1d(np.ones(pixels.shape[1]), side, mode="constant")
        total /= rows[:, None]
        total /= cols[None, :]
        path = out / "mean_B08.tif"
        _write(path, total.astype(np.float32), grid, grid["nodata"])
        return [path]
    if tool == "neighbor Median":
        pixels, grid = _read(inputs / "B08.tif")
        path = out / "median_B08.tif"
        _write(path, ndi.median_filter(pixels, size=2 * NEIGHBOR_SIZE + 1), grid, grid["nodata"])
        return [path]
    if tool == "label":
        patches, grid = _read(inputs / "patches.tif")
        labels, _ = ndi.label(patches != 0)
        counts = np.bincount(labels.ravel()).astype(np.uint32)
        counts[0] = 0
        path = out / "label.tif"
        _write(path, counts[labels], grid, 0)
        return [path]
    if tool == "report":
        classes, grid = _read(inputs / "classes.tif")
        counts = np.bincount(classes.ravel())
        valid = counts.copy()
        valid[0] = 0  # nodata
        area = abs(grid["transform"].a * grid["transform"].e)
        rows = [
            [value, n, round(100 * n / valid.sum(), 2), n * area]
            for value, n in enumerate(valid.tolist())
            if n
        ]
        header = ["RasterValue", "PixelSum", "Percentage %", "Area [metre^2]"]
        path = out / "report.csv"
        _write_csv(path, header, rows)
        return [path]
    if tool == "zonal stats":
        values, _ = _read(inputs / "B08.tif")
        zones, grid = _read(inputs / "classes.tif")
        values = values.ravel().astype(np.float64)
        zones = zones.ravel()
        count = np.bincount(zones)
        total = np.bincount(zones, weights=values)
        squares = np.bincount(zones, weights=values * values)
        rows = []
        for zone in np.flatnonzero(count):
            if zone == grid["nodata"]:
                continue
            inside = values[zones == zone]
            n = count[zone]
            mean = total[zone] / n
            std = np.sqrt(max(squares[zone] / n - mean * mean, 0.0))
            rows.append([zone, n, mean, np.median(inside), inside.min(), inside.max(), std,
                         total[zone]])  # fmt: skip
        path = out / "zonal_stats.csv"
        _write_csv(path, ["DN", *ZONAL_STATISTICS], rows)
        return [path]
    if tool == "pca":
        from sklearn.decomposition import PCA

        matrix, grid = _stack(inputs, list(BANDS), np.float64)
        pca = PCA(svd_solver="covariance_eigh", copy=False).fit(matrix)
        vectors = pca.components_.T
        # each component's sign: its largest-magnitude loading positive, as rsgrpc's
        largest = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
        vectors = vectors * np.where(largest < 0, -1.0, 1.0)
        matrix -= pca.mean_
        components = (matrix @ vectors).astype(np.float32)
        del matrix
        paths = []
        for k in range(components.shape[1]):
            paths.append(out / f"pca_pc{k + 1}.tif")
            _write(paths[-1], components[:, k].reshape(grid["shape"]), grid, -32768.0)
        return paths
    if tool == "clustering":
        from sklearn.cluster import KMeans

        matrix, grid = _stack(inputs, list(BANDS), np.float64)
        low, high = matrix.min(axis=0), matrix.max(axis=0)
        # "band mean" seeds: spread over each band's range
        seeds = np.array([low + (high - low) / CLUSTERS * (c + 0.5) for c in range(CLUSTERS)])
        kmeans = KMeans(CLUSTERS, init=seeds, n_init=1, max_iter=MAX_ITER, tol=0.0,
                        algorithm="lloyd", copy_x=False).fit(matrix)  # fmt: skip
        path = out / "clustering.tif"
        labels = (kmeans.labels_ + 1).astype(np.uint32).reshape(grid["shape"])
        _write(path, labels, grid, 4294967295)
        return [path]
    if tool == "spectral distance":
        total = None
        for band in BANDS:
            a, grid = _read(inputs / f"{band}.tif")
            b, _ = _read(inputs / f"{band}_2.tif")
            d = a.astype(np.float64) - b
            total = d * d if total is None else total + d * d
        path = out / "spectral_distance.tif"
        _write(path, np.sqrt(total).astype(np.float32), grid, -32768.0)
        return [path]
    raise ValueError(f"unknown tool {tool!r}")


def library_case(tool: str, inputs: str, out: str, repeats: int) -> dict[str, Any]:
    """In a fresh interpreter: the library's version of ``tool``, best of ``repeats``,
    each from an empty output folder; its seconds, CPU seconds, peak RSS and rasters."""
    import scipy.ndimage  # noqa: F401
    import sklearn.cluster  # noqa: F401
    import sklearn.decomposition  # noqa: F401

    runs = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        Path(out).mkdir(parents=True)
        settle()
        runs.append(timed_call(library_tool, tool, Path(inputs), Path(out)))
    best = min(runs, key=lambda run: run.seconds)
    return {
        "seconds": best.seconds,
        "cpu": best.cpu,
        "peak_rss": peak_rss_self(),
        "paths": [str(p) for p in best.value],
        "all_seconds": [run.seconds for run in runs],
    }


# -------------------------------------------------------------------- Remotior's side


@dataclass
class Run:
    """One side's run of one tool."""

    seconds: float | None = None
    cpu: float | None = None
    peak_rss: int | None = None
    peak_pss: int | None = None
    paths: list[str] = field(default_factory=list)
    error: str = ""
    all_seconds: list[float] = field(default_factory=list)  # of each timed run


def _indented(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line if line else line for line in text.splitlines())


def remotior_script(tool: str, inputs: Path, output: Path, processes: int, ram: int) -> str:
    call = CALLS[tool].replace("\n", "\n    ")
    return (
        REMOTIOR_SCRIPT.replace("$BANDS", repr(list(BANDS)))
        .replace("$INPUTS", str(inputs))
        .replace("$OUTPUT", str(output))
        .replace("$PROCESSES", str(processes))
        .replace("$RAM", str(ram))
        .replace("$SETUP", _indented(SETUP, 4))
        .replace("$CALL", call)
    )


def run_remotior(python: str, script: Path, log: Path, env: dict[str, str], timeout: float) -> Run:
    """Run one tool's script; sample its tree's memory and read its CPU seconds from the
    call's start to its end; stop its process group after ``timeout`` seconds."""
    run = Run()
    marks: dict[str, Any] = {}
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            [python, str(script)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            start_new_session=True,  # its workers in its group, to stop them with it
        )
    sampler = TreeMemorySampler(process.pid, interval=0.05)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            # Remotior's progress shares stdout: carriage returns and ESC [K
            line = line.rsplit("\r", 1)[-1].rsplit("\x1b[K", 1)[-1].strip()
            try:
                value = ast.literal_eval(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(value, tuple) and value and value[0] in ("start", "done"):
                if value[0] == "done":
                    sampler.stop()
                marks[value[0]] = (value, tree_cpu_seconds(process.pid, ended_children=True))
                if value[0] == "start":
                    sampler.start()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    reader.join(timeout=10)
    if "start" in marks and "done" not in marks:
        sampler.stop()
    run.peak_rss, run.peak_pss = sampler.peak.rss or None, sampler.peak.pss or None
    if "done" in marks:
        (_, seconds, check, paths), cpu_end = marks["done"]
        run.seconds = seconds
        run.cpu = cpu_end - marks["start"][1]
        run.paths = paths
        if not check:
            run.error = "failed: check False"
    elif timed_out:
        run.error = f"timed out after {timeout:g} s"
    else:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        run.error = f"failed: exit code {process.returncode}: {lines[-1] if lines else '?'}"
    return run


# ---------------------------------------------------------------------- rsgrpc's side


def rsgrpc_namespace(rs: Any, inputs: Path, output: Path) -> dict[str, Any]:
    """The names the calls read, with the session's band sets made from ``inputs``."""
    namespace: dict[str, Any] = {
        "rs": rs,
        "BANDS": list(BANDS),
        "inputs": str(inputs),
        "output_directory": str(output),
    }
    exec(SETUP, namespace)
    return namespace


def rsgrpc_call(code: Any, namespace: dict[str, Any]) -> Any:
    return eval(code, namespace)


def _failure(output: Any) -> str:
    message = ""
    if isinstance(getattr(output, "extra", None), dict):
        message = str(output.extra.get("message", ""))
    return "failed: " + (message.splitlines()[0] if message else "check False")


def _empty(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


# ------------------------------------------------------------------------ the outputs


def _rasters(paths: list[str]) -> list[str]:
    """The rasters of a tool's outputs (not its tables), sorted by name."""
    return sorted(p for p in paths if p.endswith((".tif", ".tiff", ".vrt")))


def compare_rasters(
    ours: list[str], theirs: list[str], margin: int = 0, *, sign_free: bool = False
) -> str:
    """Pixels that differ over all pairs of rasters (a border of ``margin`` pixels left
    out), pixels nodata on one side only among them, and the largest absolute difference
    where both have data; with ``sign_free``, each of ``theirs`` is first negated if it
    is closer to the opposite of ours (a principal component's sign is a convention)."""
    ours, theirs = _rasters(ours), _rasters(theirs)
    if not ours or len(ours) != len(theirs):
        return f"{len(ours)} vs {len(theirs)} rasters"
    differing = one_side = 0
    largest = 0.0
    for a_path, b_path in zip(ours, theirs, strict=True):
        with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
            if (a.width, a.height) != (b.width, b.height):
                return f"sizes differ: {a.width}x{a.height} vs {b.width}x{b.height}"
            window = Window(margin, margin, a.width - 2 * margin, a.height - 2 * margin)
            x = a.read(1, window=window).astype(np.float64)
            y = b.read(1, window=window).astype(np.float64)
            x_nodata = np.isnan(x) | (x == a.nodata if a.nodata is not None else False)
            y_nodata = np.isnan(y) | (y == b.nodata if b.nodata is not None else False)
            both = ~x_nodata & ~y_nodata
            if sign_free and np.dot(x[both], y[both]) < 0:
                y = -y
            differ = both & (x != y)
            one_side += int(np.count_nonzero(x_nodata != y_nodata))
            differing += int(np.count_nonzero(differ))
            if differ.any():
                largest = max(largest, float(np.abs(x - y)[differ].max()))
    text = f"{differing + one_side:>9d} {largest:>9.3g}"
    return text + (f" ({one_side} nodata 1 side)" if one_side else "")


def _table(path: str) -> dict[str, dict[str, float]]:
    """A CSV table's numbers: {first column's value: {column name: value}}."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, table = rows[0], {}
    for row in rows[1:]:
        if len(row) == len(header) and row:
            try:
                table[row[0]] = {name: float(x) for name, x in zip(header, row, strict=True)}
            except ValueError:
                continue
    return table


def compare_tables(ours: list[str], theirs: list[str]) -> str:
    """The rows and cells (of the columns both have) of two CSV tables that differ, and
    the largest relative difference among the cells."""
    ours_csv = [p for p in ours if p.endswith(".csv")]
    theirs_csv = [p for p in theirs if p.endswith(".csv")]
    if not ours_csv or not theirs_csv:
        return "no table"
    a, b = _table(ours_csv[0]), _table(theirs_csv[0])
    rows = set(a) ^ set(b)
    cells = differing = 0
    largest = 0.0
    for key in set(a) & set(b):
        for name in set(a[key]) & set(b[key]):
            x, y = a[key][name], b[key][name]
            cells += 1
            if x != y:
                differing += 1
                largest = max(largest, abs(x - y) / max(abs(x), abs(y)))
    text = f"table: {differing}/{cells} cells, max rel {largest:.2g}"
    return text + (f", {len(rows)} rows on one side" if rows else "")


# ------------------------------------------------------------------------------- main


def _seconds(run: Run | None) -> str:
    if run is None or run.seconds is None:
        return f"{'-':>9}"
    return f"{run.seconds:9.2f}"


def _progress(run: Run) -> str:
    """A run's seconds, each timed run's when there were several, or its error."""
    if run.error:
        return run.error
    runs = ", ".join(f"{s:.2f}" for s in run.all_seconds)
    return f"{run.seconds:9.2f} s" + (f"  (runs: {runs})" if len(run.all_seconds) > 1 else "")


def _ratio(a: Run | None, b: Run | None) -> str:
    if a is None or b is None or not a.seconds or not b.seconds or a.error or b.error:
        return f"{'-':>8}"
    return f"{a.seconds / b.seconds:7.2f}x"


def _memory(n: int | None) -> str:
    return f"{'-':>6}" if n is None else f"{n / MIB:6.0f}"


def _cpu(run: Run | None) -> str:
    return f"{'-':>7}" if run is None or run.cpu is None else f"{run.cpu:7.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.set_defaults(size=DEFAULT_SIZE)
    parser.add_argument(
        "--remotior-python",
        default=os.environ.get(ENVIRONMENT_VARIABLE),
        help=f"a Python with Remotior Sensus and GDAL (default: ${ENVIRONMENT_VARIABLE})",
    )
    parser.add_argument("--remotior-timeout", type=float, default=600.0,
                        help="seconds Remotior may take per tool")  # fmt: skip
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"comma-separated, of: {', '.join(TOOLS)}")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=2,
                        help="rsgrpc's and the library's timed runs (the best counts)")  # fmt: skip
    parser.add_argument("--processes", type=int, default=2, help="n_processes of both sessions")
    parser.add_argument("--ram", type=int, default=2048, help="available_ram (MB) of both")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in CALLS]
    if unknown:
        parser.error(f"unknown tools {unknown}; choose from {', '.join(TOOLS)}")

    import scipy
    import sklearn

    import rsgrpc.client as remotior_sensus

    temporary = args.workdir is None
    workdir, outputs = make_workdir(args.workdir)
    inputs = workdir / f"tools-inputs-{args.size}"
    warm_inputs = workdir / f"tools-inputs-{WARM_SIZE}"
    root = outputs / "tools"
    others = OtherCpu()
    print("rsgrpc's raster tools against Remotior Sensus and plain libraries, end to end")
    print(f"machine:   {machine(scipy=scipy.__version__, sklearn=sklearn.__version__)}")
    print(f"load:      {machine_load()}")
    made = make_inputs(inputs, args.size)
    make_inputs(warm_inputs, WARM_SIZE)
    print(f"inputs:    {args.size}x{args.size}: 8 uint16 bands (2 dates), 6-class uint8 "
          f"classification and reference, patches for label "
          + (f"(made in {made:.1f} s)" if made else "(reused)"))  # fmt: skip
    print(f"sessions:  n_processes={args.processes}, available_ram={args.ram} MB; "
          f"rsgrpc and library best of {args.repeats}, Remotior once")  # fmt: skip

    results: dict[str, dict[str, Run]] = {tool: {} for tool in tools}

    # the library, each tool in a fresh interpreter
    for tool in tools:
        out = root / "library" / tool.replace(" ", "_")
        try:
            child = run_in_child(library_case, tool, str(inputs), str(out), args.repeats).value
            results[tool]["library"] = Run(child["seconds"], child["cpu"], child["peak_rss"],
                                           None, child["paths"],
                                           all_seconds=child["all_seconds"])  # fmt: skip
        except Exception as error:  # noqa: BLE001 - reported, the others still run
            results[tool]["library"] = Run(error=f"failed: {str(error).splitlines()[0]}")
        print(f"library   {tool:<18} {_progress(results[tool]['library'])}", flush=True)

    # rsgrpc, one session for all tools
    with rsgrpc_server(workdir, workdir / "server.log") as (address, server):
        print(f"rsgrpc:    server {address}, data root {workdir}")
        rs = remotior_sensus.Session(
            n_processes=args.processes, available_ram=args.ram, target=address
        )
        warm_out = root / "rsgrpc-warm"
        warm = rsgrpc_namespace(rs, warm_inputs, warm_out)
        for tool in tools:
            code = compile(CALLS[tool], tool, "eval")
            error = ""
            for _ in range(2):  # both workers, most likely
                _empty(warm_out)
                output = rsgrpc_call(code, warm)
                if not output.check:
                    error = _failure(output)
                    break
            if error:
                results[tool]["rsgrpc"] = Run(error=error)
                print(f"rsgrpc    {tool:<18} {error}", flush=True)
                continue
            out = root / "rsgrpc" / tool.replace(" ", "_")
            namespace = rsgrpc_namespace(rs, inputs, out)
            measured = measure_tree(server.pid, rsgrpc_call, code, namespace,
                                    repeats=args.repeats, prepare=lambda o=out: _empty(o))  # fmt: skip
            output = measured.value
            run = Run(measured.seconds, measured.cpu, measured.peak.rss, measured.peak.pss,
                      list(output.paths or []), all_seconds=list(measured.all_seconds))  # fmt: skip
            if not output.check:
                run = Run(error=_failure(output))
            results[tool]["rsgrpc"] = run
            print(f"rsgrpc    {tool:<18} {_progress(run)}", flush=True)
        rs.close()

    # Remotior, an interpreter per tool
    why_not = remotior_usable(args.remotior_python)
    if why_not:
        print(f"Remotior:  not run: {why_not}")
    else:
        print(f"Remotior:  {args.remotior_python}, its temporary files in the workdir, "
              f"--remotior-timeout {args.remotior_timeout:g} s a tool")  # fmt: skip
        for tool in tools:
            out = root / "remotior" / tool.replace(" ", "_")
            _empty(out)
            script = workdir / "remotior_tool.py"
            script.write_text(remotior_script(tool, inputs, out, args.processes, args.ram))
            remotior_temp = Path(tempfile.mkdtemp(prefix="remotior-temp-", dir=workdir))
            try:
                run = run_remotior(
                    args.remotior_python,
                    script,
                    workdir / f"remotior-{tool.replace(' ', '_')}.log",
                    remotior_environment(remotior_temp),
                    args.remotior_timeout,
                )
            finally:
                shutil.rmtree(remotior_temp, ignore_errors=True)
            results[tool]["Remotior"] = run
            print(f"Remotior  {tool:<18} {_progress(run)}", flush=True)
            settle()

    print()
    print("seconds (wall); differing = pixels that differ from rsgrpc's output "
          "(nodata on one side included), max|d| where both have data")  # fmt: skip
    print(f"{'tool':<18} {'rsgrpc':>9} {'Remotior':>9} {'library':>9} {'R/rsgrpc':>8} "
          f"{'rsg/lib':>8}  {'vs library: differing max|d|':<30} vs Remotior: differing max|d|")  # fmt: skip
    notes = []
    for tool in tools:
        ours = results[tool].get("rsgrpc")
        remotior = results[tool].get("Remotior")
        library = results[tool].get("library")
        line = (f"{tool:<18} {_seconds(ours)} {_seconds(remotior)} {_seconds(library)} "
                f"{_ratio(remotior, ours)} {_ratio(ours, library)}  ")  # fmt: skip
        usable = ours is not None and not ours.error
        margin = MARGIN.get(tool, 0)
        library_usable = usable and library is not None and not library.error
        if tool in TABLES and library_usable:
            versus_library = compare_tables(ours.paths, library.paths)
        elif library_usable:
            versus_library = compare_rasters(ours.paths, library.paths, margin)
        else:
            versus_library = "-"
        if not SAME_AS_REMOTIOR[tool]:
            versus_remotior = "(not the same codes)"
        elif tool in TABLES and usable and remotior is not None and not remotior.error:
            versus_remotior = compare_tables(ours.paths, remotior.paths)
        elif usable and remotior is not None and not remotior.error:
            versus_remotior = compare_rasters(
                ours.paths, remotior.paths, margin, sign_free=tool in SIGN_FREE
            )
            if tool in SIGN_FREE:
                versus_remotior += " (signs aligned)"
        else:
            versus_remotior = "-"
        if margin:
            versus_library += f" *{margin}"
            versus_remotior += f" *{margin}" if versus_remotior != "-" else ""
        print(line + f"{versus_library:<30} {versus_remotior}")
        for side, run in results[tool].items():
            if run.error:
                notes.append(f"  {tool}: {side} {run.error}")
    if any(MARGIN.get(tool) for tool in tools):
        print("*n: a border of n pixels left out (scipy pads the raster; rsgrpc and "
              "Remotior take the window's pixels inside it)")  # fmt: skip
    print()
    print("CPU seconds of the call, and peak memory (MiB): rsgrpc's server tree (RSS, PSS), "
          "Remotior's interpreter and workers (RSS, PSS), the library's process (peak RSS)")  # fmt: skip
    print(f"{'tool':<18} {'rsgrpc CPU':>10} {'Remotior CPU':>12} {'library CPU':>11}   "
          f"{'rsgrpc RSS':>10} {'PSS':>6} {'Remotior RSS':>12} {'PSS':>6} {'library':>7}")  # fmt: skip
    for tool in tools:
        ours = results[tool].get("rsgrpc")
        remotior = results[tool].get("Remotior")
        library = results[tool].get("library")
        print(f"{tool:<18} {_cpu(ours):>10} {_cpu(remotior):>12} {_cpu(library):>11}   "
              f"{_memory(ours.peak_rss if ours else None):>10} "
              f"{_memory(ours.peak_pss if ours else None)} "
              f"{_memory(remotior.peak_rss if remotior else None):>12} "
              f"{_memory(remotior.peak_pss if remotior else None)} "
              f"{_memory(library.peak_rss if library else None):>7}")  # fmt: skip
    if notes:
        print()
        print("failures:")
        print("\n".join(notes))
    print()
    print(f"load after: {machine_load()}")
    print(f"during:     {others.report()}")
    clean_workdir(workdir, outputs, keep=args.keep, temporary=temporary)
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
