"""Band calc (NDVI) end to end through rsgrpc, against rasterio+numpy and the I/O floor.

    python benchmarks/bench_band_calc.py --workdir /some/scratch/dir

Inputs: two 10980 x 10980 uint16 bands (red, nir), tiled 512, DEFLATE with
the horizontal predictor, nodata 0, generated once into the workdir and
reused. Pixels come from a smooth field plus per-pixel noise from an integer
hash of (row, col): deterministic, as compressible as noisy imagery, and
fast to make (no random generator per pixel).

Expression: ``("nir" - "red") / ("nir" + "red")`` to float32, nodata -32768.

Runs, each on the same files, for each output profile (DEFLATE at GDAL's
default level, and rsgrpc's DEFAULT_PROFILE):

- ours  the rsgrpc server as a subprocess, a session of N processes and
        `available_ram_mib` from --ram (each value gets its own server), timed
        from the BandCalc call to the operation done, then run again for the
        peak memory of the server's whole process tree, sampled every 50 ms;
- (a)   one process, rasterio + numpy masked arrays, block by block, GDAL's
        NUM_THREADS not set;
- (b)   as (a), with GDAL's threads (creation option num_threads=ALL_CPUS and
        GDAL_NUM_THREADS=ALL_CPUS);
- (c)   the I/O floor: read and decode both inputs, encode and write as many
        output bytes (the red band cast to float32), no computation, GDAL's
        threads;
- (c')  as (c), but writing the NDVI itself, computed beforehand and held in
        memory: the very bytes ours writes, so the same encoding work.

(c), (c') and ours run --repeats times (5) and the fastest counts, with every
run's seconds printed: on a shared VM one run can take twice as long as the
next. (c') also runs after each of ours' timed runs, and ours is compared
with the fastest of those too: the floor and ours measured in the same minutes,
as many runs each. (a) and (b), far slower, run once.

Then a profile sweep on the (c') path over a crop: each codec, level and
predictor, seconds and output size. Ratios are printed; nothing is asserted.

``--kernel-only`` instead times the compute alone, in memory, on one thread:
rsgrpc's compiled NDVI (statistics included) against a hand-fused numba loop
and numpy masked arrays, in ns per pixel, on a ``--kernel-size`` square tile of
the same scene; it writes no file.
Outputs go under --workdir (a temporary directory by default), never into
the repository.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MIB,
    TreeMemory,
    benchmark_parser,
    clean_workdir,
    clear_output,
    machine,
    machine_load,
    make_once,
    make_workdir,
    measure_tree,
    mib,
    orbit_edge_mask,
    pixel_hash,
    rsgrpc_server,
    scene_grid,
    settle,
    smooth_field,
    timed_call,
)

from rsgrpc.engine.raster_io import DEFAULT_PROFILE, OutputProfile  # noqa: E402

BLOCK = 512
EXPRESSION = '("nir" - "red") / ("nir" + "red")'
OUT_NODATA = -32768.0
OUT_DTYPE = "float32"
# GDAL's block cache in the baselines: room for GDAL's threads to encode the blocks
# in flight.
GDAL_CACHE_BYTES = 64 * MIB
CRS = "EPSG:32633"
FLOOR_NDVI = "c'"
# The first call's inputs: several tiles at any budget, so that every worker compiles the
# kernel then, not in the measured runs.
WARM_SIZE = 4096
TRANSFORM = rasterio.Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000040.0)


# --------------------------------------------------------------------------- data


def _hash_noise(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """Deterministic per-pixel noise in [-64, 63] from an integer hash of (row, col)."""
    return (pixel_hash(rows, cols, seed, rounds=1) & np.uint32(0x7F)).astype(np.int32) - 64


def _strip(row0: int, rows: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Red and nir for rows [row0, row0 + rows) of a size x size scene."""
    y, x, iy, ix = scene_grid(row0, rows, size)
    veg = np.clip(smooth_field(y, x), 0.0, 1.0)
    red = (300.0 + 2500.0 * (1.0 - veg)).astype(np.int32) + _hash_noise(iy, ix, 1)
    nir = (1500.0 + 3000.0 * veg).astype(np.int32) + _hash_noise(iy, ix, 2)
    # Outside the swath (an orbit edge) both bands are nodata; a strip of
    # red alone is nodata too, so the masks of the inputs differ.
    outside = np.broadcast_to(orbit_edge_mask(y, x), red.shape)
    red[outside] = 0
    nir[outside] = 0
    red[((y > 3000) & (y < 3500) & (x > 1000) & (x < 4000))] = 0
    return np.clip(red, 0, 65535).astype(np.uint16), np.clip(nir, 0, 65535).astype(np.uint16)


