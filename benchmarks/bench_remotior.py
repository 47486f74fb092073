"""One Remotior Sensus script, run by Remotior Sensus and by rsgrpc, step by step.

    python benchmarks/bench_remotior.py --remotior-python /path/to/remotior/env/bin/python

The script is what a Remotior user writes: a session, NDVI with ``band_calc``, a
two-line ``band_calc`` script that classifies the NDVI by thresholds and marks dense
vegetation (written as Remotior 0.8 runs it: see the script's comments), then ``band_sieve``, ``band_dilation`` and ``band_erosion`` of the
classes, each reading the paths the step before returned. Each side runs the same text:
Remotior's as it is, in the interpreter given by ``--remotior-python`` (or the
``RSGRPC_BENCH_REMOTIOR_PYTHON`` environment variable), which needs Remotior Sensus and
GDAL's Python bindings; rsgrpc's with ``import remotior_sensus`` changed to ``import
rsgrpc.client as remotior_sensus``, in this interpreter, against ``rsgrpc serve`` started
as a subprocess (the script's ``Session`` is given the server's address). Without a
Remotior interpreter, or when Remotior cannot be imported there, the benchmark says so
and runs rsgrpc's side only.

Inputs: red (B04) and near-infrared (B08) bands, ``--size`` x ``--size`` uint16 (5000
by default), tiled 512, DEFLATE, nodata 0 beyond an orbit edge: a smooth field plus
per-pixel noise from an integer hash (``harness.pixel_hash``), made once in the workdir.

Printed: for each step, each side's wall seconds (timed inside the script around the
call), Remotior/rsgrpc, and the pixel differences between the two outputs (pixels that
differ, pixels nodata on one side only, largest absolute difference where both have
data); the peak memory of each side's process tree (Remotior's interpreter and its
workers; rsgrpc's server and its workers, plus the script's own interpreter), sampled
every 50 ms; the machine and its load. Nothing is asserted.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    OtherCpu,
    benchmark_parser,
    clean_workdir,
    machine,
    machine_load,
    make_once,
    make_workdir,
    orbit_edge_mask,
    pixel_hash,
    rsgrpc_server,
    scene_grid,
    smooth_field,
)
from process_tree import TreeMemorySampler  # noqa: E402

from rsgrpc.engine.gdal_env import GDAL_OPTIONS  # noqa: E402

DEFAULT_SIZE = 5000
ENVIRONMENT_VARIABLE = "RSGRPC_BENCH_REMOTIOR_PYTHON"
REMOTIOR_IMPORT = "import remotior_sensus"
RSGRPC_IMPORT = "import rsgrpc.client as remotior_sensus"
STEPS = ("session", "ndvi", "classes", "dense", "sieve", "dilation", "erosion")

# The script, as a Remotior user writes it; $INPUTS, $OUTPUT, $PROCESSES and $RAM are
# filled in. Each step prints (name, seconds, check, paths) for the benchmark to read.
SCRIPT = """\
import os
import time

import remotior_sensus


def report(name, started, output=None):
    seconds = time.perf_counter() - started
    if output is None:
        print(repr((name, seconds, True, [])), flush=True)
    else:
        print(repr((name, seconds, output.check, output.paths)), flush=True)


def main():
    inputs = "$INPUTS"
    output_directory = "$OUTPUT"
    os.makedirs(output_directory, exist_ok=True)

    started = time.perf_counter()
    rs = remotior_sensus.Session(n_processes=$PROCESSES, available_ram=$RAM)
    report("session", started)

    started = time.perf_counter()
    ndvi = rs.band_calc(
        input_raster_list=[inputs + "/B08.tif", inputs + "/B04.tif"],
        output_path=output_directory + "/ndvi.tif",
        expression_string='("nir" - "red") / ("nir" + "red")',
        input_name_list=["nir", "red"],
    )
    report("ndvi", started, ndvi)

    started = time.perf_counter()
    classes = rs.band_calc(
        input_raster_list=[[ndvi.paths[0], "ndvi"]],
        output_path=output_directory,
        # 1 water or bare soil, 2 sparse vegetation, 3 dense vegetation; then dense
        # vegetation alone. In Remotior 0.8: no comment lines (skipped only in a band
        # set's calculation); names ending .tif (without, the output is a virtual raster
        # of the parts); no line reading a .tif output of the line above (read as
        # "classes.tifNone", that line writes nothing while the check stays True).
        expression_string=(
            'where("ndvi" < 0.2, 1, where("ndvi" < 0.45, 2, 3)) @ classes.tif\\n'
            '"ndvi" >= 0.45 @ dense.tif'
        ),
        output_datatype="Byte",
        output_nodata=0,
    )
    report("classes", started, classes)
    print(repr(("dense", 0.0, classes.check, classes.paths[1:])), flush=True)

    started = time.perf_counter()
    sieve = rs.band_sieve(
        input_bands=classes.paths[:1],
        size=10,
        output_path=output_directory,
        connected=True,
        prefix="sieve_",
    )
    report("sieve", started, sieve)

    started = time.perf_counter()
    dilation = rs.band_dilation(
        input_bands=sieve.paths,
        value_list=[3],
        size=2,
        output_path=output_directory,
        circular_structure=True,
        prefix="dilation_",
    )
    report("dilation", started, dilation)

    started = time.perf_counter()
    erosion = rs.band_erosion(
        input_bands=dilation.paths,
        value_list=[1],
        size=1,
        output_path=output_directory,
        prefix="erosion_",
    )
    report("erosion", started, erosion)

    rs.close()


