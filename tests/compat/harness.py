"""Running a Remotior Sensus script against rsgrpc, as a user would, and the scene it reads.

A snippet in ``snippets/`` is a script written for Remotior Sensus: ``import
remotior_sensus``, then the session, the catalog and the tools as Remotior's documentation
uses them. Its paths start with ``$DATA``, which stands for the folder where the user keeps
the data (here the server's data root, absolute). `run_snippet` changes the import line
as the README tells a user to (``import rsgrpc.client as remotior_sensus``), leaves the rest
of the text untouched, and runs it in a fresh interpreter.

The client connects to 127.0.0.1:50051 unless the script passes ``target=``, and offers no
environment variable for another address, so the interpreter that runs the snippet gives
`Session` the test server's address as its default ``target`` before the script starts.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsgrpc.engine.gdal_env import GDAL_OPTIONS
from tests.conftest import write_geotiff

SNIPPETS = Path(__file__).resolve().parent / "snippets"
REMOTIOR_IMPORT = "import remotior_sensus"
RSGRPC_IMPORT = "import rsgrpc.client as remotior_sensus"
DATA = "$DATA"

# Runs the changed script with the test server as Session's default target.
_LAUNCHER = """
import runpy, sys
import rsgrpc.client

class Session(rsgrpc.client.Session):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("target", sys.argv[2])
        super().__init__(*args, **kwargs)

rsgrpc.client.Session = Session
runpy.run_path(sys.argv[1], run_name="__main__")
"""
# Runs a snippet as it is with Remotior Sensus, from ``-c`` so that the processes Remotior
# spawns do not run the script again. Remotior writes its own messages and progress to
# stdout, so what the script prints goes to the file named by the second argument; a
# NumPy array (Remotior's band set tables) is printed as a list, to be read as a literal.
_REMOTIOR_LAUNCHER = """
import builtins, sys
with open(sys.argv[2], "w", buffering=1) as printed:
    def print(*args, **kwargs):
        kwargs.setdefault("file", printed)
        args = [a.tolist() if type(a).__name__ == "ndarray" else a for a in args]
        builtins.print(*args, **kwargs)
    with open(sys.argv[1]) as file:
        code = compile(file.read(), sys.argv[1], "exec")
    exec(code, {"__name__": "__main__", "print": print})
"""
# A Python with Remotior Sensus: when set, snippets run with Remotior instead, unchanged,
# and the same assertions check Remotior's outputs (a check of the references).
REMOTIOR_PYTHON = "RSGRPC_COMPAT_REMOTIOR_PYTHON"

WIDTH, HEIGHT = 300, 257
BANDS = ("B02", "B03", "B04", "B08", "B11")
S2_WAVELENGTHS = {"B02": 0.49, "B03": 0.56, "B04": 0.665, "B08": 0.842, "B11": 1.61}


def as_rsgrpc(script: str) -> str:
    """``script`` with its ``import remotior_sensus`` line changed to rsgrpc's client."""
    lines = script.splitlines()
    found = [i for i, line in enumerate(lines) if line.strip() == REMOTIOR_IMPORT]
    assert len(found) == 1, "a snippet imports remotior_sensus once, on a line of its own"
    lines[found[0]] = lines[found[0]].replace(REMOTIOR_IMPORT, RSGRPC_IMPORT)
    return "\n".join(lines) + "\n"