def generate_inputs(folder: Path, size: int) -> tuple[Path, Path, float]:
    """The red and nir GeoTIFFs of a size x size scene; made once, reused after."""
    red_path, nir_path = folder / f"red_{size}.tif", folder / f"nir_{size}.tif"
    seconds = make_once([red_path, nir_path], lambda red, nir: _write_inputs(red, nir, size))
    return red_path, nir_path, seconds


def _write_inputs(red_path: Path, nir_path: Path, size: int) -> None:
    meta = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint16",
        "nodata": 0,
        "crs": CRS,
        "transform": TRANSFORM,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "predictor": 2,
        "num_threads": "ALL_CPUS",
    }
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        rasterio.open(red_path, "w", **meta) as red_ds,
        rasterio.open(nir_path, "w", **meta) as nir_ds,
    ):
        for row0 in range(0, size, BLOCK):
            rows = min(BLOCK, size - row0)
            red, nir = _strip(row0, rows, size)
            window = Window(0, row0, size, rows)
            red_ds.write(red, 1, window=window)
            nir_ds.write(nir, 1, window=window)


# ---------------------------------------------------------------------- baselines


def creation_options(profile: OutputProfile, *, threads: bool) -> dict[str, object]:
    """rsgrpc's writer options for `profile`, with or without GDAL's threads."""
    options = profile.creation_options(OUT_DTYPE)
    if not threads:
        options.pop("num_threads", None)
    return options


def _out_meta(src: rasterio.DatasetReader, profile: OutputProfile, *, threads: bool) -> dict:
    return {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": 1,
        "dtype": OUT_DTYPE,
        "nodata": OUT_NODATA,
        "crs": src.crs,
        "transform": src.transform,
        **creation_options(profile, threads=threads),
    }


def _env(*, threads: bool) -> rasterio.Env:
    options: dict[str, object] = {"GDAL_CACHEMAX": GDAL_CACHE_BYTES}
    if threads:
        options["GDAL_NUM_THREADS"] = "ALL_CPUS"
    return rasterio.Env(**options)


def _blocks(height: int, width: int, edge: int) -> Iterator[Window]:
    for row in range(0, height, edge):
        for col in range(0, width, edge):
            yield Window(col, row, min(edge, width - col), min(edge, height - row))


def ndvi_masked(red: np.ma.MaskedArray, nir: np.ma.MaskedArray) -> np.ndarray:
    """NDVI with numpy masked semantics: masked inputs, a zero sum or a non-finite
    result give nodata. float64 arithmetic, as rsgrpc's kernel, rounded to float32."""
    r = red.astype(np.float64)
    n = nir.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.ma.masked_invalid((n - r) / (n + r))
    return result.filled(OUT_NODATA).astype(np.float32)


def run_numpy(red: Path, nir: Path, out: Path, profile: OutputProfile, *, threads: bool) -> None:
    """(a) and (b): block by block, read both windows, compute, write."""
    with (
        _env(threads=threads),
        rasterio.open(red) as red_ds,
        rasterio.open(nir) as nir_ds,
        rasterio.open(out, "w", **_out_meta(red_ds, profile, threads=threads)) as dst,
    ):
        for window in _blocks(red_ds.height, red_ds.width, BLOCK):
            r = red_ds.read(1, window=window, masked=True)
            n = nir_ds.read(1, window=window, masked=True)
            dst.write(ndvi_masked(r, n), 1, window=window)