# Remotior's processes start with "spawn": the script runs only as the main module
if __name__ == "__main__":
    main()
"""

# Runs rsgrpc's version of the script with the server's address as Session's target.
_RSGRPC_LAUNCHER = """
import runpy, sys
import rsgrpc.client

class Session(rsgrpc.client.Session):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("target", sys.argv[2])
        super().__init__(*args, **kwargs)

rsgrpc.client.Session = Session
runpy.run_path(sys.argv[1], run_name="__main__")
"""


@dataclass
class Side:
    """One side's run: per step (seconds, check, paths), the tree's peak memory."""

    name: str
    steps: dict[str, tuple[float, bool, list[str]]] = field(default_factory=dict)
    peak_rss: int = 0
    peak_pss: int | None = None
    wall: float = 0.0
    error: str = ""


# ------------------------------------------------------------------------- the inputs


def write_inputs(size: int, red_path: Path, nir_path: Path) -> None:
    """Red and near-infrared uint16 bands, nodata 0 beyond the orbit edge, in strips."""
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint16",
        nodata=0,
        crs="EPSG:32633",
        transform=rasterio.transform.from_origin(300000.0, 5000000.0, 10.0, 10.0),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    )
    with (
        rasterio.open(red_path, "w", **profile) as red,
        rasterio.open(nir_path, "w", **profile) as nir,
    ):
        for row0 in range(0, size, 512):
            rows = min(512, size - row0)
            y, x, iy, ix = scene_grid(row0, rows, size)
            vegetation = smooth_field(y, x)
            noise_red = (pixel_hash(iy, ix, 4) % 401).astype(np.float32) - 200
            noise_nir = (pixel_hash(iy, ix, 8) % 801).astype(np.float32) - 400
            r = np.clip(2200 - 1600 * vegetation + noise_red, 1, 10000).astype(np.uint16)
            n = np.clip(1200 + 3800 * vegetation + noise_nir, 1, 10000).astype(np.uint16)
            edge = np.broadcast_to(orbit_edge_mask(y, x), r.shape)
            r[edge] = 0
            n[edge] = 0
            window = Window(0, row0, size, rows)
            red.write(r, 1, window=window)
            nir.write(n, 1, window=window)


# ---------------------------------------------------------------------------- the runs


def script_text(inputs: Path, output: Path, processes: int, ram: int) -> str:
    return (
        SCRIPT.replace("$INPUTS", str(inputs))
        .replace("$OUTPUT", str(output))
        .replace("$PROCESSES", str(processes))
        .replace("$RAM", str(ram))
    )


def as_rsgrpc(script: str) -> str:
    """The script with its import changed, as the README tells a Remotior user."""
    lines = [RSGRPC_IMPORT if line == REMOTIOR_IMPORT else line for line in script.splitlines()]
    return "\n".join(lines) + "\n"


def run_script(
    side: Side,
    command: list[str],
    sampled_pids: list[int],
    log: Path,
    env: dict[str, str] | None = None,
) -> Side:
    """Run ``command`` (which runs the script), sampling the memory of its process tree
    and of ``sampled_pids``' trees; read the steps it printed."""
    started = time.perf_counter()
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
        samplers = [TreeMemorySampler(pid, interval=0.05) for pid in [process.pid, *sampled_pids]]
        for sampler in samplers:
            sampler.__enter__()
        try:
            stdout, _ = process.communicate()
        finally:
            for sampler in samplers:
                sampler.__exit__(None, None, None)
    side.wall = time.perf_counter() - started
    side.peak_rss = sum(s.peak.rss for s in samplers)
    pss = [s.peak.pss for s in samplers]
    side.peak_pss = None if any(p is None for p in pss) else sum(pss)
    for line in stdout.splitlines():
        # Remotior's progress shares stdout, ending its lines with a carriage return
        # and clearing the rest of the line (ESC [K) before the next
        line = line.rsplit("\r", 1)[-1].rsplit("\x1b[K", 1)[-1].strip()
        try:
            name, seconds, check, paths = ast.literal_eval(line)
        except (ValueError, SyntaxError):
            continue  # something the library printed
        side.steps[name] = (seconds, check, paths)
    if process.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        side.error = f"exit code {process.returncode}: {lines[-1] if lines else '?'}"
    return side


