"""Where compiled kernels live on disk, and whether ``rsgrpc warm`` filled it for this machine.

numba reads its cache folder from ``NUMBA_CACHE_DIR`` when it is imported, so the folder is set
in the environment before any kernel is imported: by ``rsgrpc warm``, and by the server before
it spawns workers (a spawned process inherits the environment). This module imports neither
numba nor the kernels, so that the server, which runs no kernel itself, need not load them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import sys
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

# Written by `rsgrpc warm` once every case ran: what the cache was compiled for.
MANIFEST_NAME = "rsgrpc-warm.json"


def default_kernel_cache_dir() -> Path:
    """The user's cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``) + ``rsgrpc/kernels``."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rsgrpc" / "kernels"


def use_kernel_cache_dir(folder: Path) -> Path:
    """Make numba, in this process if not yet imported and in every process it spawns from
    now on, keep compiled kernels in ``folder``; return the folder as set."""
    folder = folder.expanduser().resolve()
    os.environ["NUMBA_CACHE_DIR"] = str(folder)
    return folder


def fingerprint() -> dict[str, object]:
    """What numba's cached kernels depend on: numba, Python, the CPU, and the kernels' source
    files as numba stamps them (size and modification time)."""
    spec = importlib.util.find_spec("rsgrpc_kernels")
    assert spec is not None and spec.submodule_search_locations, "rsgrpc_kernels is installed"
    sources = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.py"))
    return {
        "numba": importlib.metadata.version("numba"),
        "python": platform.python_implementation() + " " + sys.version.split()[0],
        "cpu": _cpu(),
        "sources": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sources},
    }


def _cpu() -> str:
    """The machine and, on Linux, a digest of its CPU model and features."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    described = "\n".join(dict.fromkeys(wanted))
    return f"{platform.machine()} {hashlib.sha256(described.encode()).hexdigest()[:16]}"


def write_manifest(folder: Path, cases: int) -> None:
    """Record that ``cases`` warm cases compiled into ``folder`` on this machine."""
    manifest = {"fingerprint": fingerprint(), "cases": cases}
    path = folder / MANIFEST_NAME
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(manifest, indent=1))
    partial.replace(path)


def stale_reason(folder: Path) -> str | None:
    """Why the kernels in ``folder`` would compile rather than load; None if warmed here."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return "`rsgrpc warm` has not filled it"
    recorded = manifest.get("fingerprint", {}) if isinstance(manifest, dict) else {}
    current = fingerprint()
    changed = [key for key, value in current.items() if recorded.get(key) != value]
    if changed:
        return f"it was warmed for another {', '.join(changed)}"
    return None


def report_kernel_cache(folder: Path) -> None:
    """Say once, in the server's log, whether workers will load kernels or compile them."""
    reason = stale_reason(folder)
    if reason is None:
        _LOGGER.info("kernels load from the cache at %s", folder)
    else:
        _LOGGER.warning(
            "kernel cache at %s is empty or stale (%s): workers compile each kernel on its "
            "first use, which can take a minute; run `rsgrpc warm` to compile them ahead",
            folder,
            reason,
        )