def run_floor(
    red: Path, nir: Path, out: Path, profile: OutputProfile, ndvi: np.ndarray | None
) -> None:
    """(c) and (c'): read and decode both inputs in strips of whole block rows (so
    GDAL's threads decode in parallel), write float32 of the same size: the red band
    cast (c), or the NDVI computed beforehand (c'), with GDAL's threads."""
    with (
        _env(threads=True),
        rasterio.open(red) as red_ds,
        rasterio.open(nir) as nir_ds,
        rasterio.open(out, "w", **_out_meta(red_ds, profile, threads=True)) as dst,
    ):
        for row in range(0, red_ds.height, BLOCK):
            window = Window(0, row, red_ds.width, min(BLOCK, red_ds.height - row))
            r = red_ds.read(1, window=window)
            nir_ds.read(1, window=window)
            data = r.astype(np.float32) if ndvi is None else ndvi[row : row + window.height]
            dst.write(data, 1, window=window)


def read_all(path: Path) -> np.ndarray:
    with _env(threads=True), rasterio.open(path) as ds:
        return ds.read(1)


# -------------------------------------------------------------------------- kernel


def _hand_fused_ndvi():
    """NDVI of uint16 bands with nodata 0, to float32 with nodata -32768, written as one
    numba loop by hand: what the compiled expression should match."""
    import numba

    @numba.njit(nogil=True, error_model="numpy")
    def ndvi(red, nir, out, nodata):
        rows, cols = out.shape
        for i in range(rows):
            for j in range(cols):
                r, n = red[i, j], nir[i, j]
                if r == 0 or n == 0:
                    out[i, j] = nodata
                    continue
                rf, nf = np.float64(r), np.float64(n)
                out[i, j] = (nf - rf) / (nf + rf)
                if not np.isfinite(out[i, j]):
                    out[i, j] = nodata

    return ndvi


def numpy_statistics(out: np.ndarray, nodata: float) -> tuple[int, float, float, float, float]:
    """Count, minimum, maximum, mean and squared deviations of the valid pixels, in numpy:
    what taking the statistics apart from the kernel costs."""
    valid = ~np.isnan(out) & (out != nodata)
    values = out[valid].astype(np.float64)
    mean = float(values.mean())
    return (
        values.size,
        float(values.min()),
        float(values.max()),
        mean,
        float(((values - mean) ** 2).sum()),
    )


def run_kernel_micro(size: int, repeats: int) -> None:
    """ns per pixel of the compute alone, one thread, best of `repeats`, no I/O."""
    import numba
    from rsgrpc_kernels.bandcalc import compile_kernel, evaluate
    from rsgrpc_kernels.expression import parse_expression

    numba.set_num_threads(1)
    red, nir = _strip(0, size, size)
    expression = parse_expression(EXPRESSION, ["nir", "red"])
    inputs = [nir, red] if expression.input_names == ("nir", "red") else [red, nir]
    pixels = red.size
    started = time.perf_counter()
    compile_kernel(expression, [red.dtype, nir.dtype], OUT_DTYPE)
    compile_seconds = time.perf_counter() - started
    out = np.empty(red.shape, np.float32)
    reference = np.empty_like(out)
    hand_fused = _hand_fused_ndvi()
    started = time.perf_counter()
    hand_fused(red, nir, reference, np.float32(OUT_NODATA))
    hand_compile = time.perf_counter() - started

    def best(fn) -> float:
        fn()
        return min(timed_call(fn).seconds for _ in range(repeats)) / pixels * 1e9

    runs = {
        "rsgrpc kernel, statistics included": lambda: evaluate(
            expression, inputs, [0, 0], output_dtype=OUT_DTYPE, out=out
        ),
        "hand-fused numba loop, no statistics": lambda: hand_fused(
            red, nir, reference, np.float32(OUT_NODATA)
        ),
        "numpy masked arrays, no statistics": lambda: ndvi_masked(
            np.ma.masked_equal(red, 0), np.ma.masked_equal(nir, 0)
        ),
        "numpy statistics of the output": lambda: numpy_statistics(out, OUT_NODATA),
    }
    print(f"kernel only: NDVI of 2 x {size}x{size} uint16 -> float32, one thread, "
          f"best of {repeats}; machine: {machine()}")  # fmt: skip
    print(f"machine load: {machine_load()}")
    times = {label: best(run) for label, run in runs.items()}
    if not np.array_equal(out, reference) or not np.array_equal(out, ndvi_masked(
        np.ma.masked_equal(red, 0), np.ma.masked_equal(nir, 0))):  # fmt: skip
        raise RuntimeError("the kernel's NDVI differs from the references")
    for label, ns in times.items():
        print(f"  {label:<38} {ns:6.2f} ns/px")
    kernel = times["rsgrpc kernel, statistics included"]
    print(
        f"  kernel (with statistics) / hand-fused (without) "
        f"{kernel / times['hand-fused numba loop, no statistics']:.2f}x; "
        f"numpy / kernel {times['numpy masked arrays, no statistics'] / kernel:.1f}x"
    )
    print(f"  first compile in this process: rsgrpc kernel {compile_seconds:.2f} s (with the "
          f"shared statistics helpers), hand-fused loop {hand_compile:.2f} s")  # fmt: skip