@dataclass
class SnippetRun:
    """A finished run: its exit code, output and the values it printed (one per line)."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def printed(self) -> list:
        values = []
        for line in self.stdout.splitlines():
            # Remotior's progress shares stdout, ending its lines with a carriage return
            line = line.rsplit("\r", 1)[-1].strip()
            if line:
                values.append(ast.literal_eval(line))
        return values

    def check(self) -> list:
        """The printed values, after asserting that the script ended well."""
        assert self.returncode == 0, f"the script failed:\n{self.stderr}"
        return self.printed


def run_snippet(name: str, data: Path, target: str, workdir: Path) -> SnippetRun:
    """Run ``snippets/{name}.py`` with its import changed, ``$DATA`` being ``data``, in
    ``workdir`` (where a relative log path of the script lands)."""
    text = (SNIPPETS / f"{name}.py").read_text().replace(DATA, str(data))
    script = workdir / f"{name}.py"
    env = {k: v for k, v in os.environ.items() if k != "RSGRPC_PATH_MAP"}
    remotior = os.environ.get(REMOTIOR_PYTHON)
    printed = None
    if remotior:
        script.write_text(text)
        printed = workdir / f"{name}.printed"
        command = [remotior, "-c", _REMOTIOR_LAUNCHER, str(script), str(printed)]
        env["TMPDIR"] = str(workdir)
        # The test server confines GDAL in this process's environment (no VRT driver
        # among others), which Remotior, building virtual rasters, must not inherit.
        for key in GDAL_OPTIONS:
            env.pop(key, None)
    else:
        script.write_text(as_rsgrpc(text))
        command = [sys.executable, "-c", _LAUNCHER, str(script), target]
    done = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if printed is None:
        return SnippetRun(done.returncode, done.stdout, done.stderr)
    # Remotior's messages join its errors, the script's values are its output.
    output = printed.read_text() if printed.exists() else ""
    return SnippetRun(done.returncode, output, done.stdout + done.stderr)


# ------------------------------------------------------------------------- the scene


@dataclass
class Scene:
    """What the snippets read, under ``data``: Sentinel-2-like bands in ``s2/`` (uint16,
    nodata 0; ``s2/QA60.tif`` is not a band), class rasters in ``lc/`` (uint8, nodata 0)."""

    data: Path
    bands: dict[str, np.ndarray]
    classes: np.ndarray
    classes2: np.ndarray


def make_scene(data: Path) -> Scene:
    rng = np.random.default_rng(20240611)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    field = 0.5 + 0.3 * np.sin(x / 23.0) * np.cos(y / 31.0) + 0.1 * np.sin((x + y) / 57.0)
    edge = x > 250 + 20 * np.sin(y / 40.0)  # beyond the orbit's edge: no data in any band
    gain = {"B02": 900, "B03": 1200, "B04": 1500, "B08": 4200, "B11": 2600}
    bands = {}
    for name in BANDS:
        noise = rng.normal(0, 150, (HEIGHT, WIDTH))
        value = np.clip(gain[name] * field + noise + 300, 1, 10000).astype(np.uint16)
        value[edge] = 0
        bands[name] = value
    bands["B04"][100:104, :] = 0  # a strip missing in red only
    # NDVI exactly 0.3 (600 / 2000) on a few pixels: float32(0.3) > 0.3 is False in
    # float32, and True once the float32 value is widened to float64.
    bands["B08"][10, 10:30] = 1300
    bands["B04"][10, 10:30] = 700
    for name, value in bands.items():
        write_geotiff(data / "s2" / f"S2_{name}.tif", value, nodata=0, block=128)
    write_geotiff(data / "s2" / "QA60.tif", bands["B02"] % 3, nodata=0, block=128)

    coarse = rng.integers(1, 5, (HEIGHT // 16 + 1, WIDTH // 16 + 1))
    classes = np.kron(coarse, np.ones((16, 16), np.int64))[:HEIGHT, :WIDTH].astype(np.uint8)
    classes[rng.random(classes.shape) < 0.06] = 7
    classes[rng.random(classes.shape) < 0.02] = 3
    classes[200:, :40] = 0  # nodata corner
    classes2 = classes[::-1, ::-1].copy()
    write_geotiff(data / "lc" / "classes.tif", classes, nodata=0, block=128)
    write_geotiff(data / "lc" / "classes2.tif", classes2, nodata=0, block=128)
    return Scene(data, bands, classes, classes2)