def remotior_environment(temporary: Path) -> dict[str, str]:
    """This environment for Remotior, with its temporary files in ``temporary`` and
    without the GDAL options rsgrpc sets for itself (no VRT driver among them), which
    Remotior, building virtual rasters, cannot run with."""
    env = {k: v for k, v in os.environ.items() if k not in GDAL_OPTIONS}
    env["TMPDIR"] = str(temporary)
    return env


def remotior_usable(python: str | None) -> str:
    """Why Remotior's side cannot run ('' when it can)."""
    if not python:
        return f"no Remotior interpreter: give --remotior-python or set {ENVIRONMENT_VARIABLE}"
    try:
        done = subprocess.run(
            [python, "-c", "import remotior_sensus; from osgeo import gdal; print('ok')"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except OSError as error:
        return f"{python} cannot run: {error.strerror}"
    if done.returncode != 0 or "ok" not in done.stdout:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"Remotior Sensus or GDAL is not importable with {python}: {last}"
    return ""


# ------------------------------------------------------------------------ the outputs


@dataclass
class Difference:
    differing: int = 0  # pixels whose values differ (nodata included)
    nodata_one_side: int = 0  # pixels that are nodata on one side only
    max_abs: float = 0.0  # the largest difference where both have data
    shape_mismatch: str = ""


def compare(a_path: str, b_path: str, rows_per_read: int = 512) -> Difference:
    """Pixel differences between two single-band rasters, read in strips."""
    out = Difference()
    with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
        if (a.width, a.height) != (b.width, b.height):
            out.shape_mismatch = f"{a.width}x{a.height} vs {b.width}x{b.height}"
            return out
        for row0 in range(0, a.height, rows_per_read):
            window = Window(0, row0, a.width, min(rows_per_read, a.height - row0))
            x = a.read(1, window=window).astype(np.float64)
            y = b.read(1, window=window).astype(np.float64)
            x_nodata = x == a.nodata if a.nodata is not None else np.zeros(x.shape, bool)
            y_nodata = y == b.nodata if b.nodata is not None else np.zeros(y.shape, bool)
            x_nodata |= np.isnan(x)
            y_nodata |= np.isnan(y)
            both = ~x_nodata & ~y_nodata
            out.nodata_one_side += int(np.count_nonzero(x_nodata != y_nodata))
            differ = both & (x != y)
            out.differing += int(np.count_nonzero(differ)) + int(
                np.count_nonzero(x_nodata != y_nodata)
            )
            if differ.any():
                out.max_abs = max(out.max_abs, float(np.abs(x - y)[differ].max()))
    return out


# ------------------------------------------------------------------------------- main


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / (1 << 20):.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__doc__)
    parser.set_defaults(size=DEFAULT_SIZE)
    parser.add_argument(
        "--remotior-python",
        default=os.environ.get(ENVIRONMENT_VARIABLE),
        help=f"a Python with Remotior Sensus and GDAL (default: ${ENVIRONMENT_VARIABLE})",
    )
    parser.add_argument("--processes", type=int, default=2, help="n_processes of both sessions")
    parser.add_argument("--ram", type=int, default=2048, help="available_ram (MB) of both")
    parser.add_argument("--keep", action="store_true", help="keep the outputs")
    args = parser.parse_args(argv)

    temporary = args.workdir is None
    workdir, _ = make_workdir(args.workdir)
    inputs = workdir / f"remotior-inputs-{args.size}"
    others = OtherCpu()
    print("rsgrpc against Remotior Sensus: one script, step by step")
    print(f"machine:   {machine()}")
    print(f"load:      {machine_load()}")
    made = make_once(
        [inputs / "B04.tif", inputs / "B08.tif"],
        lambda red, nir: write_inputs(args.size, red, nir),
    )
    print(
        f"inputs:    {args.size}x{args.size} uint16 red and NIR, nodata 0 "
        + (f"(made in {made:.1f} s)" if made else "(reused)")
    )
    print(f"sessions:  n_processes={args.processes}, available_ram={args.ram} MB")

    why_not = remotior_usable(args.remotior_python)
    sides: list[Side] = []
    if why_not:
        print(f"Remotior:  not run: {why_not}")
    else:
        output = workdir / "remotior-outputs"
        shutil.rmtree(output, ignore_errors=True)
        script = workdir / "remotior_script.py"
        script.write_text(script_text(inputs, output, args.processes, args.ram))
        remotior_temp = Path(tempfile.mkdtemp(prefix="remotior-temp-", dir=workdir))
        print(f"Remotior:  {args.remotior_python}, its temporary files in the workdir")
        try:
            side = run_script(
                Side("Remotior"),
                [args.remotior_python, str(script)],
                [],
                workdir / "remotior.log",
                env=remotior_environment(remotior_temp),
            )
        finally:
            shutil.rmtree(remotior_temp, ignore_errors=True)
        sides.append(side)

    output = workdir / "rsgrpc-outputs"
    shutil.rmtree(output, ignore_errors=True)
    script = workdir / "rsgrpc_script.py"
    script.write_text(as_rsgrpc(script_text(inputs, output, args.processes, args.ram)))
    with rsgrpc_server(workdir, workdir / "server.log") as (address, server):
        print(f"rsgrpc:    server {address}, data root {workdir}")
        side = run_script(
            Side("rsgrpc"),
            [sys.executable, "-c", _RSGRPC_LAUNCHER, str(script), address],
            [server.pid],
            workdir / "rsgrpc.log",
        )
    sides.append(side)

    print()
    header = f"{'step':<10}" + "".join(f"{s.name + ' s':>12}" for s in sides)
    if len(sides) == 2:
        header += f"{'ratio':>8}  {'differing':>11} {'nodata 1 side':>14} {'max |diff|':>12}"
    print(header)
    remotior, ours = (sides[0], sides[1]) if len(sides) == 2 else (None, sides[0])
    for step in STEPS:
        line = f"{step:<10}"
        for s in sides:
            seconds = s.steps.get(step, (float("nan"), False, []))[0]
            line += f"{seconds:12.2f}" if step != "dense" else f"{'(classes)':>12}"
        if remotior is not None and step in remotior.steps and step in ours.steps:
            r_seconds, r_check, r_paths = remotior.steps[step]
            o_seconds, o_check, o_paths = ours.steps[step]
            if step != "dense":
                line += f"{r_seconds / o_seconds:7.2f}x" if o_seconds > 0 else f"{'':>8}"
            else:
                line += f"{'':>8}"
            if r_check and o_check and r_paths and o_paths:
                d = compare(r_paths[0], o_paths[0])
                if d.shape_mismatch:
                    line += f"  sizes differ: {d.shape_mismatch}"
                else:
                    line += f"  {d.differing:11d} {d.nodata_one_side:14d} {d.max_abs:12.6g}"
            elif step != "session":
                line += f"  check: Remotior {r_check}, rsgrpc {o_check}"
        print(line)
    print()
    for s in sides:
        what = "the script's interpreter and its workers"
        if s.name == "rsgrpc":
            what = "the server and its workers, plus the script's interpreter"
        print(
            f"{s.name}: whole script {s.wall:.2f} s (interpreter start included); peak memory "
            f"of {what}: RSS {_mib(s.peak_rss)}, PSS {_mib(s.peak_pss)}"
            + (f"; FAILED: {s.error}" if s.error else "")
        )
        for step, (_, check, paths) in s.steps.items():
            if not check:
                print(f"  {s.name} {step}: check False")
            elif paths:
                print(f"  {s.name} {step}: {', '.join(Path(p).name for p in paths)}")
    print(f"load after: {machine_load()}")
    print(f"during:     {others.report()}")
    clean_workdir(workdir, workdir / "outputs", keep=args.keep, temporary=temporary)
    if not args.keep and not temporary:
        for folder in ("remotior-outputs", "rsgrpc-outputs"):
            shutil.rmtree(workdir / folder, ignore_errors=True)
    return 0 if all(not s.error for s in sides) else 1


if __name__ == "__main__":
    sys.exit(main())