# ---------------------------------------------------------------------------- ours


@dataclass
class OursRun:
    seconds: float
    cpu: float  # CPU seconds of the server's process tree during the run
    size: int
    peak: TreeMemory
    idle: TreeMemory
    all_seconds: tuple[float, ...]


def run_ours(
    session,
    server_pid: int,
    red: str,
    nir: str,
    out: str,
    out_file: Path,
    compression: str | None,
    repeats: int = 1,
    between=None,
) -> OursRun:
    run = measure_tree(
        server_pid,
        session.band_calc,
        repeats=repeats,
        between=between,
        prepare=lambda: clear_output(out_file),
        input_raster_list=[nir, red],
        input_name_list=["nir", "red"],
        expression_string=EXPRESSION,
        output_path=out,
        output_datatype=OUT_DTYPE,
        output_nodata=OUT_NODATA,
        overwrite=True,
        compression=compression,
    )
    if not run.value.check:
        raise RuntimeError(f"band calc failed: {run.value.extra}")
    return OursRun(
        run.seconds, run.cpu, out_file.stat().st_size, run.peak, run.idle, run.all_seconds
    )


# -------------------------------------------------------------------------- report


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MiB"


def _all_runs(seconds) -> str:
    return f"  (runs: {', '.join(f'{s:.2f}' for s in seconds)} s)" if len(seconds) > 1 else ""


def profile_name(profile: OutputProfile) -> str:
    options = profile.creation_options(OUT_DTYPE)
    if profile.compression == "none":
        return "none"
    level = profile.level or "default"
    return f"{profile.compression} level {level} predictor {options['predictor']}"


def sweep_profiles() -> list[OutputProfile]:
    profiles = [OutputProfile("none")]
    for predictor in (1, 2, 3):
        profiles += [OutputProfile("deflate", level, predictor) for level in (1, 6)]
        profiles += [OutputProfile("zstd", level, predictor) for level in (1, 3, 9)]
        profiles.append(OutputProfile("lzw", 0, predictor))
    return profiles


