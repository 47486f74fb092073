"""Limits at the door: the largest raster, the largest output and the free disk a job needs.

Each check raises ResourceExhaustedError with the numbers, naming files as the
client named them and never the server's own folders. Jobs check when they
are asked for, before the operation is returned, and check the free disk
again when they start to run, since they may have waited in their session's
queue while other jobs filled the disk.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rsgrpc.engine.errors import ResourceExhaustedError
from rsgrpc.engine.object_store import staging_folder
from rsgrpc.engine.paths import DataPath
from rsgrpc.engine.raster_io import OutputProfile
from rsgrpc.engine.session import ServerLimits, Session

MIB = 1 << 20


@dataclass(frozen=True)
class PlannedOutput:
    """An output a job will write: where, its grid's shape, its data type, and the input
    it is computed from (as the client named it)."""

    output: DataPath
    shape: tuple[int, int]
    dtype: str
    input_path: str


@dataclass(frozen=True)
class DiskNeed:
    """Bytes a job will write under `directory`, and what for, in the client's words."""

    directory: Path
    bytes: int
    what: str


def check_job_limits(
    outputs: Sequence[PlannedOutput],
    profile: OutputProfile,
    session: Session,
    *,
    temporary_bytes: int = 0,
) -> None:
    """Refuse a job over the server's limits: a raster of too many pixels, an output too
    large, or a disk without room for its outputs, or for the `temporary_bytes` it keeps
    in the session's temporary directory, beside the server's reserve.

    Every output has its input's grid, so checking one checks both.
    """
    limits = session.limits
    for planned in outputs:
        check_raster_pixels(planned.shape, limits, client_path=planned.input_path)
        check_output_bytes(planned.shape, planned.dtype, limits, client_path=planned.output.path)
    needs = [
        DiskNeed(
            output_directory(p.output),
            output_disk_bytes(p.shape, p.dtype, profile),
            f"output {p.output.path!r}",
        )
        for p in outputs
    ]
    if profile.cloud_optimized:
        # GDAL builds the overviews (a third of the pixels at most) in temporary files.
        overviews = max(uncompressed_bytes(p.shape, p.dtype) for p in outputs) // 3
        temporary_bytes += overviews
    if temporary_bytes:
        needs.append(
            DiskNeed(session.temporary_directory, temporary_bytes, "the session's temporary files")
        )
    check_free_disk(needs, limits)


def check_raster_pixels(shape: tuple[int, int], limits: ServerLimits, *, client_path: str) -> None:
    """Refuse a raster of more pixels than the server's limit."""
    rows, cols = shape
    if rows * cols > limits.max_raster_pixels:
        raise ResourceExhaustedError(
            f"raster {client_path!r} is {cols} x {rows} pixels ({rows * cols:,}); the "
            f"server's limit is {limits.max_raster_pixels:,} pixels",
            metadata={"path": client_path, "max_raster_pixels": str(limits.max_raster_pixels)},
        )


def uncompressed_bytes(shape: tuple[int, int], dtype: str) -> int:
    """The size of a raster's pixels with no compression."""
    return shape[0] * shape[1] * np.dtype(dtype).itemsize


def check_output_bytes(
    shape: tuple[int, int], dtype: str, limits: ServerLimits, *, client_path: str
) -> None:
    """Refuse an output whose pixels, uncompressed, are more than the server's limit."""
    size = uncompressed_bytes(shape, dtype)
    if size > limits.max_output_bytes:
        raise ResourceExhaustedError(
            f"output {client_path!r} would hold {_mib(size)} MiB of {dtype} pixels "
            f"uncompressed; the server's limit is {_mib(limits.max_output_bytes)} MiB",
            metadata={"path": client_path, "max_output_mib": str(_mib(limits.max_output_bytes))},
        )


def output_disk_bytes(shape: tuple[int, int], dtype: str, profile: OutputProfile) -> int:
    """The most disk an output can take while it is written: an upper bound, not a guess.

    Compression rarely grows a block, but it can: DEFLATE and ZSTD by a few bytes,
    LZW by up to half again on noise, so an uncompressed size (half again for LZW)
    bounds every file. A cloud-optimized output is copied, with overviews (a third
    more), from the finished tiled file, and both are on disk until the copy ends.
    An output that replaces a file counts in full: both are on disk until the rename.
    """
    bound = uncompressed_bytes(shape, dtype)
    if profile.compression == "lzw":
        bound += bound // 2
    if profile.cloud_optimized:
        bound += bound * 4 // 3
    return bound


def free_disk_bytes(directory: Path) -> int:
    """Bytes an unprivileged process may still write on the file system of `directory`."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def check_free_disk(needs: Sequence[DiskNeed], limits: ServerLimits) -> None:
    """Refuse a job when a file system it writes to has less free space than it will
    write there plus the server's reserve (`min_free_disk_bytes`)."""
    by_device: dict[int, list[DiskNeed]] = {}
    for need in needs:
        by_device.setdefault(os.stat(need.directory).st_dev, []).append(need)
    for together in by_device.values():
        free = free_disk_bytes(together[0].directory)
        writes = sum(n.bytes for n in together)
        if writes + limits.min_free_disk_bytes > free:
            parts = " and ".join(f"{_mib(n.bytes)} MiB for {n.what}" for n in together)
            raise ResourceExhaustedError(
                f"not enough free disk: the job needs up to {parts}, and the server keeps "
                f"{_mib(limits.min_free_disk_bytes)} MiB free; the disk has "
                f"{free // MIB} MiB free",
                metadata={
                    "needed_mib": str(_mib(writes + limits.min_free_disk_bytes)),
                    "free_mib": str(free // MIB),
                },
            )


def output_directory(output: DataPath) -> Path:
    """The deepest directory on the way to an output that exists, through no symbolic
    link, from the data root the output is in (each root may be a disk of its own): the
    output lands on its file system (the missing ones are made when the output is
    written). An object is written in the server's staging folder before it is uploaded."""
    if output.store is not None:
        return staging_folder()
    directory = output.root
    for part in output.parts[:-1]:
        child = directory / part
        if child.is_symlink() or not child.is_dir():
            break
        directory = child
    return directory


def _mib(size: int) -> int:
    return math.ceil(size / MIB)