def run_sweep(red: Path, nir: Path, folder: Path, crop: int, repeats: int) -> None:
    """Each profile on the (c') path over a crop: best of `repeats` seconds, and size."""
    with rasterio.open(red) as ds:
        height, width = ds.height, ds.width
    crop = min(crop, height, width)
    row = ((height - crop) // 2) // BLOCK * BLOCK
    col = ((width - crop) // 2) // BLOCK * BLOCK
    window = Window(col, row, crop, crop)
    crop_red, crop_nir = folder / "crop_red.tif", folder / "crop_nir.tif"
    for source, target in ((red, crop_red), (nir, crop_nir)):
        with rasterio.open(source) as src:
            meta = {**src.meta, "width": crop, "height": crop,
                    "transform": src.window_transform(window), "tiled": True,
                    "blockxsize": BLOCK, "blockysize": BLOCK, "compress": "deflate",
                    "predictor": 2}  # fmt: skip
            with rasterio.open(target, "w", **meta) as dst:
                dst.write(src.read(1, window=window), 1)
    with rasterio.open(crop_red) as r, rasterio.open(crop_nir) as n:
        ndvi = ndvi_masked(r.read(1, masked=True), n.read(1, masked=True))
    raw = ndvi.nbytes
    print(f"\nProfile sweep: (c') path over a {crop}x{crop} crop at row {row}, col {col} "
          f"({raw / MIB:.1f} MiB of float32 NDVI), GDAL threads, best of {repeats}")  # fmt: skip
    print(f"  {'profile':<32} {'seconds':>8} {'MB/s raw':>9} {'size':>13} {'ratio':>6}")
    out = folder / "sweep.tif"
    for profile in sweep_profiles():
        best = min(
            timed_call(run_floor, crop_red, crop_nir, out, profile, ndvi).seconds
            for _ in range(repeats)
        )
        size = out.stat().st_size
        print(f"  {profile_name(profile):<32} {best:8.3f} {raw / best / 1e6:9.0f} "
              f"{mib(size)} {raw / size:6.2f}")  # fmt: skip
    out.unlink()


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.add_argument(
        "--ram",
        type=int,
        nargs="+",
        default=[640, 2048],
        help="available_ram_mib of the session; one server per value",
    )
    parser.add_argument("--processes", type=int, default=2, help="session process count")
    parser.add_argument(
        "--sweep-crop",
        type=int,
        default=2048,
        help="edge of the sweep's crop (the full raster if larger)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs of (c), (c') and ours; the fastest counts"
    )
    parser.add_argument("--sweep-repeats", type=int, default=3)
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    parser.add_argument(
        "--kernel-only",
        action="store_true",
        help="time the compute alone in memory (ns per pixel), then stop",
    )
    parser.add_argument("--kernel-size", type=int, default=4096, help="kernel-only tile edge")
    args = parser.parse_args(argv)  # fmt: skip
    if args.kernel_only:
        run_kernel_micro(args.kernel_size, args.sweep_repeats)
        return 0

    os.environ.pop("GDAL_NUM_THREADS", None)  # (a) runs without GDAL's threads
    workdir, outputs = make_workdir(args.workdir)
    total_started = time.perf_counter()

    print("rsgrpc band calc benchmark")
    print(f"machine:    {machine()}")
    print(f"workdir:    {workdir}")
    load_before = machine_load()
    print(f"machine load: {load_before}")
    print(f"expression: {EXPRESSION} -> {OUT_DTYPE}, nodata {OUT_NODATA:g}")
    red, nir, made = generate_inputs(workdir / "inputs", args.size)
    print(f"inputs:     2 x {args.size}x{args.size} uint16, tiled {BLOCK}, DEFLATE predictor 2, "
          f"nodata 0; red {mib(red.stat().st_size).strip()}, nir "
          f"{mib(nir.stat().st_size).strip()}; "
          + (f"generated in {made:.1f} s (hash noise, no RNG)" if made else "reused"))  # fmt: skip
    warm_red, warm_nir, _ = generate_inputs(workdir / "inputs", WARM_SIZE)
    settle()

    profiles = {
        "deflate": OutputProfile("deflate"),  # GDAL's default level, predictor 3
        "default": DEFAULT_PROFILE,
    }
    times: dict[tuple[str, str], float] = {}
    cpus: dict[tuple[str, str], float] = {}
    sizes: dict[tuple[str, str], int] = {}
    ndvi: np.ndarray | None = None
    # (c') again, between ours' timed runs at each RAM setting: the floor of those runs.
    paired_floor: dict[tuple[int, str], float] = {}

    # Baselines, in this process, with no server running.
    for key, profile in profiles.items():
        for name in ("a", "b", "c", FLOOR_NDVI):
            if name == FLOOR_NDVI and ndvi is None:
                ndvi = read_all(outputs / f"a_{key}.tif")  # the NDVI, held in memory
            out = outputs / f"{name.replace(FLOOR_NDVI, 'cp')}_{key}.tif"
            if name in ("a", "b"):
                call = (run_numpy, red, nir, out, profile)
                kwargs = {"threads": name == "b"}
            else:
                call = (run_floor, red, nir, out, profile, ndvi if name == FLOOR_NDVI else None)
                kwargs = {}
            runs = []
            for _ in range(1 if name in ("a", "b") else args.repeats):
                clear_output(out)
                runs.append(timed_call(*call, **kwargs))
                settle()
            run = min(runs, key=lambda r: r.seconds)
            times[name, key], cpus[name, key] = run.seconds, run.cpu
            sizes[name, key] = out.stat().st_size
            print(f"  ({name:<2}) {key:<8} {times[name, key]:7.2f} s  "
                  f"(CPU {cpus[name, key]:6.2f} s)  {mib(sizes[name, key])}"
                  f"{_all_runs([r.seconds for r in runs])}",
                  flush=True)  # fmt: skip

    # Ours, one fresh server per RAM setting.
    from rsgrpc.client import Session

    ours: dict[tuple[int, str], OursRun] = {}
    first_call: dict[int, float] = {}
    mismatch: dict[int, float] = {}
    plans: dict[int, list[str]] = {}
    for ram in args.ram:
        with rsgrpc_server(workdir, outputs / f"server_{ram}.log") as (address, server):
            # Under 1000 is GB, as in Remotior: give smaller budgets in GB.
            session = Session(
                n_processes=args.processes,
                available_ram=ram if ram >= 1000 else ram / 1024,
                target=address,
            )
            try:
                # The first call compiles the expression in each worker (numba).
                warm = run_ours(session, server.pid, str(warm_red.relative_to(workdir)),
                                str(warm_nir.relative_to(workdir)), "outputs/warm.tif",
                                outputs / "warm.tif", None)  # fmt: skip
                first_call[ram] = warm.seconds
                for key, compression in (("deflate", "deflate"), ("default", None)):
                    out = f"outputs/ours_{ram}_{key}.tif"

                    floors: list[float] = []

                    def floor_again(key=key, floors=floors) -> None:
                        clear_output(outputs / f"cp_{key}.tif")
                        floors.append(timed_call(run_floor, red, nir, outputs / f"cp_{key}.tif",
                                                 profiles[key], ndvi).seconds)  # fmt: skip
                        settle()

                    run = run_ours(session, server.pid, str(red.relative_to(workdir)),
                                   str(nir.relative_to(workdir)), out, workdir / out,
                                   compression, args.repeats, floor_again)  # fmt: skip
                    ours[ram, key] = run
                    settle()
                    print(f"  (ours ram {ram}) {key:<8} {run.seconds:7.2f} s  "
                          f"(CPU {run.cpu:6.2f} s)  {mib(run.size)}  "
                          f"peak RSS {run.peak.rss_mib:.0f} MiB, PSS {_mib(run.peak.pss_mib)}, "
                          f"resident set {_mib(run.peak.resident_mib)}"
                          f"{_all_runs(run.all_seconds)}",
                          flush=True)  # fmt: skip
                    paired_floor[ram, key] = min(floors)
                    print(f"  (c') {key:<8} between ours' runs {min(floors):7.2f} s"
                          f"{_all_runs(floors)}", flush=True)  # fmt: skip
                mismatch[ram] = _compare(workdir / f"outputs/ours_{ram}_default.tif", ndvi)
                plans[ram] = [m for m in session.log() if "tiles of" in m]
            finally:
                session.close()

    if not args.no_sweep:
        run_sweep(red, nir, outputs, args.sweep_crop, args.sweep_repeats)

    # The report.
    print("\n" + "=" * 78)
    print(f"NDVI of 2 x {args.size}x{args.size} uint16 -> float32; machine: {machine()}")
    print(f"machine load: {load_before}")
    print(
        f"ours: {args.processes} processes; outputs: tiled {BLOCK}, BIGTIFF=IF_SAFER; "
        "CPU = user + system seconds of all threads (ours: the server's process tree)"
    )
    for key, profile in profiles.items():
        print(f"\nOutput profile '{key}': {profile_name(profile)}")
        print(f"  {'run':<34} {'seconds':>8} {'CPU s':>8} {'size':>13}")
        labels = {
            "a": "(a)  rasterio+numpy, 1 thread",
            "b": "(b)  rasterio+numpy, GDAL threads",
            "c": "(c)  I/O floor, red as float32",
            "c'": "(c') I/O floor, the NDVI bytes",
        }
        for name, label in labels.items():
            print(
                f"  {label:<34} {times[name, key]:8.2f} {cpus[name, key]:8.2f} "
                f"{mib(sizes[name, key])}"
            )
        for ram in args.ram:
            run = ours[ram, key]
            print(
                f"  {f'ours, available_ram_mib {ram}':<34} {run.seconds:8.2f} {run.cpu:8.2f} "
                f"{mib(run.size)}"
            )
        for ram in args.ram:
            s = ours[ram, key].seconds
            print(f"  ratios at ram {ram}: a/ours {times['a', key] / s:.2f}x  "
                  f"b/ours {times['b', key] / s:.2f}x  ours/c {s / times['c', key]:.2f}x  "
                  f"ours/c' {s / times[FLOOR_NDVI, key]:.2f}x, "
                  f"{s / paired_floor[ram, key]:.2f}x against (c') between ours' runs")  # fmt: skip
    print("\nOur default profile against (b) with DEFLATE:")
    for ram in args.ram:
        s = ours[ram, "default"].seconds
        print(f"  ram {ram}: b(deflate)/ours(default) {times['b', 'deflate'] / s:.2f}x; "
              f"size {ours[ram, 'default'].size / sizes['b', 'deflate']:.2f} of (b)'s")  # fmt: skip
    print("\nPeak memory of the server's process tree (server + workers): RSS and PSS summed over"
          " its processes every 50 ms; its resident set (each physical page once, as root)"
          " as often as it can be read:")  # fmt: skip
    for ram in args.ram:
        for key in profiles:
            run = ours[ram, key]
            resident = run.peak.resident_mib
            print(f"  ram {ram:>5} MiB, {key:<8}: summed RSS {run.peak.rss_mib:4.0f} MiB, "
                  f"PSS {_mib(run.peak.pss_mib)}, resident set {_mib(resident)}"
                  f"{'' if resident is None else f' ({100 * resident / ram:.0f}% of the budget)'}; "
                  f"idle before: RSS {run.idle.rss_mib:.0f} MiB, PSS {_mib(run.idle.pss_mib)}; "
                  f"{run.peak.processes} processes")  # fmt: skip
    for ram in args.ram:
        for line in plans[ram][-1:]:
            print(f"  ram {ram} tile plan: {line.split(': ', 1)[-1]}")
    for ram in args.ram:
        print(f"  first call of a new session (compiles the kernel, {WARM_SIZE}x{WARM_SIZE} inputs), "
              f"ram {ram}: {first_call[ram]:.2f} s")  # fmt: skip
        print(f"  ours vs (a) on its output, max abs difference: {mismatch[ram]:g}")
    print(f"\ntotal runtime {time.perf_counter() - total_started:.0f} s")

    clean_workdir(workdir, outputs, keep=args.keep, temporary=args.workdir is None)
    return 0


def _compare(path: Path, reference: np.ndarray | None) -> float:
    """Largest absolute difference between ours and (a) over a few blocks."""
    if reference is None:
        return float("nan")
    worst = 0.0
    with rasterio.open(path) as ds:
        for row, col in ((0, 0), (3072, 2048), (5120, 8192), (10752, 10752)):
            if row >= ds.height or col >= ds.width:
                continue
            window = Window(col, row, min(BLOCK, ds.width - col), min(BLOCK, ds.height - row))
            ours = ds.read(1, window=window)
            ref = reference[row : row + window.height, col : col + window.width]
            worst = max(worst, float(np.max(np.abs(ours.astype(np.float64) - ref))))
    return worst


if __name__ == "__main__":
    sys.exit(main())
